"""Other libraries' models, exported by their own NIR exporters, import faithfully (docs/formats.md#nir-peers).

Each library builds a 64-32-10 network on sklearn's digits (rate-coded spikes, T = 25, seeded) with the
same weights (random ReLU features and a ridge read-out, no training), exports it with its own exporter,
and ``read_nir`` + the quantiser map it to hw_sim. The library's own forward and hw_sim then see the same
spike inputs; their predictions (the read-out's mean voltage) must agree on ≥ 98 % of the samples.
A library that cannot be imported skips its test with the reason.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import nir
import numpy as np
import pytest

from export.nir_io import NIRImportError, from_nir, normalise_graph, read_nir, write_nir
from export.quantise import quantise

T, SAMPLES, HIDDEN, READOUT_THRESHOLD = 25, 300, 32, 100.0   # the read-out never reaches its threshold
AGREEMENT = 0.98


@pytest.fixture(scope="module")
def digits() -> dict:
    """Spike inputs (SAMPLES, T, 64), labels, and the weights every library's model gets."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x, labels = data.data / 16.0, data.target
    rng = np.random.default_rng(0)
    w1 = rng.normal(0.0, 0.35, (HIDDEN, 64))
    train = slice(SAMPLES, None)
    features = np.maximum(x[train] @ w1.T, 0.0)
    targets = np.eye(10)[labels[train]]
    w2 = np.linalg.solve(features.T @ features + 1.0 * np.eye(HIDDEN), features.T @ targets).T
    spikes = (rng.random((SAMPLES, T, 64)) < x[:SAMPLES, None, :]).astype(np.float32)
    return {"spikes": spikes, "labels": labels[:SAMPLES], "w1": w1.astype(np.float32),
            "w2": (w2 * 4.0).astype(np.float32)}


def hardware_predictions(path, spikes: np.ndarray, **kwargs) -> tuple[np.ndarray, list[str]]:
    """Import ``path``, quantise on the first 100 samples, run hw_sim: argmax of the read-out's mean v."""
    network, notes = read_nir(path, **kwargs)
    quantised = quantise(network, spikes[:100])
    latency = quantised.network.latency
    outcome = quantised.network.run(quantised.hardware_input(spikes), record_states=True)
    assert not any("spikes" in str(w) and "read-out" in str(w) for w in quantised.warnings)
    return outcome.v[-1][:, latency:latency + spikes.shape[1]].mean(axis=1).argmax(axis=1), notes


def agreement(library: np.ndarray, hardware: np.ndarray, labels: np.ndarray, name: str) -> float:
    share = float(np.mean(library == hardware))
    print(f"{name}: library accuracy {np.mean(library == labels):.3f}, hw_sim accuracy "
          f"{np.mean(hardware == labels):.3f}, predictions kept {share:.3f}")
    assert np.mean(library == labels) > 0.5, "the model's predictions are not meaningful"
    return share


