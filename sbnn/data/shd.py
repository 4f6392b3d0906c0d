"""Spiking Heidelberg Digits (Cramer et al. 2020) from the original HDF5 files, binned to time steps.

On-disk format (one file per split, ``shd_train.h5`` and ``shd_test.h5``):
``/spikes/times`` per-sample variable-length float16 spike times in seconds; ``/spikes/units``
per-sample variable-length uint16 channels 0..699, same lengths; ``/labels`` class per sample;
optional ``/extra/keys`` with the class names (its length gives the number of classes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sbnn.data import DataError, Dataset
from sbnn.data._validation import require_positive_int

SHD_CHANNELS = 700
SHD_FORMAT = (
    "the original SHD HDF5 file (/spikes/times and /spikes/units: per-sample variable-length arrays "
    "of equal length; /labels: one integer per sample)"
)
# Rows read from HDF5 per batch: bounds the scratch memory of the binning.
_SAMPLES_PER_CHUNK = 64
# Spike times and units live uncompressed in HDF5's global heap: 2 + 2 bytes per event at least.
_MIN_BYTES_PER_EVENT = 4


def _shd_file(root: Path, split: str) -> Path:
    name = f"shd_{split}.h5"
    for folder in (root, root / "SHD"):  # root/SHD is tonic's layout
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"SHD: {root / name} not found; expected {SHD_FORMAT} (shd_train.h5 and shd_test.h5 in {root})")


def _dataset(handle, path: Path, name: str):
    import h5py

    try:
        found = handle.get(name)
    except Exception as error:  # h5py raises varied errors on damaged groups
        raise DataError(f"{path}: cannot read /{name} ({error}); expected {SHD_FORMAT}") from None
    if not isinstance(found, h5py.Dataset):
        raise DataError(f"{path}: missing dataset /{name}; expected {SHD_FORMAT}")
    return found


def read_shd_file(
    path: str | os.PathLike[str], *, steps: int, max_time: float, binary: bool = True
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Read one SHD HDF5 file and bin its spikes.

    A spike at time t seconds lands in step ``floor(t / max_time * steps)``; spikes at t >= max_time are
    dropped.

    Returns:
        ``(spikes, labels, num_keys)``: spikes ``(N, steps, 700)`` (uint8 0/1 if ``binary``, else float32
        counts per step), int64 labels ``(N,)``, and the length of ``/extra/keys`` (None if absent).
    """
    path = Path(path)
    handle, file_size = _open_shd_file(path)
    with handle:
        times, units, labels_data = _spike_datasets(handle, path, file_size)
        count = labels_data.shape[0]
        num_keys = _number_of_keys(handle)
        try:
            labels = labels_data[()].astype(np.int64)
        except Exception as error:
            raise DataError(f"{path}: cannot read /labels ({error}); expected {SHD_FORMAT}") from None
        spikes = np.zeros((count, steps, SHD_CHANNELS), dtype=np.uint8 if binary else np.float32)
        total_events = 0
        for start in range(0, count, _SAMPLES_PER_CHUNK):
            stop = min(start + _SAMPLES_PER_CHUNK, count)
            time_rows, unit_rows, lengths = _read_chunk(times, units, path, start, stop)
            total_events += int(lengths.sum())
            if total_events * _MIN_BYTES_PER_EVENT > file_size:
                raise DataError(f"{path}: holds more spikes ({total_events}) than a {file_size}-byte file can store")
            if lengths.any():
                _bin_chunk(time_rows, unit_rows, lengths, spikes[start:stop], path=path, start=start,
                           max_time=max_time, binary=binary)
    return spikes, labels, num_keys


def _open_shd_file(path: Path):
    """The open h5py file at ``path`` and its size in bytes, after checking that reading it cannot hang."""
    import h5py

    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {SHD_FORMAT}")
    file_size = path.stat().st_size
    from safeio.hdf5 import hdf5_heap_damage

    try:
        # The spike lists live in HDF5's global heap, which libhdf5 may loop forever on when damaged.
        damage = hdf5_heap_damage(path)
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error}); expected {SHD_FORMAT}") from None
    if damage:
        raise DataError(f"{path}: damaged HDF5 file ({damage}); expected {SHD_FORMAT}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable HDF5 file ({reason}); expected {SHD_FORMAT}") from None
    return handle, file_size


def _spike_datasets(handle, path: Path, file_size: int):
    """``/spikes/times``, ``/spikes/units`` and ``/labels`` of an open SHD file, checked for dtype, rank
    and length (N samples each, and no more samples than a ``file_size``-byte file can hold)."""
    import h5py

    times = _dataset(handle, path, "spikes/times")
    units = _dataset(handle, path, "spikes/units")
    labels_data = _dataset(handle, path, "labels")
    time_type, unit_type = h5py.check_vlen_dtype(times.dtype), h5py.check_vlen_dtype(units.dtype)
    if time_type is None or time_type.kind != "f":
        raise DataError(
            f"{path}: /spikes/times has dtype {times.dtype}, not variable-length floats; expected {SHD_FORMAT}"
        )
    if unit_type is None or unit_type.kind not in "ui":
        raise DataError(
            f"{path}: /spikes/units has dtype {units.dtype}, not variable-length integers; expected {SHD_FORMAT}"
        )
    if labels_data.dtype.kind not in "ui":
        raise DataError(f"{path}: /labels has dtype {labels_data.dtype}, not integers; expected {SHD_FORMAT}")
    if not (times.ndim == units.ndim == labels_data.ndim == 1):
        raise DataError(f"{path}: /spikes/times, /spikes/units and /labels must be 1-D; expected {SHD_FORMAT}")
    count = labels_data.shape[0]
    if times.shape[0] != count or units.shape[0] != count:
        raise DataError(
            f"{path}: /spikes/times ({times.shape[0]}), /spikes/units ({units.shape[0]}) and /labels "
            f"({count}) differ in length; expected {SHD_FORMAT}"
        )
    # A dataset can declare any shape without storing it; refuse before allocating N x T x 700.
    if count > file_size:
        raise DataError(f"{path}: declares {count} samples, more than a {file_size}-byte file can hold")
    return times, units, labels_data


