"""Every reader fuzzed with hypothesis (issue 7 §1): random bytes, truncations, byte flips, fields replaced by
wrong types and shapes, NaN/Inf, huge values and huge declared sizes.

Each reader must either accept the file or raise its own one-line error (a ValueError subclass whose message
names the file): config TOML (ConfigError), checkpoint.pt (RunFolderError), loihi.h5 (LoihiFileError), NIR
(NIRImportError), .npz / SHD HDF5 / DVS aedat, csv and trial lists / CIFAR pickles (DataError), ONNX
(ONNXFileError). Never another exception type, never a hang, and never an allocation for an absurd declared
size: every call runs in a thread under an address-space limit of what the process already has plus
:data:`MEMORY_HEADROOM` (an attempt to allocate more raises MemoryError, which fails the test) and a time
limit (a hang fails the test instead of stalling the suite).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import resource
import shutil
import struct
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hw_sim
import safeio.hdf5
from export.float_network import FloatLayer, FloatNetwork
from export.nir_io import NIRImportError, read_nir, write_nir
from export.onnx_export import ONNXFileError, export_integer_onnx, run_onnx
from hw_sim.random_networks import random_network
from sbnn.config import ConfigError, load_config
from sbnn.data import DataError
from sbnn.data.cifar10 import read_cifar_batch
from sbnn.data.dvs_gesture import load_dvs_gesture, read_aedat_polarity_events, read_gesture_labels, read_trial_list
from sbnn.data.npz import load_npz
from sbnn.data.shd import read_shd_file
from sbnn.train import RunFolderError, load_trained_model
from tiny_configs import TINY_RANDMAN_RUN

MEMORY_HEADROOM = 512 << 20   # what one reader call may add to the process's address space
CALL_SECONDS = 30

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

TINY_CONFIG = TINY_RANDMAN_RUN


# --------------------------------------------------------------------------------------------------
# Guards

def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def guarded(function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a thread, under an address-space limit, failing on a hang."""
    outcome: dict = {}

    def target() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    thread = threading.Thread(target=target, daemon=True)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        thread.start()
        thread.join(CALL_SECONDS)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    if thread.is_alive():
        pytest.fail(f"{getattr(function, '__name__', function)} did not return within {CALL_SECONDS} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def read_or_refuse(error_type: type[ValueError], path: Path, function, *args, **kwargs):
    """Run a reader on ``path``: it returns, or raises ``error_type`` with one line naming the file. Any other
    exception (MemoryError included) propagates and fails the test."""
    assert issubclass(error_type, ValueError)
    try:
        return guarded(function, *args, **kwargs)
    except error_type as error:
        message = str(error)
        assert message and "\n" not in message, f"not one line: {message!r}"
        assert Path(path).name in message, f"the message does not name {path}: {message!r}"
        return None


@contextlib.contextmanager
def scratch_dir():
    folder = Path(tempfile.mkdtemp(prefix="sbnn-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Mutations shared by the binary formats

def random_bytes(prefix: bytes = b"") -> st.SearchStrategy[bytes]:
    return st.binary(max_size=2048).map(lambda tail: prefix + tail)


def truncations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, len(data) - 1).map(lambda n: data[:n])


def byte_flips(data: bytes) -> st.SearchStrategy[bytes]:
    def flip(changes: list[tuple[int, int]]) -> bytes:
        damaged = bytearray(data)
        for position, value in changes:
            damaged[position] = value
        return bytes(damaged)
    return st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(flip)


def damaged_bytes(data: bytes, prefix: bytes = b"") -> st.SearchStrategy[bytes]:
    return st.one_of(random_bytes(prefix), truncations(data), byte_flips(data))


SPECIAL_VALUES = [np.array(np.nan), np.array([np.inf, -np.inf]), np.array([2 ** 62]), np.array([-1]),
                  np.array([10 ** 9]), np.array([0]), np.array([10 ** 7, 10 ** 7, 10 ** 7]), np.array(1e300),
                  np.array([2 ** 64 - 1], dtype=np.uint64), np.array([b"dense"]), np.array([b"conv"]),
                  np.array([b"input"]), np.zeros((0, 3)), np.full((3, 4), 1e30)]

ARRAYS = st.one_of(
    hnp.arrays(dtype=st.sampled_from(["<i1", "<i2", "<i4", "<i8", "<u8", "<f4", "<f8", "|b1", "|S4"]),
               shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)),
    st.sampled_from(SPECIAL_VALUES),
)


def hdf5_edits(paths: list[str]) -> st.SearchStrategy[tuple]:
    """One structural edit of an HDF5 file: a field's values poisoned (NaN, ±Inf, huge) in its own shape, a
    field replaced by another array, a field declared huge (chunked, nothing stored), a field or group
    deleted, a field turned into a link to another file."""
    return st.one_of(
        st.tuples(st.just("poison"), st.sampled_from(paths),
                  st.sampled_from([np.nan, np.inf, -np.inf, 1e308, 2.0 ** 62])),
        st.tuples(st.just("replace"), st.sampled_from(paths), ARRAYS),
        st.tuples(st.just("declare"), st.sampled_from(paths),
                  st.tuples(st.integers(1, 1 << 20), st.integers(1, 1 << 20))),
        st.tuples(st.just("delete"), st.sampled_from(paths + sorted({p.rsplit("/", 1)[0] for p in paths if "/" in p}))),
        st.tuples(st.just("link"), st.sampled_from(paths)),
    )


def apply_hdf5_edit(source: Path, target: Path, edit: tuple) -> None:
    shutil.copyfile(source, target)
    kind, path = edit[0], edit[1]
    with h5py.File(target, "a") as handle:
        if path not in handle:
            return
        if kind == "delete":
            del handle[path]
            return
        if kind == "poison":
            original = handle[path]
            if original.dtype.kind not in "iuf" or original.size == 0:
                assume(False)
            value = np.full(original.shape, edit[2])
            del handle[path]
            handle.create_dataset(path, data=value)
            return
        del handle[path]
        if kind == "replace":
            try:
                handle.create_dataset(path, data=edit[2])
            except (TypeError, ValueError):
                assume(False)
        elif kind == "declare":
            handle.create_dataset(path, shape=edit[2], dtype="<i8", chunks=(1, 1))
        else:
            handle[path] = h5py.ExternalLink(str(source), "/" + path)


def dataset_paths(path: Path) -> list[str]:
    found: list[str] = []
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
    return sorted(found)


# --------------------------------------------------------------------------------------------------
# Valid files to damage

def small_float_network(conv: bool) -> FloatNetwork:
    rng = np.random.default_rng(3)
    layers, shape = [], (2, 6, 6) if conv else (12,)
    if conv:
        layers.append(FloatLayer(kind="conv", weight=rng.normal(0.1, 0.4, (3, 2, 3, 3)), alpha=0.7, beta=0.8,
                                 threshold=1.0, bias=np.zeros((3, 3, 3)), input_shape=shape, stride=(2, 2),
                                 padding=(1, 1)))
        fan_in = 27
    else:
        fan_in = 12
    layers.append(FloatLayer(kind="dense", weight=rng.normal(0.1, 0.3, (8, fan_in)), alpha=0.8, beta=0.9,
                             threshold=1.0, bias=rng.normal(0.02, 0.01, 8),
                             recurrent_weight=None if conv else rng.normal(0, 0.2, (8, 8))))
    layers.append(FloatLayer(kind="dense", weight=rng.normal(0.1, 0.3, (4, 8)), alpha=0.75, beta=0.95,
                             threshold=None, bias=np.zeros(4)))
    return FloatNetwork(input_shape=shape, layers=tuple(layers), dt=1e-3)


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    from sbnn.config import config_from_dict
    from sbnn.train import train
    import tomllib

    root = tmp_path_factory.mktemp("valid")
    files: dict[str, Path] = {}
    network = random_network(5, input_shape=(10,), hidden=(12,), outputs=4, recurrent=True, readout=True)
    files["loihi"] = hw_sim.save(network, root / "loihi.h5")
    netx_network = random_network(6, input_shape=(10,), hidden=(12,), outputs=4, readout=True, netx_compatible=True)
    files["netx"] = hw_sim.save(netx_network, root / "netx.h5")
    with h5py.File(files["netx"], "a") as handle:   # a file as netx and slayer write it: no lava groups
        for name in list(handle["layer"]):
            handle["layer"][name].pop("lava", None)
        handle.attrs["netx_exact"] = False
    hw_sim.load(files["netx"])
    conv_network = random_network(7, input_shape=(2, 6, 6), conv_channels=(3,), hidden=(8,), outputs=4)
    files["conv"] = hw_sim.save(conv_network, root / "conv.h5")
    files["nir"] = write_nir(small_float_network(conv=False), root / "dense.nir")
    files["nir_conv"] = write_nir(small_float_network(conv=True), root / "conv.nir")
    files["onnx"] = export_integer_onnx(random_network(8, input_shape=(6,), hidden=(5,), outputs=3), root / "step.onnx")
    config = config_from_dict(tomllib.loads(TINY_CONFIG), source="tiny.toml")
    train(config, root / "run", json_mode=True)
    files["run"] = root / "run"
    files["config"] = root / "tiny.toml"
    files["config"].write_text(TINY_CONFIG)
    rng = np.random.default_rng(0)
    files["npz"] = root / "data.npz"
    np.savez(files["npz"], x_train=rng.random((6, 4, 3)) < 0.3, y_train=np.array([0, 1, 2, 0, 1, 2]),
             x_test=rng.random((3, 4, 3)) < 0.3, y_test=np.array([0, 1, 2]))
    files["shd"] = root / "shd_train.h5"
    with h5py.File(files["shd"], "w") as handle:
        times = handle.create_dataset("spikes/times", (3,), dtype=h5py.vlen_dtype(np.float16))
        units = handle.create_dataset("spikes/units", (3,), dtype=h5py.vlen_dtype(np.uint16))
        for index, (t, u) in enumerate([([0.0, 0.5, 1.2], [0, 3, 699]), ([0.3], [7]), ([], [])]):
            times[index], units[index] = np.asarray(t, np.float16), np.asarray(u, np.uint16)
        handle.create_dataset("labels", data=np.array([4, 19, 0], dtype=np.uint8))
        handle.create_dataset("extra/keys", data=np.array([f"word-{k}".encode() for k in range(20)]))
    files["cifar"] = root / "data_batch_1"
    files["cifar"].write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                                             b"labels": [3, 9]}, protocol=2))
    return files


