"""Tests for sbnn.data: every loader reads tiny files written here in the real on-disk format."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sbnn.data import (
    DataError,
    Dataset,
    direct_encode,
    encode,
    latency_encode,
    load_dataset,
    make_randman,
    on_off_encode,
    rate_encode,
    read_aedat_polarity_events,
    restricted_pickle_load,
)


def assert_one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


# --------------------------------------------------------------------------------------------- SHD


def write_shd(
    path: Path, samples: list[tuple[list[float], list[int]]], labels: list[int], *, keys: int | None = 20
) -> Path:
    """An SHD file as Cramer et al. publish it: vlen float16 times (s), vlen uint16 units, labels, extra/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        times = handle.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float16))
        units = handle.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for index, (sample_times, sample_units) in enumerate(samples):
            times[index] = np.asarray(sample_times, dtype=np.float16)
            units[index] = np.asarray(sample_units, dtype=np.uint16)
        handle.create_dataset("labels", data=np.asarray(labels, dtype=np.uint8))
        if keys is not None:
            handle.create_dataset("extra/keys", data=np.array([f"word-{k}".encode() for k in range(keys)]))
        handle.create_dataset("extra/speaker", data=np.zeros(len(samples), dtype=np.uint16))
    return path


@pytest.fixture()
def shd_root(tmp_path: Path) -> Path:
    train = [
        ([0.0, 0.5, 0.9995, 1.2], [0, 3, 5, 9]),  # 1.2 s is past max_time=1.0 and must be dropped
        ([0.31, 0.32, 0.25], [7, 7, 699]),  # two spikes of unit 7 in one 0.1 s bin
        ([], []),  # empty samples occur in the real files
    ]
    write_shd(tmp_path / "shd_train.h5", train, [4, 19, 0])
    write_shd(tmp_path / "shd_test.h5", [([0.05], [1]), ([0.75], [2])], [1, 2])
    return tmp_path


def test_shd_bins_spikes_into_steps(shd_root: Path) -> None:
    data = load_dataset("shd", path=shd_root, steps=10, max_time=1.0)
    assert data.x_train.shape == (3, 10, 700) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (2, 10, 700)
    assert data.input_shape == (700,) and data.steps == 10 and data.num_classes == 20
    np.testing.assert_array_equal(data.y_train, [4, 19, 0])
    np.testing.assert_array_equal(data.y_test, [1, 2])
    first = data.x_train[0]
    assert first[0, 0] == 1 and first[5, 3] == 1 and first[9, 5] == 1
    assert first[:, 9].sum() == 0 and first.sum() == 3
    second = data.x_train[1]
    assert second[3, 7] == 1 and second[2, 699] == 1 and second.sum() == 2
    assert data.x_train[2].sum() == 0
    assert data.x_test[0, 0, 1] == 1 and data.x_test[1, 7, 2] == 1


def test_shd_counts_and_tonic_layout(tmp_path: Path, shd_root: Path) -> None:
    counts = load_dataset("shd", path=shd_root, steps=10, max_time=1.0, binary=False)
    assert counts.x_train.dtype == np.float32 and counts.x_train[1, 3, 7] == 2.0
    write_shd(tmp_path / "tonic" / "SHD" / "shd_train.h5", [([0.1], [0])], [3], keys=None)
    write_shd(tmp_path / "tonic" / "SHD" / "shd_test.h5", [([0.1], [0])], [5], keys=None)
    data = load_dataset("shd", path=tmp_path / "tonic", steps=4)
    assert data.num_classes == 6  # no extra/keys: largest label + 1


def test_shd_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_dataset("shd", path=tmp_path / "nowhere")
    message = assert_one_line(error)
    assert "shd_train.h5" in message and "HDF5" in message and "nowhere" in message


