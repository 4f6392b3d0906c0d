"""Data set files fuzzed with hypothesis (issue 7 §1): ``.npz`` (damaged bytes, arrays replaced, forged
huge headers), SHD HDF5 (damaged bytes and fields), DVS Gesture aedat, label csv and trial lists, CIFAR-10
pickles (plain objects, forbidden globals that must never run, labels that repeat references). Each reader
accepts or raises a DataError in one line naming the file."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fuzzing import (ARRAYS, FUZZ, HDF5_MAGIC, apply_hdf5_edit, damaged_bytes, dataset_paths, guarded,
                     hdf5_edits, random_bytes, read_or_refuse, scratch_dir, write_tiny_shd_file)
from sbnn.data import DataError
from sbnn.data.cifar10 import read_cifar_batch
from sbnn.data.dvs_gesture import load_dvs_gesture, read_aedat_polarity_events, read_gesture_labels, read_trial_list
from sbnn.data.npz import load_npz
from sbnn.data.shd import read_shd_file


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    files = {"npz": root / "data.npz", "shd": write_tiny_shd_file(root / "shd_train.h5"),
             "cifar": root / "data_batch_1"}
    np.savez(files["npz"], x_train=rng.random((6, 4, 3)) < 0.3, y_train=np.array([0, 1, 2, 0, 1, 2]),
             x_test=rng.random((3, 4, 3)) < 0.3, y_test=np.array([0, 1, 2]))
    files["cifar"].write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                                             b"labels": [3, 9]}, protocol=2))
    return files


# --------------------------------------------------------------------------------------------------
# .npz

def npy_header(shape: tuple, descr: str = "<f8") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


@FUZZ
@given(data=st.data())
def test_npz_damaged(data_files, data):
    content = data_files["npz"].read_bytes()
    how = data.draw(st.sampled_from(["bytes", "arrays", "forged header"]))
    with scratch_dir() as folder:
        path = folder / "data.npz"
        if how == "bytes":
            path.write_bytes(data.draw(damaged_bytes(content, b"PK\x03\x04")))
        elif how == "arrays":
            with np.load(data_files["npz"]) as archive:
                arrays = {key: archive[key] for key in archive.files}
            arrays[data.draw(st.sampled_from(sorted(arrays)))] = data.draw(st.one_of(
                ARRAYS, st.just(np.array([{"a": 1}, None], dtype=object))))
            try:
                np.savez(path, **arrays)
            except ValueError:
                assume(False)
        else:
            shape = data.draw(st.tuples(st.integers(1, 10 ** 12), st.integers(1, 10 ** 6)))
            with zipfile.ZipFile(path, "w") as archive, np.load(data_files["npz"]) as original:
                for key in [name for name in original.files if name != "x_test"]:
                    buffer = io.BytesIO()
                    np.save(buffer, original[key])
                    archive.writestr(f"{key}.npy", buffer.getvalue())
                archive.writestr("x_test.npy", npy_header(shape) + b"\0" * 64)
        read_or_refuse(DataError, path, load_npz, path)


# --------------------------------------------------------------------------------------------------
# SHD HDF5

@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_shd_damaged(data_files, data):
    with scratch_dir() as folder:
        path = folder / "shd_train.h5"
        if data.draw(st.booleans()):
            path.write_bytes(data.draw(damaged_bytes(data_files["shd"].read_bytes(), HDF5_MAGIC)))
        else:
            apply_hdf5_edit(data_files["shd"], path, data.draw(hdf5_edits(dataset_paths(data_files["shd"]))))
        result = read_or_refuse(DataError, path, read_shd_file, path, steps=10, max_time=1.4)
        if result is not None:
            spikes, labels, _ = result
            assert spikes.shape[1:] == (10, 700) and len(labels) == len(spikes)


# --------------------------------------------------------------------------------------------------
# DVS Gesture: aedat, labels csv, trial lists

AEDAT_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"
PACKETS = st.lists(st.tuples(
    st.sampled_from([0, 1, 2, 65535]), st.sampled_from([0, 1, 8, 2 ** 32 - 1]), st.integers(0, 2 ** 32 - 1),
    st.one_of(st.integers(0, 4), st.just(2 ** 32 - 1)), st.one_of(st.integers(0, 5), st.just(2 ** 31)),
    st.binary(max_size=48)), max_size=4)


def aedat_bytes(packets) -> bytes:
    body = b"".join(struct.pack("<HHIIIIII", kind, 1, size, 0, overflow, capacity, number, number) + payload
                    for kind, size, overflow, capacity, number, payload in packets)
    return AEDAT_HEADER + body


@FUZZ
@given(data=st.data())
def test_dvs_files_damaged(data):
    with scratch_dir() as folder:
        aedat = folder / "user01_led.aedat"
        aedat.write_bytes(data.draw(st.one_of(PACKETS.map(aedat_bytes), random_bytes(AEDAT_HEADER), random_bytes())))
        labels = folder / "user01_led_labels.csv"
        rows = st.lists(st.tuples(st.integers(-2, 13), st.integers(-(2 ** 70), 2 ** 70), st.integers(-5, 2 ** 70)),
                        max_size=3).map(lambda r: "\n".join(f"{a},{b},{c}" for a, b, c in r))
        body = data.draw(st.one_of(rows, st.text(max_size=60)))
        labels.write_bytes(("class,startTime_usec,endTime_usec\n" + body).encode("utf-8", "surrogatepass"))
        trials = folder / "trials_to_train.txt"
        trials.write_bytes(data.draw(st.one_of(st.just(b"user01_led.aedat\n"), st.binary(max_size=40),
                                               st.sampled_from([b"../user01_led.aedat\n", b"/etc/passwd.aedat\n"]))))
        shutil.copyfile(trials, folder / "trials_to_test.txt")
        read_or_refuse(DataError, aedat, read_aedat_polarity_events, aedat)
        read_or_refuse(DataError, labels, read_gesture_labels, labels)
        read_or_refuse(DataError, trials, read_trial_list, trials)
        try:
            guarded(load_dvs_gesture, folder, steps=4, downsample=4)
        except DataError as error:
            assert "\n" not in str(error) and str(folder) in str(error)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 pickles

PLAIN_OBJECTS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=8),
              hnp.arrays(dtype=st.sampled_from(["u1", "i8", "f4"]), shape=hnp.array_shapes(max_dims=2, max_side=4))),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from([b"data", b"labels", "data", "labels", b"x"]),
                                               children, max_size=3)),
    max_leaves=12)


class Forbidden:
    """A pickle that calls a global: os.system, builtins.eval, subprocess.Popen or numpy.ndarray (which
    would allocate what the file declares)."""

    def __init__(self, which: str, marker: Path) -> None:
        self.which, self.marker = which, marker

    def __reduce__(self):
        import subprocess
        if self.which == "system":
            return (os.system, (f"touch {self.marker}",))
        if self.which == "eval":
            return (eval, (f"open({str(self.marker)!r}, 'w')",))
        if self.which == "popen":
            return (subprocess.Popen, (["touch", str(self.marker)],))
        return (np.ndarray, ((3_000_000, 3072), np.dtype("u1")))


@FUZZ
@given(data=st.data())
def test_cifar_batch_damaged(data_files, data):
    content = data_files["cifar"].read_bytes()
    with scratch_dir() as folder:
        path = folder / "data_batch_1"
        marker = folder / "payload-ran"
        how = data.draw(st.sampled_from(["bytes", "objects", "forbidden", "labels"]))
        if how == "bytes":
            path.write_bytes(data.draw(damaged_bytes(content, b"\x80\x02")))
        elif how == "objects":
            path.write_bytes(pickle.dumps(data.draw(PLAIN_OBJECTS), protocol=data.draw(st.integers(0, 5))))
        elif how == "forbidden":
            which = data.draw(st.sampled_from(["system", "eval", "popen", "ndarray"]))
            batch = {b"data": Forbidden(which, marker), b"labels": [0, 1]}
            path.write_bytes(pickle.dumps(batch, protocol=data.draw(st.integers(2, 5))))
        else:   # labels that repeat references: a few kB that np.asarray would make a billion elements
            inner = list(range(1000))
            labels = data.draw(st.sampled_from([[[inner] * 1000] * 1000, [inner] * 2, [1.5, 2], [True, False],
                                                [2 ** 70, 1], "ab", None]))
            batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}
            path.write_bytes(pickle.dumps(batch, protocol=2))
        read_or_refuse(DataError, path, read_cifar_batch, path)
        assert not marker.exists()
