"""hw_sim's torch backend (``device=``, hw_sim/torch_backend.py) against the numpy simulator: every spike, u and
v of every layer, bit for bit, same dtypes and shapes, on every kind of network the hw_sim tests use (seeded
random networks over Lava's parameter space, the edge cases of test_hw_sim_fast_paths.py, the netx example
files, slayer-style files, a quantised export). On the CPU everywhere, on CUDA where torch sees a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest

import hw_sim
from conftest import ROOT, run_cli_concurrently
from hw_sim import ConvLayer, CubaNeurons, DenseLayer, Network, NetworkError, SignMode
from hw_sim.random_networks import random_input, random_network, write_slayer_style_file

torch = pytest.importorskip("torch")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

# Every option set the hw_sim tests give random_network (fast paths, Lava, network and file tests), each with
# a seed whose network is active at both input densities: every layer receives input, the last one spikes
# (or, a readout, integrates).
RANDOM_KINDS = {
    "dense": (100, dict()),
    "two_hidden_no_bias": (102, dict(hidden=(40, 24), bias=False)),
    "recurrent": (103, dict(recurrent=True)),
    "stress": (103, dict(stress=True)),
    "stress_two_hidden": (106, dict(stress=True, hidden=(30, 20))),
    "stress_recurrent": (105, dict(stress=True, recurrent=True)),
    "readout": (106, dict(readout=True)),
    "recurrent_readout": (107, dict(recurrent=True, readout=True)),
    "delays": (108, dict(delays=3)),
    "recurrent_delays": (109, dict(delays=2, recurrent=True)),
    "graded": (110, dict(input_message_bits=8)),
    "conv": (111, dict(input_shape=(2, 9, 9), conv_channels=(4,), hidden=(16,))),
    "conv_two": (112, dict(input_shape=(2, 9, 7), conv_channels=(3, 4), hidden=(12,))),
    "conv_stress": (114, dict(input_shape=(3, 11, 10), conv_channels=(4, 6), hidden=(12,), stress=True)),
    "conv_only_stress": (114, dict(input_shape=(2, 8, 8), conv_channels=(3,), hidden=(), stress=True)),
    "graded_conv": (115, dict(input_shape=(2, 8, 8), conv_channels=(5,), hidden=(10,), input_message_bits=6)),
    "conv_recurrent_delays": (116, dict(input_shape=(2, 7, 7), conv_channels=(3,), hidden=(20,), recurrent=True,
                                        delays=2)),
    "netx_compatible": (117, dict(input_shape=(2, 8, 8), conv_channels=(3,), hidden=(16,), netx_compatible=True,
                                  readout=True)),
    "wide_sparse": (118, dict(input_shape=(90,), hidden=(140,))),          # event-driven products on the CPU
    "wide_stress": (120, dict(input_shape=(70,), hidden=(130,), stress=True, bias=False)),
}


def assert_same_run(network: Network, x: np.ndarray, device="cpu") -> int:
    """The torch backend on ``device`` equals the numpy simulator in every spike, u and v (dtype and shape
    too), with and without states; returns the activity: the spike count, or for a readout its |v| sum too."""
    expected = hw_sim.run(network, x, record_states=True)
    actual = hw_sim.run(network, x, record_states=True, device=device)
    for name in ("spikes", "u", "v"):
        for k, (a, b) in enumerate(zip(getattr(expected, name), getattr(actual, name), strict=True)):
            assert isinstance(b, np.ndarray) and (b.dtype, b.shape) == (a.dtype, a.shape), (name, k)
            assert np.array_equal(a, b), f"layer {k}: {name} differs"
    plain = hw_sim.run(network, x, device=device)
    assert plain.u == [] and plain.v == []
    assert all(np.array_equal(a, b) for a, b in zip(expected.spikes, plain.spikes, strict=True))
    return int(sum(s.sum() for s in expected.spikes) + np.abs(expected.v[-1]).sum())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("density", [0.02, 0.3])
@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_random_networks_equal_the_numpy_run(kind, density, device):
    seed, options = RANDOM_KINDS[kind]
    network = random_network(seed, **options)
    x = random_input(seed, network, 3, 18, density=density)
    assert assert_same_run(network, x, device) > 0
    result = hw_sim.run(network, x, record_states=True)
    assert all(np.abs(u).sum() > 0 for u in result.u), "every layer must receive input"
    assert result.spikes[-1].sum() > 0 or network.layers[-1].readout and np.abs(result.v[-1]).sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_edge_cases_equal_the_numpy_run(device):
    """The hand-built cases of test_hw_sim_fast_paths.py: grouped, dilated, strided conv; conv sums beyond 24
    bits with graded input; thresholds at the extremes with saturation; negative saturation; all-zero and
    all-one input; one step of delay per layer."""
    rng = np.random.default_rng(3)
    neurons = CubaNeurons.create((6, 4, 3), du=300, dv=100, vth=20, bias_mant=rng.integers(-40, 40, (6, 4, 3)))
    grouped = ConvLayer(weights=rng.integers(-60, 61, size=(6, 2, 3, 2)), neurons=neurons, input_shape=(4, 9, 8),
                        stride=(2, 3), padding=(1, 1), dilation=(2, 1), groups=2)
    head = DenseLayer(weights=rng.integers(-100, 100, size=(5, 72)),
                      neurons=CubaNeurons.create((5,), du=100, dv=50, vth=50))
    network = Network(input_shape=(4, 9, 8), layers=(grouped, head))
    assert assert_same_run(network, random_input(3, network, 2, 12, density=0.4), device) > 0

    weights = np.full((3, 2, 3, 3), (1 << 15) - 1)
    weights[1] *= -1
    wrapping = ConvLayer(weights=weights, neurons=CubaNeurons.create((3, 5, 5), du=0, dv=0, vth=(1 << 17) - 1),
                         input_shape=(2, 5, 5), padding=(1, 1))
    network = Network(input_shape=(2, 5, 5), layers=(wrapping,), input_message_bits=8)
    assert_same_run(network, np.random.default_rng(0).integers(0, 256, size=(2, 8, 2, 5, 5)), device)

    dense = rng.integers(0, 256, size=(6, 20))
    extremes = [(vth, *decays) for vth in (0, 1, (1 << 17) - 1) for decays in ((0, 0, 7), (4095, 4096, 0), (-1, 0, 3))]
    for vth, du, dv, exp in extremes:   # thresholds at the extremes, no decay or full decay, large exponents
        layer = DenseLayer(weights=dense, weight_exp=exp, sign_mode=SignMode.EXCITATORY, neurons=CubaNeurons.create(
            (6,), du=du, dv=dv, vth=vth, bias_mant=rng.integers(-500, 500, 6)))
        network = Network(input_shape=(20,), layers=(layer, replace(layer, weights=dense[:, :6])))
        assert_same_run(network, random_input(vth, network, 2, 25, density=0.5), device)

    neurons = CubaNeurons.create((4,), du=4095, dv=0, vth=10, bias_mant=np.array([0, -300, 0, 500]), bias_exp=3)
    network = Network(input_shape=(10,), layers=(DenseLayer(weights=np.full((4, 10), -255), neurons=neurons,
                                                            weight_exp=6, sign_mode=SignMode.INHIBITORY),))
    assert_same_run(network, random_input(1, network, 2, 60, density=0.6), device)

    for fill in (0, 1):
        network = random_network(2, input_shape=(2, 7, 7), conv_channels=(3,), hidden=(8,))
        assert_same_run(network, np.full((2, 10, 2, 7, 7), fill, dtype=np.uint8), device)
    relay = DenseLayer(weights=np.array([[2]]), neurons=CubaNeurons.create((1,), du=4095, dv=4096, vth=0))
    chain = Network(input_shape=(1,), layers=(relay,) * 3)
    x = np.zeros((1, 6, 1), dtype=np.uint8)
    x[0, 0, 0] = 1
    assert assert_same_run(chain, x, device) == 3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, input_shape", [("conv_first.h5", (2, 10, 12)), ("dense_delays.h5", None),
                                               ("recurrent_delays.h5", None)])
def test_example_netx_files_equal_the_numpy_run(name, input_shape, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = hw_sim.load(ROOT / "examples/netx" / name, input_shape=input_shape)
    assert assert_same_run(network, random_input(0, network, 3, 30), device) > 0


SLAYER_FILES = {
    "dense_delays_bias": dict(hidden=(20, 12), delays=3, bias=True),
    "recurrent": dict(recurrent=True, input_layer=True),
    "conv": dict(input_shape=(2, 10, 12), conv_channels=(4,), hidden=(16,), density=0.3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", SLAYER_FILES)
def test_slayer_style_files_equal_the_numpy_run(tmp_path, kind, device):
    options = SLAYER_FILES[kind]
    write_slayer_style_file(tmp_path / "net.h5", 5, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = hw_sim.load(tmp_path / "net.h5", input_shape=options.get("input_shape"))
    assert assert_same_run(network, random_input(1, network, 3, 25, density=options.get("density", 0.2)), device) > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("graded", [False, True])
def test_quantised_export_equals_the_numpy_run(tmp_path, graded, device):
    """What sbnn export writes to loihi.h5: a float network (conv, recurrent dense, readout) quantised by
    export.quantise, saved and read back."""
    from export.float_network import FloatLayer, FloatNetwork
    from export.quantise import quantise

    rng = np.random.default_rng(0)
    layers = (FloatLayer(kind="conv", weight=rng.normal(0.1, 0.4, (3, 2, 3, 3)), alpha=0.7, beta=0.8, threshold=1.0,
                         bias=np.zeros((3, 4, 4)), input_shape=(2, 8, 8), stride=(2, 2), padding=(1, 1)),
              FloatLayer(kind="dense", weight=rng.normal(0.08, 0.3, (20, 48)), alpha=0.8, beta=0.9, threshold=1.0,
                         bias=rng.normal(0.02, 0.01, 20), recurrent_weight=rng.normal(0, 0.2, (20, 20))),
              FloatLayer(kind="dense", weight=rng.normal(0.1, 0.3, (6, 20)), alpha=0.75, beta=0.95, threshold=None,
                         bias=np.zeros(6)))
    float_network = FloatNetwork(input_shape=(2, 8, 8), layers=layers, dt=1e-3)
    x = rng.random((6, 30, 2, 8, 8)) * 0.5 if graded else (rng.random((6, 30, 2, 8, 8)) < 0.25).astype(np.float64)
    quantised = quantise(float_network, x)
    network = hw_sim.load(hw_sim.save(quantised.network, tmp_path / "loihi.h5"))
    assert network.layers[-1].readout and network.input_message_bits == (8 if graded else 0)
    assert assert_same_run(network, quantised.encode_input(x), device) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_long_run_where_int32_wraps_act_equals_the_step_by_step_recursion(device):
    """A near-integrator driven by |a_in << 6| ≈ 2^25 every step for 300 steps: u wraps at 24 bits each step
    and leaves int32, where Lava's int32 arithmetic wraps it. The torch backend equals hw_sim's literal
    int64 recursion (loihi.neuron_step, one step at a time) in every u and v."""
    from hw_sim.loihi import _run_neurons_int, dense_synaptic_input
    neurons = CubaNeurons.create((2,), du=0, dv=0, vth=(1 << 17) - 1)
    layer = DenseLayer(weights=np.full((2, 16), 255), neurons=neurons, weight_exp=7, sign_mode=SignMode.EXCITATORY)
    x = np.ones((2, 300, 16), dtype=np.uint8)
    x[1, ::3] = 0
    synaptic = dense_synaptic_input(layer, x.reshape(600, 16), 1).reshape(2, 300, 2)
    spikes, us, vs = _run_neurons_int(layer, synaptic, None, True)
    ours = hw_sim.run(Network(input_shape=(16,), layers=(layer,)), x, record_states=True, device=device)
    assert np.abs(us).max() > 1 << 30, "u must leave 24 bits far enough for int32 to matter"
    assert np.array_equal(ours.u[0], us) and np.array_equal(ours.v[0], vs) and np.array_equal(ours.spikes[0], spikes)


def test_sums_beyond_two_to_the_53_use_int64_on_the_cpu():
    """Graded payloads near 2^45 into 255-weights: no float type is exact, so the dense product is int64
    (on the CPU, as CUDA has no int64 matmul), and Lava's int32 wrap of the sums acts; conv refuses, as numpy does."""
    neurons = CubaNeurons.create((3,), du=100, dv=100, vth=(1 << 17) - 1)
    network = Network(input_shape=(300,), layers=(DenseLayer(weights=np.full((3, 300), 255), neurons=neurons),),
                      input_message_bits=24)
    x = np.random.default_rng(0).integers(0, 1 << 45, size=(2, 6, 300))
    assert assert_same_run(network, x) > 0
    conv = ConvLayer(weights=np.full((1, 1, 3, 3), (1 << 15) - 1), input_shape=(1, 4, 4),
                     neurons=CubaNeurons.create((1, 2, 2), du=0, dv=0, vth=10))
    network = Network(input_shape=(1, 4, 4), layers=(conv,), input_message_bits=24)
    for device in (None, "cpu"):
        with pytest.raises(NetworkError, match="beyond 2\\^53"):
            hw_sim.run(network, np.full((1, 3, 1, 4, 4), 1 << 45), device=device)