def test_shd_not_hdf5(tmp_path: Path) -> None:
    (tmp_path / "shd_train.h5").write_bytes(b"this is not HDF5 at all")
    write_shd(tmp_path / "shd_test.h5", [([0.1], [0])], [0])
    with pytest.raises(DataError, match="shd_train.h5: not a readable HDF5 file") as error:
        load_dataset("shd", path=tmp_path)
    assert_one_line(error)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no_labels", "missing dataset /labels"),
        ("short_labels", "differ in length"),
        ("unit_out_of_range", "outside 0..699"),
        ("ragged_row", "spike times but"),
        ("label_past_keys", "labels outside 0..19"),
        ("float_units", "/spikes/units has dtype"),
    ],
)
def test_shd_malformed(tmp_path: Path, damage: str, expected: str) -> None:
    path = tmp_path / "shd_train.h5"
    write_shd(tmp_path / "shd_test.h5", [([0.1], [0])], [0])
    write_shd(path, [([0.1, 0.2], [0, 1]), ([0.3], [2])], [0, 1])
    with h5py.File(path, "a") as handle:
        if damage == "no_labels":
            del handle["labels"]
        elif damage == "short_labels":
            del handle["labels"]
            handle.create_dataset("labels", data=np.zeros(1, dtype=np.uint8))
        elif damage == "unit_out_of_range":
            handle["spikes/units"][1] = np.array([700], dtype=np.uint16)
        elif damage == "ragged_row":
            handle["spikes/units"][0] = np.array([0], dtype=np.uint16)
        elif damage == "label_past_keys":
            handle["labels"][1] = 25
        elif damage == "float_units":
            del handle["spikes/units"]
            handle.create_dataset("spikes/units", data=np.zeros(2, dtype=np.float32))
    with pytest.raises(DataError, match=expected) as error:
        load_dataset("shd", path=tmp_path, steps=5)
    assert "shd_train.h5" in assert_one_line(error)


def test_shd_absurd_declared_size(tmp_path: Path) -> None:
    # Chunked datasets may declare a billion rows without storing any; the loader must not allocate them.
    with h5py.File(tmp_path / "shd_train.h5", "w") as handle:
        handle.create_dataset("spikes/times", (10**9,), dtype=h5py.vlen_dtype(np.float16), chunks=(1024,))
        handle.create_dataset("spikes/units", (10**9,), dtype=h5py.vlen_dtype(np.uint16), chunks=(1024,))
        handle.create_dataset("labels", (10**9,), dtype=np.uint8, chunks=(1024,))
    write_shd(tmp_path / "shd_test.h5", [([0.1], [0])], [0])
    with pytest.raises(DataError, match="declares 1000000000 samples") as error:
        load_dataset("shd", path=tmp_path)
    assert_one_line(error)


# ------------------------------------------------------------------------------------- DVS Gesture

AEDAT_HEADER = (
    b"#!AER-DAT3.1\r\n"
    b"#Format: RAW\r\n"
    b"#Source 1: DVS128\r\n"
    b"#Start-Time: 2017-01-01 12:00:00 (TZ+0100)\r\n"
    b"#!END-HEADER\r\n"
)


def polarity_packet(events: list[tuple[int, int, int, int]], *, overflow: int = 0, capacity: int | None = None,
                    filler: tuple[int, int, int, int] = (0, 0, 0, 0)) -> bytes:
    """A polarity packet: 28-byte header, then (data, timestamp) uint32 pairs; unused capacity gets `filler`."""
    capacity = len(events) if capacity is None else capacity
    header = struct.pack("<HHIIIIII", 1, 1, 8, 4, overflow, capacity, len(events), len(events))
    padded = list(events) + [filler] * (capacity - len(events))
    body = b"".join(struct.pack("<II", (x << 17) | (y << 2) | (p << 1) | 1, t) for x, y, p, t in padded)
    return header + body


def special_packet(count: int) -> bytes:
    """A packet of another event type (0: special events, 8 bytes each) that the reader must skip."""
    return struct.pack("<HHIIIIII", 0, 1, 8, 4, 0, count, count, count) + b"\xab" * (8 * count)


def write_labels(path: Path, rows: list[tuple[int, int, int]]) -> None:
    lines = ["class,startTime_usec,endTime_usec"] + [f"{c},{s},{e}" for c, s, e in rows]
    path.write_text("\r\n".join(lines) + "\r\n")


