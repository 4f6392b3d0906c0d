"""The fixed-point helpers against slow scalar references written from docs/loihi.md#arithmetic."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_sim.arith import (SignMode, decay_toward_zero, effective_bias, infer_sign_mode, prepare_dense_weights,
                          saturate_voltage, shift_by_exponent, wrap_current, wrap_signed)
from hw_sim.loihi import exact_matmul_dtype, integer_matmul, neuron_step, wrap_int32
from hw_sim.network import CubaNeurons

INT24 = st.integers(-(1 << 23), (1 << 23))


def scalar_prepare(w: int, sign_mode: SignMode, bits: int) -> int:
    if sign_mode == SignMode.INHIBITORY:
        magnitude = min(max(-w, 0), 255)
        drop = 8 - bits
        return -((magnitude >> drop) << drop)
    mixed = sign_mode == SignMode.MIXED
    w = min(max(w, -256 if mixed else 0), 255)
    drop = 8 - bits + (1 if mixed else 0)
    return (w >> drop) << drop


def scalar_trunc_decay(p: int, factor: int) -> int:
    product = p * factor
    return (1 if product > 0 else -1 if product < 0 else 0) * (abs(product) >> 12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-400, 400), min_size=1, max_size=30),
       st.sampled_from([SignMode.MIXED, SignMode.EXCITATORY, SignMode.INHIBITORY]), st.integers(1, 8))
def test_prepare_dense_weights_matches_scalar_reference(weights, sign_mode, bits):
    expected = [scalar_prepare(w, sign_mode, bits) for w in weights]
    assert prepare_dense_weights(np.array(weights), sign_mode, bits).tolist() == expected


def test_prepare_dense_weights_examples_from_loihi_md():
    # Default 8-bit MIXED drops the LSB with floor rounding: 5 -> 4, -5 -> -6.
    assert prepare_dense_weights(np.array([5, -5, 300, -300]), SignMode.MIXED, 8).tolist() == [4, -6, 254, -256]
    assert prepare_dense_weights(np.array([-5, -300]), SignMode.INHIBITORY, 7).tolist() == [-4, -254]
    assert infer_sign_mode(np.array([0, 3])) == SignMode.EXCITATORY
    assert infer_sign_mode(np.array([0, -3])) == SignMode.INHIBITORY
    assert infer_sign_mode(np.array([-1, 3])) == SignMode.MIXED


@settings(max_examples=200, deadline=None)
@given(st.integers(-(1 << 30), 1 << 30), st.integers(-8, 8))
def test_shift_by_exponent_is_shift_or_floor_division(value, exponent):
    expected = value * 2**exponent if exponent >= 0 else value // 2**-exponent
    assert int(shift_by_exponent(np.array([value]), exponent)[0]) == expected


@settings(max_examples=300, deadline=None)
@given(INT24, st.integers(0, 4096))
def test_decay_rounds_toward_zero(value, factor):
    assert int(decay_toward_zero(np.array([value]), factor)[0]) == scalar_trunc_decay(value, factor)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(1 << 25), 1 << 25))
def test_current_wrap_folds_once_and_voltage_saturates(value):
    half = 1 << 23
    expected = value - 2 * half if value > half else value + 2 * half if value <= -half else value
    assert int(wrap_current(np.array([value]))[0]) == expected
    assert int(saturate_voltage(np.array([value]))[0]) == min(max(value, -(half - 1)), half - 1)


def test_wrap_edges():
    assert wrap_current(np.array([1 << 23, -(1 << 23)])).tolist() == [1 << 23, 1 << 23]
    assert wrap_signed(np.array([(1 << 23), -(1 << 23) - 1]), 24).tolist() == [-(1 << 23), (1 << 23) - 1]
    assert wrap_int32(np.array([1 << 31])).tolist() == [-(1 << 31)]


@settings(max_examples=100, deadline=None)
@given(st.integers(-(1 << 15), (1 << 15) - 1), st.integers(-8, 7))
def test_bias_is_mantissa_shifted_by_exponent(mant, exp):
    expected = mant << exp if exp >= 0 else mant >> -exp
    assert int(effective_bias(np.array([mant]), np.array([exp]))[0]) == expected


@settings(max_examples=200, deadline=None)
@given(INT24, INT24, st.integers(-(1 << 18), 1 << 18), st.integers(-1, 4095), st.integers(0, 4096),
       st.integers(0, (1 << 17) - 1), st.integers(-4000, 4000))
def test_neuron_step_matches_scalar_recipe(u, v, a_in, du, dv, vth, bias):
    neurons = CubaNeurons.create((1,), du=du, dv=dv, vth=vth, bias_mant=bias)
    new_u, new_v, spike = neuron_step(neurons, neurons.bias, np.array([u]), np.array([v]), np.array([a_in]))
    # docs/loihi.md#arithmetic recipe (int32 arithmetic does not overflow for these ranges)
    ref_u = scalar_trunc_decay(u, 4095 - du) + (a_in << 6)
    ref_u = ref_u - (1 << 24) if ref_u > (1 << 23) else ref_u + (1 << 24) if ref_u <= -(1 << 23) else ref_u
    ref_v = min(max(scalar_trunc_decay(v, 4096 - dv) + ref_u + bias, -(1 << 23) + 1), (1 << 23) - 1)
    ref_s = ref_v > (vth << 6)
    assert (int(new_u[0]), int(new_v[0]), bool(spike[0])) == (ref_u, 0 if ref_s else ref_v, ref_s)


def test_exact_matmul_picks_float32_float64_or_int64_and_stays_exact():
    rng = np.random.default_rng(0)
    small = rng.integers(-255, 256, size=(8, 100))
    assert exact_matmul_dtype(small, 1) == np.float32
    assert exact_matmul_dtype(small, 1 << 12) == np.float64
    assert exact_matmul_dtype(small, 1 << 50) is None
    for max_input in (1, 1 << 12, 1 << 40):
        x = rng.integers(0, max_input + 1, size=(5, 100))
        assert np.array_equal(integer_matmul(x, small, max_input), x.astype(object) @ small.T.astype(object))
    sparse_spikes = (rng.random((50, 100)) < 0.01).astype(np.uint8)
    assert np.array_equal(integer_matmul(sparse_spikes, small, 1), sparse_spikes.astype(np.int64) @ small.T)