def snntorch_synaptic_model(digits: dict, path, *, bias: bool):
    """snnTorch's Synaptic 64-32-10 model with the digits weights (its Linear biases, if any, from torch's
    default initialisation under the current seed), written to ``path`` by snnTorch's own exporter."""
    import snntorch as snn
    import torch
    from snntorch.export_nir import export_to_nir

    def synaptic(n: int, threshold: float, **kwargs):   # per-neuron parameters: its exporter needs them
        return snn.Synaptic(alpha=torch.full((n,), 0.5), beta=torch.full((n,), 0.8), threshold=torch.full(
            (n,), threshold), init_hidden=True, reset_mechanism="zero", reset_delay=False, **kwargs)

    first, second = torch.nn.Linear(64, HIDDEN, bias=bias), torch.nn.Linear(HIDDEN, 10, bias=bias)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(digits["w1"]))
        second.weight.copy_(torch.from_numpy(digits["w2"]))
    model = torch.nn.Sequential(first, synaptic(HIDDEN, 1.0), second, synaptic(10, READOUT_THRESHOLD, output=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nir.write(path, export_to_nir(model, torch.zeros(1, 64), ignore_dims=[0]))
    return model


def test_snntorch_synaptic_imports_with_dt_inferred(digits, tmp_path):
    pytest.importorskip("snntorch", reason="snnTorch is not installed")
    import torch

    model = snntorch_synaptic_model(digits, tmp_path / "snntorch.nir", bias=False)
    voltages = []
    with torch.no_grad():
        for t in range(T):
            voltages.append(model(torch.from_numpy(digits["spikes"][:, t]))[2].numpy())
    library = np.stack(voltages, axis=1).mean(axis=1).argmax(axis=1)
    hardware, notes = hardware_predictions(tmp_path / "snntorch.nir", digits["spikes"])
    assert any("dt = 0.0001 s inferred" in note for note in notes)
    assert any("snnTorch" in note and "reset_mechanism='zero'" in note for note in notes)
    assert agreement(library, hardware, digits["labels"], "snnTorch") >= AGREEMENT
    with pytest.raises(NIRImportError, match=r"--dt 0.0005 contradicts the file: .* dt = 0.0001 s"):
        read_nir(tmp_path / "snntorch.nir", dt=5e-4)
    read_nir(tmp_path / "snntorch.nir", dt=1e-4)   # the right dt is accepted


def test_snntorch_linear_biases_enter_the_current_exactly(digits, tmp_path):
    """snnTorch's ``nn.Linear`` biases (its default initialisation, seeded) are added to the synaptic current:
    the imported float model reproduces snnTorch's forward up to float32 rounding, and hw_sim, which gets
    them through an always-on input channel and a relay neuron, keeps ≥ 98 % of its predictions."""
    pytest.importorskip("snntorch", reason="snnTorch is not installed")
    import torch

    torch.manual_seed(0)
    model = snntorch_synaptic_model(digits, tmp_path / "biased.nir", bias=True)
    with torch.no_grad():
        voltages = np.stack([model(torch.from_numpy(digits["spikes"][:, t]))[2].numpy() for t in range(T)], axis=1)
    network, notes = read_nir(tmp_path / "biased.nir")
    assert not any("steady state" in note for note in notes)
    _, float_voltages = network.run(digits["spikes"], record_voltage=True)
    assert np.abs(float_voltages[-1] - voltages).max() < 1e-4 * np.abs(voltages).max()
    quantised = quantise(network, digits["spikes"][:100])
    assert quantised.always_on == 1 and quantised.network.input_shape == (65,)
    assert [entry["relay_neurons"] for entry in quantised.layers] == [1, 0]
    assert quantised.report()["always_on_inputs"] == 1
    hardware, _ = hardware_predictions(tmp_path / "biased.nir", digits["spikes"])
    library = voltages.mean(axis=1).argmax(axis=1)
    assert agreement(library, hardware, digits["labels"], "snnTorch with Linear biases") >= AGREEMENT


CONV_CHANNELS = 4


@pytest.fixture(scope="module")
def conv_digits() -> dict:
    """sklearn's digits as (1, 8, 8) rate-coded spikes (all samples, T steps, seeded) and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.data.reshape(-1, 1, 8, 8) / 16.0
    spikes = (np.random.default_rng(0).random((len(images), T, 1, 8, 8)) < images[:, None]).astype(np.float32)
    return {"spikes": spikes, "labels": data.target}


def snntorch_conv_model(conv_digits: dict, path):
    """snnTorch's nn.Conv2d(1, 4, 3, padding=1, bias=True) → Synaptic (α = 0.9) → Flatten → nn.Linear(256, 10,
    bias=True) → Leaky, written to ``path`` by snnTorch's own exporter; and its read-out voltages on the first
    SAMPLES samples, (SAMPLES, T, 10). The conv weights are seeded on a 1/64 grid (its biases torch's default
    initialisation); the Linear layer (weights and bias) is a ridge fit on the hidden spike counts of the other
    samples."""
    import snntorch as snn
    import torch
    from snntorch.export_nir import export_to_nir

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, CONV_CHANNELS, 3, padding=1, bias=True)
    kernel = np.clip(np.rint(rng.normal(0.0, 0.6, (CONV_CHANNELS, 1, 3, 3)) * 64), -127, 127) / 64
    linear = torch.nn.Linear(CONV_CHANNELS * 64, 10, bias=True)
    full = lambda shape, value: torch.full(shape, value)  # noqa: E731 - per-neuron parameters for the exporter
    hidden_shape = (CONV_CHANNELS, 8, 8)
    hidden = snn.Synaptic(alpha=full(hidden_shape, 0.9), beta=full(hidden_shape, 0.8), threshold=full(hidden_shape, 1.0),
                          init_hidden=True, reset_mechanism="zero", reset_delay=False)
    readout = snn.Leaky(beta=full((10,), 0.9), threshold=full((10,), 20.0), init_hidden=True, reset_mechanism="zero",
                        reset_delay=False, output=True)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden.reset_hidden()
        readout.reset_hidden()
        counts, voltages = 0, []
        with torch.no_grad():
            for t in range(T):
                fired = hidden(conv(torch.from_numpy(x[:, t])))
                counts = counts + fired.numpy().reshape(len(x), -1)
                voltages.append(readout(linear(torch.flatten(fired, 1)))[1].numpy())
        return counts, np.stack(voltages, axis=1)

    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel.astype(np.float32)))
    counts, _ = run(conv_digits["spikes"][SAMPLES:])
    features = np.c_[counts, np.ones(len(counts))]
    targets = np.eye(10)[conv_digits["labels"][SAMPLES:]]
    fit = np.linalg.solve(features.T @ features + 30.0 * np.eye(features.shape[1]), features.T @ targets).T
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(fit[:, :-1].astype(np.float32)))
        linear.bias.copy_(torch.from_numpy(fit[:, -1].astype(np.float32)))
    _, voltages = run(conv_digits["spikes"][:SAMPLES])
    model = torch.nn.Sequential(conv, hidden, torch.nn.Flatten(), linear, readout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nir.write(path, export_to_nir(model, torch.zeros(1, 1, 8, 8), ignore_dims=[0]))
    return voltages


def test_snntorch_conv_biases_enter_the_current_exactly(conv_digits, tmp_path):
    """snnTorch's nn.Conv2d and nn.Linear biases behind it enter the synaptic current: the imported float
    model reproduces snnTorch's forward up to float32 rounding, and hw_sim, which gets them through always-on
    input channels, a relay channel of the conv layer and the conv kernels' centre taps, keeps ≥ 98 % of its
    predictions, where folding them into the voltage bias (what the reader did before) keeps far fewer."""
    pytest.importorskip("snntorch", reason="snnTorch is not installed")
    from dataclasses import replace

    voltages = snntorch_conv_model(conv_digits, tmp_path / "conv.nir")
    spikes, labels = conv_digits["spikes"][:SAMPLES], conv_digits["labels"][:SAMPLES]
    network, notes = read_nir(tmp_path / "conv.nir")
    assert [layer.current_bias is not None for layer in network.layers] == [True, True]
    _, float_voltages = network.run(spikes, record_voltage=True)
    assert np.abs(float_voltages[-1] - voltages).max() < 1e-4 * np.abs(voltages).max()
    quantised = quantise(network, spikes[:100])
    assert not any("steady state" in warning for warning in quantised.warnings)
    assert quantised.network.input_shape == (1 + quantised.always_on, 8, 8)
    assert quantised.layers[0]["relay_channels"] == 1 and quantised.layers[1]["relay_neurons"] == 0
    library = voltages.mean(axis=1).argmax(axis=1)
    hardware, _ = hardware_predictions(tmp_path / "conv.nir", spikes)
    kept = agreement(library, hardware, labels, "snnTorch conv with Conv2d and Linear biases")
    fold = lambda layer: replace(layer, bias=layer.bias + layer.current_bias / (1.0 - layer.alpha),  # noqa: E731
                                 current_bias=None)
    folded = quantise(replace(network, layers=tuple(fold(layer) for layer in network.layers)), spikes[:100])
    latency = folded.network.latency
    outcome = folded.network.run(folded.hardware_input(spikes), record_states=True)
    kept_folded = float(np.mean(outcome.v[-1][:, latency:latency + T].mean(axis=1).argmax(axis=1) == library))
    print(f"snnTorch conv: predictions kept with the biases folded into the voltage bias {kept_folded:.3f}")
    assert kept >= AGREEMENT and kept_folded < kept


def test_current_biases_reach_each_layer_with_its_first_input_step():
    """With no input and no decay of the current (α = 0), each layer's u in hw_sim is exactly its integer
    current bias from the step it first sees the input (column k + 1 for layer k, docs/loihi.md#timing) to
    the last presented step, and 0 before: relays (three where the next layer has a threshold above one
    8-bit weight) pass the always-on channels on with the data's delay, also through a layer without bias."""
    from export.float_network import FloatLayer, FloatNetwork

    rng = np.random.default_rng(3)
    sizes, steps = (4, 5, 3, 2), 6
    layers = []
    for index in range(3):
        weight = rng.uniform(-1.0, 1.0, (sizes[index + 1], sizes[index]))
        weight[0, 0] = 1.0                                   # the scale maps 1.0 to 127: vth = 2.5·127 = 318
        current_bias = None if index == 1 else rng.uniform(-0.4, 0.4, sizes[index + 1])
        layers.append(FloatLayer(kind="dense", weight=weight, alpha=0.0, beta=0.9, threshold=None if index == 2
                                 else 2.5, bias=np.zeros(sizes[index + 1]), current_bias=current_bias))
    network = FloatNetwork(input_shape=(4,), layers=tuple(layers))
    quantised = quantise(network, np.zeros((2, steps, 4)))
    assert quantised.always_on == 3 and [entry["relay_neurons"] for entry in quantised.layers] == [3, 1, 0]
    outcome = quantised.network.run(quantised.hardware_input(np.zeros((1, steps, 4))), record_states=True)
    for index, layer in enumerate(layers):
        u = outcome.u[index][0, :, :sizes[index + 1]]
        expected = np.zeros_like(u)
        if layer.current_bias is not None:
            expected[index + 1:index + 1 + steps] = np.rint(layer.current_bias * quantised.layers[index]["scale"]) * 64
        np.testing.assert_array_equal(u, expected)
        if index < 2:   # the relays fire at every step their layer sees the input
            relays = outcome.spikes[index][0, index + 1:index + 1 + steps, sizes[index + 1]:]
            assert relays.all() and not outcome.spikes[index][0, :index + 1].any()


def test_norse_lif_imports_with_its_exporter_bugs_corrected(digits, tmp_path):
    pytest.importorskip("norse", reason="norse is not installed")
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import norse.torch as norse

        dt = 1e-3   # α = 1 − dt·500 = 0.5, β = 1 − dt·200 = 0.8; norse's v gain is dt·τ_mem⁻¹ = 0.2
        cells = [norse.LIFCell(norse.LIFParameters(tau_syn_inv=torch.tensor(500.0), tau_mem_inv=torch.tensor(200.0),
                                                   v_th=torch.tensor(threshold)), dt=dt)
                 for threshold in (1.0, READOUT_THRESHOLD)]
        first, second = torch.nn.Linear(64, HIDDEN, bias=False), torch.nn.Linear(HIDDEN, 10, bias=False)
        with torch.no_grad():
            first.weight.copy_(torch.from_numpy(digits["w1"]) / 0.2)
            second.weight.copy_(torch.from_numpy(digits["w2"]) / 0.2)
        model = norse.SequentialState(first, cells[0], second, cells[1])
        nir.write(tmp_path / "norse.nir", normalise_graph(norse.to_nir(model, torch.zeros(1, 64), dt=dt)))
    # norse's LIFCell adds the input to the current before the voltage step (i ← i + x, then v and the
    # decay of i), as NIR's CubaLIF does: no delay, so the imported float model equals norse step by step.
    states, voltages = [None, None], []
    with torch.no_grad():
        for t in range(T):
            hidden, states[0] = cells[0](first(torch.from_numpy(digits["spikes"][:, t])), states[0])
            _, states[1] = cells[1](second(hidden), states[1])
            voltages.append(states[1].v.numpy())
    voltages = np.stack(voltages, axis=1)
    library = voltages.mean(axis=1).argmax(axis=1)
    with pytest.raises(NIRImportError, match="norse's to_nir .* give --dt"):
        read_nir(tmp_path / "norse.nir")
    network, _ = read_nir(tmp_path / "norse.nir", dt=dt)
    _, float_voltages = network.run(digits["spikes"], record_voltage=True)
    assert np.abs(float_voltages[-1] - voltages).max() < 1e-4 * np.abs(voltages).max()
    hardware, notes = hardware_predictions(tmp_path / "norse.nir", digits["spikes"], dt=dt)
    assert any("norse" in note and "corrected" in note and "v_reset ≠ 0" in note for note in notes)
    assert agreement(library, hardware, digits["labels"], "norse") >= AGREEMENT


def sinabs_predictions(digits: dict, path, hidden, readout) -> np.ndarray:
    """A Sinabs 64-32-10 model with the digits weights and the given neuron layers (made with batch_size=1),
    written to ``path`` by Sinabs's own exporter; its predictions (argmax of the read-out's mean v_mem)."""
    import torch
    from sinabs.nir import to_nir

    first, second = torch.nn.Linear(64, HIDDEN, bias=False), torch.nn.Linear(HIDDEN, 10, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(digits["w1"]))
        second.weight.copy_(torch.from_numpy(digits["w2"]))
    model = torch.nn.Sequential(first, hidden, second, readout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(torch.zeros(1, 64))   # sinabs reads the layer shapes from the neurons' state
        nir.write(path, normalise_graph(to_nir(model, torch.zeros(1, 64))))
    for layer in (hidden, readout):
        layer.batch_size = SAMPLES
        layer.reset_states()
    voltages = []
    with torch.no_grad():
        for t in range(T):
            model(torch.from_numpy(digits["spikes"][:, t]))
            voltages.append(readout.v_mem.numpy().copy())
    return np.stack(voltages, axis=1).mean(axis=1).argmax(axis=1)


def test_sinabs_iaf_imports_with_dt_inferred(digits, tmp_path):
    pytest.importorskip("sinabs", reason="sinabs is not installed")
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, SingleSpike

    def iaf(threshold: float):   # Loihi's neuron: one spike a step, reset to zero
        return sl.IAFSqueeze(spike_threshold=threshold, spike_fn=SingleSpike, reset_fn=MembraneReset(), batch_size=1)

    library = sinabs_predictions(digits, tmp_path / "sinabs.nir", iaf(1.0), iaf(READOUT_THRESHOLD))
    hardware, notes = hardware_predictions(tmp_path / "sinabs.nir", digits["spikes"])
    assert any("dt = 1 s inferred" in note for note in notes)
    assert any("SingleSpike and MembraneReset" in note and "MultiSpike" in note for note in notes)
    assert agreement(library, hardware, digits["labels"], "sinabs") >= AGREEMENT
    with pytest.raises(NIRImportError, match="contradicts the file"):
        read_nir(tmp_path / "sinabs.nir", dt=1e-3)


def test_sinabs_lif_imports_with_its_exact_decay(digits, tmp_path):
    """Sinabs's LIF (τ = 5 steps, norm_input=True: v' = e^(−1/τ)·v + (1 − e^(−1/τ))·x) and ExpLeak read-out
    (norm_input=False, gain 1: a read-out's scale does not change its predictions), exported by Sinabs:
    dt = 1 step without --dt, β = e^(−1/τ) exactly (not 1 − 1/τ), ≥ 98 % of predictions kept."""
    pytest.importorskip("sinabs", reason="sinabs is not installed")
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, SingleSpike

    tau = 5.0
    hidden = sl.LIFSqueeze(tau_mem=tau, spike_threshold=0.5, spike_fn=SingleSpike, reset_fn=MembraneReset(),
                           batch_size=1)
    library = sinabs_predictions(digits, tmp_path / "sinabs_lif.nir", hidden,
                                 sl.ExpLeakSqueeze(tau_mem=tau, batch_size=1))
    network, notes = read_nir(tmp_path / "sinabs_lif.nir")
    assert any("dt = 1 (one step)" in note for note in notes) and any("Sinabs's exact" in note for note in notes)
    assert [layer.beta for layer in network.layers] == pytest.approx([np.exp(-1 / tau)] * 2, rel=1e-6)
    hardware, _ = hardware_predictions(tmp_path / "sinabs_lif.nir", digits["spikes"])
    assert agreement(library, hardware, digits["labels"], "sinabs LIF") >= AGREEMENT
    with pytest.raises(NIRImportError, match="larger than a time constant"):
        read_nir(tmp_path / "sinabs_lif.nir", dt=10.0)   # another --dt reads NIR's Euler form: here β < 0


def test_sinabs_iaf_with_a_linear_readout_imports_from_the_command_line(digits, tmp_path):
    """`sbnn import` of Sinabs's IAF (no leak, β = 1) with a plain ``nn.Linear`` read-out (no neuron behind it):
    the export folder's model.nir writes the IAF layer as ``IF`` (its decay 1 has no CubaLIF time constant; the
    command stopped there before) and the read-out as a layer with α = β = 0, whose voltage is the Linear's
    output at every step: model.onnx reproduces Sinabs's output step by step, hw_sim keeps ≥ 98 %."""
    pytest.importorskip("sinabs", reason="sinabs is not installed")
    import sinabs.layers as sl
    import torch
    from conftest import run_cli
    from sinabs.activation import MembraneReset, SingleSpike
    from sinabs.nir import to_nir

    from export.onnx_export import run_onnx

    first, second = torch.nn.Linear(64, HIDDEN, bias=False), torch.nn.Linear(HIDDEN, 10, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(digits["w1"]))
        second.weight.copy_(torch.from_numpy(digits["w2"]))
    iaf = sl.IAFSqueeze(spike_threshold=1.0, spike_fn=SingleSpike, reset_fn=MembraneReset(), batch_size=1)
    model = torch.nn.Sequential(first, iaf, second)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(torch.zeros(1, 64))
        nir.write(tmp_path / "sinabs.nir", normalise_graph(to_nir(model, torch.zeros(1, 64))))
    iaf.batch_size = SAMPLES
    iaf.reset_states()
    with torch.no_grad():
        outputs = np.stack([model(torch.from_numpy(digits["spikes"][:, t])).numpy() for t in range(T)], axis=1)
    np.save(tmp_path / "calibration.npy", digits["spikes"][:100])
    done = run_cli("import", tmp_path / "sinabs.nir", "--calibration", tmp_path / "calibration.npy",
                   "--out", tmp_path / "export", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    written = nir.read(tmp_path / "export" / "model.nir")
    assert sorted(type(node).__name__ for node in written.nodes.values()) == \
        ["CubaLI", "IF", "Input", "Linear", "Linear", "Output"]
    ours = run_onnx(tmp_path / "export" / "model.onnx", digits["spikes"])
    assert np.abs(ours - outputs).max() < 1e-4 * np.abs(outputs).max()
    hardware, _ = hardware_predictions(tmp_path / "sinabs.nir", digits["spikes"])
    library = outputs.mean(axis=1).argmax(axis=1)
    assert agreement(library, hardware, digits["labels"], "sinabs IAF, Linear read-out") >= AGREEMENT


def test_snntorch_rleaky_recurrent_bias_and_linear_readout(digits, tmp_path):
    """snnTorch's RLeaky (all-to-all: its recurrent ``nn.Linear`` has a bias, once refused) and an ``nn.Linear``
    read-out with bias and no neuron: the recurrent bias is a constant current like a feed-forward bias, the
    read-out's voltage is W·s + b at every step; the float import equals snnTorch's forward. hw_sim keeps
    97.3 % of its predictions (torch seeds 1, 2: 96.3, 97.3 %; 8-bit rounding only: a read-out that does not
    integrate averages fewer of the hidden spikes that rounding moves), asserted ≥ 95 %."""
    pytest.importorskip("snntorch", reason="snnTorch is not installed")
    import snntorch as snn
    import torch
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    first, second = torch.nn.Linear(64, HIDDEN, bias=False), torch.nn.Linear(HIDDEN, 10, bias=True)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(digits["w1"]))
        second.weight.copy_(torch.from_numpy(digits["w2"]))
    hidden = snn.RLeaky(beta=torch.full((HIDDEN,), 0.8), linear_features=HIDDEN, init_hidden=True,
                        reset_mechanism="zero", reset_delay=False)
    model = torch.nn.Sequential(first, hidden, second)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nir.write(tmp_path / "rleaky.nir", export_to_nir(model, torch.zeros(1, 64), ignore_dims=[0]))
        with torch.no_grad():
            outputs = np.stack([model(torch.from_numpy(digits["spikes"][:, t])).numpy() for t in range(T)], axis=1)
    network, _ = read_nir(tmp_path / "rleaky.nir")
    recurrent_bias = hidden.recurrent.bias.detach().numpy()
    np.testing.assert_allclose(network.layers[0].current_bias, recurrent_bias, rtol=1e-6)
    assert network.layers[1].readout and (network.layers[1].alpha, network.layers[1].beta) == (0.0, 0.0)
    spikes, float_voltages = network.run(digits["spikes"], record_voltage=True)
    assert 0.01 < spikes[0].mean() < 0.5
    assert np.abs(float_voltages[-1] - outputs).max() < 1e-4 * np.abs(outputs).max()
    hardware, _ = hardware_predictions(tmp_path / "rleaky.nir", digits["spikes"])
    library = outputs.mean(axis=1).argmax(axis=1)
    assert agreement(library, hardware, digits["labels"], "snnTorch RLeaky, Linear read-out") >= 0.95


def test_norse_iafcell_gets_its_full_input_gain(digits, tmp_path):
    """norse's IAFCell adds its input in full (v ← v + x) and its exporter writes ``IF`` with r = 1: in a norse
    graph (recognised by its LIBoxCell read-out) r becomes 1/dt, not NIR's gain r·dt = dt, so the float import
    equals norse's read-out voltage step by step."""
    pytest.importorskip("norse", reason="norse is not installed")
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import norse.torch as norse

        dt = 1e-3
        first, second = torch.nn.Linear(64, HIDDEN, bias=False), torch.nn.Linear(HIDDEN, 10, bias=False)
        with torch.no_grad():
            first.weight.copy_(torch.from_numpy(digits["w1"]))
            second.weight.copy_(torch.from_numpy(digits["w2"]))
        model = norse.SequentialState(first, norse.IAFCell(norse.IAFParameters(v_th=torch.tensor(1.0)), dt=dt),
                                      second, norse.LIBoxCell(norse.LIBoxParameters(tau_mem_inv=torch.tensor(200.0)),
                                                              dt=dt))
        nir.write(tmp_path / "norse.nir", normalise_graph(norse.to_nir(model, torch.zeros(1, 64), dt=dt)))
        state, voltages = None, []
        with torch.no_grad():
            for t in range(T):
                out, state = model(torch.from_numpy(digits["spikes"][:, t]), state)
                voltages.append(out.numpy())
    voltages = np.stack(voltages, axis=1)
    network, notes = read_nir(tmp_path / "norse.nir", dt=dt)
    assert any("r = 1/dt for IF" in note for note in notes)
    spikes, float_voltages = network.run(digits["spikes"], record_voltage=True)
    assert spikes[0].mean() > 0.01
    assert np.abs(float_voltages[-1] - voltages).max() < 1e-4 * np.abs(voltages).max()
    write_nir(network, tmp_path / "model.nir")   # what `sbnn import` writes: the IAF layer as IF, r = 1/dt
    assert "IF" in [type(node).__name__ for node in nir.read(tmp_path / "model.nir").nodes.values()]
    _, written_voltages = read_nir(tmp_path / "model.nir")[0].run(digits["spikes"], record_voltage=True)
    np.testing.assert_allclose(written_voltages[-1], float_voltages[-1], rtol=1e-9, atol=1e-9)


def snntorch_pooled_model(conv_digits: dict, path, *, between_convs: bool) -> np.ndarray:
    """snnTorch's nn.Conv2d(1, 4, 3, padding=1) → Leaky → nn.AvgPool2d(2) → [nn.Conv2d(4, 4, 3, padding=1) →
    Leaky →] Flatten → nn.Linear(…, 10) read-out (no neuron: its output at every step), seeded Gaussian weights
    (off any grid, so no voltage ties the threshold), written to ``path`` by snnTorch's own exporter; and the
    read-out's output on the first 40 samples, (40, T, 10)."""
    import snntorch as snn
    import torch
    from snntorch.export_nir import export_to_nir

    rng = np.random.default_rng(1)
    draw = lambda layer, std: torch.from_numpy(  # noqa: E731
        rng.normal(0.0, std, layer.weight.shape).astype(np.float32))
    leaky = lambda shape: snn.Leaky(beta=torch.full(shape, 0.8), threshold=torch.full(shape, 1.0),  # noqa: E731
                                    init_hidden=True, reset_mechanism="zero", reset_delay=False)
    layers = [torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), leaky((4, 8, 8)), torch.nn.AvgPool2d(2)]
    if between_convs:
        layers += [torch.nn.Conv2d(4, 4, 3, padding=1, bias=False), leaky((4, 4, 4))]
    layers += [torch.nn.Flatten(), torch.nn.Linear(64, 10, bias=False)]
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                layer.weight.copy_(draw(layer, 1.0 if isinstance(layer, torch.nn.Conv2d) else 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nir.write(path, export_to_nir(model, torch.zeros(1, 1, 8, 8), ignore_dims=[0]))
        with torch.no_grad():
            return np.stack([model(torch.from_numpy(conv_digits["spikes"][:40, t])).numpy() for t in range(T)], axis=1)


@pytest.mark.parametrize("between_convs", [True, False], ids=["avgpool-conv", "avgpool-flatten-linear"])
def test_snntorch_avgpool_folds_exactly_into_the_next_synapse(conv_digits, tmp_path, capsys, between_convs):
    """snnTorch's ``nn.AvgPool2d(2)`` (exported as NIR's ``AvgPool2d``) before a Conv2d, or before Flatten →
    Linear, is folded into that synapse: `sbnn import` (in-process) writes a model.onnx whose output equals
    snnTorch's forward step by step, and hw_sim runs the quantised export with the hidden layers firing."""
    pytest.importorskip("snntorch", reason="snnTorch is not installed")
    from sbnn.cli import main

    from export.onnx_export import run_onnx

    outputs = snntorch_pooled_model(conv_digits, tmp_path / "pool.nir", between_convs=between_convs)
    spikes = conv_digits["spikes"][:40]
    np.save(tmp_path / "calibration.npy", spikes)
    assert main(["import", str(tmp_path / "pool.nir"), "--calibration", str(tmp_path / "calibration.npy"),
                 "--out", str(tmp_path / "export"), "--json"]) == 0, capsys.readouterr().err[-2000:]
    ours = run_onnx(tmp_path / "export" / "model.onnx", spikes)
    assert np.abs(ours - outputs).max() < 1e-5 * np.abs(outputs).max()
    network, notes = read_nir(tmp_path / "pool.nir")
    folded = network.layers[1]
    weights = 4 * 4 * 6 * 6 if between_convs else 10 * 4 * 8 * 8
    assert folded.weight.size == weights and any("folded exactly into synapse" in note and f"became {weights}" in note
                                                 for note in notes)
    quantised = quantise(network, spikes)
    outcome = quantised.network.run(quantised.hardware_input(spikes), record_states=True)
    assert all(0.01 < float(np.mean(fired)) < 0.6 for fired in outcome.spikes[:-1])
    latency = quantised.network.latency
    hardware = outcome.v[-1][:, latency:latency + T].mean(axis=1)
    correlation = np.corrcoef(hardware.reshape(-1), outputs.mean(axis=1).reshape(-1))[0, 1]
    print(f"snnTorch pooled ({'conv' if between_convs else 'linear'}): hw_sim vs snnTorch read-out correlation "
          f"{correlation:.3f}")
    assert correlation > 0.9


def pooled_graph(pool, input_shape: tuple[int, int, int] = (1, 8, 8)):
    """Input ``input_shape`` → [``pool``] → Conv2d(C → 3, 3×3, padding 1) → LIF → Flatten →
    Linear(…, 4) read-out → Output, Gaussian weights of seed 3 (the same with and without ``pool``), dt = 1 ms
    in the metadata (τ = 10 ms, r = 10: unit gain). Without ``pool`` the conv sees the input directly (the
    reference for a pooled input)."""
    from hw_sim.network import conv_output_hw

    rng = np.random.default_rng(3)
    channels, hw = input_shape[0], input_shape[1:]
    if pool is not None:   # MaxPool2d (below) has no stride or padding: kernel-wide steps
        kernel = tuple(pool.kernel_size)
        stride, padding = tuple(getattr(pool, "stride", kernel)), tuple(getattr(pool, "padding", (0, 0)))
        hw = conv_output_hw(hw, kernel, stride, padding, (1, 1))
    hidden = (3, *conv_output_hw(hw, (3, 3), (1, 1), (1, 1), (1, 1)))
    full = lambda value: np.full(hidden, value)  # noqa: E731
    nodes = {"input": nir.Input(input_type={"input": np.array(input_shape)}),
             **({"pool": pool} if pool is not None else {}),
             "conv": nir.Conv2d(input_shape=hw, weight=rng.normal(0.0, 0.6, (3, channels, 3, 3)), stride=1,
                                padding=1, dilation=1, groups=1, bias=np.zeros(3)),
             "lif": nir.LIF(tau=full(1e-2), r=full(10.0), v_leak=full(0.0), v_threshold=full(1.0)),
             "flatten": nir.Flatten(input_type={"input": np.array(hidden)}, start_dim=0, end_dim=-1),
             "readout": nir.Linear(weight=rng.normal(0.0, 0.3, (4, int(np.prod(hidden))))),
             "output": nir.Output(output_type={"output": np.array([4])})}
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), metadata={"dt": 1e-3}, type_check=False)


def test_sumpool_with_padding_folds_exactly_into_a_conv(tmp_path):
    """NIR's ``SumPool2d`` (no peer writes one) with kernel 2, stride 2 and padding 1, written with nir and
    read back, folds into the next Conv2d (padding 1) as one 6×6 conv, stride 2, padding 3: spikes and read-out
    voltages equal those of the same graph without the pooling on torch's sum-pooled input."""
    import torch
    import torch.nn.functional as F

    pool = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([1, 1]))
    nir.write(tmp_path / "sumpool.nir", pooled_graph(pool))
    network, notes = read_nir(tmp_path / "sumpool.nir")
    conv = network.layers[0]
    assert (conv.weight.shape, conv.stride, conv.padding, conv.input_shape) == ((3, 1, 6, 6), (2, 2), (3, 3), (1, 8, 8))
    assert any("pooling 'pool' (SumPool2d (2, 2), stride (2, 2)) folded exactly into synapse 'conv': 27 weights "
               "became 108" in note for note in notes)
    reference, _ = from_nir(pooled_graph(None, (1, 5, 5)))
    x = (np.random.default_rng(0).random((6, T, 1, 8, 8)) < 0.4).astype(np.float64)
    pooled = F.avg_pool2d(torch.from_numpy(x.reshape(-1, 1, 8, 8)), 2, 2, 1, divisor_override=1).numpy()
    spikes, voltages = network.run(x, record_voltage=True)
    want_spikes, want_voltages = reference.run(pooled.reshape(6, T, 1, 5, 5), record_voltage=True)
    assert 0.01 < spikes[0].mean() < 0.6 and np.array_equal(spikes[0], want_spikes[0])
    np.testing.assert_allclose(voltages[-1], want_voltages[-1], rtol=1e-9, atol=1e-9)


@dataclass(eq=False)
class MaxPool2d(nir.NIRNode):
    """A max-pooling node as a library might add one (NIR 1.0.8 has none)."""

    kernel_size: np.ndarray

    def __post_init__(self):
        self.input_type, self.output_type = {"input": None}, {"output": None}


AVERAGE = dict(kernel_size=np.array([2, 2]), stride=np.array([2, 2]))


@pytest.mark.parametrize("pool, input_shape, message", [
    (nir.AvgPool2d(**AVERAGE, padding=np.array([1, 1])), (1, 8, 8),
     r"node 'pool' \(AvgPool2d\): padding \(1, 1\) cannot be folded: NIR does not say whether the average counts"),
    (nir.AvgPool2d(**AVERAGE, padding=np.array([0, 0])), (1, 9, 8),
     r"node 'pool' \(AvgPool2d \(2, 2\), stride \(2, 2\)\) cannot be folded exactly into Conv2d 'conv' \(padding "
     r"\(1, 1\)\): along the height, the padded conv would read un-pooled values where the pooled map has its "
     r"padding \(a map the pooling stride does not divide"),
    (MaxPool2d(kernel_size=np.array([2, 2])), (1, 8, 8),
     r"node 'pool' of type MaxPool2d cannot be mapped to Loihi .*max pooling is not linear, replace it by average "
     r"pooling or a strided Conv2d")], ids=["avgpool-padding", "padded-conv-over-a-remainder", "maxpool"])
def test_pooling_that_cannot_be_folded_is_refused_in_one_line(pool, input_shape, message):
    """An average with padding (NIR leaves count_include_pad open), a padded conv over the row an AvgPool2d(2)
    drops from a 9-row map, and max pooling: each a one-line error naming the node and the reason."""
    with pytest.raises(ValueError, match=message) as refused:
        from_nir(pooled_graph(pool, input_shape))
    assert "\n" not in str(refused.value)


def test_rockpool_lif_is_refused_naming_its_exporter_bugs(tmp_path):
    pytest.importorskip("rockpool", reason="Rockpool is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from rockpool.nn.combinators import Sequential
        from rockpool.nn.modules import LinearTorch, LIFTorch
        from rockpool.nn.modules.torch.nir import to_nir

        model = Sequential(LinearTorch((64, HIDDEN)), LIFTorch(HIDDEN), LinearTorch((HIDDEN, 10)), LIFTorch(10))
        nir.write(tmp_path / "rockpool.nir", normalise_graph(to_nir(model)))
    for dt in (None, 1e-3):
        with pytest.raises(NIRImportError, match=r"Rockpool's to_nir .* dt = 0.001 s.*v_leak = 0 whatever the "
                                                 r"bias.*subtracts the threshold"):
            read_nir(tmp_path / "rockpool.nir", dt=dt)


def test_wrong_dt_is_one_line_and_exit_2(tmp_path):
    """A --dt that contradicts the file's own (here our metadata's) is refused on the command line."""
    from conftest import run_cli
    from fuzzing import small_float_network

    write_nir(small_float_network(conv=False), tmp_path / "model.nir")
    result = run_cli("import", tmp_path / "model.nir", "--dt", "5e-4", "--out", tmp_path / "export")
    assert result.returncode == 2 and "contradicts the file" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "export").exists()


def test_imported_current_biases_run_from_the_command_line(digits, tmp_path):
    """`sbnn import` of snnTorch Linear biases then `sbnn simulate --inputs` with the user's own spike trains
    (N, T, 64): the command appends the always-on channel the export added (1 while the input is presented,
    0 in the latency padding) and runs what hw_sim runs on ``hardware_input`` of the same spikes."""
    pytest.importorskip("snntorch", reason="snnTorch is not installed")
    import torch
    from conftest import run_cli

    torch.manual_seed(0)
    snntorch_synaptic_model(digits, tmp_path / "biased.nir", bias=True)
    np.save(tmp_path / "calibration.npy", digits["spikes"][:100])
    np.save(tmp_path / "x.npy", digits["spikes"][:60])
    done = run_cli("import", tmp_path / "biased.nir", "--calibration", tmp_path / "calibration.npy",
                   "--out", tmp_path / "export", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli("simulate", tmp_path / "export", "--inputs", tmp_path / "x.npy", "--batch-size", "7", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    quantised = quantise(read_nir(tmp_path / "biased.nir")[0], digits["spikes"][:100])
    direct = quantised.network.run(quantised.hardware_input(digits["spikes"][:60]))
    assert summary["steps"] == T + quantised.network.latency
    assert summary["firing_rates"] == pytest.approx([float(np.mean(s)) for s in direct.spikes], abs=1e-12)
    assert summary["firing_rates"][0] > 0


def test_imported_conv_current_biases_run_from_the_command_line(conv_digits, tmp_path):
    """`sbnn import` of snnTorch Conv2d biases then `sbnn simulate --inputs` with (N, T, 1, 8, 8) spikes: the
    command appends the always-on channels on the channel axis and runs what hw_sim runs on ``hardware_input``;
    the float backend (``--backend torch``) strips them again before running model.nir."""
    pytest.importorskip("snntorch", reason="snnTorch is not installed")
    from conftest import run_cli

    snntorch_conv_model(conv_digits, tmp_path / "conv.nir")
    spikes = conv_digits["spikes"]
    np.save(tmp_path / "calibration.npy", spikes[:100])
    np.save(tmp_path / "x.npy", spikes[:20])
    done = run_cli("import", tmp_path / "conv.nir", "--calibration", tmp_path / "calibration.npy",
                   "--out", tmp_path / "export", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    quantised = quantise(read_nir(tmp_path / "conv.nir")[0], spikes[:100])
    direct = quantised.network.run(quantised.hardware_input(spikes[:20]))
    for backend in ("hw_sim", "torch"):
        done = run_cli("simulate", tmp_path / "export", "--inputs", tmp_path / "x.npy", "--backend", backend, "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout)
        if backend == "hw_sim":
            assert summary["firing_rates"] == pytest.approx([float(np.mean(s)) for s in direct.spikes], abs=1e-12)
        assert summary["firing_rates"][0] > 0
