"""Checks an HDF5 reader makes before it trusts a file (used by the loihi.h5, NIR and SHD readers).

- :func:`hdf5_heap_damage`: libhdf5 (1.14) loops forever on one kind of damaged global heap collection
  (where variable-length strings live), so a reader that must not hang looks at them first.
- :func:`unbacked_size`: a dataset that declares far more bytes than the file stores for it (a chunked
  dataset with no chunks written, say) would make a reader allocate what the file claims.
- :func:`dataset_size_problem`: the guard a reader runs on each dataset before reading it: data from other
  files, too many elements, or :func:`unbacked_size`.

Standard library only (h5py datasets are used through their attributes).
"""

from __future__ import annotations

import os

# gzip (HDF5's deflate filter) compresses by at most ~1032:1, so a dataset that declares more bytes than
# that times what it stores is forged (e.g. a chunked dataset with no chunks written); small ones pass.
MAX_COMPRESSION = 1100
SMALL_DATASET_BYTES = 1 << 16


def unbacked_size(dataset) -> str | None:
    """Why ``dataset`` (an h5py Dataset) declares more than the file can hold for it, or None when it can."""
    declared = int(dataset.size) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if declared > SMALL_DATASET_BYTES and declared > MAX_COMPRESSION * stored:
        return f"declares {declared} bytes but the file stores {stored}"
    return None


def dataset_size_problem(dataset, *, max_elements: int | None = None) -> str | None:
    """Why a reader must not read ``dataset`` (an h5py Dataset), or None when it may: it takes its data from
    other files (virtual or external storage), declares more than ``max_elements`` elements (when given),
    or declares more bytes than the file holds for it (:func:`unbacked_size`). The reason reads after the
    dataset's name."""
    if dataset.is_virtual or dataset.external:
        return "takes its data from other files, which is not allowed"
    if max_elements is not None and dataset.size > max_elements:
        return f"declares {dataset.size} elements, more than {max_elements}"
    return unbacked_size(dataset)


GLOBAL_HEAP_SIGNATURE = b"GCOL\x01\x00\x00\x00"   # signature, version 1, three reserved bytes


def hdf5_heap_damage(path: str | os.PathLike) -> str | None:
    """Where a damaged HDF5 global heap collection lies in ``path``, or None when every one is whole.

    The HDF5 library (1.14) loops forever deserialising a global heap collection (where variable-length
    strings and arrays live) in which the free-space object (index 0) has size 0, and reads past it when
    sizes overrun it, so a reader that must not hang checks them first, walking the collection as HDF5
    does: after the 16-byte header, objects take 16 + size rounded up to 8 bytes (the free-space object
    exactly its size) and must tile the collection.
    """
    import mmap

    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return None
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            end_of_file = len(data)
            start = data.find(GLOBAL_HEAP_SIGNATURE)
            while start >= 0:
                if start + 16 <= end_of_file:
                    size = int.from_bytes(data[start + 8:start + 16], "little")
                    end = start + size
                    if size < 4096 or end > end_of_file:
                        return f"global heap at byte {start} declares {size} bytes"
                    position = start + 16
                    while position < end:
                        if position + 16 > end:
                            break   # a tail too short for an object header is free space
                        index = int.from_bytes(data[position:position + 2], "little")
                        object_size = int.from_bytes(data[position + 8:position + 16], "little")
                        need = 16 + ((object_size + 7) & ~7) if index else object_size
                        if need == 0:
                            return f"global heap at byte {start}: an empty free-space object at byte {position}"
                        position += need
                    if position > end:
                        return f"global heap at byte {start}: object sizes run past its end"
                start = data.find(GLOBAL_HEAP_SIGNATURE, start + 1)
    return None