def test_reduced_float32_matmul_precision_falls_back_to_float64():
    """With TF32/bf16 float32 matmuls allowed, float32 is not exact: every product goes to float64."""
    from hw_sim.torch_backend import _float_dtype
    network = random_network(3, input_shape=(40,), hidden=(30,))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert _float_dtype(torch, 100) is torch.float64
        assert assert_same_run(network, random_input(3, network, 3, 15)) > 0
    finally:
        torch.set_float32_matmul_precision(before)
    assert _float_dtype(torch, 100) is torch.float32 and _float_dtype(torch, 1 << 24) is torch.float64


def test_accelerator_conv_path_is_exact():
    """The conv path the backend takes on CUDA (cuDNN off, torch's plain-sum algorithms only), run on CPU
    tensors: the same sums as hw_sim.conv.exact_conv2d, in float32 below 2^24 and float64 above."""
    from hw_sim.conv import exact_conv2d
    from hw_sim.torch_backend import _accelerator_conv
    rng = np.random.default_rng(1)
    for scale, dtype in ((60, torch.float32), (30000, torch.float64)):
        neurons = CubaNeurons.create((6, 4, 3), du=0, dv=0, vth=1)
        layer = ConvLayer(weights=rng.integers(-scale, scale + 1, size=(6, 2, 3, 2)), neurons=neurons,
                          input_shape=(4, 9, 8), stride=(2, 3), padding=(1, 1), dilation=(2, 1), groups=2)
        rows = rng.integers(0, 200, size=(5, 4, 9, 8))
        bound = int(np.abs(layer.weights).reshape(6, -1).sum(axis=1).max()) * 200
        sums = _accelerator_conv(torch, layer, torch.from_numpy(rows), bound)
        assert sums.dtype == dtype and np.array_equal(sums.numpy(), exact_conv2d(layer, rows, bound))