@pytest.fixture()
def gesture_root(tmp_path: Path) -> Path:
    root = tmp_path / "DvsGesture"
    root.mkdir()
    train_events = [
        (10, 20, 1, 1000),  # gesture 0 starts: step 0
        (5, 5, 1, 2500),  # between gestures: dropped
        (127, 127, 0, 1999),  # last microsecond of gesture 0: last step
        (64, 32, 1, 3500),  # gesture 1: (3500 - 3000) / 2000 * 4 -> step 1
        (64, 32, 1, 3600),  # same pixel and step
        (1, 1, 1, 5000),  # end is exclusive: dropped
    ]
    (root / "user01_fluorescent.aedat").write_bytes(
        AEDAT_HEADER
        + special_packet(3)
        + polarity_packet(train_events[:3], capacity=5, filler=(2, 2, 1, 1500))  # filler lies past eventNumber
        + special_packet(1)
        + polarity_packet(train_events[3:])
    )
    write_labels(root / "user01_fluorescent_labels.csv", [(3, 1000, 2000), (11, 3000, 5000)])
    # Test trial: timestamps wrapped once (eventTSOverflow = 1), so full times are 2**31 + t.
    (root / "user24_led.aedat").write_bytes(AEDAT_HEADER + polarity_packet([(100, 50, 0, 100)], overflow=1))
    write_labels(root / "user24_led_labels.csv", [(1, 2**31, 2**31 + 400)])
    (root / "trials_to_train.txt").write_text("user01_fluorescent.aedat\n\n")
    (root / "trials_to_test.txt").write_text("user24_led.aedat\n")
    return root


def test_aedat_reader(gesture_root: Path) -> None:
    x, y, polarity, t = read_aedat_polarity_events(gesture_root / "user01_fluorescent.aedat")
    np.testing.assert_array_equal(x, [10, 5, 127, 64, 64, 1])
    np.testing.assert_array_equal(y, [20, 5, 127, 32, 32, 1])
    np.testing.assert_array_equal(polarity, [1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(t, [1000, 2500, 1999, 3500, 3600, 5000])
    _, _, _, wrapped = read_aedat_polarity_events(gesture_root / "user24_led.aedat")
    assert wrapped.tolist() == [2**31 + 100]


def test_dvs_gesture_cuts_and_bins(gesture_root: Path) -> None:
    data = load_dataset("dvs_gesture", path=gesture_root, steps=4)
    assert data.x_train.shape == (2, 4, 2, 128, 128) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (1, 4, 2, 128, 128)
    assert data.input_shape == (2, 128, 128) and data.num_classes == 11 and data.steps == 4
    np.testing.assert_array_equal(data.y_train, [2, 10])
    np.testing.assert_array_equal(data.y_test, [0])
    first, second = data.x_train
    assert first[0, 1, 20, 10] == 1 and first[3, 0, 127, 127] == 1 and first.sum() == 2
    assert second[1, 1, 32, 64] == 1 and second.sum() == 1
    assert data.x_test[0, 1, 0, 50, 100] == 1 and data.x_test.sum() == 1


def test_dvs_gesture_downsample_counts_and_window(gesture_root: Path) -> None:
    pooled = load_dataset("dvs_gesture", path=gesture_root, steps=4, downsample=2, binary=False)
    assert pooled.x_train.shape == (2, 4, 2, 64, 64) and pooled.x_train.dtype == np.float32
    assert pooled.x_train[0, 3, 0, 63, 63] == 1.0 and pooled.x_train[1, 1, 1, 16, 32] == 2.0
    # A fixed 400 us window in 4 bins of 100 us: the event 999 us after the start falls outside.
    windowed = load_dataset("dvs_gesture", path=gesture_root, steps=4, duration_us=400)
    assert windowed.x_train[0].sum() == 1 and windowed.x_train[0, 0, 1, 20, 10] == 1
    with pytest.raises(ValueError, match="downsample"):
        load_dataset("dvs_gesture", path=gesture_root, downsample=3)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no_test_list", "trials_to_test.txt: file not found"),
        ("no_aedat", "user24_led.aedat: file not found"),
        ("no_labels", "user24_led_labels.csv: file not found"),
        ("aedat2", "does not start with #!AER-DAT3.1"),
        ("no_end_header", "no #!END-HEADER"),
        ("absurd_capacity", "declares 2147483648 events of 8 bytes"),
        ("truncated_packet", "declares 3 events"),
        ("address_out_of_range", "outside the 128x128"),
        ("labels_header", "first row is not class"),
        ("labels_class", "class 12"),
        ("labels_text", "not three integers"),
        ("trial_path", "not a .aedat file name"),
    ],
)
def test_dvs_gesture_malformed(gesture_root: Path, damage: str, expected: str) -> None:
    aedat, labels = gesture_root / "user24_led.aedat", gesture_root / "user24_led_labels.csv"
    if damage == "no_test_list":
        (gesture_root / "trials_to_test.txt").unlink()
    elif damage == "no_aedat":
        aedat.unlink()
    elif damage == "no_labels":
        labels.unlink()
    elif damage == "aedat2":
        aedat.write_bytes(b"#!AER-DAT2.0\r\n" + aedat.read_bytes()[len(b"#!AER-DAT3.1\r\n"):])
    elif damage == "no_end_header":
        aedat.write_bytes(AEDAT_HEADER.replace(b"#!END-HEADER\r\n", b"") + polarity_packet([(1, 1, 1, 1)]))
    elif damage == "absurd_capacity":
        aedat.write_bytes(AEDAT_HEADER + struct.pack("<HHIIIIII", 1, 1, 8, 4, 0, 2**31, 2**31, 2**31) + b"\0" * 16)
    elif damage == "truncated_packet":
        aedat.write_bytes(AEDAT_HEADER + polarity_packet([(1, 1, 1, 1)] * 3)[:-4])
    elif damage == "address_out_of_range":
        aedat.write_bytes(AEDAT_HEADER + polarity_packet([(200, 3, 1, 10)]))
    elif damage == "labels_header":
        labels.write_text("gesture,start,end\n1,0,10\n")
    elif damage == "labels_class":
        write_labels(labels, [(12, 0, 10)])
    elif damage == "labels_text":
        labels.write_text("class,startTime_usec,endTime_usec\n1,zero,10\n")
    elif damage == "trial_path":
        (gesture_root / "trials_to_test.txt").write_text("../../etc/passwd\n")
    with pytest.raises(DataError, match=expected) as error:
        load_dataset("dvs_gesture", path=gesture_root, steps=2)
    assert_one_line(error)


