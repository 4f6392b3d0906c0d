"""Data set files fuzzed with hypothesis (issue 7 §1): ``.npz`` (damaged bytes, arrays replaced, forged
huge headers), SHD HDF5 (damaged bytes and fields), DVS Gesture aedat, label csv and trial lists, CIFAR-10
pickles (plain objects, forbidden globals that must never run, labels that repeat references). Each reader
accepts or raises a DataError in one line naming the file, and where the edit decides it (a damaged archive
or pickle, a field or value the documented layout refuses, the same data written again) the test asserts
which (docs/data.md)."""

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

from fuzzing import (ACCEPT, ARRAYS, FUZZ, REFUSE, UNDECIDED, apply_hdf5_edit, assert_verdict, byte_flips,
                     dataset_paths, decidable_hdf5_edits, guarded, hdf5_byte_damage, random_bytes,
                     scratch_dir, truncations, write_tiny_shd_file, zip_byte_damage)
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


def expected_npz_verdict(arrays: dict[str, np.ndarray]) -> str:
    """The verdict load_npz owes an archive of these ``arrays`` (docs/data.md#your-data): refused for an object
    array, inputs of a layout it has no rank for or not numbers or holding NaN/Inf, x_test of another shape
    than x_train, no samples, labels that are not 1-D, as many as the inputs and non-negative integers (or
    text in both splits); otherwise undecided (the label counts against the classes are the loader's)."""
    x_train, x_test, y_train, y_test = (arrays[key] for key in ("x_train", "x_test", "y_train", "y_test"))
    if any(array.dtype.hasobject for array in arrays.values()):
        return REFUSE
    for x in (x_train, x_test):
        if x.dtype.kind not in "biuf" or (x.dtype.kind == "f" and not np.isfinite(x).all()):
            return REFUSE
    if x_train.ndim not in (2, 3, 4, 5) or x_test.shape[1:] != x_train.shape[1:] or x_test.ndim != x_train.ndim:
        return REFUSE
    text = [y.dtype.kind in "US" for y in (y_train, y_test)]
    for x, y in ((x_train, y_train), (x_test, y_test)):
        if len(x) == 0 or y.ndim != 1 or len(y) != len(x):
            return REFUSE
        if not any(text) and (y.dtype.kind not in "uib" or (y.size and y.min() < 0)):
            return REFUSE
    return REFUSE if any(text) and not all(text) else UNDECIDED


@FUZZ
@given(data=st.data())
def test_npz_damaged(data_files, data):
    content = data_files["npz"].read_bytes()
    with np.load(data_files["npz"]) as archive:
        arrays = {key: archive[key] for key in archive.files}
    how = data.draw(st.sampled_from(["bytes", "arrays", "arrays", "forged header", "saved again"]))
    with scratch_dir() as folder:
        path = folder / "data.npz"
        if how == "bytes":
            expected, damaged = data.draw(zip_byte_damage(content))
            path.write_bytes(damaged)
        elif how == "arrays":
            arrays[data.draw(st.sampled_from(sorted(arrays)))] = data.draw(st.one_of(
                ARRAYS, st.just(np.array([{"a": 1}, None], dtype=object))))
            try:
                np.savez(path, **arrays)
            except ValueError:
                assume(False)
            expected = expected_npz_verdict(arrays)
        elif how == "saved again":   # the same arrays, compressed or not
            (np.savez_compressed if data.draw(st.booleans()) else np.savez)(path, **arrays)
            expected = ACCEPT
        else:   # more declared than stored, or an x_test that fits neither x_train nor y_test: refused either way
            shape = data.draw(st.tuples(st.integers(1, 10 ** 12), st.integers(1, 10 ** 6)))
            with zipfile.ZipFile(path, "w") as archive, np.load(data_files["npz"]) as original:
                for key in [name for name in original.files if name != "x_test"]:
                    buffer = io.BytesIO()
                    np.save(buffer, original[key])
                    archive.writestr(f"{key}.npy", buffer.getvalue())
                archive.writestr("x_test.npy", npy_header(shape) + b"\0" * 64)
            expected = REFUSE
        dataset = assert_verdict(expected, DataError, path, load_npz, path)
        if how == "saved again":
            original = load_npz(data_files["npz"])
            for split in ("train", "test"):
                assert np.array_equal(getattr(dataset, f"x_{split}"), getattr(original, f"x_{split}"))
                assert np.array_equal(getattr(dataset, f"y_{split}"), getattr(original, f"y_{split}"))


# --------------------------------------------------------------------------------------------------
# SHD HDF5

