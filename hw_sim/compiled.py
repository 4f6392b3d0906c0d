"""Feed-forward layers compiled with numba: the neuron recursion, and for sparse input the synapse's sums
too (docs/loihi.md#integer-products-in-hw_sim).

hw_sim/loihi.py imports this module only when a layer runs, and falls back to its numpy recursions where
numba is not installed; importing ``hw_sim`` never imports numba. The result is Lava's bit-accurate LIF
step (docs/loihi.md#arithmetic, :func:`hw_sim.loihi.neuron_step`) in every regime, with no bounds to
check beforehand: each block of neurons runs in float64 while u stays where none of its wraps can act, and
is redone in int64 with every wrap, fold and saturation if it leaves that range. Compiled code is cached on
disk (``cache=True``): only the first run on a machine compiles (seconds per combination of dtypes).

What the neurons receive at each step comes from one of three sources (:data:`DRIVE`, :data:`DENSE`,
:data:`CONV`): a precomputed product (the float drive or int64 synaptic input), or the layer's input
spikes themselves, whose weights are summed at each step by an event-driven dense gather or conv scatter
in integers, straight into a buffer the step then reads: no product array, no float copy of the spikes.
Everything is batch-major, (B, T, N): a sample's steps follow each other in memory.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .arith import DECAY_BITS, DECAY_UNITY, STATE_BITS, STATE_MAX, STATE_SHIFT, current_factor, voltage_factor
from .network import ConvLayer, CubaNeurons

BLOCK = 2048   # dense neurons stepped through time together (states in L1, a long piece of each input row per step)
DRIVE, DENSE, CONV = 0, 1, 2   # the kinds of input lif_recursion reads (see the module docstring)


@njit(cache=True, nogil=True, inline="always")
def _wrap_int32(value: int) -> int:
    return ((value + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


@njit(cache=True, nogil=True, inline="always")
def _decay(state: int, factor: int) -> int:
    """``sign(p)·(|p| >> 12)`` of ``p = state·factor``: Lava's truncation toward zero (a negative p is
    raised by 4095 before the flooring shift)."""
    product = state * factor
    return (product + ((product >> 63) & (DECAY_UNITY - 1))) >> DECAY_BITS


@njit(cache=True, nogil=True, inline="always")
def _events(row: np.ndarray, index: np.ndarray) -> int:
    """Writes the positions of ``row``'s non-zero entries to the front of ``index``; returns their count.
    Branch-free: one store per entry, whatever the density."""
    count = 0
    for i in range(row.shape[0]):
        index[count] = i
        count += row[i] != 0
    return count


@njit(cache=True, nogil=True, inline="always")
def _add_scaled(target: np.ndarray, row: np.ndarray, value) -> None:
    """``target += value · row``; a plain add for value 1 (every binary spike)."""
    if value == 1:
        for n in range(target.shape[0]):
            target[n] += row[n]
    else:
        for n in range(target.shape[0]):
            target[n] += value * row[n]


@njit(cache=True, nogil=True)
def _dense_sums(source: np.ndarray, weights: np.ndarray, start: int, sums: np.ndarray, index: np.ndarray) -> None:
    """``sums = Σ_i source[i] · weights[i, 0, start:start + width]`` over the non-zero inputs only."""
    width = sums.shape[0]
    sums[:] = 0
    for k in range(_events(source, index)):
        _add_scaled(sums, weights[index[k], 0, start:start + width], source[index[k]])


@njit(cache=True, nogil=True)
def _conv_sums(source: np.ndarray, kernel: np.ndarray, taps: np.ndarray, counts: np.ndarray, sums: np.ndarray,
               scratch: np.ndarray, index: np.ndarray) -> None:
    """The conv's sums for one (C_in·H·W) input row into ``sums`` (C_out·H_out·W_out), scattered from the
    non-zero inputs: input (c, p) adds ``kernel[c, tap]`` to the C_out / groups channels of its group at
    each output position it reaches (``taps[p, :counts[p]]``: (position, tap) pairs). The scatter runs
    channels-last in ``scratch`` (positions, C_out), contiguous per position, then is transposed."""
    c_in, _, per_group = kernel.shape
    positions, c_out = scratch.shape
    plane = source.shape[0] // c_in
    inputs_per_group = c_in // (c_out // per_group)
    flat = scratch.reshape(-1)
    flat[:] = 0
    for c in range(c_in):
        first = (c // inputs_per_group) * per_group
        channel = source[c * plane:(c + 1) * plane]
        for k in range(_events(channel, index)):
            p = index[k]
            value = channel[p]
            for j in range(counts[p]):
                at = taps[p, j, 0] * c_out + first
                _add_scaled(flat[at:at + per_group], kernel[c, taps[p, j, 1]], value)
    for c in range(c_out):
        for q in range(positions):
            sums[c * positions + q] = scratch[q, c]


@njit(cache=True, nogil=True)
def _input_sums(source: tuple, b: int, t: int, start: int, sums: np.ndarray, scratch: np.ndarray,
                index: np.ndarray) -> None:
    """What reaches neurons ``start:start + width`` of sample ``b`` at step ``t`` into ``sums`` (width):
    nothing at step 0, else the synapse's output for input step t - 1, read (DRIVE) or summed from the
    input spikes (DENSE, CONV). ``source``: (kind, inputs, weights, taps, counts) as :func:`lif_recursion`."""
    kind, inputs, weights, taps, counts = source
    if t == 0:
        sums[:] = 0
    elif kind == DRIVE:
        sums[:] = inputs[b, t - 1, start:start + sums.shape[0]]
    elif kind == DENSE:
        _dense_sums(inputs[b, t - 1], weights, start, sums, index)
    else:
        _conv_sums(inputs[b, t - 1], weights, taps, counts, sums, scratch, index)


@njit(cache=True, nogil=True)
def lif_recursion(source: tuple, exponent: int, bias: np.ndarray, u_factor: int, v_factor: int, threshold: int,
                  spikes: np.ndarray, us: np.ndarray, vs: np.ndarray, scratch: np.ndarray) -> None:
    """Lava's LIF over all steps for inputs that do not depend on the spikes (no recurrent synapse).

    ``source`` = (kind, inputs, weights, taps, counts). DRIVE: ``inputs`` (B, T, N) exact integers (int or
    float dtype), the synapse's output per input step; ``weights`` an empty (0, 0, 0) array of the same
    dtype. DENSE: ``inputs`` (B, T, M) integer spikes or payloads, ``weights`` (M, 1, N) int32 or int64.
    CONV: ``inputs`` (B, T, C_in·H·W), ``weights`` (C_in, kH·kW, C_out / groups), ``taps`` and ``counts``
    from :func:`conv_operands`, ``scratch`` (H_out·W_out, C_out) of the weights' dtype. Integer sums are
    exact where every |sum| stays below the dtype's range (the caller checks the bound).

    The sum for input step t, shifted by ``exponent`` (``<<``, or a flooring ``>>`` where negative; 0 for
    synaptic input and conv sums, the weight exponent for dense sums), is a_in at step t + 1; step 0 sees
    no input. Values stay below 2^53 and a_in << 6 below 2^63. ``bias``: (N,) int64, added to v each step.
    ``u_factor``, ``v_factor``: 4095 - du and 4096 - dv; ``threshold``: vth << 6. Writes ``spikes``
    (B, T, N) uint8 and, unless they hold no steps, ``us`` and ``vs`` (B, T, N) int64: u and v after each
    step (v after the reset).

    Blocks of neurons (dense: up to :data:`BLOCK`; conv: the whole layer, which every input reaches) step
    through time together, their states in cache and neurons independent (SIMD). A block runs first in
    float64 without u's wraps (:func:`_plain_block`), and again with all of them (:func:`_exact_block`) if
    u leaves their range.
    """
    kind, inputs, weights = source[0], source[1], source[2]
    batch, size = spikes.shape[0], spikes.shape[2]
    block = size if kind == CONV else min(BLOCK, size)
    sums = np.empty(block, dtype=weights.dtype)
    index = np.empty(inputs.shape[2], dtype=np.int64)
    float_bias = bias.astype(np.float64)
    for b in range(batch):
        for start in range(0, size, block):
            part = sums[:min(block, size - start)]
            if not _plain_block(source, b, start, exponent, float_bias, u_factor, v_factor, threshold,
                                spikes, us, vs, (part, scratch, index)):
                _exact_block(source, b, start, exponent, bias, u_factor, v_factor, threshold,
                             spikes, us, vs, (part, scratch, index))


@njit(cache=True, nogil=True)
def _plain_block(source: tuple, b: int, start: int, exponent: int, bias: np.ndarray, u_factor: int,
                 v_factor: int, threshold: int, spikes: np.ndarray, us: np.ndarray, vs: np.ndarray,
                 work: tuple) -> bool:
    """Neurons ``start:start + width`` of sample ``b`` over all steps (arguments as :func:`lif_recursion`,
    ``bias`` float64; ``work``: (sums of width entries, scratch, index), buffers for :func:`_input_sums`)
    in float64, with v's saturation but none of u's wraps: exact while every new |u| < 2^23. From such a
    u, no wrap acts unless the new u leaves that range too (the int32 wraps need |decayed u + a_in << 6|
    ≥ 2^31, the fold |u| ≥ 2^23); every product stays below 2^53 (|u|, |v| < 2^24, factors ≤ 4096), so the
    truncations are exact. Returns False, the block unfinished, at the first step where some |u| reaches
    2^23."""
    sums, scratch, index = work
    steps, width = spikes.shape[1], sums.shape[0]
    alpha, beta = u_factor / DECAY_UNITY, v_factor / DECAY_UNITY
    scale, float_threshold = 2.0 ** exponent, float(threshold)
    half, limit = float(1 << (STATE_BITS - 1)), float(STATE_MAX)
    u, v = np.zeros(width), np.zeros(width)
    neuron_bias = bias[start:start + width]
    for t in range(steps):
        _input_sums(source, b, t, start, sums, scratch, index)
        fired = spikes[b, t, start:start + width]
        escaped = False
        for n in range(width):
            current = np.trunc(u[n] * alpha) + np.floor(sums[n] * scale) * (1 << STATE_SHIFT)
            escaped |= abs(current) >= half
            voltage = min(max(np.trunc(v[n] * beta) + current + neuron_bias[n], -limit), limit)
            u[n] = current
            v[n] = 0.0 if voltage > float_threshold else voltage
            fired[n] = voltage > float_threshold
        if escaped:
            return False
        if us.shape[1] > 0:
            for n in range(width):
                us[b, t, start + n] = np.int64(u[n])
                vs[b, t, start + n] = np.int64(v[n])
    return True


@njit(cache=True, nogil=True)
def _exact_block(source: tuple, b: int, start: int, exponent: int, bias: np.ndarray, u_factor: int,
                 v_factor: int, threshold: int, spikes: np.ndarray, us: np.ndarray, vs: np.ndarray,
                 work: tuple) -> None:
    """The block of :func:`_plain_block` in int64 with every wrap of Lava's step, for any input."""
    sums, scratch, index = work
    steps, width = spikes.shape[1], sums.shape[0]
    half, full = 1 << (STATE_BITS - 1), 1 << STATE_BITS
    right, left = max(-exponent, 0), max(exponent, 0) + STATE_SHIFT   # a_in << 6 = (input >> right) << left
    u, v = np.zeros(width, dtype=np.int64), np.zeros(width, dtype=np.int64)
    neuron_bias = bias[start:start + width]
    for t in range(steps):
        _input_sums(source, b, t, start, sums, scratch, index)
        fired = spikes[b, t, start:start + width]
        for n in range(width):
            # One wrap of the int64 sum equals Lava's wraps of each term and of their sum (modulo 2^32).
            current = _wrap_int32(_decay(u[n], u_factor) + ((np.int64(sums[n]) >> right) << left))
            current = current - full if current > half else current + full if current <= -half else current
            voltage = min(max(_decay(v[n], v_factor) + current + neuron_bias[n], -STATE_MAX), STATE_MAX)
            u[n] = current
            v[n] = 0 if voltage > threshold else voltage
            fired[n] = voltage > threshold
        if us.shape[1] > 0:
            us[b, t, start:start + width] = u
            vs[b, t, start:start + width] = v


