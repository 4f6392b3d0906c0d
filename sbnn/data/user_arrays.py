"""What the loaders of users' own data share (``npz``, ``npy``, ``csv``): array layouts, labels, checks.

Layouts of ``x`` by its number of dimensions (time second, as everywhere in :mod:`sbnn.data`):

====  ==========================  =====================
ndim  meaning                     returned
====  ==========================  =====================
2     features ``(N, F)``         float32, static
3     sequences ``(N, T, F)``     spike trains, ``steps = T``
4     images ``(N, C, H, W)``     float32, static
5     frames ``(N, T, C, H, W)``  spike trains, ``steps = T``
====  ==========================  =====================

Sequences and frames are uint8 when every value is an integer (or bool) within 0..255, else float32.
Labels ``(N,)``: non-negative integers are the class indices as they stand (``num_classes`` defaults to
the largest + 1); text labels are mapped to classes in sorted order and :attr:`Dataset.classes` records
the text of each class (docs/data.md#labels).
"""

from __future__ import annotations

from typing import IO

import numpy as np

from sbnn.data import DataError, Dataset

# ndim of x -> whether it is a time series
LAYOUTS: dict[int, bool] = {2: False, 3: True, 4: False, 5: True}
X_SHAPES = "x features (N, F), images (N, C, H, W), sequences (N, T, F) or frames (N, T, C, H, W)"
_CHUNK_BYTES = 64 << 20   # finite checks read memory-mapped arrays this much at a time


def npy_header(handle: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of the ``.npy`` header ``handle`` is at (format 1.0 or 2.0; numpy's errors pass)."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    return shape, dtype


def check_finite(source: str, key: str, x: np.ndarray) -> None:
    """Raise DataError naming ``source`` and ``key`` when float ``x`` holds NaN or Inf (read in chunks)."""
    if x.dtype.kind != "f" or x.size == 0:
        return
    rows = max(1, _CHUNK_BYTES // max(1, x[0].nbytes))
    for start in range(0, len(x), rows):
        if not np.isfinite(x[start:start + rows]).all():
            raise DataError(f"{source}: {key} contains NaN or Inf")


def _inputs(source: str, key: str, x: np.ndarray, dtype: type) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: {key} has dtype {x.dtype}, not numbers; expected {X_SHAPES}")
    check_finite(source, key, x)
    return x.astype(dtype, copy=False)


def _is_small_count(x: np.ndarray) -> bool:
    return x.dtype.kind in "biu" and (x.size == 0 or (x.min() >= 0 and x.max() <= 255))


def _integer_labels(source: str, key: str, labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind not in "uib":
        raise DataError(f"{source}: {key} must be {len(labels)} integer labels (or text labels), "
                        f"got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{source}: {key} has negative labels (class indices are 0..K-1; text labels are "
                        "mapped in sorted order)")
    return labels.astype(np.int64)


def class_indices(source: str, labels: dict[str, np.ndarray],
                  num_classes: int | None) -> tuple[dict[str, np.ndarray], int, tuple[str, ...] | None]:
    """Labels as int64 class indices.

    Args:
        source: the file or folder, for messages.
        labels: ``{"y_train": (N,), "y_test": (M,)}``: integers (class indices) or text (numpy ``U``/``S``).
        num_classes: the number of classes; default the largest index + 1 (integers) or the number of
            distinct labels (text).

    Returns:
        The int64 indices under the same keys, the number of classes, and for text labels the label of
        each class in class order (sorted), else None.
    """
    text = [key for key, values in labels.items() if values.dtype.kind in "US"]
    if text and len(text) != len(labels):
        raise DataError(f"{source}: {', '.join(text)} hold text labels but the others integers; use one kind")
    if text:
        try:
            as_text = {key: values.astype(str) for key, values in labels.items()}
        except (UnicodeDecodeError, ValueError) as error:
            raise DataError(f"{source}: labels are not readable text ({error})") from None
        classes = tuple(str(name) for name in np.unique(np.concatenate(list(as_text.values()))))
        if num_classes is not None and num_classes != len(classes):
            raise DataError(f"{source}: {len(classes)} distinct text labels but num_classes={num_classes}")
        if len(classes) < 2:
            raise DataError(f"{source}: every label is {classes[0]!r}; a classifier needs at least 2 classes")
        indices = {key: np.searchsorted(np.array(classes), values).astype(np.int64) for key, values in as_text.items()}
        return indices, len(classes), classes
    indices = {key: _integer_labels(source, key, values) for key, values in labels.items()}
    largest = int(max(values.max(initial=-1) for values in indices.values()))
    if num_classes is None:
        num_classes = largest + 1
    if num_classes < 1 or largest >= num_classes:
        raise DataError(f"{source}: labels reach {largest}, outside 0..{num_classes - 1} (num_classes={num_classes})")
    if num_classes < 2:
        raise DataError(f"{source}: every label is 0 (one class); a classifier needs at least 2 classes")
    return indices, num_classes, None


def _check_shapes(source: str, arrays: dict[str, np.ndarray], suffix: str) -> None:
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if x_train.ndim not in LAYOUTS:
        raise DataError(f"{source}: x_train{suffix} has shape {x_train.shape}; expected {X_SHAPES}")
    if x_test.ndim != x_train.ndim or x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(f"{source}: x_test{suffix} shape {x_test.shape} does not match x_train{suffix} shape "
                        f"{x_train.shape}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) == 0:
            raise DataError(f"{source}: x_{split}{suffix} holds no samples")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{source}: y_{split}{suffix} must be {len(x)} integer labels (or text labels) like "
                            f"x_{split}{suffix}, got {y.dtype} {y.shape}")


def user_dataset(name: str, source: str, arrays: dict[str, np.ndarray], num_classes: int | None = None, *,
                 suffix: str = "") -> Dataset:
    """A checked :class:`Dataset` from ``x_train``, ``y_train``, ``x_test``, ``y_test`` (the layouts above).

    Args:
        name: the data set's name (``npz``, ``npy``, ``csv``).
        source: the file or folder they came from; every DataError starts with it.
        arrays: the four arrays (numpy, possibly memory-mapped: float32 inputs are then not copied).
        num_classes: see :func:`class_indices`.
        suffix: added to the array names in messages (``".npy"`` names the files of a folder).
    """
    _check_shapes(source, arrays, suffix)
    labels, num_classes, classes = class_indices(
        source, {f"y_train{suffix}": arrays["y_train"], f"y_test{suffix}": arrays["y_test"]}, num_classes)
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    spiking = LAYOUTS[x_train.ndim]
    dtype = np.uint8 if spiking and _is_small_count(x_train) and _is_small_count(x_test) else np.float32
    return Dataset(
        name=name,
        x_train=_inputs(source, f"x_train{suffix}", x_train, dtype),
        y_train=labels[f"y_train{suffix}"],
        x_test=_inputs(source, f"x_test{suffix}", x_test, dtype),
        y_test=labels[f"y_test{suffix}"],
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[2:] if spiking else x_train.shape[1:]),
        steps=x_train.shape[1] if spiking else None,
        classes=classes,
    )
