"""The neuron recursion of a feed-forward layer compiled with numba (docs/loihi.md#integer-products-in-hw_sim).

hw_sim/loihi.py imports this module only when a layer runs, and falls back to its numpy recursions where
numba is not installed; importing ``hw_sim`` never imports numba. The result is Lava's bit-accurate LIF
step (docs/loihi.md#arithmetic, :func:`hw_sim.loihi.neuron_step`) in every regime, with no bounds to
check beforehand: each block of neurons runs in float64 while u stays where none of its wraps can act, and
is redone in int64 with every wrap, fold and saturation if it leaves that range. Compiled code is cached on
disk (``cache=True``): only the first run on a machine compiles (seconds per input dtype).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .arith import DECAY_BITS, DECAY_UNITY, STATE_BITS, STATE_MAX, STATE_SHIFT, current_factor, voltage_factor
from .network import CubaNeurons

BLOCK = 2048   # neurons stepped through time together (states in L1, a long piece of each input row per step)


@njit(cache=True, nogil=True, inline="always")
def _wrap_int32(value: int) -> int:
    return ((value + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


@njit(cache=True, nogil=True, inline="always")
def _decay(state: int, factor: int) -> int:
    """``sign(p)·(|p| >> 12)`` of ``p = state·factor``: Lava's truncation toward zero (a negative p is
    raised by 4095 before the flooring shift)."""
    product = state * factor
    return (product + ((product >> 63) & (DECAY_UNITY - 1))) >> DECAY_BITS


@njit(cache=True, nogil=True)
def lif_recursion(inputs: np.ndarray, exponent: int, bias: np.ndarray, u_factor: int, v_factor: int,
                  threshold: int, spikes: np.ndarray, us: np.ndarray, vs: np.ndarray) -> None:
    """Lava's LIF over all steps for inputs that do not depend on the spikes (no recurrent synapse).

    ``inputs``: (T, B, N) exact integers (any int or float dtype, any strides): a_in at step t + 1 is
    ``inputs[t]`` shifted by ``exponent`` (``<<``, or a flooring ``>>`` where negative; 0 for synaptic input,
    the weight exponent for bare dense sums); step 0 sees no input. Values stay below 2^53 and a_in << 6
    below 2^63. ``bias``: (N,) int64, added to v each step. ``u_factor``, ``v_factor``: 4095 - du and
    4096 - dv; ``threshold``: vth << 6. Writes ``spikes`` (T, B, N) uint8 and, when they are not empty,
    ``us`` and ``vs`` (B, T, N) int64: u and v after each step (v after the reset).

    Blocks of neurons step through time together (their states stay in cache, each step reads a piece of
    an input row, and neurons are independent: SIMD). A block runs first in float64 without u's wraps
    (:func:`_plain_block`), and again with all of them (:func:`_exact_block`) if u leaves their range.
    """
    batch, size = inputs.shape[1:]
    float_bias = bias.astype(np.float64)
    for b in range(batch):
        for start in range(0, size, BLOCK):
            width = min(BLOCK, size - start)
            if not _plain_block(inputs, b, start, width, exponent, float_bias, u_factor, v_factor, threshold,
                                spikes, us, vs):
                _exact_block(inputs, b, start, width, exponent, bias, u_factor, v_factor, threshold,
                             spikes, us, vs)


@njit(cache=True, nogil=True)
def _plain_block(inputs: np.ndarray, b: int, start: int, width: int, exponent: int, bias: np.ndarray,
                 u_factor: int, v_factor: int, threshold: int, spikes: np.ndarray, us: np.ndarray,
                 vs: np.ndarray) -> bool:
    """Neurons ``start:start + width`` of sample ``b`` over all steps (arguments as :func:`lif_recursion`,
    ``bias`` float64) in float64, with v's saturation but none of u's wraps: exact while every new
    |u| < 2^23. From such a u, no wrap acts unless the new u leaves that range too (the int32 wraps need
    |decayed u + a_in << 6| ≥ 2^31, the fold |u| ≥ 2^23); every product stays below 2^53 (|u|, |v| < 2^24,
    factors ≤ 4096), so the truncations are exact. Returns False, the block unfinished, at the first step
    where some |u| reaches 2^23."""
    steps = inputs.shape[0]
    alpha, beta = u_factor / DECAY_UNITY, v_factor / DECAY_UNITY
    scale, float_threshold = 2.0 ** exponent, float(threshold)
    half, limit = float(1 << (STATE_BITS - 1)), float(STATE_MAX)
    u, v = np.zeros(width), np.zeros(width)
    no_input = np.zeros(width, dtype=inputs.dtype)
    neuron_bias = bias[start:start + width]
    for t in range(steps):
        row = inputs[t - 1, b, start:start + width] if t > 0 else no_input
        fired = spikes[t, b, start:start + width]
        escaped = False
        for n in range(width):
            current = np.trunc(u[n] * alpha) + np.floor(row[n] * scale) * (1 << STATE_SHIFT)
            escaped |= abs(current) >= half
            voltage = min(max(np.trunc(v[n] * beta) + current + neuron_bias[n], -limit), limit)
            u[n] = current
            v[n] = 0.0 if voltage > float_threshold else voltage
            fired[n] = voltage > float_threshold
        if escaped:
            return False
        if us.shape[0] > 0:
            for n in range(width):
                us[b, t, start + n] = np.int64(u[n])
                vs[b, t, start + n] = np.int64(v[n])
    return True


@njit(cache=True, nogil=True)
def _exact_block(inputs: np.ndarray, b: int, start: int, width: int, exponent: int, bias: np.ndarray,
                 u_factor: int, v_factor: int, threshold: int, spikes: np.ndarray, us: np.ndarray,
                 vs: np.ndarray) -> None:
    """The block of :func:`_plain_block` in int64 with every wrap of Lava's step, for any input."""
    steps = inputs.shape[0]
    half, full = 1 << (STATE_BITS - 1), 1 << STATE_BITS
    right, left = max(-exponent, 0), max(exponent, 0) + STATE_SHIFT   # a_in << 6 = (input >> right) << left
    u, v = np.zeros(width, dtype=np.int64), np.zeros(width, dtype=np.int64)
    no_input = np.zeros(width, dtype=inputs.dtype)
    neuron_bias = bias[start:start + width]
    for t in range(steps):
        row = inputs[t - 1, b, start:start + width] if t > 0 else no_input
        fired = spikes[t, b, start:start + width]
        for n in range(width):
            # One wrap of the int64 sum equals Lava's wraps of each term and of their sum (modulo 2^32).
            current = _wrap_int32(_decay(u[n], u_factor) + ((np.int64(row[n]) >> right) << left))
            current = current - full if current > half else current + full if current <= -half else current
            voltage = min(max(_decay(v[n], v_factor) + current + neuron_bias[n], -STATE_MAX), STATE_MAX)
            u[n] = current
            v[n] = 0 if voltage > threshold else voltage
            fired[n] = voltage > threshold
        if us.shape[0] > 0:
            us[b, t, start:start + width] = u
            vs[b, t, start:start + width] = v