def test_dvs_gesture_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="trials_to_train.txt") as error:
        load_dataset("dvs_gesture", path=tmp_path / "absent")
    assert "absent" in assert_one_line(error)


# ----------------------------------------------------------------------------------------- CIFAR-10


def cifar_batch(images: np.ndarray, labels: list[int], *, name: bytes = b"training batch 1 of 5") -> dict:
    """The dict the real batch files hold (Python 2 str keys load as bytes)."""
    return {
        b"batch_label": name,
        b"labels": list(labels),
        b"data": images.reshape(len(images), -1),
        b"filenames": [b"image_%d.png" % index for index in range(len(images))],
    }


def python2_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as Python 2's cPickle wrote the real files: numpy.core globals, 8-bit str objects."""

    def string(value: bytes) -> bytes:  # SHORT_BINSTRING or BINSTRING
        return (b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<i", len(value))) + value

    rows, columns = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b") + b"\x87R"
        + b"(K\x01M" + struct.pack("<H", rows) + b"M" + struct.pack("<H", columns) + b"\x86"
        + b"cnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89" + string(data.tobytes()) + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    return (
        b"\x80\x02}(" + string(b"batch_label") + string(b"training batch 2 of 5")
        + string(b"data") + array + string(b"labels") + label_list + b"u."
    )


@pytest.fixture()
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(1, 6):
        images = rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
        batch = cifar_batch(images, [index, (index + 1) % 10])
        if index == 1:
            batch[b"data"][0, :] = 0
            batch[b"data"][0, 1024 + 5 * 32 + 7] = 51  # green plane, row 5, column 7
        if index == 5:  # str keys and a newer protocol: both must load
            batch = {key.decode(): value for key, value in batch.items()}
        protocol = 5 if index == 5 else 2
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps(batch, protocol=protocol))
    test_images = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
    test = cifar_batch(test_images, [9, 0, 4], name=b"testing batch 1 of 1")
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    return tmp_path


def test_cifar10_reads_batches(cifar_root: Path) -> None:
    data = load_dataset("cifar10", path=cifar_root)
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (3, 3, 32, 32) and data.input_shape == (3, 32, 32)
    assert data.num_classes == 10 and data.steps is None
    np.testing.assert_array_equal(data.y_train, [1, 2, 2, 3, 3, 4, 4, 5, 5, 6])
    np.testing.assert_array_equal(data.y_test, [9, 0, 4])
    assert data.x_train[0, 1, 5, 7] == pytest.approx(51 / 255) and data.x_train[0].sum() == pytest.approx(51 / 255)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    same_folder = load_dataset("cifar10", path=cifar_root / "cifar-10-batches-py")
    np.testing.assert_array_equal(same_folder.x_test, data.x_test)
    encoded = load_dataset("cifar10", path=cifar_root, encoding="rate", steps=3)
    assert encoded.x_train.shape == (10, 3, 3, 32, 32) and encoded.x_train.dtype == np.uint8


