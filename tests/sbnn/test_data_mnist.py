"""MNIST: the real file the set-up installs, and tiny files in the same on-disk format written here."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from sbnn.data import DataError, load_dataset
from sbnn.data import mnist


def write_mnist_pickle(path: Path, sizes=(20, 6, 8), *, protocol: int = 2, damage: str | None = None) -> Path:
    """A gzip'd pickle (train, valid, test) of (x float32 (n, 784) in [0, 1), y int64), as mnist.pkl.gz is."""
    rng = np.random.default_rng(0)
    parts = [(rng.random((n, 784), dtype=np.float32) * 0.99, rng.integers(0, 10, n).astype(np.int64)) for n in sizes]
    if damage == "labels":
        parts[2][1][0] = 12
    if damage == "shape":
        parts[0] = (parts[0][0][:, :700], parts[0][1])
    payload = pickle.dumps(tuple(parts), protocol=protocol)
    if damage == "code":
        payload = pickle.dumps(os.system, protocol=2)   # a pickle that names a callable
    with gzip.open(path, "wb") as handle:
        handle.write(payload)
    return path


def test_tiny_file_in_the_real_format(tmp_path):
    path = write_mnist_pickle(tmp_path / "mnist.pkl.gz")
    data = load_dataset("mnist", file=str(path))
    assert data.x_train.shape == (26, 1, 28, 28) and data.x_test.shape == (8, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64 and data.num_classes == 10
    held_out = load_dataset("mnist", file=str(path), validation=True)
    assert held_out.x_train.shape[0] == 20 and held_out.x_test.shape[0] == 6
    assert np.array_equal(held_out.x_train, data.x_train[:20])
    encoded = load_dataset("mnist", file=str(path), encoding="rate", steps=4, seed=1)
    assert encoded.x_train.shape == (26, 4, 1, 28, 28) and set(np.unique(encoded.x_train)) <= {0, 1}


@pytest.mark.parametrize("damage, expected", [
    ("labels", "the test labels lie outside 0..9"),
    ("shape", "the train part holds x (20, 700)"),
    ("code", "refused to unpickle: forbidden global"),
])
def test_damaged_files_are_one_line_errors(tmp_path, damage, expected):
    path = write_mnist_pickle(tmp_path / "mnist.pkl.gz", damage=damage)
    with pytest.raises(DataError) as error:
        load_dataset("mnist", file=str(path))
    assert str(error.value).startswith(str(path)) and expected in str(error.value)


def test_not_gzip_and_missing_file(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a readable gzip file"):
        load_dataset("mnist", file=str(path))
    with pytest.raises(DataError, match="file not found"):
        load_dataset("mnist", file=str(tmp_path / "absent.pkl.gz"))


def test_bundled_file_is_checked_against_its_md5(tmp_path, monkeypatch):
    copy = write_mnist_pickle(tmp_path / "mnist.pkl.gz")
    monkeypatch.setattr(mnist, "bundled_mnist_file", lambda: copy)   # a file that is not the published one
    with pytest.raises(DataError, match="differs from the published 98100ca27dc0e07ddd9f822cf9d244db"):
        load_dataset("mnist")


def test_the_real_mnist_from_the_installed_wheel():
    data = load_dataset("mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert data.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(data.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert 0.0 <= data.x_train.min() and data.x_train.max() < 1.0


def test_mnist_configs_load():
    from sbnn.config import load_config
    root = ROOT / "examples"
    kinds = {load_config(root / f"mnist_{name}.toml").model.kind for name in ("bnn", "snn", "conv_snn")}
    assert kinds == {"bnn", "snn", "conv_snn"}
