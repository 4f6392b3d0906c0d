"""User arrays from an ``.npz`` with ``x_train, y_train, x_test, y_test`` (loaded with allow_pickle=False).

``x`` is either static features ``(N, F)`` or spike trains ``(N, T, F)``; ``y`` holds integer labels
``(N,)`` from 0.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from sbnn.data import DataError, Dataset

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_FORMAT = (
    "an .npz (numpy.savez) with x_train, y_train, x_test, y_test: x features (N, F) or spikes (N, T, F), "
    "y integer labels (N,)"
)
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
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(member)
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


def _labels(path: Path, key: str, labels: np.ndarray, count: int) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "ui" or len(labels) != count:
        raise DataError(
            f"{path}: {key} must be {count} integer labels, got {labels.dtype} {labels.shape}; expected {NPZ_FORMAT}"
        )
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: {key} has negative labels; expected {NPZ_FORMAT}")
    return labels.astype(np.int64)


def _inputs(path: Path, key: str, x: np.ndarray, dtype: type) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: {key} has dtype {x.dtype}, not numbers; expected {NPZ_FORMAT}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{path}: {key} contains NaN or Inf")
    return x.astype(dtype)


def _is_small_count(x: np.ndarray) -> bool:
    return x.dtype.kind in "biu" and (x.size == 0 or (x.min() >= 0 and x.max() <= 255))


def load_npz(path: str | os.PathLike[str], *, num_classes: int | None = None) -> Dataset:
    """User arrays from an ``.npz`` file.

    Args:
        path: the ``.npz`` (``numpy.savez`` / ``savez_compressed``) file.
        num_classes: number of classes; default the largest label + 1.

    Returns:
        A Dataset: 2-D ``x`` as float32 static features ``(N, F)``; 3-D ``x`` as spike trains
        ``(N, T, F)`` with ``steps = T`` (uint8 for integer/bool arrays within 0..255, else float32).
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

    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if x_train.ndim not in (2, 3):
        raise DataError(f"{path}: x_train has shape {x_train.shape}; expected {NPZ_FORMAT}")
    if x_test.ndim != x_train.ndim or x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(f"{path}: x_test shape {x_test.shape} does not match x_train shape {x_train.shape}")
    y_train = _labels(path, "y_train", arrays["y_train"], len(x_train))
    y_test = _labels(path, "y_test", arrays["y_test"], len(x_test))
    largest = int(max(y_train.max(initial=-1), y_test.max(initial=-1)))
    if num_classes is None:
        num_classes = largest + 1
    if num_classes < 1 or largest >= num_classes:
        raise DataError(f"{path}: labels reach {largest}, outside 0..{num_classes - 1} (num_classes={num_classes})")
    spiking = x_train.ndim == 3
    dtype = np.uint8 if spiking and _is_small_count(x_train) and _is_small_count(x_test) else np.float32
    return Dataset(
        name="npz",
        x_train=_inputs(path, "x_train", x_train, dtype),
        y_train=y_train,
        x_test=_inputs(path, "x_test", x_test, dtype),
        y_test=y_test,
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[2:] if spiking else x_train.shape[1:]),
        steps=x_train.shape[1] if spiking else None,
    )
