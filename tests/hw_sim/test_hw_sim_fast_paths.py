"""hw_sim's fast paths (float32/float64 products and recursions chosen by bounds, conv on torch's conv2d,
event-driven sparse products) against a plain reference: int64, one step at a time, every layer in turn,
with the wraps of docs/loihi.md#arithmetic applied literally, on random networks and edge cases."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hw_sim import ConvLayer, CubaNeurons, DenseLayer, Network, SignMode
from hw_sim.arith import prepare_dense_weights, shift_by_exponent, wrap_signed
from hw_sim.loihi import neuron_step, wrap_int32
from hw_sim.random_networks import random_input, random_network


def reference_conv(layer: ConvLayer, s: np.ndarray) -> np.ndarray:
    """Cross-correlation of (B, C, H, W) int64 with the raw weights, loop over kernel taps, wrapped to 24 bits."""
    (ph, pw), (sh, sw), (dh, dw) = layer.padding, layer.stride, layer.dilation
    padded = np.pad(s, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    c_out, c_per_group, kh, kw = layer.weights.shape
    out_per_group = c_out // layer.groups
    _, h, w = layer.shape
    out = np.zeros((s.shape[0], *layer.shape), dtype=np.int64)
    for g in range(layer.groups):
        block = padded[:, g * c_per_group:(g + 1) * c_per_group]
        kernel = layer.weights[g * out_per_group:(g + 1) * out_per_group]
        for i in range(kh):
            for j in range(kw):
                window = block[:, :, i * dh:i * dh + sh * (h - 1) + 1:sh, j * dw:j * dw + sw * (w - 1) + 1:sw]
                taps = np.einsum("bchw,oc->bohw", window, kernel[:, :, i, j])
                out[:, g * out_per_group:(g + 1) * out_per_group] += taps
    return wrap_signed(out, 24)


def _dense_arrivals(weights: np.ndarray, delays: np.ndarray | None, exponent: int, s: np.ndarray):
    """[(delay, shift(Σ_{delay} W s, exponent))] for every delay present (one group per delay)."""
    delays = np.zeros(weights.shape, dtype=np.int64) if delays is None else delays
    return [(int(d), shift_by_exponent(s @ np.where(delays == d, weights, 0).T, exponent))
            for d in np.unique(delays)]


def reference_run(network: Network, x: np.ndarray) -> tuple[list, list, list]:
    """Spikes, u and v of every layer, (B, T, *shape), computed step by step in int64."""
    batch, steps = x.shape[:2]
    source = (x != 0).astype(np.int64) if network.input_message_bits == 0 else x.astype(np.int64)
    layers = network.layers
    arrivals = [np.zeros((steps + 64, batch, int(np.prod(layer.shape))), dtype=np.int64) for layer in layers]
    state = [(np.zeros((batch, *layer.shape), dtype=np.int64),) * 2 for layer in layers]
    out = [[np.zeros((batch, steps, *layer.shape), dtype=np.int64) for layer in layers] for _ in range(3)]
    for t in range(steps):
        s_in = source[:, t]
        for k, layer in enumerate(layers):
            a_in = wrap_int32(arrivals[k][t]).reshape(batch, *layer.shape)
            u, v, fired = neuron_step(layer.neurons, layer.neurons.bias, *state[k], a_in)
            state[k] = (u, v)
            for record, value in zip(out, (fired, u, v)):
                record[k][:, t] = value
            if isinstance(layer, ConvLayer):
                arrivals[k][t + 1] += reference_conv(layer, s_in).reshape(batch, -1)
            else:
                weights = prepare_dense_weights(layer.weights, layer.sign_mode, layer.num_weight_bits)
                for delay, sums in _dense_arrivals(weights, layer.delays, layer.weight_exp, s_in.reshape(batch, -1)):
                    arrivals[k][t + 1 + delay] = wrap_int32(arrivals[k][t + 1 + delay] + sums)
                if layer.recurrent_weights is not None:
                    recurrent = prepare_dense_weights(layer.recurrent_weights,
                                                      layer.effective_sign_mode(layer.recurrent_weights),
                                                      layer.num_weight_bits)
                    for delay, sums in _dense_arrivals(recurrent, layer.recurrent_delays, layer.weight_exp,
                                                       fired.astype(np.int64)):
                        arrivals[k][t + 1 + delay] = wrap_int32(arrivals[k][t + 1 + delay] + sums)
            s_in = fired.astype(np.int64)
    return tuple(out)


def assert_matches_reference(network: Network, x: np.ndarray) -> int:
    """hw_sim's run equals the reference in spikes, u and v of every layer; returns the spike count."""
    ours = network.run(x, record_states=True)
    spikes, us, vs = reference_run(network, x)
    for k in range(len(network.layers)):
        assert np.array_equal(ours.spikes[k], spikes[k]), f"layer {k} spikes differ"
        assert np.array_equal(ours.u[k], us[k]), f"layer {k} u differs"
        assert np.array_equal(ours.v[k], vs[k]), f"layer {k} v differs"
        plain = network.run(x)   # the run without states takes its own (fastest) paths
        assert np.array_equal(plain.spikes[k], spikes[k]), f"layer {k} spikes differ without states"
    return int(sum(s.sum() for s in spikes))