def conv_operands(layer: ConvLayer, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layer's weights and geometry as :func:`lif_recursion` reads them for CONV: the kernel
    (C_in, kH·kW, C_out / groups) in ``dtype`` (input channel c's weights for its group's outputs), and for
    each input position p = y·W + x the (output position, tap) pairs it reaches, ``taps[p, :counts[p]]``.
    Input (y, x) reaches output (o_y, o_x) through tap (k_y, k_x) where o·stride - padding + k·dilation
    is the input position, as torch's cross-correlation defines."""
    c_out, per_group_in, kh, kw = layer.weights.shape
    groups, (_, height, width), (_, out_h, out_w) = layer.groups, layer.input_shape, layer.shape
    kernel = layer.weights.reshape(groups, c_out // groups, per_group_in, kh * kw).transpose(0, 2, 3, 1)
    kernel = np.ascontiguousarray(kernel.reshape(groups * per_group_in, kh * kw, c_out // groups), dtype=dtype)
    axes = []
    for size, out, k, stride, pad, dilation in zip((height, width), (out_h, out_w), (kh, kw), layer.stride,
                                                   layer.padding, layer.dilation):
        offset = np.arange(size)[:, None] + pad - np.arange(k)[None, :] * dilation   # (size, k): o·stride
        axes.append((offset // stride, (offset >= 0) & (offset % stride == 0) & (offset // stride < out)))
    (oy, vy), (ox, vx) = axes
    valid = (vy[:, None, :, None] & vx[None, :, None, :]).reshape(height * width, kh * kw)
    target = (oy[:, None, :, None] * out_w + ox[None, :, None, :]).reshape(height * width, kh * kw)
    tap = np.broadcast_to(np.arange(kh * kw), valid.shape)
    order = np.argsort(~valid, axis=1, kind="stable")          # the valid taps first, in tap order
    taps = np.stack([np.take_along_axis(target, order, 1), np.take_along_axis(tap, order, 1)], axis=2)
    return kernel, np.ascontiguousarray(taps, dtype=np.int64), valid.sum(axis=1).astype(np.int64)


def _run(neurons: CubaNeurons, source: tuple, exponent: int, record_states: bool, shape: tuple[int, ...],
         scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`lif_recursion` on ``source``; returns spikes (B, T, *shape) uint8 and, with
    ``record_states``, u and v (B, T, *shape) int64."""
    batch, steps = source[1].shape[:2]
    size = int(np.prod(shape))
    spikes = np.empty((batch, steps, size), dtype=np.uint8)
    states = (batch, steps if record_states else 0, size)
    us, vs = np.empty(states, dtype=np.int64), np.empty(states, dtype=np.int64)
    if scratch is None:
        scratch = np.empty((0, 0), dtype=source[2].dtype)
    bias = np.array(neurons.bias, dtype=np.int64).reshape(-1)
    lif_recursion(source, exponent, bias, current_factor(neurons.du), voltage_factor(neurons.dv),
                  neurons.vth << STATE_SHIFT, spikes, us, vs, scratch)
    full = (batch, steps, *shape)
    if not record_states:
        return spikes.reshape(full), None, None
    return spikes.reshape(full), us.reshape(full), vs.reshape(full)


_NO_TAPS, _NO_COUNTS = np.empty((0, 0, 2), dtype=np.int64), np.empty(0, dtype=np.int64)


def run_neurons(neurons: CubaNeurons, inputs: np.ndarray, exponent: int, record_states: bool,
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Run ``neurons`` on batch-major inputs (B, T, *shape), the synapse's output per input step (DRIVE:
    a_in = ``inputs[:, t]`` shifted by ``exponent``, at step t + 1). Returns spikes (B, T, *shape) uint8 and,
    with ``record_states``, u and v (B, T, *shape) int64."""
    batch, steps = inputs.shape[:2]
    flat = np.ascontiguousarray(inputs).reshape(batch, steps, -1)
    source = (DRIVE, flat, np.empty((0, 0, 0), dtype=flat.dtype), _NO_TAPS, _NO_COUNTS)
    return _run(neurons, source, exponent, record_states, inputs.shape[2:])


def run_dense(neurons: CubaNeurons, inputs: np.ndarray, weights: np.ndarray, exponent: int,
              record_states: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A dense synapse without delays and its neurons, summed from the input spikes (DENSE): ``inputs``
    (B, T, M) integers, ``weights`` (M, N) int32 or int64 (the transposed weight matrix; every |sum| must
    fit its dtype), ``exponent`` the weight exponent. Returns as :func:`run_neurons`."""
    batch, steps = inputs.shape[:2]
    flat = np.ascontiguousarray(inputs).reshape(batch, steps, -1)
    source = (DENSE, flat, weights.reshape(weights.shape[0], 1, -1), _NO_TAPS, _NO_COUNTS)
    return _run(neurons, source, exponent, record_states, neurons.shape)


def run_conv(layer: ConvLayer, inputs: np.ndarray, operands: tuple[np.ndarray, np.ndarray, np.ndarray],
             record_states: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A conv synapse and its neurons, summed from the input spikes (CONV): ``inputs`` (B, T, C, H, W)
    integers, ``operands`` from :func:`conv_operands` (every |sum| must fit the kernel's dtype; the caller
    also ensures that Lava's 24-bit wrap of the sums is a no-op). Returns as :func:`run_neurons`."""
    batch, steps = inputs.shape[:2]
    kernel, taps, counts = operands
    flat = np.ascontiguousarray(inputs).reshape(batch, steps, -1)
    scratch = np.empty((layer.shape[1] * layer.shape[2], layer.shape[0]), dtype=kernel.dtype)
    return _run(layer.neurons, (CONV, flat, kernel, taps, counts), 0, record_states, layer.shape, scratch)