def test_sparse_wide_layer_takes_the_event_driven_product(monkeypatch):
    import hw_sim.torch_backend as backend
    calls = []
    original = backend._event_product
    monkeypatch.setattr(backend, "_event_product",
                        lambda torch, rows, matrix: calls.append(rows.shape) or original(torch, rows, matrix))
    network = random_network(11, input_shape=(120,), hidden=(130,))
    assert assert_same_run(network, random_input(11, network, 2, 12, density=0.03)) > 0
    assert calls and tuple(calls[0]) == (24, 120)


def test_devices_torch_cannot_use_are_one_line_errors():
    for device, message in (("gpu", "not a torch device"), ("meta", "'cpu' or 'cuda' only"),
                            (f"cuda:{torch.cuda.device_count()}", "CUDA device")):
        with pytest.raises(NetworkError, match=message) as error:
            hw_sim.run(random_network(1), random_input(1, random_network(1), 1, 5), device=device)
        assert str(error.value).startswith(f"device {device!r}: ") and "\n" not in str(error.value)
    assert_same_run(random_network(1), random_input(1, random_network(1), 2, 8), torch.device("cpu"))


def test_importing_hw_sim_and_its_torch_backend_does_not_import_torch():
    code = "import sys, hw_sim, hw_sim.torch_backend; hw_sim.run; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_sbnn_simulate_device_gives_the_numpy_results(tmp_path):
    path = ROOT / "examples/netx/recurrent_delays.h5"
    numpy_run, torch_run, lava_device, bad_device = run_cli_concurrently([
        ["simulate", path, "--json", "--batch-size", "3"],
        ["simulate", path, "--json", "--batch-size", "3", "--device", "cpu"],
        ["simulate", path, "--backend", "lava", "--device", "cpu"],
        ["simulate", path, "--device", "cuda:99"]], tmp_path)
    assert numpy_run.returncode == 0 and torch_run.returncode == 0, (numpy_run.stderr, torch_run.stderr)
    expected, actual = json.loads(numpy_run.stdout), json.loads(torch_run.stdout)
    assert actual.pop("device") == "cpu"
    for summary in (expected, actual):
        summary.pop("seconds")
    assert actual == expected and expected["output_spikes"] + sum(expected["firing_rates"]) > 0
    for done, fragment in ((lava_device, "--device cpu: only the hw_sim backend"),
                           (bad_device, "--device 'cuda:99': torch sees")):
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr
