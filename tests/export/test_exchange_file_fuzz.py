"""``model.nir`` and ``model_int.onnx`` fuzzed with hypothesis (issue 7 §1): random bytes, truncations, byte
flips, NIR fields edited with the verdict the reader owes each edit (docs/formats.md#nir-read), NaN, infinite
and absurd values, and ONNX inputs of every dtype and shape."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from export.nir_io import NIRImportError, read_nir, write_nir
from export.onnx_export import ONNXFileError, export_integer_onnx, run_onnx
from fuzzing import (ACCEPT, ADVISORY, FUZZ, IGNORED, OPTIONAL, REFUSE, REQUIRED, UNDECIDED, apply_hdf5_edit,
                     assert_verdict, byte_damage, dataset_paths, decidable_hdf5_edits, expected_field_verdict,
                     guarded, hdf5_byte_damage, scratch_dir, small_float_network)
from hw_sim.random_networks import random_network

# Non-finite values are refused wherever the mapping reads them; huge finite ones are valid floats.
NIR_POISON = [np.nan, np.inf, -np.inf]
# Parameters nir fills with its own default when the file lacks them.
NIR_DEFAULTS = {"w_in", "v_reset", "start_dim", "end_dim"}
# Shapes only nir's own type inference looks at (the mapping computes every shape itself, and reads the graph
# again without type checking when that inference fails): what nir makes of them is not the reader's verdict.
NIR_ADVISORY = {("Output", "shape"), ("Flatten", "input_type"), ("Conv2d", "input_shape")}


@pytest.fixture(scope="module")
def exchange_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exchange")
    return {"nir": write_nir(small_float_network(conv=False), root / "dense.nir"),
            "nir_conv": write_nir(small_float_network(conv=True), root / "conv.nir"),
            "onnx": export_integer_onnx(random_network(8, input_shape=(6,), hidden=(5,), outputs=3),
                                        root / "step.onnx")}


def nir_node_types(path: Path) -> dict[str, str]:
    with h5py.File(path, "r") as handle:
        nodes = handle["node/nodes"]
        return {name: nodes[name]["type"][()].decode() for name in nodes}


def nir_field_role(node_types: dict[str, str], path: str) -> str:
    """What read_nir does with ``path`` (a dataset, or a group for a deletion) of one of our valid files."""
    parts = path.split("/")
    if parts == ["version"]:
        return IGNORED
    if parts[:2] == ["node", "metadata"]:   # the graph's dt; without it, the nodes' dt
        return OPTIONAL
    if parts[:2] != ["node", "nodes"] or len(parts) == 3:   # the graph, its edges, a whole node
        return REQUIRED
    field = parts[3]
    if field == "metadata":                 # a node's dt, unused while the graph has one
        return IGNORED
    if (node_types[parts[2]], field) in NIR_ADVISORY:
        return ADVISORY
    return OPTIONAL if field in NIR_DEFAULTS else REQUIRED


def expected_nir_verdict(path: Path, edit: tuple) -> str:
    """The verdict read_nir owes the valid file ``path`` after ``edit``."""
    kind, field = edit[0], edit[1]
    if kind == "unknown":   # what nir.read makes of an extra dataset in a node is nir's business
        return UNDECIDED
    if kind == "float" and integer_field(path, field):   # an integer parameter stored as float: nir's types decide
        return UNDECIDED
    return expected_field_verdict(nir_field_role(nir_node_types(path), field), edit, every_dataset_checked=True)


def integer_field(path: Path, field: str) -> bool:
    with h5py.File(path, "r") as handle:
        return isinstance(handle[field], h5py.Dataset) and handle[field].dtype.kind in "iu"


# --------------------------------------------------------------------------------------------------
# NIR

@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_nir_damaged_bytes(exchange_files, data):
    expected, damaged = data.draw(hdf5_byte_damage(exchange_files[data.draw(st.sampled_from(["nir", "nir_conv"]))]
                                                   .read_bytes()))
    with scratch_dir() as folder:
        path = folder / "model.nir"
        path.write_bytes(damaged)
        assert_verdict(expected, NIRImportError, path, read_nir, path)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_nir_damaged_fields(exchange_files, data):
    kind = data.draw(st.sampled_from(["nir", "nir_conv"]))
    edit = data.draw(decidable_hdf5_edits(dataset_paths(exchange_files[kind]), NIR_POISON))
    with scratch_dir() as folder:
        path = folder / "model.nir"
        apply_hdf5_edit(exchange_files[kind], path, edit)
        expected = expected_nir_verdict(exchange_files[kind], edit)
        result = assert_verdict(expected, NIRImportError, path, read_nir, path)
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
def test_nir_non_finite_and_absurd_values_are_refused(exchange_files, tmp_path, field, value, message):
    path = tmp_path / "model.nir"
    apply_hdf5_edit(exchange_files["nir"], path, ("replace", field, value))
    with pytest.raises(NIRImportError, match=message):
        guarded(read_nir, path)


@pytest.mark.parametrize("kind, field", [("nir", "node/metadata/dt"), ("nir_conv", "node/nodes/syn0/groups")])
def test_nir_parameter_with_several_values_is_refused(exchange_files, tmp_path, kind, field):
    path = tmp_path / "model.nir"
    with h5py.File(exchange_files[kind], "r") as handle:
        value = np.asarray(handle[field][()]).reshape(-1)
    apply_hdf5_edit(exchange_files[kind], path, ("replace", field, np.append(value, value[-1] + 1)))
    with pytest.raises(NIRImportError):
        guarded(read_nir, path)


# --------------------------------------------------------------------------------------------------
# ONNX

def expected_onnx_input_verdict(x: np.ndarray, input_shape: tuple[int, ...]) -> str:
    """The verdict run_onnx owes a valid integer step model given ``x``: refused (a ValueError naming the
    file) unless ``x`` is (batch >= 1, T >= 1, *input_shape) of finite integer values."""
    if x.ndim < 3 or x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2:] != input_shape or x.dtype.kind not in "biuf":
        return REFUSE
    return ACCEPT if np.all(np.isfinite(x)) and np.all(x == np.round(x)) else REFUSE


@FUZZ
@given(data=st.data())
def test_onnx_damaged(exchange_files, data):
    content = exchange_files["onnx"].read_bytes()
    x = np.random.default_rng(0).integers(0, 2, (2, 3, 6))
    with scratch_dir() as folder:
        path = folder / "model_int.onnx"
        if data.draw(st.booleans()):
            # Random bytes hold no step model (inputs x and states), and every truncation of it is refused (it
            # ends in the graph and opset import, without which onnxruntime cannot load it; all truncations of
            # this fixture were checked once).
            expected, damaged = data.draw(byte_damage(content))
            path.write_bytes(damaged)
            assert_verdict(expected, ONNXFileError, path, run_onnx, path, x)
            return
        path.write_bytes(content)
        x = data.draw(st.one_of(
            hnp.arrays(dtype=st.sampled_from(["i8", "f8", "u1", "c16"]),
                       shape=st.one_of(st.tuples(st.integers(1, 3), st.integers(1, 4), st.just(6)),
                                       hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=7))),
            st.sampled_from([np.full((1, 2, 6), np.nan), np.full((1, 2, 6), 0.5), np.zeros((2, 3, 6))])))
        # Wrong inputs are refused as a ValueError naming the file; valid ones give what their integers give.
        out = assert_verdict(expected_onnx_input_verdict(x, (6,)), ValueError, path, run_onnx, path, x)
        if out is not None:
            assert np.array_equal(out, run_onnx(exchange_files["onnx"], x.astype(np.int64)))


@pytest.mark.parametrize("shape", [(1, 2, 5), (1, 2, 6, 1), (2, 3, 7)])
def test_onnx_inputs_of_the_wrong_shape_are_an_input_error_not_a_file_error(exchange_files, shape):
    """A valid step model given inputs whose per-step shape differs from its declared x: a plain ValueError
    naming the file and both shapes (the inputs are wrong, not the file)."""
    with pytest.raises(ValueError, match=r"must be \(batch, T, 6\)") as caught:
        run_onnx(exchange_files["onnx"], np.zeros(shape))
    assert not isinstance(caught.value, ONNXFileError) and exchange_files["onnx"].name in str(caught.value)