# --------------------------------------------------------------------------------------------------
# loihi.h5

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_loihi_h5_damaged_bytes(valid, data):
    kind = data.draw(st.sampled_from(["loihi", "netx", "conv"]))
    content = valid[kind].read_bytes()
    with scratch_dir() as folder:
        path = folder / "loihi.h5"
        path.write_bytes(data.draw(damaged_bytes(content, HDF5_MAGIC)))
        network = read_or_refuse(hw_sim.LoihiFileError, path, hw_sim.load, path)
        assert network is None or isinstance(network, hw_sim.Network)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_loihi_h5_damaged_fields(valid, data):
    kind = data.draw(st.sampled_from(["loihi", "netx", "conv"]))
    edit = data.draw(hdf5_edits(dataset_paths(valid[kind])))
    with scratch_dir() as folder:
        path = folder / "loihi.h5"
        apply_hdf5_edit(valid[kind], path, edit)
        network = read_or_refuse(hw_sim.LoihiFileError, path, hw_sim.load, path)
        assert network is None or isinstance(network, hw_sim.Network)


def test_loihi_h5_absurd_shapes_are_refused_before_allocating(valid, tmp_path):
    for kind in ("loihi", "netx"):
        for value in ([10 ** 9], [10 ** 6, 10 ** 6, 10 ** 6], [-3], []):
            path = tmp_path / f"{kind}.h5"
            apply_hdf5_edit(valid[kind], path, ("replace", "layer/1/shape", np.array(value, dtype=np.int64)))
            with pytest.raises(hw_sim.LoihiFileError, match="field 'shape'"):
                guarded(hw_sim.load, path)
    path = tmp_path / "chunked.h5"
    apply_hdf5_edit(valid["loihi"], path, ("declare", "layer/1/lava/weight", (1 << 14, 1 << 13)))
    with pytest.raises(hw_sim.LoihiFileError, match="declares 1073741824 bytes but the file stores 0"):
        guarded(hw_sim.load, path)
    apply_hdf5_edit(valid["loihi"], path, ("link", "layer/1"))
    with pytest.raises(hw_sim.LoihiFileError, match="link to another file"):
        guarded(hw_sim.load, path)


