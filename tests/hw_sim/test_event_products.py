"""The compiled kernels' event-driven sums (hw_sim/compiled.py: DENSE and CONV), which add the weights of
the inputs that fired inside the neuron recursion, against products computed first (torch's conv2d, exact
integer matmuls) fed to the same recursion, bit for bit; and the density that chooses between them."""

from __future__ import annotations

import numpy as np
import pytest

import hw_sim.loihi as loihi
from hw_sim import ConvLayer, CubaNeurons, DenseLayer, Network
from hw_sim.arith import shift_by_exponent
from hw_sim.random_networks import random_network

compiled = pytest.importorskip("hw_sim.compiled", reason="numba is not installed")

GEOMETRIES = [  # (input shape, kernel, stride, padding, dilation, groups)
    ((2, 9, 9), (3, 3), (1, 1), (0, 0), (1, 1), 1),
    ((2, 10, 11), (3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((4, 9, 8), (3, 2), (2, 3), (1, 1), (2, 1), 2),
    ((6, 7, 7), (1, 1), (1, 1), (0, 0), (1, 1), 3),
    ((3, 12, 6), (5, 3), (3, 1), (2, 0), (1, 2), 1),
    ((4, 5, 5), (3, 3), (1, 1), (3, 3), (1, 1), 4),
]


def conv_layer(seed: int, geometry: tuple, channels_per_group: int = 3, vth: int = 40) -> ConvLayer:
    shape, kernel, stride, padding, dilation, groups = geometry
    rng = np.random.default_rng(seed)
    out_h, out_w = ((n + 2 * p - d * (k - 1) - 1) // s + 1
                    for n, k, s, p, d in zip(shape[1:], kernel, stride, padding, dilation))
    c_out = channels_per_group * groups
    neurons = CubaNeurons.create((c_out, out_h, out_w), du=int(rng.integers(0, 4096)), dv=int(rng.integers(0, 4097)),
                                 vth=vth, bias_mant=rng.integers(-30, 30, (c_out, out_h, out_w)))
    weights = rng.integers(-60, 61, size=(c_out, shape[0] // groups, *kernel))
    return ConvLayer(weights=weights, neurons=neurons, input_shape=shape, stride=stride, padding=padding,
                     dilation=dilation, groups=groups)


def assert_runs_equal(ours, theirs) -> None:
    for name, a, b in zip(("spikes", "u", "v"), ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b), f"{name} differs"


@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)))
@pytest.mark.parametrize("graded", [False, True])
def test_conv_scatter_equals_torch_conv(geometry, graded):
    """Every output position and tap of strided, padded, dilated and grouped convs, binary and graded input."""
    layer = conv_layer(geometry, GEOMETRIES[geometry])
    rng = np.random.default_rng(geometry + 10)
    x = rng.integers(-9, 10, size=(3, 12, *layer.input_shape)) * (rng.random((3, 12, *layer.input_shape)) < 0.3)
    x = x if graded else (x != 0).astype(np.uint8)
    bound = int(np.abs(x).max())
    sums = loihi.conv_synaptic_input(layer, x.reshape(-1, *layer.input_shape), bound).reshape(3, 12, *layer.shape)
    expected = compiled.run_neurons(layer.neurons, sums, 0, True)
    assert expected[0].any() and not expected[0].all()
    for dtype in (np.int32, np.int64):
        ours = compiled.run_conv(layer, x, compiled.conv_operands(layer, np.dtype(dtype)), True)
        assert_runs_equal(ours, expected)


@pytest.mark.parametrize("exponent", [-5, 0, 3])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_dense_gather_equals_the_product(exponent, dtype):
    """Binary and graded (negative too) inputs, a layer wider than one block, the weight exponent applied."""
    rng = np.random.default_rng(exponent + 20)
    weights = rng.integers(-255, 256, size=(compiled.BLOCK + 70, 40))
    neurons = CubaNeurons.create((len(weights),), du=int(rng.integers(0, 4096)), dv=100, vth=300,
                                 bias_mant=rng.integers(-100, 100, len(weights)))
    for x in ((rng.random((2, 15, 40)) < 0.2).astype(np.uint8),
              rng.integers(-30, 30, size=(2, 15, 40)) * (rng.random((2, 15, 40)) < 0.3)):
        sums = x.astype(np.int64) @ weights.T
        expected = compiled.run_neurons(neurons, sums, exponent, True)
        assert expected[0].any()
        ours = compiled.run_dense(neurons, x, np.ascontiguousarray(weights.T, dtype=dtype), exponent, True)
        assert_runs_equal(ours, expected)
        spikes, u, v = compiled.run_dense(neurons, x, np.ascontiguousarray(weights.T, dtype=dtype), exponent, False)
        assert np.array_equal(spikes, expected[0]) and u is None and v is None


def test_a_block_leaving_the_plain_range_sums_again_exactly():
    """u without decay grows past its 24-bit fold: the event-driven block is redone in int64 (its sums
    formed again from the spikes) and equals Lava's step, as the product fed to the recursion does."""
    neurons = CubaNeurons.create((3,), du=0, dv=0, vth=(1 << 17) - 1)
    weights = np.array([[255] * 16, [-255] * 16, [1] * 16])
    x = (np.random.default_rng(1).random((2, 120, 16)) < 0.8).astype(np.uint8)
    sums = x.astype(np.int64) @ weights.T
    expected = compiled.run_neurons(neurons, shift_by_exponent(sums, 0), 0, True)
    ours = compiled.run_dense(neurons, x, np.ascontiguousarray(weights.T, dtype=np.int32), 0, True)
    assert_runs_equal(ours, expected)
    assert ours[1][:, :, 0].min() < 0 < ours[1][:, :, 1].max()      # folded: signs their drives never have


def test_the_input_density_picks_the_kernel(monkeypatch):
    """Sparse input is summed in the kernel, dense input goes through a product first; the same result."""
    calls = []
    for name in ("run_dense", "run_conv", "run_neurons"):
        original = getattr(compiled, name)
        monkeypatch.setattr(compiled, name, lambda *args, _f=original, _n=name: calls.append(_n) or _f(*args))
    monkeypatch.setattr(loihi, "_COMPILED", [compiled])
    conv = conv_layer(5, GEOMETRIES[1])
    head = DenseLayer(weights=np.random.default_rng(2).integers(-100, 100, size=(7, int(np.prod(conv.shape)))),
                      neurons=CubaNeurons.create((7,), du=100, dv=50, vth=50))
    network = Network(input_shape=conv.input_shape, layers=(conv, head))
    rng = np.random.default_rng(3)
    for density, kernel in ((0.05, "run_conv"), (0.9, "run_neurons")):
        x = (rng.random((2, 10, *conv.input_shape)) < density).astype(np.uint8)
        assert loihi._density(x) == pytest.approx(density, abs=0.05)
        calls.clear()
        fast = network.run(x, record_states=True)
        assert calls[0] == kernel
        monkeypatch.setattr(loihi, "_COMPILED", [None])
        slow = network.run(x, record_states=True)
        monkeypatch.setattr(loihi, "_COMPILED", [compiled])
        for k in range(2):
            assert_runs_equal((fast.spikes[k], fast.u[k], fast.v[k]), (slow.spikes[k], slow.u[k], slow.v[k]))


def test_density_counts_whole_samples():
    """Rates that vary with time (here: spikes at one step only) are counted over all steps of a sample."""
    x = np.zeros((4000, 50, 30), dtype=np.uint8)
    x[:, 7] = 1
    assert loihi._density(x) == pytest.approx(1 / 50)
    assert loihi._density(np.zeros((0, 5, 3))) == 0.0


def test_spikes_come_back_batch_major_and_contiguous():
    network = random_network(8, input_shape=(40,), hidden=(30,))
    x = (np.random.default_rng(0).random((3, 9, 40)) < 0.1).astype(np.uint8)
    for spikes in network.run(x).spikes:
        assert spikes.dtype == np.uint8 and spikes.flags.c_contiguous and spikes.shape[:2] == (3, 9)


def test_binary_input_in_any_integer_form_gives_one_result():
    """0/1 bytes are read in place, other forms converted: bool, uint8 with other non-zero values, int64,
    read-only; the caller's array is left as it was."""
    network = random_network(9, input_shape=(2, 8, 8), conv_channels=(4,), hidden=(12,))
    spikes = np.random.default_rng(1).random((2, 10, 2, 8, 8)) < 0.2
    expected = network.run(spikes.astype(np.int64), record_states=True)
    frozen = spikes.astype(np.uint8)
    frozen.flags.writeable = False
    for x in (spikes, spikes.astype(np.uint8), spikes.astype(np.uint8) * 3, frozen):
        before = x.copy()
        result = network.run(x, record_states=True)
        assert np.array_equal(x, before)
        for ours, theirs in zip(result.spikes + result.u + result.v, expected.spikes + expected.u + expected.v):
            assert np.array_equal(ours, theirs)