RANDOM_CASES = [
    dict(),
    dict(hidden=(40, 24), bias=False),
    dict(recurrent=True),
    dict(stress=True),
    dict(stress=True, recurrent=True),
    dict(readout=True),
    dict(delays=3),
    dict(delays=2, recurrent=True),
    dict(input_message_bits=8),
    dict(input_shape=(2, 9, 9), conv_channels=(4,), hidden=(16,)),
    dict(input_shape=(3, 11, 10), conv_channels=(4, 6), hidden=(12,), stress=True),
    dict(input_shape=(2, 8, 8), conv_channels=(5,), hidden=(10,), input_message_bits=6),
    dict(input_shape=(90,), hidden=(140,)),                      # wide enough for the event-driven product
    dict(input_shape=(70,), hidden=(130,), stress=True, bias=False),
]


@pytest.mark.parametrize("case", range(len(RANDOM_CASES)))
@pytest.mark.parametrize("density", [0.02, 0.3])
def test_random_networks_match_the_step_by_step_reference(case, density):
    network = random_network(100 + case, **RANDOM_CASES[case])
    x = random_input(case, network, 3, 14, density=density)
    assert_matches_reference(network, x) > 0


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_all_zero_and_all_one_inputs(density):
    for seed, options in ((1, dict()), (2, dict(input_shape=(2, 7, 7), conv_channels=(3,), hidden=(8,)))):
        network = random_network(seed, **options)
        x = np.full((2, 10, *network.input_shape), density, dtype=np.uint8)
        assert_matches_reference(network, x)


def test_conv_with_stride_padding_dilation_and_groups():
    rng = np.random.default_rng(3)
    shape = (4, 9, 8)
    neurons = CubaNeurons.create((6, 4, 3), du=300, dv=100, vth=20, bias_mant=rng.integers(-40, 40, (6, 4, 3)))
    grouped = ConvLayer(weights=rng.integers(-60, 61, size=(6, 2, 3, 2)), neurons=neurons, input_shape=shape,
                        stride=(2, 3), padding=(1, 1), dilation=(2, 1), groups=2)
    head = DenseLayer(weights=rng.integers(-100, 100, size=(5, 72)),
                      neurons=CubaNeurons.create((5,), du=100, dv=50, vth=50))
    network = Network(input_shape=shape, layers=(grouped, head))
    assert assert_matches_reference(network, random_input(3, network, 2, 12, density=0.4)) > 0


def test_conv_sums_that_wrap_at_24_bits_and_currents_that_wrap():
    """Weights near the conv limit with graded input: sums leave 24 bits (Lava wraps them), u wraps too."""
    shape = (2, 5, 5)
    weights = np.full((3, 2, 3, 3), (1 << 15) - 1)
    weights[1] *= -1
    neurons = CubaNeurons.create((3, 5, 5), du=0, dv=0, vth=(1 << 17) - 1)
    layer = ConvLayer(weights=weights, neurons=neurons, input_shape=shape, padding=(1, 1))
    network = Network(input_shape=shape, layers=(layer,), input_message_bits=8)
    x = np.random.default_rng(0).integers(0, 256, size=(2, 8, *shape))
    assert_matches_reference(network, x)
    u = network.run(x, record_states=True).u[0]
    assert u.min() < -(1 << 22) and u.max() > 1 << 22