def test_damaged_global_heap_is_refused_instead_of_hanging(valid, tmp_path):
    """libhdf5 loops forever on a global heap collection whose free-space object has size 0 (found by
    the byte-flip fuzzing of NIR files, whose strings live there); every HDF5 reader checks first."""
    for kind in ("nir", "shd"):
        content = bytearray(valid[kind].read_bytes())
        start = content.find(b"GCOL\x01\x00\x00\x00")
        assert start > 0
        position = start + 16
        while int.from_bytes(content[position:position + 2], "little"):   # walk to the free-space object
            position += 16 + ((int.from_bytes(content[position + 8:position + 16], "little") + 7) & ~7)
        content[position + 8:position + 16] = bytes(8)                     # ... and make it empty
        path = tmp_path / valid[kind].name
        path.write_bytes(bytes(content))
        assert safeio.hdf5.hdf5_heap_damage(path) is not None
        if kind == "nir":
            with pytest.raises(NIRImportError, match="empty free-space object"):
                guarded(read_nir, path)
        else:
            with pytest.raises(DataError, match="empty free-space object"):
                guarded(read_shd_file, path, steps=10, max_time=1.4)
    for kind in ("loihi", "nir", "shd", "netx"):   # and whole files pass
        assert safeio.hdf5.hdf5_heap_damage(valid[kind]) is None


