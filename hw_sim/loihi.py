"""The bit-exact, batched numpy simulator of a :class:`~hw_sim.network.Network` (LOIHI.md §1).

It computes exactly what Lava's ``fixed_pt`` models compute, with Lava's timing: input column t is what
the source sends at Lava step t + 1, each synapse layer adds one step of delay, and
``spikes[k][:, t]`` is what layer k emits at Lava step t + 1.

Speed comes from evaluating the network layer by layer rather than step by step: a feed-forward
synapse's input is known for all steps once the previous layer is done, so its sums for the whole batch
and all steps are one BLAS matrix multiply (float32 while every possible sum stays below 2^24, float64
below 2^53, int64 otherwise: exact in each case). Only the neuron recursion and recurrent synapses walk
through time.
"""

from __future__ import annotations

import numpy as np

from .arith import (CURRENT_DECAY_OFFSET, DECAY_UNITY, STATE_SHIFT, decay_toward_zero, prepare_dense_weights, saturate_voltage, shift_by_exponent,
                    wrap_current, wrap_signed)
from .network import ConvLayer, CubaNeurons, DenseLayer, Network, NetworkError, RunResult

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53
SPARSE_DENSITY = 0.02   # below this input density a sparse product beats BLAS on these shapes


def wrap_int32(values: np.ndarray) -> np.ndarray:
    """Two's-complement wrap to int32, as Lava's int32 channels and int32 state arithmetic do."""
    return wrap_signed(values, 32)


def exact_matmul_dtype(weights: np.ndarray, max_abs_input: int) -> np.dtype | None:
    """The cheapest float dtype whose matmul of these integer weights with inputs up to ``max_abs_input``
    is exact (every partial sum below 2^24 or 2^53), or None when only int64 is exact."""
    bound = int(np.abs(weights).sum(axis=-1).max(initial=0)) * int(max_abs_input)
    if bound < FLOAT32_EXACT:
        return np.dtype(np.float32)
    if bound < FLOAT64_EXACT:
        return np.dtype(np.float64)
    return None


def integer_matmul(inputs: np.ndarray, weights: np.ndarray, max_abs_input: int) -> np.ndarray:
    """Exact ``inputs @ weights.T`` for integer arrays: (rows, in) x (out, in) -> (rows, out) int64."""
    dtype = exact_matmul_dtype(weights, max_abs_input)
    if dtype is None:
        return inputs.astype(np.int64) @ weights.T.astype(np.int64)
    # The float results are exact integers, so the casts below lose nothing.
    if max_abs_input <= 1 and inputs.size and np.count_nonzero(inputs) < SPARSE_DENSITY * inputs.size:
        from scipy import sparse
        product = sparse.csr_matrix(inputs.astype(dtype)) @ weights.T.astype(dtype)
        return np.asarray(product).astype(np.int64)
    product = inputs.astype(dtype, copy=False) @ np.ascontiguousarray(weights.T, dtype=dtype)
    return product.astype(np.int64)


INT32_LIMIT = 1 << 31


def dense_synaptic_input(layer: DenseLayer, inputs: np.ndarray, max_abs_input: int) -> np.ndarray:
    """What the layer's Dense sends one step later: shift(Σ W_q · s, weight_exp), wrapped to int32.

    ``inputs``: (rows, in) integer spikes or payloads -> (rows, out) int64.
    """
    weights = prepare_dense_weights(layer.weights, layer.sign_mode, layer.num_weight_bits)
    sums = shift_by_exponent(integer_matmul(inputs, weights, max_abs_input), layer.weight_exp)
    return wrap_int32(sums) if synaptic_bound(weights, max_abs_input, layer.weight_exp) >= INT32_LIMIT else sums


def synaptic_bound(weights: np.ndarray, max_abs_input: int, weight_exp: int = 0) -> int:
    """An upper bound of |shift(Σ W · s, weight_exp)| over all inputs with |s| ≤ max_abs_input."""
    bound = int(np.abs(weights).reshape(weights.shape[0], -1).sum(axis=1).max(initial=0)) * int(max_abs_input)
    return bound << weight_exp if weight_exp >= 0 else bound >> -weight_exp


