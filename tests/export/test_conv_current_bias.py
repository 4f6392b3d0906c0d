"""Conv and (C, H, W)-input current biases carried exactly with always-on channels (docs/formats.md#nir-read).

The networks are NIR files (written with nir, read back with ``read_nir``) whose weights, biases and
thresholds lie on the integer grid of the scale the quantiser picks (64: two weights of 127/64 per layer)
and whose decays are exact on Loihi (α = 0; β = 0 or 1), so hw_sim must reproduce the float model's
currents and spikes bit for bit, each layer k one step later per layer (docs/loihi.md#timing).
"""

from __future__ import annotations

import nir
import numpy as np
import pytest

from export.float_network import FloatNetwork, _synaptic_input
from export.nir_io import read_nir
from export.quantise import quantise

DT, GRID, STEPS = 1e-3, 64.0, 12
INPUT = (2, 6, 6)


def on_grid(rng: np.random.Generator, shape: tuple[int, ...], spread: float) -> np.ndarray:
    """Weights k/64 with |k| ≤ 127, two of them 127/64, so that the quantiser's scale is exactly 64."""
    values = np.clip(np.rint(rng.normal(0.0, spread, shape) * GRID), -127, 127) / GRID
    values.reshape(-1)[:2] = 127 / GRID
    return values


def neuron(shape: tuple[int, ...], integrate: bool) -> nir.NIRNode:
    """α = 0 with β = 1 (IF) or β = 0 (LIF, τ = dt); threshold 1.5 (vth 96 at scale 64)."""
    if integrate:
        return nir.IF(r=np.full(shape, 1.0 / DT), v_threshold=np.full(shape, 1.5), v_reset=np.zeros(shape))
    return nir.LIF(tau=np.full(shape, DT), r=np.ones(shape), v_leak=np.zeros(shape), v_threshold=np.full(shape, 1.5),
                   v_reset=np.zeros(shape))


def write_graph(path, first: dict | None, rng: np.random.Generator, *, integrate: bool = True) -> FloatNetwork:
    """Input (2, 6, 6) → [Conv2d(``first`` geometry, 3 channels, bias) → IF → Conv2d 3×3 pad 1 (2 channels,
    no bias) → LIF] → Flatten → Affine (5, bias) → LIF → Affine (3, bias) → IF, written to ``path`` and read
    back (LIF instead of IF unless ``integrate``). ``first`` None: the Flatten comes straight after the input."""
    nodes, edges, shape, previous = {"input": nir.Input(input_type={"input": np.array(INPUT)})}, [], INPUT, "input"

    def add(name, node, out_shape):
        nonlocal previous, shape
        nodes[name] = node
        edges.append((previous, name))
        previous, shape = name, out_shape

    def bias(size: int) -> np.ndarray:
        return np.rint(rng.uniform(-1.5, 1.5, size) * GRID) / GRID

    if first is not None:
        kernel = first.pop("kernel")
        conv = nir.Conv2d(input_shape=INPUT[1:], weight=on_grid(rng, (3, 2, kernel, kernel), 0.5),
                          bias=bias(3), **first)
        out = (3, *(int(n) for n in conv.output_type["output"][-2:]))
        add("conv0", conv, out)
        add("neuron0", neuron(out, integrate), out)
        add("conv1", nir.Conv2d(input_shape=out[1:], weight=on_grid(rng, (2, 3, 3, 3), 0.5), bias=np.zeros(2),
                                stride=1, padding=1, dilation=1, groups=1), (2, *out[1:]))
        add("neuron1", neuron(shape, False), shape)
    add("flatten", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1), (int(np.prod(shape)),))
    add("fc0", nir.Affine(weight=on_grid(rng, (5, shape[0]), 0.3), bias=bias(5)), (5,))
    add("neuron2", neuron((5,), False), (5,))
    add("fc1", nir.Affine(weight=on_grid(rng, (3, 5), 0.5), bias=bias(3)), (3,))
    add("neuron3", neuron((3,), integrate), (3,))
    add("output", nir.Output(output_type={"output": np.array(shape)}), shape)
    nir.write(path, nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}))
    return read_nir(path)[0]


