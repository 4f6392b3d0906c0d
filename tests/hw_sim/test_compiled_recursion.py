"""The numba-compiled layers (hw_sim/compiled.py) against the numpy recursions they replace for
feed-forward layers, bit for bit, on both of their inputs (sums from the spikes inside the kernel, or a
product computed first), and against Lava's step (:func:`hw_sim.loihi.neuron_step`) where the drive pushes
u past its 24-bit fold and int32 wraps act. The ``numpy_recursion`` fixture forces the numpy fallback, as
where numba is not installed, so both paths stay tested."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hw_sim.loihi as loihi
from hw_sim import CubaNeurons, DenseLayer, Network, SignMode
from hw_sim.arith import shift_by_exponent
from hw_sim.loihi import neuron_step, run
from hw_sim.random_networks import random_input, random_network

compiled = pytest.importorskip("hw_sim.compiled", reason="numba is not installed")


@pytest.fixture(params=["events", "product"])
def compiled_input(request, monkeypatch):
    """Every compiled layer summing its input spikes in the kernel ("events"), or fed a product ("product")."""
    density = 2.0 if request.param == "events" else 0.0
    monkeypatch.setattr(loihi, "DENSE_EVENT_DENSITY", density)
    monkeypatch.setattr(loihi, "CONV_EVENT_DENSITY", density)
    return request.param


@pytest.fixture
def numpy_recursion(monkeypatch):
    """Every layer on the numpy recursions, as where numba cannot be imported."""
    monkeypatch.setattr(loihi, "_COMPILED", [None])


def run_both(network: Network, x: np.ndarray, monkeypatch, record_states: bool = True):
    """The run on the compiled recursion, then on the numpy ones; asserts they agree bit for bit."""
    fast = run(network, x, record_states=record_states)
    with monkeypatch.context() as patch:
        patch.setattr(loihi, "_COMPILED", [None])
        slow = run(network, x, record_states=record_states)
    for k in range(len(network.layers)):
        assert fast.spikes[k].dtype == np.uint8 and fast.spikes[k].shape == slow.spikes[k].shape
        assert np.array_equal(fast.spikes[k], slow.spikes[k]), f"layer {k} spikes differ"
        if record_states:
            assert fast.u[k].dtype == fast.v[k].dtype == np.int64
            assert np.array_equal(fast.u[k], slow.u[k]), f"layer {k} u differs"
            assert np.array_equal(fast.v[k], slow.v[k]), f"layer {k} v differs"
    return fast


CASES = [
    dict(),
    dict(hidden=(40, 24), bias=False),
    dict(stress=True),
    dict(stress=True, bias=False),
    dict(readout=True),
    dict(recurrent=True),                           # the recurrent layer stays numpy, the others compile
    dict(delays=3),
    dict(input_message_bits=8),
    dict(input_message_bits=8, stress=True),
    dict(input_shape=(2, 9, 9), conv_channels=(4,), hidden=(16,)),
    dict(input_shape=(3, 11, 10), conv_channels=(4, 6), hidden=(12,), stress=True),
    dict(input_shape=(2, 8, 8), conv_channels=(5,), hidden=(10,), input_message_bits=6),
    dict(input_shape=(90,), hidden=(140,)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("record_states", [True, False])
def test_random_networks_equal_the_numpy_recursions(case, batch, record_states, compiled_input, monkeypatch):
    for seed in range(3):
        network = random_network(200 + 10 * case + seed, **CASES[case])
        x = random_input(seed, network, batch, 16, density=(0.05, 0.3, 0.9)[seed])
        run_both(network, x, monkeypatch, record_states)


def test_the_compiled_path_runs_feed_forward_layers_only():
    network = random_network(7, recurrent=True, hidden=(12, 8))
    paths = [loihi._compiled_recursion(layer) for layer in network.layers]
    assert paths[0] is None and paths[1:] == [compiled] * 2


def test_the_numpy_fallback_is_taken_without_numba(monkeypatch, numpy_recursion):
    calls = []
    for name in ("run_neurons", "run_dense", "run_conv"):
        monkeypatch.setattr(compiled, name, lambda *args: calls.append(args))
    network = random_network(3)
    assert loihi._compiled_recursion(network.layers[0]) is None
    run(network, random_input(3, network, 2, 10), record_states=True)
    assert calls == []


def test_numba_that_cannot_be_imported_means_the_numpy_recursions(monkeypatch):
    monkeypatch.setattr(loihi, "_COMPILED", [])
    monkeypatch.setitem(sys.modules, "numba", None)          # import numba raises ImportError
    monkeypatch.delitem(sys.modules, "hw_sim.compiled")
    network = random_network(4)
    assert loihi._compiled_recursion(network.layers[0]) is None
    assert run(network, random_input(4, network, 1, 8)).spikes[0].shape == (1, 8, 48)


def test_importing_hw_sim_does_not_import_numba():
    code = "import sys, hw_sim.loihi; assert 'numba' not in sys.modules and 'hw_sim.compiled' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]


def stepped(neurons: CubaNeurons, a_in: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spikes, u and v (B, T, N) of :func:`neuron_step` fed ``a_in[:, t - 1]`` at step t (B, T, N) int64."""
    batch, steps, size = a_in.shape
    u = v = np.zeros((batch, size), dtype=np.int64)
    out = [np.zeros((batch, steps, size), dtype=np.int64) for _ in range(3)]
    for t in range(steps):
        u, v, fired = neuron_step(neurons, neurons.bias, u, v, a_in[:, t - 1] if t else np.zeros_like(u))
        for record, value in zip(out, (fired, u, v)):
            record[:, t] = value
    return tuple(out)