def expected_shd_verdict(edit: tuple) -> str:
    """The verdict read_shd_file owes our SHD file after ``edit`` (docs/data.md#shd): /spikes/times,
    /spikes/units and /labels are required, vlen floats, vlen integers and integers of one length (every
    poisoned, emptied, string, grown, float or declared-huge copy breaks one of these); /extra/keys is read
    for its length only and anything else not at all."""
    kind, field = edit[0], edit[1]
    if kind in ("replace", "link"):   # a random array may fit; links to other files are not in the format
        return UNDECIDED
    if kind in ("attribute", "unknown"):   # the originals hold more datasets than are read (/extra/speaker)
        return ACCEPT
    if field.startswith("extra"):
        return ACCEPT
    return REFUSE


def shd_result_equal(result, original) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(result[:2], original[:2])) and result[2] == original[2]


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_shd_damaged(data_files, data):
    with scratch_dir() as folder:
        path = folder / "shd_train.h5"
        if data.draw(st.booleans()):
            expected, damaged = data.draw(hdf5_byte_damage(data_files["shd"].read_bytes()))
            path.write_bytes(damaged)
            edit = ("bytes", "")
        else:
            edit = data.draw(decidable_hdf5_edits(dataset_paths(data_files["shd"]), [np.nan, np.inf, 2.0 ** 62])
                             .filter(lambda edit: edit[0] != "replace"))   # random arrays: undecided
            apply_hdf5_edit(data_files["shd"], path, edit)
            expected = expected_shd_verdict(edit)
        result = assert_verdict(expected, DataError, path, read_shd_file, path, steps=10, max_time=1.4)
        if result is not None:
            spikes, labels, _ = result
            assert spikes.shape[1:] == (10, 700) and len(labels) == len(spikes)
        if expected == ACCEPT and not edit[1].startswith("extra"):   # nothing read was changed: the same result
            assert shd_result_equal(result, read_shd_file(data_files["shd"], steps=10, max_time=1.4))


# --------------------------------------------------------------------------------------------------
# DVS Gesture: aedat, labels csv, trial lists

AEDAT_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"
# Packets that hold exactly what their header declares (event size x capacity bytes): (type, event size,
# timestamp overflow, capacity, events in use, their (x, y) addresses). Type 1 is polarity events.
PACKETS = st.lists(st.tuples(
    st.sampled_from([0, 1, 1, 2, 65535]), st.sampled_from([8, 8, 1, 4]), st.sampled_from([0, 1, 2 ** 31 - 1]),
    st.integers(0, 4), st.integers(0, 5), st.lists(st.tuples(st.integers(0, 130), st.integers(0, 130)),
                                                    min_size=4, max_size=4)), max_size=4)


def aedat_bytes(packets) -> bytes:
    body = b""
    for kind, size, overflow, capacity, number, addresses in packets:
        events = b"".join(struct.pack("<II", (x << 17) | (y << 2) | 2, 10 * index)
                          for index, (x, y) in enumerate(addresses[:capacity]))
        payload = (events if size == 8 else b"\x01" * 8 * capacity)[:size * capacity]
        body += struct.pack("<HHIIIIII", kind, 1, size, 0, overflow, capacity, number, number) + payload
    return AEDAT_HEADER + body


def expected_aedat_verdict(packets) -> str:
    """The verdict read_aedat_polarity_events owes :func:`aedat_bytes` of ``packets`` (docs/data.md): refused
    for more events in use than room, polarity events not 8 bytes, or a used address off the 128 x 128 sensor."""
    for kind, size, _overflow, capacity, number, addresses in packets:
        if number > capacity or (kind == 1 and size != 8):
            return REFUSE
        if kind == 1 and any(x >= 128 or y >= 128 for x, y in addresses[:number]):
            return REFUSE
    return ACCEPT


def aedat_file(data) -> tuple[str, bytes]:
    """(expected verdict, an aedat file): whole packets; packets cut short at the end (every byte of the
    body belongs to a packet, so the last one loses header or payload); random bytes, without the header
    (refused) or behind it (undecided: random packets may be valid)."""
    packets = data.draw(PACKETS)
    how = data.draw(st.sampled_from(["packets", "packets", "cut", "random", "random behind header"]))
    if how == "packets":
        return expected_aedat_verdict(packets), aedat_bytes(packets)
    if how == "cut":
        assume(packets)
        content = aedat_bytes(packets)
        return REFUSE, content[:data.draw(st.integers(len(AEDAT_HEADER) + 1, len(content) - 1))]
    if how == "random":
        content = data.draw(random_bytes())
        return (UNDECIDED if content.startswith(b"#!AER-DAT3") else REFUSE), content
    return UNDECIDED, data.draw(random_bytes(AEDAT_HEADER))


LABEL_ROWS = st.lists(st.tuples(st.integers(-2, 13), st.one_of(st.integers(-5, 10 ** 6), st.just(2 ** 70)),
                                st.one_of(st.integers(-5, 10 ** 6), st.just(2 ** 41), st.just(2 ** 70))), max_size=3)