def float_currents(network: FloatNetwork, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer the float model's current I (α = 0: W·s_in + c) and spikes, each (batch, T, *shape)."""
    spikes, _ = network.run(x)
    currents, layer_input = [], x
    for layer, fired in zip(network.layers, spikes):
        batch, steps = layer_input.shape[:2]
        drive = _synaptic_input(layer, layer_input.reshape(batch * steps, *layer_input.shape[2:]))
        currents.append(drive.reshape(batch, steps, *layer.shape) + (0 if layer.current_bias is None
                                                                     else layer.current_bias))
        layer_input = fired
    return currents, spikes


@pytest.mark.parametrize("first", [
    dict(kernel=3, stride=1, padding=1, dilation=1, groups=1),    # the centre tap
    dict(kernel=3, stride=2, padding=1, dilation=1, groups=1),
    dict(kernel=5, stride=1, padding=2, dilation=1, groups=1),
    dict(kernel=3, stride=1, padding=2, dilation=2, groups=1),    # dilated: the centre still reads inside
    dict(kernel=2, stride=1, padding=0, dilation=1, groups=1),    # even kernel: a tap next to the centre
    dict(kernel=3, stride=1, padding=0, dilation=1, groups=1),
    None,                                                         # (C, H, W) input → Flatten → Affine
], ids=["k3p1", "k3s2p1", "k5p2", "k3p2d2", "k2p0", "k3p0", "flatten"])
def test_conv_current_biases_are_exact_on_the_grid(tmp_path, first):
    """Every layer's hw_sim u is 64·s times the float model's current, and its spikes are the float
    model's, from the step the layer first sees the input; relays fire at every pixel and step from then on."""
    rng = np.random.default_rng(5)
    network = write_graph(tmp_path / "grid.nir", None if first is None else dict(first), rng)
    assert all(layer.current_bias is not None for layer in network.layers if layer.kind == "dense")
    x = (rng.random((6, STEPS, *INPUT)) < 0.3).astype(np.float64)
    quantised = quantise(network, x)
    assert quantised.warnings == [] and [entry["scale"] for entry in quantised.layers] == [GRID] * len(network.layers)
    assert quantised.always_on >= 1 and quantised.network.input_shape == (2 + quantised.always_on, 6, 6)
    outcome = quantised.network.run(quantised.hardware_input(x), record_states=True)
    currents, spikes = float_currents(network, x)
    assert sum(np.count_nonzero(fired) for fired in spikes[:-1]) > 0
    for index, layer in enumerate(network.layers):
        own = (slice(None), slice(index + 1, index + 1 + STEPS), slice(0, layer.shape[0]))
        np.testing.assert_array_equal(outcome.u[index][own], currents[index] * GRID * 64)
        np.testing.assert_array_equal(outcome.spikes[index][own], spikes[index])
        relays = outcome.spikes[index][:, :, layer.shape[0]:]
        entry = quantised.layers[index]
        assert relays.shape[2] == entry.get("relay_channels", entry["relay_neurons"])
        if relays.shape[2]:   # relays fire exactly while their layer sees the presented steps
            assert relays[:, index + 1:index + 1 + STEPS].all() and not relays[:, :index + 1].any()
    assert quantised.layers[-1]["relay_neurons"] == 0


@pytest.mark.parametrize("build, cause", [
    (lambda path, rng: grouped_network(path, rng), "layer 0 is a conv with groups = 2"),
    (lambda path, rng: write_graph(path, dict(kernel=3, stride=1, padding=2, dilation=1, groups=1), rng),
     "no kernel tap of layer 0 reads inside the image"),
], ids=["groups2", "k3p2"])
def test_conv_current_biases_fall_back_to_the_voltage_bias(tmp_path, build, cause):
    """Where always-on channels cannot reach a layer (groups > 1; a padding wider than every tap's reach),
    that layer's current bias and every later one's are folded into the voltage bias (same steady state),
    with one warning each naming the cause, and the network gets no always-on channel."""
    rng = np.random.default_rng(7)
    network = build(tmp_path / "fold.nir", rng)
    x = (rng.random((4, STEPS, *INPUT)) < 0.3).astype(np.float64)
    quantised = quantise(network, x)
    carried = [index for index, layer in enumerate(network.layers) if layer.current_bias is not None]
    folded = [w for w in quantised.warnings if "mapped to the voltage bias with the same steady state" in w]
    assert len(folded) == len(carried) and all(cause in w for w in folded)
    assert quantised.always_on == 0 and quantised.network.input_shape == INPUT
    assert all("relay_neurons" not in entry for entry in quantised.layers)
    assert np.any(quantised.network.layers[0].neurons.bias_mant != 0)


def grouped_network(path, rng: np.random.Generator) -> FloatNetwork:
    """Input (2, 6, 6) → Conv2d 3×3 pad 1, groups 2 (2 channels, bias) → IF → Flatten → Affine (3, bias) → IF."""
    nodes = {"input": nir.Input(input_type={"input": np.array(INPUT)}),
             "conv": nir.Conv2d(input_shape=INPUT[1:], weight=on_grid(rng, (2, 1, 3, 3), 0.5),
                                bias=np.array([0.5, -0.25]), stride=1, padding=1, dilation=1, groups=2),
             "neuron0": neuron((2, 6, 6), True), "flatten": nir.Flatten(input_type={"input": np.array((2, 6, 6))}, start_dim=0,
                                                                                    end_dim=-1),
             "fc": nir.Affine(weight=on_grid(rng, (3, 72), 0.3), bias=np.array([0.25, 0.0, -0.5])),
             "neuron1": neuron((3,), True), "output": nir.Output(output_type={"output": np.array((3,))})}
    names = list(nodes)
    # nir's own type inference reads C_in from the kernel whatever the groups: written unchecked (read_nir
    # checks every shape itself and notes nir's failed check)
    nir.write(path, nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), metadata={"dt": DT}, type_check=False))
    return read_nir(path)[0]


def test_conv_current_biases_survive_model_nir_and_model_onnx(tmp_path):
    """Our own model.nir (which has no IF) writes a conv current bias as the Conv2d bias (read back the same); the float
    ONNX step adds every layer's current bias to its current (on the grid: the same spikes in float32)."""
    from export.nir_io import write_nir
    from export.onnx_export import export_float_onnx, run_onnx

    rng = np.random.default_rng(9)
    network = write_graph(tmp_path / "grid.nir", dict(kernel=3, stride=1, padding=1, dilation=1, groups=1), rng,
                           integrate=False)
    back, _ = read_nir(write_nir(network, tmp_path / "model.nir"))
    for layer, read in zip(network.layers, back.layers):
        assert (layer.current_bias is None) == (read.current_bias is None)
        if layer.current_bias is not None:
            np.testing.assert_array_equal(read.current_bias, layer.current_bias)
    x = (rng.random((3, STEPS, *INPUT)) < 0.3).astype(np.float64)
    path = export_float_onnx(network, tmp_path / "model.onnx")
    np.testing.assert_array_equal(run_onnx(path, x), network.run(x)[0][-1])
