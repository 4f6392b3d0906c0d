"""User arrays from a folder of ``.npy`` files: ``x_train.npy``, ``y_train.npy``, ``x_test.npy``, ``y_test.npy``.

The inputs are memory-mapped (copy-on-write, so the files are never written): float32 inputs are not
copied when loaded, and a subset (``train.train_subset``) reads only its samples. Layouts and labels are
those of :mod:`sbnn.data.user_arrays` (docs/data.md#your-data).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sbnn.data import DataError, Dataset
from sbnn.data.user_arrays import npy_header, user_dataset

NPY_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPY_FORMAT = "a folder holding x_train.npy, y_train.npy, x_test.npy, y_test.npy (docs/data.md#your-data)"


def _read_header(file: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``.npy`` header declares, checked against the file's size."""
    try:
        with open(file, "rb") as handle:
            shape, dtype = npy_header(handle)
            offset = handle.tell()
    except OSError as error:
        raise DataError(f"{file}: cannot be read ({error.strerror or error})") from None
    except Exception as error:
        raise DataError(f"{file}: not a valid .npy array ({' '.join(str(error).split())})") from None
    if dtype.hasobject:
        raise DataError(f"{file}: an object array (pickled Python objects are refused); store numbers or text")
    declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    stored = file.stat().st_size - offset
    if declared > stored:
        raise DataError(f"{file}: declares shape {shape} ({declared} bytes) but stores {stored} bytes")
    return shape, dtype


def _read(file: Path) -> np.ndarray:
    shape, _dtype = _read_header(file)
    try:
        if int(np.prod(shape, dtype=np.float64)) == 0:   # an empty file cannot be mapped
            return np.load(file, allow_pickle=False)
        return np.load(file, mmap_mode="c", allow_pickle=False)
    except Exception as error:
        raise DataError(f"{file}: cannot be read as an array ({' '.join(str(error).split())})") from None


def load_npy_folder(path: str | os.PathLike[str], *, num_classes: int | None = None) -> Dataset:
    """User arrays from a folder of four ``.npy`` files (``numpy.save``), memory-mapped.

    Args:
        path: the folder holding ``x_train.npy``, ``y_train.npy``, ``x_test.npy``, ``y_test.npy``.
        num_classes: number of classes; default the largest label + 1 (integer labels) or the number of
            distinct labels (text labels).

    Returns:
        A Dataset with the layouts of :mod:`sbnn.data.user_arrays`; float32 inputs stay memory-mapped.
    """
    folder = Path(path)
    if not folder.is_dir():
        found = "a file, not a folder" if folder.exists() else "not found"
        raise DataError(f"{folder}: {found}; expected {NPY_FORMAT}")
    arrays = {}
    for key in NPY_KEYS:
        file = folder / f"{key}.npy"
        if not file.is_file():
            raise DataError(f"{folder}: missing {key}.npy; expected {NPY_FORMAT}")
        arrays[key] = _read(file)
    for key in ("y_train", "y_test"):   # labels are small: read them into memory
        arrays[key] = np.array(arrays[key])
    return user_dataset("npy", str(folder), arrays, num_classes, suffix=".npy")