def assert_kernel_matches_neuron_step(neurons: CubaNeurons, a_in: np.ndarray, inputs: np.ndarray, exponent: int):
    """run_neurons on ``inputs`` (B, T, N) (a_in = shift(inputs, exponent)) equals Lava's step on a_in."""
    spikes, us, vs = compiled.run_neurons(neurons, inputs, exponent, True)
    expected = stepped(neurons, a_in)
    for name, ours, theirs in zip(("spikes", "u", "v"), (spikes, us, vs), expected):
        assert np.array_equal(ours, theirs), f"{name} differs"
    plain, none_u, none_v = compiled.run_neurons(neurons, inputs, exponent, False)
    assert np.array_equal(plain, spikes) and none_u is None and none_v is None


@pytest.mark.parametrize("seed", range(6))
def test_kernel_equals_neuron_step_in_every_regime(seed):
    """Random int32 inputs, from tiny to full range, with random and extreme decays, thresholds and
    biases: u folds, int32 wraps, v saturates. int64 synaptic input (exponent 0), as the int path feeds it."""
    rng = np.random.default_rng(seed)
    batch, steps, size = 2, 40, 9
    scale = 1 << int(rng.integers(4, 32))
    a_in = np.clip(rng.integers(-scale, scale, size=(batch, steps, size)), -(1 << 31), (1 << 31) - 1)
    du = int(rng.choice([-1, 0, 4095, int(rng.integers(0, 4096))]))
    dv = int(rng.choice([0, 4096, int(rng.integers(0, 4097))]))
    vth = int(rng.choice([0, 1, (1 << 17) - 1, (1 << 31) - 1, int(rng.integers(0, 1 << 16))]))
    neurons = CubaNeurons.create((size,), du=du, dv=dv, vth=vth, bias_mant=rng.integers(-4000, 4000, size),
                                 bias_exp=rng.integers(-3, 8, size))
    assert_kernel_matches_neuron_step(neurons, a_in, a_in, 0)


@pytest.mark.parametrize("exponent", [-7, -3, 0, 2, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_kernel_applies_the_weight_exponent_to_bare_sums(exponent, dtype):
    """Bare dense sums in the drive's dtypes, shifted by the weight exponent (flooring) inside the kernel."""
    rng = np.random.default_rng(exponent + 10)
    sums = rng.integers(-(1 << 17), 1 << 17, size=(3, 30, 7))
    neurons = CubaNeurons.create((7,), du=int(rng.integers(0, 4096)), dv=int(rng.integers(0, 4097)), vth=500,
                                 bias_mant=rng.integers(-100, 100, 7))
    inputs = sums.astype(dtype)
    assert_kernel_matches_neuron_step(neurons, shift_by_exponent(sums, exponent), inputs, exponent)


def test_one_block_leaving_the_plain_range_is_redone_exactly():
    """A layer wider than a block, where only neurons of the second block get a drive beyond one fold:
    that block is redone with every wrap, the first stays on the plain float recursion; both exact."""
    size = compiled.BLOCK + 5
    neurons = CubaNeurons.create((size,), du=0, dv=0, vth=(1 << 17) - 1, bias_mant=3)
    a_in = np.full((2, 200, size), 100, dtype=np.int64)
    a_in[1, :, -3:] = 1 << 19                            # |a_in << 6| = 2^25: past the fold, then int32 wraps
    assert_kernel_matches_neuron_step(neurons, a_in, a_in, 0)
    u = compiled.run_neurons(neurons, a_in, 0, True)[1]
    assert np.abs(u[1, :, -1]).max() > 1 << 23 and np.abs(u[0]).max() < 1 << 23


@pytest.mark.parametrize("weight_exp, inputs_on, message_bits",
                         [(7, 16, 0), (4, 16, 0), (7, 16, 8), (-2, 5, 8), (0, 16, 0), (-3, 16, 8)])
def test_strong_drive_through_the_whole_run(weight_exp, inputs_on, message_bits, compiled_input, monkeypatch):
    """Dense drive beyond one 24-bit fold (binary input) and beyond int32 once shifted by 6 (8-bit payloads,
    the int path), or small enough for the float paths while u, never decaying, still grows past its fold
    (exponents 0 and -3): the run equals Lava's step by step, and the numpy recursions."""
    neurons = CubaNeurons.create((2,), du=0, dv=0, vth=(1 << 17) - 1)
    layer = DenseLayer(weights=np.full((2, 16), 255), neurons=neurons, weight_exp=weight_exp,
                       sign_mode=SignMode.EXCITATORY)
    network = Network(input_shape=(16,), layers=(layer,), input_message_bits=message_bits)
    x = np.zeros((2, 150, 16), dtype=np.int64)
    x[:, :, :inputs_on] = np.random.default_rng(inputs_on).integers(1, 256 if message_bits else 2,
                                                                    size=(2, 150, inputs_on))
    result = run_both(network, x, monkeypatch)
    a_in = shift_by_exponent(x @ layer.weights.T, weight_exp)
    expected = stepped(neurons, loihi.wrap_int32(a_in))
    assert np.array_equal(result.u[0], expected[1]) and np.array_equal(result.v[0], expected[2])
    assert np.array_equal(result.spikes[0], expected[0])
