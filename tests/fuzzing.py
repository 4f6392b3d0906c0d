"""What the reader fuzz tests share: the guards every reader call runs under, the byte and HDF5 field edits,
and the verdict each edit must get (an oracle from the documented layouts, docs/netx.md and
docs/formats.md#nir-read).

Every reader must either accept a file or raise its own one-line error (a ValueError subclass whose message
names the file). Never another exception type, never a hang, and never an allocation for an absurd declared
size: every call runs in a thread under an address-space limit of what the process already has plus
:data:`MEMORY_HEADROOM` (an attempt to allocate more raises MemoryError, which fails the test) and a time
limit (a hang fails the test instead of stalling the suite).
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from export.float_network import FloatLayer, FloatNetwork
from safeio.hdf5 import SMALL_DATASET_BYTES

MEMORY_HEADROOM = 512 << 20   # what one reader call may add to the process's address space
CALL_SECONDS = 30
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

REFUSE, ACCEPT, UNDECIDED = "refuse", "accept", "undecided"


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


def reader_verdict(error_type: type[ValueError], path: Path, function, *args, **kwargs) -> tuple[str, object]:
    """(:data:`ACCEPT`, what the reader returned) or (:data:`REFUSE`, the one-line message naming the file).
    Any other exception (MemoryError included) propagates and fails the test."""
    assert issubclass(error_type, ValueError)
    try:
        return ACCEPT, guarded(function, *args, **kwargs)
    except error_type as error:
        message = str(error)
        assert message and "\n" not in message, f"not one line: {message!r}"
        assert Path(path).name in message, f"the message does not name {path}: {message!r}"
        return REFUSE, message


def assert_verdict(expected: str, error_type: type[ValueError], path: Path, function, *args, **kwargs):
    """The reader's verdict on ``path`` is ``expected`` (any verdict when :data:`UNDECIDED`); returns what
    it read, or None when it refused."""
    verdict, outcome = reader_verdict(error_type, path, function, *args, **kwargs)
    if expected != UNDECIDED:
        assert verdict == expected, f"expected the reader to {expected} the file, it did {verdict}: {outcome!r}"
    return outcome if verdict == ACCEPT else None


@contextlib.contextmanager
def scratch_dir():
    folder = Path(tempfile.mkdtemp(prefix="sbnn-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Byte damage

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


def byte_damage(data: bytes, prefix: bytes = b"") -> st.SearchStrategy[tuple[str, bytes]]:
    """(expected verdict, damaged copy of ``data``) for a format whose random bytes behind ``prefix`` and whose
    truncations are all refused (see the callers for why): byte flips are undecided (a flipped weight is
    a valid file), unless every flip writes the byte that was there, which leaves the file as it was."""
    def flipped(damaged: bytes) -> tuple[str, bytes]:
        return (ACCEPT if damaged == data else UNDECIDED), damaged
    return st.one_of(random_bytes(prefix).map(lambda damaged: (REFUSE, damaged)),
                     truncations(data).map(lambda damaged: (REFUSE, damaged)),
                     byte_flips(data).map(flipped))


def hdf5_byte_damage(data: bytes) -> st.SearchStrategy[tuple[str, bytes]]:
    """:func:`byte_damage` of the HDF5 file ``data``: random bytes behind the HDF5 signature are refused,
    and so is a truncated file (libhdf5 compares the stored end-of-file address with the file's size);
    flips stay undecided (HDF5 without metadata checksums cannot tell a flipped weight from a written one)."""
    return byte_damage(data, HDF5_MAGIC)


def zip_byte_damage(data: bytes) -> st.SearchStrategy[tuple[str, bytes]]:
    """:func:`byte_damage` of the zip archive ``data`` (a torch checkpoint or an npz): random bytes behind a
    local-header signature hold no archive, and a truncated one has lost (part of) its end-of-central-directory
    record; flips stay undecided (a flip in a stored member's data or in a field no reader checks leaves
    a readable archive)."""
    return byte_damage(data, b"PK\x03\x04")


# --------------------------------------------------------------------------------------------------
# HDF5 field edits

SPECIAL_VALUES = [np.array(np.nan), np.array([np.inf, -np.inf]), np.array([2 ** 62]), np.array([-1]),
                  np.array([10 ** 9]), np.array([0]), np.array([10 ** 7, 10 ** 7, 10 ** 7]), np.array(1e300),
                  np.array([2 ** 64 - 1], dtype=np.uint64), np.array([b"dense"]), np.array([b"conv"]),
                  np.array([b"input"]), np.zeros((0, 3)), np.full((3, 4), 1e30)]

ARRAYS = st.one_of(
    hnp.arrays(dtype=st.sampled_from(["<i1", "<i2", "<i4", "<i8", "<u8", "<f4", "<f8", "|b1", "|S4"]),
               shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)),
    st.sampled_from(SPECIAL_VALUES),
)

# A declared size the readers must refuse unread: more than SMALL_DATASET_BYTES of int64, nothing stored.
HUGE_DECLARED_SIDE = st.integers(1 << 7, 1 << 20)
assert (1 << 7) ** 2 * 8 > SMALL_DATASET_BYTES


def decidable_hdf5_edits(paths: list[str], poison_values: list[float]) -> st.SearchStrategy[tuple]:
    """Edits whose verdict follows from the kind of edit and the role of the field it hits (see
    :func:`expected_field_verdict`), plus random replacements (``replace``), which stay undecided."""
    value_fields = [path for path in paths if path.rsplit("/", 1)[-1] in VALUE_FIELDS]
    groups = parent_groups(paths)
    swaps = [st.tuples(st.just("swap"), st.sampled_from(value_fields))] if value_fields else []
    return st.one_of(
        st.tuples(st.just("poison"), st.sampled_from(paths), st.sampled_from(poison_values)),
        st.tuples(st.sampled_from(["empty", "string", "grow", "float", "attribute", "link"]), st.sampled_from(paths)),
        *swaps,
        st.tuples(st.just("declare"), st.sampled_from(paths), st.tuples(HUGE_DECLARED_SIDE, HUGE_DECLARED_SIDE)),
        st.tuples(st.just("delete"), st.sampled_from(paths + groups)),
        st.tuples(st.just("unknown"), st.sampled_from(groups)),
        st.tuples(st.just("replace"), st.sampled_from(paths), ARRAYS),
    )


# Fields holding values (weights, biases, delays) where exchanging two different entries is an in-range change.
VALUE_FIELDS = {"weight", "weight_rec", "bias", "bias_mant", "v_leak", "delay", "delays"}


def parent_groups(paths: list[str]) -> list[str]:
    return sorted({path.rsplit("/", 1)[0] for path in paths if "/" in path})


def apply_hdf5_edit(source: Path, target: Path, edit: tuple) -> None:
    """Copy ``source`` to ``target`` and apply ``edit`` (from :func:`decidable_hdf5_edits`, or a
    ``("replace", field, array)``); an edit that does not apply to the field it drew is rejected (assume)."""
    shutil.copyfile(source, target)
    kind, path = edit[0], edit[1]
    with h5py.File(target, "a") as handle:
        if path not in handle:
            return
        if kind == "delete":
            del handle[path]
            return
        if kind == "unknown":
            handle[path].create_dataset("unexpected", data=np.int64(1))
            return
        if kind == "attribute":
            handle[path].attrs["unexpected"] = 1
            return
        if kind in ("poison", "grow", "float", "swap"):
            original = handle[path]
            assume(original.dtype.kind in "iuf" and original.size > 0)
            values = np.asarray(original[()])
            if kind == "poison":
                replacement = np.full(original.shape, edit[2])
            elif kind == "grow":   # one more element, different from the last
                flat = values.reshape(-1)
                replacement = np.append(flat, flat[-1] + 1)
            elif kind == "float":
                replacement = values.astype(np.float64)
            else:
                flat = values.reshape(-1).copy()
                first = int(np.argmax(flat != flat[0]))
                assume(flat[first] != flat[0])
                flat[[0, first]] = flat[[first, 0]]
                replacement = flat.reshape(values.shape)
        elif kind == "empty":
            replacement = np.zeros((0,))
        elif kind == "string":
            replacement = np.array([b"abcd"])
        else:
            replacement = edit[2] if kind == "replace" else None
        del handle[path]
        if replacement is not None:
            try:
                handle.create_dataset(path, data=replacement)
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
# The verdict on one field edit

# What a reader does with a field (or, for a deletion, a group) of a valid file:
REQUIRED = "required"    # read; the file is refused without it
OPTIONAL = "optional"    # read when present; without it the reader takes a documented default
OPENED = "opened"        # opened but its values not used (a link to another file is refused there)
IGNORED = "ignored"      # never opened
ADVISORY = "advisory"    # checked by a library the reader calls, not by the reader: verdict undecided


def expected_field_verdict(role: str, edit: tuple, *, every_dataset_checked: bool) -> str:
    """The verdict a reader owes a file after ``edit`` hit a field of ``role``.

    ``every_dataset_checked``: the reader checks every dataset of the file for links to other files and
    unbacked declared sizes before it reads any (the NIR reader), not only the fields it reads (loihi.h5)."""
    kind = edit[0]
    if kind == "replace" or role == ADVISORY:
        return UNDECIDED
    if kind in ("link", "declare") and every_dataset_checked:
        return REFUSE
    if kind in ("swap", "float", "attribute"):   # an in-range value, the same values, an attribute: all valid
        return ACCEPT
    if kind == "unknown":   # a dataset a layer or neuron group may not hold
        return REFUSE
    if kind == "delete":
        return REFUSE if role == REQUIRED else ACCEPT
    if kind == "link":
        return REFUSE if role in (REQUIRED, OPTIONAL, OPENED) else ACCEPT
    # poison, empty, string, grow, declare: values no reader may take
    return REFUSE if role in (REQUIRED, OPTIONAL) else ACCEPT


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


def write_netx_style_file(path: Path) -> Path:
    """A small loihi.h5 as netx and slayer write it: standard fields only, no exact ``lava`` groups."""
    import hw_sim
    from hw_sim.random_networks import random_network

    network = random_network(6, input_shape=(10,), hidden=(12,), outputs=4, readout=True, netx_compatible=True)
    hw_sim.save(network, path)
    with h5py.File(path, "a") as handle:
        for name in list(handle["layer"]):
            handle["layer"][name].pop("lava", None)
        handle.attrs["netx_exact"] = False
    return path


def write_tiny_shd_file(path: Path) -> Path:
    """An SHD file of three samples in the real layout (vlen spike times and units, labels, extra keys)."""
    with h5py.File(path, "w") as handle:
        times = handle.create_dataset("spikes/times", (3,), dtype=h5py.vlen_dtype(np.float16))
        units = handle.create_dataset("spikes/units", (3,), dtype=h5py.vlen_dtype(np.uint16))
        for index, (t, u) in enumerate([([0.0, 0.5, 1.2], [0, 3, 699]), ([0.3], [7]), ([], [])]):
            times[index], units[index] = np.asarray(t, np.float16), np.asarray(u, np.uint16)
        handle.create_dataset("labels", data=np.array([4, 19, 0], dtype=np.uint8))
        handle.create_dataset("extra/keys", data=np.array([f"word-{k}".encode() for k in range(20)]))
    return path