def expected_labels_verdict(rows) -> str:
    """A labels csv of ``rows`` is accepted when it has one and every row is a class 1..11 and
    0 <= start < end <= 2**40 us (docs/data.md)."""
    valid = all(1 <= label <= 11 and 0 <= start < end <= 2 ** 40 for label, start, end in rows)
    return ACCEPT if rows and valid else REFUSE


@FUZZ
@given(data=st.data())
def test_dvs_files_damaged(data):
    with scratch_dir() as folder:
        aedat = folder / "user01_led.aedat"
        aedat_expected, content = aedat_file(data)
        aedat.write_bytes(content)
        labels = folder / "user01_led_labels.csv"
        if data.draw(st.booleans()):
            rows = data.draw(LABEL_ROWS)
            body, labels_expected = "\n".join(f"{a},{b},{c}" for a, b, c in rows), expected_labels_verdict(rows)
        else:   # any text: whether it parses as rows is for csv to say
            body, labels_expected = data.draw(st.text(max_size=60)), UNDECIDED
        labels.write_bytes(("class,startTime_usec,endTime_usec\n" + body).encode("utf-8", "surrogatepass"))
        trials = folder / "trials_to_train.txt"
        # Random bytes hold no line ending in .aedat: refused, as are paths.
        trials_expected, listing = data.draw(st.one_of(
            st.just((ACCEPT, b"user01_led.aedat\n")), st.binary(max_size=40).map(lambda b: (REFUSE, b)),
            st.sampled_from([(REFUSE, b"../user01_led.aedat\n"), (REFUSE, b"/etc/passwd.aedat\n")])))
        trials.write_bytes(listing)
        shutil.copyfile(trials, folder / "trials_to_test.txt")
        assert_verdict(aedat_expected, DataError, aedat, read_aedat_polarity_events, aedat)
        assert_verdict(labels_expected, DataError, labels, read_gesture_labels, labels)
        assert_verdict(trials_expected, DataError, trials, read_trial_list, trials)
        # The whole folder: undecided even when every file is accepted (the gestures must also fall within
        # the recording and the events within them); only the form of a refusal is checked.
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
    good = pickle.loads(content)
    with scratch_dir() as folder:
        path = folder / "data_batch_1"
        marker = folder / "payload-ran"
        how = data.draw(st.sampled_from(["bytes", "objects", "forbidden", "labels", "saved again"]))
        # Every plain object is refused: none holds a uint8 (N, 3072) 'data' array (arrays are at most 4 wide).
        # Every forbidden global is refused unrun, and so is every odd labels list below.
        expected = REFUSE
        if how == "bytes":   # random bytes and truncations are no pickle; a flipped pixel is a valid batch
            damage = data.draw(st.sampled_from(["random", "truncated", "flipped"]))
            if damage == "random":
                path.write_bytes(data.draw(random_bytes(b"\x80\x02")))
            elif damage == "truncated":
                path.write_bytes(data.draw(truncations(content)))
            else:
                damaged = data.draw(byte_flips(content))
                path.write_bytes(damaged)
                expected = ACCEPT if damaged == content else UNDECIDED
        elif how == "objects":
            path.write_bytes(pickle.dumps(data.draw(PLAIN_OBJECTS), protocol=data.draw(st.integers(0, 5))))
        elif how == "forbidden":
            which = data.draw(st.sampled_from(["system", "eval", "popen", "ndarray"]))
            batch = {b"data": Forbidden(which, marker), b"labels": [0, 1]}
            path.write_bytes(pickle.dumps(batch, protocol=data.draw(st.integers(2, 5))))
        elif how == "labels":   # labels that repeat references: a few kB that np.asarray would make a billion elements
            inner = list(range(1000))
            labels = data.draw(st.sampled_from([[[inner] * 1000] * 1000, [inner] * 2, [1.5, 2], [True, False],
                                                [2 ** 70, 1], [3, 10], [-1, 0], "ab", None]))
            batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}
            path.write_bytes(pickle.dumps(batch, protocol=2))
        else:   # the same batch in another protocol, labels as a list or an integer array
            labels = data.draw(st.sampled_from([good[b"labels"], np.array(good[b"labels"], dtype=np.int64)]))
            path.write_bytes(pickle.dumps({b"data": good[b"data"], b"labels": labels},
                                          protocol=data.draw(st.integers(2, 5))))
            expected = ACCEPT
        result = assert_verdict(expected, DataError, path, read_cifar_batch, path)
        assert not marker.exists()
        if how == "saved again":
            assert np.array_equal(result[0].reshape(2, -1), good[b"data"]) and list(result[1]) == good[b"labels"]
