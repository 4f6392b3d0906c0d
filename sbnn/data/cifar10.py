"""CIFAR-10 from the python-pickle distribution (``cifar-10-batches-py``), without torchvision.

Each batch file is a pickled dict with ``data``: uint8 ``(n, 3072)`` (1024 red, then green, then blue
values, each a row-major 32x32 plane) and ``labels``: n ints 0..9. Keys are bytes in the real
Python-2 files; str keys are accepted too. Files are read with :func:`restricted_pickle_load`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sbnn.data import DataError, Dataset
from sbnn.data.safe_pickle import restricted_pickle_load

TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
BATCH_FORMAT = "a CIFAR-10 python batch: a pickled dict with 'data' (uint8 array N x 3072) and 'labels' (N ints 0..9)"


def _batch_folder(root: Path) -> Path:
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / TRAIN_BATCHES[0]).is_file():
            return folder
    raise DataError(
        f"cifar10: {root / 'cifar-10-batches-py' / TRAIN_BATCHES[0]} not found; expected the unpacked "
        f"cifar-10-python.tar.gz (data_batch_1..5 and test_batch in cifar-10-batches-py)"
    )


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file; returns uint8 images ``(n, 3, 32, 32)`` (NCHW) and int64 labels ``(n,)``."""
    path = Path(path)
    batch = restricted_pickle_load(path, encoding="bytes", expected=BATCH_FORMAT)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: holds a {type(batch).__name__}, not a dict; expected {BATCH_FORMAT}")
    entries = {(key.decode("latin-1") if isinstance(key, bytes) else key): value for key, value in batch.items()}
    if "data" not in entries or "labels" not in entries:
        missing = "data" if "data" not in entries else "labels"
        raise DataError(f"{path}: missing key {missing!r}; expected {BATCH_FORMAT}")
    data, labels = entries["data"], entries["labels"]
    image_size = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != image_size:
        description = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is a {description}, not uint8 (N, {image_size}); expected {BATCH_FORMAT}")
    # A list is checked element by element first: a pickle can repeat references to one nested list, so
    # a few kilobytes could otherwise become a billion-element array in np.asarray.
    plain_list = isinstance(labels, (list, tuple)) and len(labels) == len(data) and all(
        isinstance(label, int) and not isinstance(label, bool) for label in labels)
    try:
        label_array = np.asarray(labels) if plain_list or isinstance(labels, np.ndarray) else np.asarray([])
    except Exception:
        label_array = np.asarray([])
    if label_array.ndim != 1 or label_array.dtype.kind not in "ui" or len(label_array) != len(data):
        raise DataError(f"{path}: 'labels' is not a list of {len(data)} integers; expected {BATCH_FORMAT}")
    if label_array.size and (label_array.min() < 0 or label_array.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels outside 0..{NUM_CLASSES - 1}; expected {BATCH_FORMAT}")
    return data.reshape(-1, *IMAGE_SHAPE), label_array.astype(np.int64)


def load_cifar10(root: str | os.PathLike[str]) -> Dataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (or ``root`` itself holding the batch files).

    Returns:
        A Dataset of static features: float32 images ``(N, 3, 32, 32)`` (NCHW, RGB) scaled to [0, 1]
        (pixel / 255); 50000 train and 10000 test images for the real files.
    """
    folder = _batch_folder(Path(root))
    splits = {}
    for split, names in (("train", TRAIN_BATCHES), ("test", (TEST_BATCH,))):
        batches = [read_cifar_batch(folder / name) for name in names]
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        splits[split] = (images.astype(np.float32) / np.float32(255.0), labels)
    return Dataset.from_splits("cifar10", splits, num_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE)
