"""``loihi.h5`` fuzzed with hypothesis (issue 7 §1): random bytes, truncations, byte flips, and field edits
each with the verdict the reader owes it (docs/netx.md: what is read, what is optional, what is ignored),
plus absurd declared shapes refused before anything is allocated."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hw_sim
from fuzzing import (ACCEPT, FUZZ, IGNORED, OPENED, OPTIONAL, REFUSE, REQUIRED, apply_hdf5_edit,
                     assert_verdict, dataset_paths, decidable_hdf5_edits, expected_field_verdict, guarded,
                     hdf5_byte_damage, scratch_dir, write_netx_style_file)
from hw_sim.random_networks import random_network

# The reader refuses any float of 2^53 or more in a field, and any NaN or infinity.
LOIHI_POISON = [np.nan, np.inf, -np.inf, 1e308, 2.0 ** 62]
LAVA_REQUIRED = {"weight", "du", "dv", "vth", "bias_mant", "bias_exp"}
LAVA_DENSE_REQUIRED = {"weight_exp", "num_weight_bits", "sign_mode"}
LAVA_OPTIONAL = {"readout", "delays", "recurrent_delays"}
CONV_GEOMETRY = {"stride", "padding", "dilation", "groups"}
NEURON_PARAMETERS = {"type", "iDecay", "vDecay", "vThMant"}   # refDelay, gradedSpike: netx does not use them
NETX_INTEGER_FIELDS = {"shape", "iDecay", "vDecay", "vThMant"}   # stored as floats: refused, netx fails on them


@pytest.fixture(scope="module")
def loihi_files(tmp_path_factory) -> dict[str, Path]:
    """Our files with exact ``lava`` groups (dense with recurrence and readout; conv first), and a netx file
    as netx and slayer write it (standard fields only)."""
    root = tmp_path_factory.mktemp("loihi")
    network = random_network(5, input_shape=(10,), hidden=(12,), outputs=4, recurrent=True, readout=True)
    files = {"loihi": hw_sim.save(network, root / "loihi.h5")}
    files["netx"] = write_netx_style_file(root / "netx.h5")
    hw_sim.load(files["netx"])
    conv_network = random_network(7, input_shape=(2, 6, 6), conv_channels=(3,), hidden=(8,), outputs=4)
    files["conv"] = hw_sim.save(conv_network, root / "conv.h5")
    return files


def layer_layout(path: Path) -> list[tuple[str, bool, bool]]:
    """(type, has a lava group, has a neuron group) of each layer group 0..N-1 of a valid file."""
    with h5py.File(path, "r") as handle:
        # a file claiming netx_exact is also read through its standard fields; ours here do not claim it
        assert not handle.attrs.get("netx_exact", False)
        return [(np.asarray(handle[f"layer/{index}/type"][()]).reshape(-1)[0].decode(),
                 "lava" in handle[f"layer/{index}"], "neuron" in handle[f"layer/{index}"])
                for index in range(len(handle["layer"]))]


def loihi_field_role(layout: list[tuple[str, bool, bool]], path: str) -> str:
    """What hw_sim.load does with ``path`` (a dataset, or a group for a deletion) of a valid file."""
    parts = path.split("/")
    if parts == ["layer"]:
        return REQUIRED
    index = int(parts[1])
    kind, has_lava, has_neuron = layout[index]
    weighted = [i for i, (k, _, _) in enumerate(layout) if k in ("dense", "dense_rec", "conv")]
    if len(parts) == 2:   # a whole layer group: names must stay 0..N-1 and a weighted layer must remain
        return OPTIONAL if index == len(layout) - 1 and any(i < index for i in weighted) else REQUIRED
    field = "/".join(parts[2:])
    if field == "type":
        return REQUIRED
    if kind == "input":
        if field == "shape":   # a conv first layer takes its input shape from here (or the caller)
            return REQUIRED if layout[weighted[0]][0] == "conv" else OPTIONAL
        return OPTIONAL        # inputMessageBits, default 0
    if kind == "flatten":
        return IGNORED
    if field == "shape" or (kind == "conv" and field in CONV_GEOMETRY):
        return REQUIRED
    if has_lava:
        if field == "lava":   # without it the layer is read from its standard fields, which save() writes
            return OPTIONAL
        if field.startswith("lava/"):
            name = field[len("lava/"):]
            if name in LAVA_REQUIRED or (kind != "conv" and name in LAVA_DENSE_REQUIRED) \
                    or (kind == "dense_rec" and name == "weight_rec"):
                return REQUIRED
            return OPTIONAL if name in LAVA_OPTIONAL else IGNORED
        if field == "weight":   # a dense first layer's columns give the input size; every weight is opened
            return REQUIRED if index == weighted[0] and kind != "conv" else OPENED   # (complex weights?)
        return IGNORED          # the standard fields netx reads: the exact lava group stands in for them
    if field == "neuron":       # a dense layer without neurons is netx's integrator; a conv layer needs them
        return REQUIRED if kind == "conv" else OPTIONAL
    if field.startswith("neuron/"):
        return REQUIRED if field[len("neuron/"):] in NEURON_PARAMETERS else IGNORED
    if field in ("weight", "weight_rec") or kind == "conv" and field in CONV_GEOMETRY:
        return REQUIRED
    return OPTIONAL             # bias, delay


def expected_loihi_verdict(layout, edit: tuple) -> str:
    if edit[0] == "unknown":   # a layer group, or a neuron group that is read, holds only what netx reads
        parts = edit[1].split("/")
        if len(parts) == 2:
            return REFUSE
        if parts[2:] == ["neuron"]:   # not read at all when a lava group stands beside it
            return ACCEPT if layout[int(parts[1])][1] else REFUSE
        return ACCEPT          # the lava group: its fields are read by name
    role = loihi_field_role(layout, edit[1])
    if edit[0] == "float" and role in (REQUIRED, OPTIONAL) and edit[1].split("/")[-1] in NETX_INTEGER_FIELDS:
        return REFUSE          # the same values as floats, which netx 0.6 (or Lava's fixed-point LIF) fails on
    return expected_field_verdict(role, edit, every_dataset_checked=False)


def load_as_network(path: Path):
    network = hw_sim.load(path)
    assert isinstance(network, hw_sim.Network)
    return network


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_loihi_h5_damaged_bytes(loihi_files, data):
    kind = data.draw(st.sampled_from(["loihi", "netx", "conv"]))
    expected, damaged = data.draw(hdf5_byte_damage(loihi_files[kind].read_bytes()))
    with scratch_dir() as folder:
        path = folder / "loihi.h5"
        path.write_bytes(damaged)
        assert_verdict(expected, hw_sim.LoihiFileError, path, load_as_network, path)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_loihi_h5_damaged_fields(loihi_files, data):
    kind = data.draw(st.sampled_from(["loihi", "netx", "conv"]))
    edit = data.draw(decidable_hdf5_edits(dataset_paths(loihi_files[kind]), LOIHI_POISON))
    with scratch_dir() as folder:
        path = folder / "loihi.h5"
        apply_hdf5_edit(loihi_files[kind], path, edit)
        expected = expected_loihi_verdict(layer_layout(loihi_files[kind]), edit)
        assert_verdict(expected, hw_sim.LoihiFileError, path, load_as_network, path)


def test_loihi_h5_absurd_shapes_are_refused_before_allocating(loihi_files, tmp_path):
    for kind in ("loihi", "netx"):
        for value in ([10 ** 9], [10 ** 6, 10 ** 6, 10 ** 6], [-3], []):
            path = tmp_path / f"{kind}.h5"
            apply_hdf5_edit(loihi_files[kind], path, ("replace", "layer/1/shape", np.array(value, dtype=np.int64)))
            with pytest.raises(hw_sim.LoihiFileError, match="field 'shape'"):
                guarded(hw_sim.load, path)
    path = tmp_path / "chunked.h5"
    apply_hdf5_edit(loihi_files["loihi"], path, ("declare", "layer/1/lava/weight", (1 << 14, 1 << 13)))
    with pytest.raises(hw_sim.LoihiFileError, match="declares 1073741824 bytes but the file stores 0"):
        guarded(hw_sim.load, path)
    apply_hdf5_edit(loihi_files["loihi"], path, ("link", "layer/1"))
    with pytest.raises(hw_sim.LoihiFileError, match="link to another file"):
        guarded(hw_sim.load, path)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")   # assume() outside @given
def test_every_float_edit_gets_its_verdict(loihi_files):
    """The same values stored as floats, on every dataset of each file: refused where netx fails on them
    (shapes, the neuron parameters it passes to Lava), accepted elsewhere; the fuzzer draws only some."""
    import h5py

    refused = 0
    for kind, source in loihi_files.items():
        layout = layer_layout(source)
        with h5py.File(source, "r") as handle:
            numeric = [field for field in dataset_paths(source)
                       if handle[field].dtype.kind in "iuf" and handle[field].size > 0]
        for field in numeric:
            edit = ("float", field)
            refused += expected_loihi_verdict(layout, edit) == REFUSE
            with scratch_dir() as folder:
                path = folder / "loihi.h5"
                apply_hdf5_edit(source, path, edit)
                assert_verdict(expected_loihi_verdict(layout, edit), hw_sim.LoihiFileError, path, load_as_network, path)
    assert refused >= 4   # the netx-style file's shapes and neuron parameters, at least