def test_thresholds_at_the_extremes_and_saturation():
    rng = np.random.default_rng(5)
    weights = rng.integers(0, 256, size=(6, 20))
    for vth in (0, 1, (1 << 17) - 1):
        for du, dv, exp in ((0, 0, 7), (4095, 4096, 0), (-1, 0, 3)):
            neurons = CubaNeurons.create((6,), du=du, dv=dv, vth=vth, bias_mant=rng.integers(-500, 500, 6))
            layer = DenseLayer(weights=weights, neurons=neurons, weight_exp=exp, sign_mode=SignMode.EXCITATORY)
            network = Network(input_shape=(20,), layers=(layer, replace(layer, weights=weights[:, :6])))
            assert_matches_reference(network, random_input(vth, network, 2, 25, density=0.5))


def test_event_driven_product_equals_blas():
    from hw_sim.loihi import event_product
    rng = np.random.default_rng(4)
    matrix = rng.integers(-255, 256, size=(70, 90)).astype(np.float32)
    for density in (0.0, 0.03, 1.0):
        rows = (rng.random((37, 70)) < density).astype(np.uint8)
        rows[5] = 0
        product = event_product(rows, matrix)
        assert product.shape == (37, 90) and np.array_equal(product, rows.astype(np.float32) @ matrix)


def test_sparse_wide_layer_takes_the_event_driven_path(monkeypatch):
    """The run picks the event-driven product for sparse binary input into a wide layer, and stays exact."""
    import hw_sim.loihi as loihi
    monkeypatch.setattr(loihi, "_COMPILED", [None])   # the numpy path's (numba sums events itself)
    calls = []
    original = loihi.event_product
    monkeypatch.setattr(loihi, "event_product", lambda rows, matrix: calls.append(rows.shape) or original(rows, matrix))
    network = random_network(11, input_shape=(120,), hidden=(130,))
    assert assert_matches_reference(network, random_input(11, network, 2, 12, density=0.03)) > 0
    assert calls and calls[0] == (24, 120)


def test_negative_saturation_below_a_low_threshold():
    """v saturates at -(2^23 - 1) while the threshold is low (the upper clip is skipped there, not the lower)."""
    neurons = CubaNeurons.create((4,), du=4095, dv=0, vth=10, bias_mant=np.array([0, -300, 0, 500]), bias_exp=3)
    layer = DenseLayer(weights=np.full((4, 10), -255), neurons=neurons, weight_exp=6,
                       sign_mode=SignMode.INHIBITORY)
    network = Network(input_shape=(10,), layers=(layer,))
    x = random_input(1, network, 2, 60, density=0.6)
    assert_matches_reference(network, x)
    assert network.run(x, record_states=True).v[0].min() == -((1 << 23) - 1)


@pytest.mark.parametrize("weight_exp, inputs_on", [(7, 16), (7, 1), (4, 16)])
def test_a_drive_beyond_one_fold_of_u_takes_the_int32_path(weight_exp, inputs_on):
    """|a_in << 6| > 2^24 pushes u past Lava's single 24-bit fold until int32 wraps it (after ~130 steps
    here): every path must follow the int32 recursion step by step, which neuron_step defines."""
    from hw_sim.loihi import run

    neurons = CubaNeurons.create((1,), du=0, dv=0, vth=(1 << 17) - 1)
    layer = DenseLayer(weights=np.full((1, 16), 255), neurons=neurons, weight_exp=weight_exp,
                       sign_mode=SignMode.EXCITATORY)
    x = np.zeros((1, 300, 16), dtype=np.uint8)
    x[:, :, :inputs_on] = 1
    result = run(Network(input_shape=(16,), layers=(layer,)), x, record_states=True)
    a_in = shift_by_exponent(x.astype(np.int64) @ layer.weights.T.astype(np.int64), weight_exp)[0]
    u = v = np.zeros(1, dtype=np.int64)
    for t in range(300):
        u, v, _ = neuron_step(neurons, neurons.bias, u, v, a_in[t - 1] if t else np.zeros(1, dtype=np.int64))
        assert result.u[0][0, t, 0] == u[0] and result.v[0][0, t, 0] == v[0], f"step {t}"