# --------------------------------------------------------------------------------------------------
# NIR

@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_nir_damaged_bytes(valid, data):
    content = valid[data.draw(st.sampled_from(["nir", "nir_conv"]))].read_bytes()
    with scratch_dir() as folder:
        path = folder / "model.nir"
        path.write_bytes(data.draw(damaged_bytes(content, HDF5_MAGIC)))
        read_or_refuse(NIRImportError, path, read_nir, path)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_nir_damaged_fields(valid, data):
    kind = data.draw(st.sampled_from(["nir", "nir_conv"]))
    edit = data.draw(hdf5_edits(dataset_paths(valid[kind])))
    with scratch_dir() as folder:
        path = folder / "model.nir"
        apply_hdf5_edit(valid[kind], path, edit)
        result = read_or_refuse(NIRImportError, path, read_nir, path)
        if result is not None:   # what is accepted is finite and of sane size
            network, _ = result
            for layer in network.layers:
                assert np.all(np.isfinite(layer.weight)) and np.all(np.isfinite(layer.bias))
                assert int(np.prod(layer.shape)) <= 1 << 24


@pytest.mark.parametrize("field, value, message", [
    ("node/nodes/syn0/weight", np.full((8, 12), np.nan), "NaN or infinite"),
    ("node/nodes/neuron0/v_threshold", np.full(8, np.inf), "NaN or infinite"),
    ("node/nodes/neuron0/v_leak", np.full(8, np.nan), "NaN or infinite"),
    ("node/metadata/dt", np.array(0.0), "dt must be a positive"),
    ("node/metadata/dt", np.array(np.nan), "dt must be a positive"),
    ("node/nodes/input/shape", np.array([10 ** 9]), "more than 16777216"),
    ("node/nodes/input/shape", np.array([12.5]), "positive integer sizes"),
])
def test_nir_non_finite_and_absurd_values_are_refused(valid, tmp_path, field, value, message):
    path = tmp_path / "model.nir"
    apply_hdf5_edit(valid["nir"], path, ("replace", field, value))
    with pytest.raises(NIRImportError, match=message):
        guarded(read_nir, path)


# --------------------------------------------------------------------------------------------------
# checkpoint.pt

JUNK_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.floats(),
    st.text(max_size=20), st.lists(st.integers(-5, 10 ** 12), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from([torch.full((3,), float("nan")), torch.zeros(2, 2), torch.tensor(10 ** 12), torch.empty(0)]),
)