def test_cifar10_reads_python2_pickles(cifar_root: Path) -> None:
    data = np.zeros((2, 3072), dtype=np.uint8)
    data[1, 2048 + 31 * 32 + 0] = 255  # image 1, blue plane, row 31, column 0
    (cifar_root / "cifar-10-batches-py" / "data_batch_2").write_bytes(python2_batch_pickle(data, [8, 7]))
    loaded = load_dataset("cifar10", path=cifar_root)
    np.testing.assert_array_equal(loaded.y_train[2:4], [8, 7])
    assert loaded.x_train[3, 2, 31, 0] == 1.0 and loaded.x_train[2:4].sum() == 1.0


class SystemPayload:
    """Unpickling this runs os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


class ExecPayload:
    """Unpickling this runs builtins.exec(source)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        import builtins

        return (builtins.exec, (self.source,))


@pytest.mark.parametrize("payload_kind", ["system", "exec", "nested"])
def test_cifar10_malicious_pickle_does_not_run(cifar_root: Path, payload_kind: str) -> None:
    marker = cifar_root / "pwned"
    if payload_kind == "system":
        payload = SystemPayload(f"touch {marker}")
    else:
        payload = ExecPayload(f"open({str(marker)!r}, 'w').close()")
    if payload_kind == "nested":  # hidden inside an otherwise valid batch dict
        payload = cifar_batch(np.zeros((1, 3, 32, 32), np.uint8), [0]) | {b"labels": [payload]}
    (cifar_root / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="data_batch_3: refused to unpickle: forbidden global") as error:
        load_dataset("cifar10", path=cifar_root)
    message = assert_one_line(error)
    # Protocol 2 names Python 2 modules: posix.system, __builtin__.exec.
    assert ("system" in message) if payload_kind == "system" else ("__builtin__.exec" in message)
    assert not marker.exists()