def _number_of_keys(handle) -> int | None:
    """The length of ``/extra/keys`` (the class names), or None when the file has no such 1-D dataset."""
    import h5py

    keys = handle.get("extra/keys")
    if isinstance(keys, h5py.Dataset) and keys.ndim == 1:
        return int(keys.shape[0])
    return None


def _read_chunk(times, units, path: Path, start: int, stop: int) -> tuple[list, list, np.ndarray]:
    """Samples ``start..stop-1``: their spike-time rows, unit rows and int64 spike counts ``(stop - start,)``,
    each sample holding as many units as times."""
    try:
        time_rows, unit_rows = times[start:stop], units[start:stop]
    except Exception as error:
        raise DataError(
            f"{path}: cannot read samples {start}..{stop - 1} ({error}); expected {SHD_FORMAT}"
        ) from None
    lengths = np.array([len(row) for row in time_rows], dtype=np.int64)
    unit_lengths = np.array([len(row) for row in unit_rows], dtype=np.int64)
    if not np.array_equal(lengths, unit_lengths):
        bad = start + int(np.flatnonzero(lengths != unit_lengths)[0])
        raise DataError(
            f"{path}: sample {bad} has {lengths[bad - start]} spike times but {unit_lengths[bad - start]} "
            f"units; expected {SHD_FORMAT}"
        )
    return time_rows, unit_rows, lengths


def _bin_chunk(
    time_rows: list, unit_rows: list, lengths: np.ndarray, block: np.ndarray, *, path: Path, start: int,
    max_time: float, binary: bool,
) -> None:
    """Add the spikes of samples ``start..start+len(block)-1`` to ``block`` ``(samples, steps, 700)`` in place
    (times in seconds, binned as :func:`read_shd_file` describes)."""
    stop = start + len(block)
    steps = block.shape[1]
    spike_times = np.concatenate(time_rows).astype(np.float64)
    spike_units = np.concatenate(unit_rows).astype(np.int64)
    sample = np.repeat(np.arange(stop - start), lengths)
    if not np.all(np.isfinite(spike_times)) or spike_times.min() < 0:
        raise DataError(f"{path}: negative or non-finite spike times in samples {start}..{stop - 1}")
    if spike_units.min() < 0 or spike_units.max() >= SHD_CHANNELS:
        raise DataError(
            f"{path}: spike unit {int(spike_units.max())} outside 0..{SHD_CHANNELS - 1} in samples "
            f"{start}..{stop - 1}"
        )
    kept = spike_times < max_time
    # Rounding can put t just below max_time into bin `steps`; clip it into the last bin.
    step = np.minimum(np.floor(spike_times[kept] * (steps / max_time)).astype(np.int64), steps - 1)
    flat = (sample[kept] * steps + step) * SHD_CHANNELS + spike_units[kept]
    block = block.reshape(-1)
    if binary:
        block[flat] = 1
    else:
        block += np.bincount(flat, minlength=block.size).astype(np.float32)


def load_shd(
    root: str | os.PathLike[str], *, steps: int = 100, max_time: float = 1.4, binary: bool = True
) -> Dataset:
    """Spiking Heidelberg Digits from ``root/shd_train.h5`` and ``root/shd_test.h5`` (or ``root/SHD/...``).

    Args:
        root: folder holding the original HDF5 files.
        steps: number of time bins T over ``[0, max_time)``.
        max_time: seconds covered; later spikes are dropped (SHD samples last up to about 1.4 s).
        binary: uint8 0/1 spikes (several spikes of a channel in one bin count once) or float32 counts.

    Returns:
        A Dataset with spikes ``(N, steps, 700)``; ``num_classes`` is the length of ``/extra/keys``
        when present (20 for SHD), else the largest label + 1.
    """
    require_positive_int("shd: steps", steps)
    if not max_time > 0:
        raise ValueError(f"shd: max_time must be positive seconds, got {max_time!r}")
    root = Path(root)
    train_file, test_file = _shd_file(root, "train"), _shd_file(root, "test")
    x_train, y_train, num_keys = read_shd_file(train_file, steps=steps, max_time=max_time, binary=binary)
    x_test, y_test, _ = read_shd_file(test_file, steps=steps, max_time=max_time, binary=binary)
    labels = np.concatenate([y_train, y_test])
    num_classes = num_keys if num_keys else int(labels.max(initial=-1)) + 1
    for file, split_labels in ((train_file, y_train), (test_file, y_test)):
        if split_labels.size and (split_labels.min() < 0 or split_labels.max() >= num_classes):
            raise DataError(f"{file}: labels outside 0..{num_classes - 1} (classes from /extra/keys or the labels)")
    if num_classes < 1:
        raise DataError(f"{train_file}: no samples; expected {SHD_FORMAT}")
    return Dataset(
        name="shd",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        input_shape=(SHD_CHANNELS,),
        steps=steps,
    )
