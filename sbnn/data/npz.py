"""User arrays from an ``.npz`` with ``x_train, y_train, x_test, y_test`` (loaded with allow_pickle=False).

The layouts of ``x`` and the labels are those of :mod:`sbnn.data.user_arrays` (docs/data.md#your-data).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from sbnn.data import DataError, Dataset
from sbnn.data.user_arrays import npy_header, user_dataset

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_FORMAT = "an .npz (numpy.savez) with x_train, y_train, x_test, y_test (docs/data.md#your-data)"
# Deflate cannot compress by more than about 1032:1, so a larger claimed ratio is a forged size field.
_MAX_DEFLATE_RATIO = 1100


def _check_members(path: Path) -> None:
    """Check each array's declared size against the archive before numpy allocates it."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path}: not an npz (zip) archive ({error}); expected {NPZ_FORMAT}") from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        for key in NPZ_KEYS:
            info = members.get(f"{key}.npy")
            if info is None:
                raise DataError(f"{path}: missing array {key!r}; expected {NPZ_FORMAT}")
            if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
                raise DataError(f"{path}: {key} has inconsistent sizes in the zip directory")
            if info.file_size > max(info.compress_size, 1) * _MAX_DEFLATE_RATIO:
                raise DataError(f"{path}: {key} claims {info.file_size} bytes from {info.compress_size} compressed")
            try:
                with archive.open(info) as member:
                    shape, dtype = npy_header(member)
            except Exception as error:
                raise DataError(f"{path}: {key} is not a valid .npy array ({error}); expected {NPZ_FORMAT}") from None
            if dtype.hasobject:
                raise DataError(
                    f"{path}: {key} is an object array (pickled Python objects are refused); expected {NPZ_FORMAT}"
                )
            declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if declared > info.file_size:
                raise DataError(
                    f"{path}: {key} declares shape {shape} ({declared} bytes) but stores {info.file_size} bytes"
                )


def load_npz(path: str | os.PathLike[str], *, num_classes: int | None = None) -> Dataset:
    """User arrays from an ``.npz`` file.

    Args:
        path: the ``.npz`` (``numpy.savez`` / ``savez_compressed``) file.
        num_classes: number of classes; default the largest label + 1.

    Returns:
        A Dataset: ``x`` features ``(N, F)`` or images ``(N, C, H, W)`` as float32 static inputs;
        sequences ``(N, T, F)`` or frames ``(N, T, C, H, W)`` as spike trains with ``steps = T`` (uint8
        for integer/bool arrays within 0..255, else float32); labels as :mod:`sbnn.data.user_arrays` says.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {NPZ_FORMAT}")
    _check_members(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except Exception as error:
        message = " ".join(str(error).split())
        raise DataError(f"{path}: cannot read arrays ({message}); expected {NPZ_FORMAT}") from None

    return user_dataset("npz", str(path), arrays, num_classes)