def test_malicious_pickle_is_live_under_plain_pickle(tmp_path: Path) -> None:
    # Control for the test above: the same kind of payload does run under pickle.loads.
    marker = tmp_path / "ran"
    crafted = pickle.dumps(ExecPayload(f"open({str(marker)!r}, 'w').close()"), protocol=4)  # STACK_GLOBAL
    pickle.loads(crafted)
    assert marker.exists()
    marker.unlink()
    (tmp_path / "crafted.pkl").write_bytes(crafted)
    with pytest.raises(DataError, match="forbidden global builtins.exec"):
        restricted_pickle_load(tmp_path / "crafted.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_rebuilds_arrays(tmp_path: Path, protocol: int) -> None:
    original = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "meta": [1, 2.5, None, (True, b"x")]}
    (tmp_path / "batch").write_bytes(pickle.dumps(original, protocol=protocol))
    loaded = restricted_pickle_load(tmp_path / "batch")
    np.testing.assert_array_equal(loaded[b"data"], original[b"data"])
    assert loaded["meta"] == original["meta"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc.", "malformed or truncated pickle"),  # BINBYTES8
        (b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"abc.", "malformed or truncated pickle"),  # BYTEARRAY8
        (b"not a pickle", "malformed or truncated pickle"),
        (b"", "malformed or truncated pickle"),
    ],
)
def test_restricted_unpickler_rejects_absurd_or_garbage(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(DataError, match=expected) as error:
        restricted_pickle_load(tmp_path / "bad")
    assert_one_line(error)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing_batch", "data_batch_4: file not found"),
        ("truncated", "data_batch_2: malformed or truncated pickle"),
        ("not_dict", "holds a list, not a dict"),
        ("no_labels", "missing key 'labels'"),
        ("wrong_shape", r"'data' is a uint8 array \(2, 100\)"),
        ("label_range", "labels outside 0..9"),
    ],
)
def test_cifar10_malformed(cifar_root: Path, damage: str, expected: str) -> None:
    folder = cifar_root / "cifar-10-batches-py"
    images = np.zeros((2, 3, 32, 32), np.uint8)
    if damage == "missing_batch":
        (folder / "data_batch_4").unlink()
    elif damage == "truncated":
        content = (folder / "data_batch_2").read_bytes()
        (folder / "data_batch_2").write_bytes(content[: len(content) // 2])
    elif damage == "not_dict":
        (folder / "data_batch_2").write_bytes(pickle.dumps([1, 2], protocol=2))
    elif damage == "no_labels":
        batch = cifar_batch(images, [0, 1])
        del batch[b"labels"]
        (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    elif damage == "wrong_shape":
        batch = cifar_batch(images, [0, 1]) | {b"data": np.zeros((2, 100), np.uint8)}
        (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    elif damage == "label_range":
        (folder / "data_batch_2").write_bytes(pickle.dumps(cifar_batch(images, [0, 10]), protocol=2))
    with pytest.raises(DataError, match=expected) as error:
        load_dataset("cifar10", path=cifar_root)
    assert_one_line(error)


def test_cifar10_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py") as error:
        load_dataset("cifar10", path=tmp_path)
    assert "data_batch_1" in assert_one_line(error)


# ---------------------------------------------------------------------------------------------- npz


def test_npz_features_and_spikes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "features.npz", x_train=rng.random((6, 4)), y_train=np.array([0, 1, 2, 0, 1, 2]),
             x_test=rng.random((2, 4)), y_test=np.array([2, 1]))
    features = load_dataset("npz", path=tmp_path / "features.npz")
    assert features.x_train.shape == (6, 4) and features.x_train.dtype == np.float32
    assert features.steps is None and features.input_shape == (4,) and features.num_classes == 3
    encoded = load_dataset("npz", path=tmp_path / "features.npz", encoding="latency", steps=7, num_classes=5)
    assert encoded.x_train.shape == (6, 7, 4) and encoded.num_classes == 5

    spikes = (rng.random((5, 9, 3)) < 0.3).astype(np.uint8)
    np.savez_compressed(tmp_path / "spikes.npz", x_train=spikes, y_train=np.arange(5),
                        x_test=spikes[:2], y_test=np.array([0, 4]))
    loaded = load_dataset("npz", path=tmp_path / "spikes.npz")
    assert loaded.steps == 9 and loaded.input_shape == (3,) and loaded.x_train.dtype == np.uint8
    np.testing.assert_array_equal(loaded.x_train, spikes)
    with pytest.raises(ValueError, match="9 steps, not 4"):
        load_dataset("npz", path=tmp_path / "spikes.npz", steps=4)
    with pytest.raises(ValueError, match="already spike trains"):
        load_dataset("npz", path=tmp_path / "spikes.npz", encoding="rate")


def forged_npz(path: Path, declared_shape: tuple[int, ...]) -> None:
    """An npz whose x_train .npy header declares `declared_shape` but stores 8 bytes."""
    header = {"descr": "<f8", "fortran_order": False, "shape": declared_shape}
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x_train.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(b"\0" * 8)
        for key, value in (("y_train", np.zeros(1, int)), ("x_test", np.zeros((1, 1))), ("y_test", np.zeros(1, int))):
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, value)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing_file", "file not found"),
        ("not_zip", "not an npz"),
        ("missing_key", "missing array 'y_test'"),
        ("object_array", "object array"),
        ("absurd_header", r"declares shape \(1000000000, 1000\)"),
        ("length_mismatch", "y_train must be 3 integer labels"),
        ("float_labels", "y_train must be 3 integer labels"),
        ("bad_ndim", "x_train has shape"),
        ("test_shape", "does not match"),
        ("negative_label", "negative labels"),
        ("nan", "NaN or Inf"),
    ],
)
def test_npz_malformed(tmp_path: Path, damage: str, expected: str) -> None:
    path = tmp_path / "user.npz"
    arrays = {
        "x_train": np.zeros((3, 2)), "y_train": np.array([0, 1, 1]), "x_test": np.zeros((1, 2)), "y_test": np.array([1])
    }
    if damage == "not_zip":
        path.write_bytes(b"plain text")
    elif damage == "absurd_header":
        forged_npz(path, (10**9, 1000))
    elif damage != "missing_file":
        if damage == "missing_key":
            del arrays["y_test"]
        elif damage == "object_array":
            arrays["x_train"] = np.array([{"a": 1}, None, 3], dtype=object)
        elif damage == "length_mismatch":
            arrays["y_train"] = np.array([0, 1])
        elif damage == "float_labels":
            arrays["y_train"] = np.array([0.0, 1.0, 1.0])
        elif damage == "bad_ndim":
            arrays["x_train"] = np.zeros((3,))   # 4-D (images) and 5-D (frames) are layouts now
        elif damage == "test_shape":
            arrays["x_test"] = np.zeros((1, 5))
        elif damage == "negative_label":
            arrays["y_test"] = np.array([-1])
        elif damage == "nan":
            arrays["x_train"] = np.full((3, 2), np.nan)
        np.savez(path, **arrays)
    with pytest.raises(DataError, match=expected) as error:
        load_dataset("npz", path=path)
    assert "user.npz" in assert_one_line(error)