def run_neurons(neurons: CubaNeurons, inputs: np.ndarray, exponent: int, record_states: bool,
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Run ``neurons`` on time-major inputs (T, B, *shape), read as :func:`lif_recursion` reads them
    (a_in = ``inputs[t]`` shifted by ``exponent``, at step t + 1). Returns spikes (B, T, *shape) uint8
    (a view of time-major memory) and, with ``record_states``, u and v (B, T, *shape) int64."""
    steps, batch = inputs.shape[:2]
    shape = inputs.shape[2:]
    flat = inputs.reshape(steps, batch, int(np.prod(shape)))
    spikes = np.empty(flat.shape, dtype=np.uint8)
    states = (batch, steps, flat.shape[2]) if record_states else (0, 0, 0)
    us, vs = np.empty(states, dtype=np.int64), np.empty(states, dtype=np.int64)
    bias = np.array(neurons.bias, dtype=np.int64).reshape(-1)
    lif_recursion(flat, exponent, bias, current_factor(neurons.du), voltage_factor(neurons.dv),
                  neurons.vth << STATE_SHIFT, spikes, us, vs)
    spikes = np.moveaxis(spikes.reshape(steps, batch, *shape), 0, 1)
    if not record_states:
        return spikes, None, None
    return spikes, us.reshape(batch, steps, *shape), vs.reshape(batch, steps, *shape)