class Payload:
    """Unpickling this object would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_checkpoint_damaged(valid, data):
    run = valid["run"]
    content = (run / "checkpoint.pt").read_bytes()
    good = torch.load(run / "checkpoint.pt", weights_only=True)
    with scratch_dir() as folder:
        shutil.copyfile(run / "config.toml", folder / "config.toml")
        marker = folder / "payload-ran"
        how = data.draw(st.sampled_from(["bytes", "field", "model tensor", "payload"]))
        if how == "bytes":
            (folder / "checkpoint.pt").write_bytes(data.draw(damaged_bytes(content, b"PK\x03\x04")))
        else:
            checkpoint = dict(good)
            if how == "field":
                checkpoint[data.draw(st.sampled_from(sorted(good) + ["unknown"]))] = data.draw(JUNK_VALUES)
            elif how == "model tensor":
                model = dict(good["model"])
                model[data.draw(st.sampled_from(sorted(model)))] = data.draw(st.sampled_from(
                    [torch.full((2, 3), float("nan")), torch.zeros(7), torch.tensor(float("inf")), "text", None]))
                checkpoint["model"] = model
            else:
                checkpoint[data.draw(st.sampled_from(sorted(good)))] = Payload(marker)
            torch.save(checkpoint, folder / "checkpoint.pt")
        model = read_or_refuse(RunFolderError, folder / "checkpoint.pt", load_trained_model, folder)
        assert not marker.exists()
        if model is not None:
            assert all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


# --------------------------------------------------------------------------------------------------
# config TOML

TOML_VALUES = st.one_of(
    st.integers(min_value=-(2 ** 80), max_value=2 ** 80).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0.0", "true", '""', '"a\\u0000b"', "[]", "{}",
                     "[[[[[[[[1]]]]]]]]", "[" * 3000 + "]" * 3000, "{a=" * 800 + "1" + "}" * 800,
                     '"../../../../etc"', "1979-05-27T07:32:00Z", "[1, \"a\", 2.5]"]),
    st.floats(allow_nan=True, allow_infinity=False).map(repr),
    st.text(max_size=10).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
)


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_config_damaged(valid, data):
    text = valid["config"].read_text()
    how = data.draw(st.sampled_from(["bytes", "text", "value", "override"]))
    overrides: list[str] = []
    with scratch_dir() as folder:
        path = folder / "run.toml"
        if how == "bytes":
            path.write_bytes(data.draw(damaged_bytes(text.encode())))
        elif how == "text":
            path.write_bytes(data.draw(st.text(max_size=300)).encode("utf-8", "surrogatepass"))
        else:
            lines = text.splitlines()
            keys = [index for index, line in enumerate(lines) if "=" in line]
            value = data.draw(TOML_VALUES)
            if how == "value":
                index = data.draw(st.sampled_from(keys))
                lines[index] = lines[index].split("=")[0] + "= " + value
            else:
                section_key = data.draw(st.sampled_from(["data.steps", "train.lr", "model.hidden", "train.seed",
                                                         "data.path", "train.estimator.tau", "export.dt"]))
                overrides = [f"{section_key}={value}"]
            path.write_text("\n".join(lines) + "\n")
        read_or_refuse(ConfigError, path, load_config, path, overrides)


# --------------------------------------------------------------------------------------------------
# .npz

def npy_header(shape: tuple, descr: str = "<f8") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


@FUZZ
@given(data=st.data())
def test_npz_damaged(valid, data):
    content = valid["npz"].read_bytes()
    how = data.draw(st.sampled_from(["bytes", "arrays", "forged header"]))
    with scratch_dir() as folder:
        path = folder / "data.npz"
        if how == "bytes":
            path.write_bytes(data.draw(damaged_bytes(content, b"PK\x03\x04")))
        elif how == "arrays":
            with np.load(valid["npz"]) as archive:
                arrays = {key: archive[key] for key in archive.files}
            arrays[data.draw(st.sampled_from(sorted(arrays)))] = data.draw(st.one_of(
                ARRAYS, st.just(np.array([{"a": 1}, None], dtype=object))))
            try:
                np.savez(path, **arrays)
            except ValueError:
                assume(False)
        else:
            shape = data.draw(st.tuples(st.integers(1, 10 ** 12), st.integers(1, 10 ** 6)))
            with zipfile.ZipFile(path, "w") as archive, np.load(valid["npz"]) as original:
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
def test_shd_damaged(valid, data):
    with scratch_dir() as folder:
        path = folder / "shd_train.h5"
        if data.draw(st.booleans()):
            path.write_bytes(data.draw(damaged_bytes(valid["shd"].read_bytes(), HDF5_MAGIC)))
        else:
            apply_hdf5_edit(valid["shd"], path, data.draw(hdf5_edits(dataset_paths(valid["shd"]))))
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
def test_cifar_batch_damaged(valid, data):
    content = valid["cifar"].read_bytes()
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


# --------------------------------------------------------------------------------------------------
# ONNX

@FUZZ
@given(data=st.data())
def test_onnx_damaged(valid, data):
    content = valid["onnx"].read_bytes()
    x = np.random.default_rng(0).integers(0, 2, (2, 3, 6))
    with scratch_dir() as folder:
        path = folder / "model_int.onnx"
        if data.draw(st.booleans()):
            path.write_bytes(data.draw(damaged_bytes(content)))
        else:
            path.write_bytes(content)
            x = data.draw(st.one_of(
                hnp.arrays(dtype=st.sampled_from(["i8", "f8", "u1", "c16"]),
                           shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=7)),
                st.sampled_from([np.full((1, 2, 6), np.nan), np.full((1, 2, 6), 0.5), np.zeros((2, 3, 6))])))
        try:
            read_or_refuse(ONNXFileError, path, run_onnx, path, x)
        except ValueError as error:   # the inputs, not the file, are wrong: a plain ValueError naming the file
            assert type(error) is ValueError and path.name in str(error) and "\n" not in str(error)