# ------------------------------------------------------------------------------------------- digits


def test_digits_reference_split() -> None:
    data = load_dataset("digits")
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert data.num_classes == 10 and data.input_shape == (64,) and data.steps is None and not data.is_spiking
    assert np.bincount(data.y_test, minlength=10).min() >= 35  # stratified: about 36 per class

    again = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(again.x_train, data.x_train)
    np.testing.assert_array_equal(again.y_test, data.y_test)
    other = load_dataset("digits", seed=1)
    assert other.x_train.shape == data.x_train.shape and not np.array_equal(other.x_train, data.x_train)


def test_digits_encoded() -> None:
    data = load_dataset("digits", encoding="rate", steps=10, seed=3)
    assert data.x_train.shape == (1437, 10, 64) and data.x_train.dtype == np.uint8 and data.steps == 10
    again = load_dataset("digits", encoding="rate", steps=10, seed=3)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    assert load_dataset("digits", encoding="on_off", steps=2).input_shape == (128,)
    assert load_dataset("digits", encoding="direct").steps == 25


# ------------------------------------------------------------------------------------------ Randman

SMALL_RANDMAN = {"num_classes": 3, "num_units": 20, "samples_per_class": 40, "intrinsic_dim": 1}


def test_randman_shapes_and_one_spike_per_unit() -> None:
    data = load_dataset("randman", steps=50, seed=5, **SMALL_RANDMAN)
    assert data.x_train.shape == (96, 50, 20) and data.x_test.shape == (24, 50, 20)
    assert data.x_train.dtype == np.uint8 and data.steps == 50 and data.input_shape == (20,)
    assert (data.x_train.sum(axis=1) == 1).all() and (data.x_test.sum(axis=1) == 1).all()
    assert np.bincount(data.y_train).tolist() == [32, 32, 32] and np.bincount(data.y_test).tolist() == [8, 8, 8]
    # Min-max scaling per class: each unit's earliest spike is at step 0 and its latest at the last step.
    spike_step = np.concatenate([data.x_train, data.x_test]).argmax(axis=1)
    labels = np.concatenate([data.y_train, data.y_test])
    for label in range(3):
        assert (spike_step[labels == label].min(axis=0) == 0).all()
        assert (spike_step[labels == label].max(axis=0) == 49).all()


def test_randman_deterministic_per_seed() -> None:
    first = make_randman(steps=30, seed=11, **SMALL_RANDMAN)
    second = make_randman(steps=30, seed=11, **SMALL_RANDMAN)
    other = make_randman(steps=30, seed=12, **SMALL_RANDMAN)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert not np.array_equal(first.x_train, other.x_train)


def test_randman_classes_are_learnable_and_options() -> None:
    from sklearn.linear_model import LogisticRegression

    data = make_randman(num_classes=4, num_units=30, steps=100, intrinsic_dim=1, samples_per_class=100, seed=0)
    times_train, times_test = data.x_train.argmax(axis=1), data.x_test.argmax(axis=1)
    classifier = LogisticRegression(max_iter=2000).fit(times_train, data.y_train)
    assert classifier.score(times_test, data.y_test) >= 0.9  # docs/data.md#randman: d = 1 is linearly separable

    double = make_randman(num_classes=2, num_units=5, steps=200, samples_per_class=10, spikes_per_unit=2)
    counts = double.x_train.sum(axis=1)
    assert counts.max() == 2 and counts.min() >= 1
    with pytest.raises(ValueError, match="num_units"):
        make_randman(num_units=0)


# ----------------------------------------------------------------------------------------- encoders