def conv_synaptic_input(layer: ConvLayer, inputs: np.ndarray, max_abs_input: int) -> np.ndarray:
    """Lava Conv's output: torch-style cross-correlation with the raw weights, wrapped to signed 24 bits.

    ``inputs``: (rows, C, H, W) -> (rows, C_out, H_out, W_out) int64.
    """
    import torch
    import torch.nn.functional as F

    weights = layer.weights
    flat = weights.reshape(weights.shape[0], -1)
    dtype = exact_matmul_dtype(flat, max_abs_input)
    torch_dtype = {np.float32: torch.float32, np.float64: torch.float64}.get(
        dtype.type if dtype is not None else None, torch.float64)
    if dtype is None and np.abs(flat).sum(axis=1).max() * max_abs_input >= FLOAT64_EXACT:
        raise NetworkError("conv sums beyond 2^53 cannot be computed exactly")
    with torch.no_grad():
        out = F.conv2d(torch.from_numpy(np.ascontiguousarray(inputs)).to(torch_dtype),
                       torch.from_numpy(np.array(weights)).to(torch_dtype), stride=layer.stride,
                       padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    return wrap_signed(np.rint(out.numpy()).astype(np.int64), 24)


def neuron_step(neurons: CubaNeurons, bias: np.ndarray, u: np.ndarray, v: np.ndarray,
                a_in: np.ndarray, a_in_bound: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Lava bit-accurate LIF step (LOIHI.md §1.2). Returns (u, v, spikes) with v already reset.

    Lava forms ``decayed u + (a_in << 6)`` in int32; the wraps are skipped when ``a_in_bound`` (a bound
    of |a_in|) shows they cannot happen.
    """
    decayed = decay_toward_zero(u, DECAY_UNITY - (neurons.du + CURRENT_DECAY_OFFSET))
    if a_in_bound is not None and (a_in_bound << STATE_SHIFT) + (1 << 24) < INT32_LIMIT:
        u = wrap_current(decayed + (a_in << STATE_SHIFT))
    else:
        u = wrap_current(wrap_int32(wrap_int32(decayed) + wrap_int32(a_in << STATE_SHIFT)))
    v = saturate_voltage(decay_toward_zero(v, DECAY_UNITY - neurons.dv) + u + bias)
    spikes = v > (neurons.vth << STATE_SHIFT)
    v = np.where(spikes, 0, v)
    return u, v, spikes


def run_layer(layer: DenseLayer | ConvLayer, inputs: np.ndarray, max_abs_input: int,
              record_states: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Run one layer over all steps. ``inputs``: (B, T, *input_shape) -> spikes (B, T, *shape) uint8.

    The synapse's output at step t reaches the neurons at step t + 1 (Lava's one-step buffer), so the
    neurons see zero input at the first step.
    """
    batch, steps = inputs.shape[:2]
    rows = inputs.reshape(batch * steps, *inputs.shape[2:])
    if isinstance(layer, ConvLayer):
        synaptic = conv_synaptic_input(layer, rows, max_abs_input)
    else:
        synaptic = dense_synaptic_input(layer, rows.reshape(batch * steps, -1), max_abs_input)
    synaptic = synaptic.reshape(batch, steps, *layer.shape)
    if isinstance(layer, ConvLayer):
        a_in_bound = min(synaptic_bound(layer.weights, max_abs_input), 1 << 23)
    else:
        a_in_bound = min(synaptic_bound(prepare_dense_weights(layer.weights, layer.sign_mode, layer.num_weight_bits),
                                        max_abs_input, layer.weight_exp), INT32_LIMIT)

    neurons = layer.neurons
    bias = neurons.bias
    recurrent = None
    if isinstance(layer, DenseLayer) and layer.recurrent_weights is not None:
        recurrent_weights = prepare_dense_weights(layer.recurrent_weights,
                                                  layer.effective_sign_mode(layer.recurrent_weights),
                                                  layer.num_weight_bits)
        a_in_bound = 2 * INT32_LIMIT   # two int32 channels summed: always emulate the wraps
    u = np.zeros((batch, *layer.shape), dtype=np.int64)
    v = np.zeros_like(u)
    spikes = np.zeros((batch, steps, *layer.shape), dtype=np.uint8)
    us = np.zeros((batch, steps, *layer.shape), dtype=np.int64) if record_states else None
    vs = np.zeros_like(us) if record_states else None
    zero_input = np.zeros((batch, *layer.shape), dtype=np.int64)
    for t in range(steps):
        a_in = synaptic[:, t - 1] if t > 0 else zero_input
        if recurrent is not None:
            a_in = wrap_int32(a_in + recurrent)
        u, v, fired = neuron_step(neurons, bias, u, v, a_in, a_in_bound)
        spikes[:, t] = fired
        if record_states:
            us[:, t], vs[:, t] = u, v
        if isinstance(layer, DenseLayer) and layer.recurrent_weights is not None:
            recurrent = wrap_int32(shift_by_exponent(integer_matmul(fired, recurrent_weights, 1), layer.weight_exp))
    return spikes, us, vs


def run(network: Network, x: np.ndarray, *, record_states: bool = False) -> RunResult:
    """Simulate ``network`` bit-exactly on a batch.

    ``x``: (batch, T, *input_shape) integer spikes (binary unless ``network.input_message_bits`` > 0,
    in which case integer payloads). Returns spikes per layer, and u and v per layer when
    ``record_states`` (each (batch, T, *shape)).
    """
    x = np.asarray(x)
    if x.ndim != 2 + len(network.input_shape) or tuple(x.shape[2:]) != network.input_shape:
        raise NetworkError(f"input must have shape (batch, T, {', '.join(map(str, network.input_shape))}), "
                           f"found {x.shape}")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            raise NetworkError("input spikes must be integer-valued")
    elif x.dtype.kind not in "iub":
        raise NetworkError(f"input spikes must be integers, found dtype {x.dtype}")
    if network.input_message_bits == 0:
        layer_input, max_abs_input = (x != 0).astype(np.uint8), 1
    else:
        layer_input = x.astype(np.int64)
        max_abs_input = int(np.abs(layer_input).max(initial=0))
    result = RunResult(spikes=[], u=[], v=[])
    for layer in network.layers:
        spikes, us, vs = run_layer(layer, layer_input, max_abs_input, record_states)
        result.spikes.append(spikes)
        if record_states:
            result.u.append(us)
            result.v.append(vs)
        layer_input, max_abs_input = spikes, 1
    return result