def test_rate_encoder_mean_matches_features() -> None:
    features = np.linspace(0.0, 1.0, 11, dtype=np.float32)[None]
    spikes = rate_encode(features, 4000, seed=0)
    assert spikes.shape == (1, 4000, 11) and spikes.dtype == np.uint8 and set(np.unique(spikes)) <= {0, 1}
    np.testing.assert_allclose(spikes.mean(axis=1)[0], features[0], atol=0.03)
    np.testing.assert_array_equal(rate_encode(features, 50, seed=1), rate_encode(features, 50, seed=1))
    assert not np.array_equal(rate_encode(features, 50, seed=1), rate_encode(features, 50, seed=2))
    clipped = rate_encode(np.array([[1.5, -0.2]]), 20, seed=0)
    assert clipped[0, :, 0].all() and not clipped[0, :, 1].any()


def test_on_off_encoder_channels() -> None:
    features = np.array([[0.8, -0.6, 0.0]])
    spikes = on_off_encode(features, 3000, seed=4)
    assert spikes.shape == (1, 3000, 6) and spikes.dtype == np.uint8
    rates = spikes.mean(axis=1)[0]
    np.testing.assert_allclose(rates, [0.8, 0.0, 0.0, 0.0, 0.6, 0.0], atol=0.03)
    assert rates[1] == rates[2] == rates[3] == rates[5] == 0.0  # ON is silent for x <= 0, OFF for x >= 0
    images = on_off_encode(np.zeros((2, 3, 4, 4)), 5)
    assert images.shape == (2, 5, 6, 4, 4)


def test_latency_encoder_one_spike_earlier_for_larger() -> None:
    features = np.array([[1.0, 0.75, 0.5, 0.0, 2.0, -1.0]])
    spikes = latency_encode(features, 9)
    assert spikes.shape == (1, 9, 6) and spikes.dtype == np.uint8
    assert (spikes.sum(axis=1) == 1).all()
    np.testing.assert_array_equal(spikes.argmax(axis=1)[0], [0, 2, 4, 8, 0, 8])


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (3, 7), elements=st.floats(0.0, 1.0, width=32)), st.integers(1, 40))
def test_latency_encoder_is_monotone(features: np.ndarray, steps: int) -> None:
    spike_step = latency_encode(features, steps).argmax(axis=1)
    order = np.argsort(features, axis=1, kind="stable")
    sorted_steps = np.take_along_axis(spike_step, order, axis=1)
    assert (np.diff(sorted_steps, axis=1) <= 0).all()  # larger value, no later spike


def test_direct_encoder_repeats_features() -> None:
    features = np.array([[0.25, -1.5], [3.0, 0.0]])
    analog = direct_encode(features, 4)
    assert analog.shape == (2, 4, 2) and analog.dtype == np.float32
    np.testing.assert_array_equal(analog, np.repeat(features[:, None].astype(np.float32), 4, axis=1))
    np.testing.assert_array_equal(encode(features, "direct", 4), analog)
    with pytest.raises(ValueError, match="unknown encoding"):
        encode(features, "poisson", 4)
    with pytest.raises(ValueError, match="steps"):
        encode(features, "rate", 0)


# ------------------------------------------------------------------------------------- load_dataset


def test_load_dataset_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'emnist'"):
        load_dataset("emnist")
    with pytest.raises(ValueError, match="unknown option.*num_units"):
        load_dataset("digits", num_units=3)
    with pytest.raises(ValueError, match="already spike trains"):
        load_dataset("randman", encoding="rate", **SMALL_RANDMAN)
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("digits", path=tmp_path)
    with pytest.raises(ValueError, match="needs path"):
        load_dataset("shd")
    with pytest.raises(ValueError, match="needs an encoding"):
        load_dataset("digits", steps=10)
    with pytest.raises(ValueError, match="unknown encoding"):
        load_dataset("digits", encoding="poisson")


def test_dataset_checks_consistency() -> None:
    with pytest.raises(ValueError, match="samples"):
        Dataset("bad", np.zeros((2, 3)), np.zeros(3, np.int64), np.zeros((1, 3)), np.zeros(1, np.int64), 2, (3,))
    with pytest.raises(ValueError, match="input_shape"):
        Dataset("bad", np.zeros((2, 3)), np.zeros(2, np.int64), np.zeros((1, 3)), np.zeros(1, np.int64), 2, (4,))
