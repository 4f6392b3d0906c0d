"""The bit-exact, batched numpy simulator of a :class:`~hw_sim.network.Network` (docs/loihi.md).

It computes exactly what Lava's ``fixed_pt`` models compute, with Lava's timing: input column t is what
the source sends at Lava step t + 1, each synapse layer adds one step of delay, and
``spikes[k][:, t]`` is what layer k emits at Lava step t + 1.

Speed comes from evaluating the network layer by layer rather than step by step: a feed-forward
synapse's input is known for all steps once the previous layer is done, so its sums for the whole batch
and all steps are one product (float32 while every possible sum stays below 2^24, float64 below 2^53,
int64 otherwise: exact in each case): BLAS, an event-driven gather for sparse binary input, or torch's
conv2d (hw_sim/conv.py). Per-layer bounds decide which wraps and casts can be skipped
(docs/loihi.md#integer-products-in-hw_sim). Only the neuron recursion and recurrent synapses walk through
time: for a feed-forward layer in compiled code (hw_sim/compiled.py, numba, imported on the first layer
run), which for sparse input also sums the weights of the spikes itself, step by step; else, for
recurrent layers and where numba is not installed, in numpy (:func:`_run_neurons_float`,
:func:`_run_neurons_int`). torch is imported only by conv layers and event-driven products that are not
compiled, on first use.
"""

from __future__ import annotations

import importlib
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

from .arith import (DECAY_UNITY, STATE_BITS, STATE_MAX, STATE_SHIFT, current_factor, decay_toward_zero, du_to_alpha, dv_to_beta,
                    prepare_dense_weights, saturate_voltage, shift_by_exponent, voltage_factor, wrap_current,
                    wrap_signed)
from .conv import FLOAT32_EXACT, FLOAT64_EXACT, exact_conv2d
from .network import ConvLayer, CubaNeurons, DenseLayer, Network, NetworkError, RunResult

SPARSE_DENSITY = 0.02   # integer_matmul: below this input density scipy's sparse product beats BLAS
EVENT_DENSITY = 0.1     # numpy path's float drive: torch's event-driven product below this binary density ...
EVENT_MIN_OUTPUTS = 128 # ... into this many outputs or more (benchmarks/hw_sim_speed.py --products)
DENSE_EVENT_DENSITY = 0.25  # compiled path: sums from the spikes inside the kernel below these input
CONV_EVENT_DENSITY = 0.3    # densities, else BLAS or torch's conv2d first (_run_compiled; measured crossovers)
# |a_in| below 2^18 (|a_in << 6| < 2^24): Lava's one 24-bit fold per step keeps u in range and no int32 wrap acts
ONE_FOLD_INPUT_LIMIT = 1 << (STATE_BITS - STATE_SHIFT)


def wrap_int32(values: np.ndarray) -> np.ndarray:
    """Two's-complement wrap to int32, as Lava's int32 channels and int32 state arithmetic do."""
    return wrap_signed(values, 32)


def exact_matmul_dtype(weights: np.ndarray, max_abs_input: int) -> np.dtype | None:
    """The cheapest float dtype whose matmul of these integer weights with inputs up to ``max_abs_input``
    is exact (every partial sum below 2^24 or 2^53), or None when only int64 is exact."""
    return _exact_dtype(int(np.abs(weights).sum(axis=-1).max(initial=0)) * int(max_abs_input))


def _exact_dtype(bound: int) -> np.dtype | None:
    """float32 for sums below 2^24, float64 below 2^53, else None (int64)."""
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


def dense_synaptic_input(layer: DenseLayer, inputs: np.ndarray, max_abs_input: int,
                         weights: np.ndarray | None = None) -> np.ndarray:
    """What the layer's Dense sends one step later: shift(Σ W_q · s, weight_exp), wrapped to int32.

    ``inputs``: (rows, in) integer spikes or payloads -> (rows, out) int64. Without delays only.
    ``weights``: the prepared weights (:func:`prepare_dense_weights`) when the caller has them already.
    """
    if weights is None:
        weights = prepare_dense_weights(layer.weights, layer.sign_mode, layer.num_weight_bits)
    sums = shift_by_exponent(integer_matmul(inputs, weights, max_abs_input), layer.weight_exp)
    return wrap_int32(sums) if synaptic_bound(weights, max_abs_input, layer.weight_exp) >= INT32_LIMIT else sums


def delay_groups(weights: np.ndarray, delays: np.ndarray | None) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """The connections of one delay each: [(delay, rows, columns, weights of those rows and columns)].

    Each group holds only the rows and columns that have a non-zero weight at that delay, so per-neuron
    (axonal) or per-input delays cost one product's worth in total, not one per distinct delay.
    """
    if delays is None:
        return [(0, np.arange(weights.shape[0]), np.arange(weights.shape[1]), weights)]
    groups = []
    for delay in np.unique(delays[weights != 0]):
        mask = (delays == delay) & (weights != 0)
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        groups.append((int(delay), rows, columns, np.where(mask, weights, 0)[np.ix_(rows, columns)]))
    return groups


def delayed_dense_synaptic_input(layer: DenseLayer, inputs: np.ndarray, max_abs_input: int,
                                 groups: list | None = None) -> np.ndarray:
    """Lava's DelayDense: what reaches the neurons one step (plus each connection's delay) later.

    ``inputs``: (B, T, in) -> (B, T, out) int64, entry t being what the synapse sends at step t + 1: the
    sum over delays d of shift(Σ_{delay = d} W_q · s(t - d), weight_exp), each group shifted (floored)
    separately as Lava does, the total wrapped to int32 like Lava's int32 delay buffer.
    """
    batch, steps = inputs.shape[:2]
    rows_in = inputs.reshape(batch * steps, -1)
    if groups is None:
        groups = delay_groups(prepare_dense_weights(layer.weights, layer.sign_mode, layer.num_weight_bits), layer.delays)
    total = np.zeros((batch, steps, layer.shape[0]), dtype=np.int64)
    for delay, rows, columns, group in groups:
        if delay >= steps:
            continue
        sums = shift_by_exponent(integer_matmul(rows_in[:, columns], group, max_abs_input), layer.weight_exp)
        total[:, delay:, rows] += sums.reshape(batch, steps, rows.size)[:, :steps - delay]
    return wrap_int32(total)


def synaptic_bound(weights: np.ndarray, max_abs_input: int, weight_exp: int = 0) -> int:
    """An upper bound of |shift(Σ W · s, weight_exp)| over all inputs with |s| ≤ max_abs_input."""
    bound = int(np.abs(weights).reshape(weights.shape[0], -1).sum(axis=1).max(initial=0)) * int(max_abs_input)
    return bound << weight_exp if weight_exp >= 0 else bound >> -weight_exp


def conv_synaptic_input(layer: ConvLayer, inputs: np.ndarray, max_abs_input: int) -> np.ndarray:
    """Lava Conv's output: torch-style cross-correlation with the raw weights, wrapped to signed 24 bits.

    ``inputs``: (rows, C, H, W) -> (rows, C_out, H_out, W_out) int64.
    """
    sums = exact_conv2d(layer, inputs, synaptic_bound(layer.weights, max_abs_input))
    return wrap_signed(sums.astype(np.int64), 24)


def neuron_step(neurons: CubaNeurons, bias: np.ndarray, u: np.ndarray, v: np.ndarray,
                a_in: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Lava bit-accurate LIF step (docs/loihi.md#arithmetic) in int64, with Lava's int32 arithmetic for
    ``decayed u + (a_in << 6)``. Returns (u, v, spikes) with v already reset."""
    decayed = decay_toward_zero(u, current_factor(neurons.du))
    u = wrap_current(wrap_int32(wrap_int32(decayed) + wrap_int32(a_in << STATE_SHIFT)))
    v = saturate_voltage(decay_toward_zero(v, voltage_factor(neurons.dv)) + u + bias)
    spikes = v > (neurons.vth << STATE_SHIFT)
    v = np.where(spikes, 0, v)
    return u, v, spikes


@dataclass(eq=False)
class _LayerPlan:
    """What run_layer derives from a layer's weights alone, kept for the layer's lifetime (layers are frozen)."""

    weights: np.ndarray                      # as Lava uses them (dense: clipped and truncated)
    groups: list | None                      # dense: delay_groups of the weights
    recurrent_groups: list | None
    row_abs: int                             # the largest Σ|W| of one output (neuron or channel)
    recurrent_bound: int                     # bound of the recurrent a_in (plus one floor per group)
    matrices: dict = field(default_factory=dict)   # dtype -> weights.T in that dtype, contiguous


_PLANS: dict[int, tuple[weakref.ref, _LayerPlan]] = {}


def _layer_plan(layer: DenseLayer | ConvLayer) -> _LayerPlan:
    """The layer's cached :class:`_LayerPlan` (computed on first use, dropped with the layer)."""
    cached = _PLANS.get(id(layer))
    if cached is not None and cached[0]() is layer:
        return cached[1]
    weights, groups, recurrent_groups, recurrent_bound = layer.weights, None, None, 0
    if isinstance(layer, DenseLayer):
        weights = prepare_dense_weights(layer.weights, layer.sign_mode, layer.num_weight_bits)
        groups = delay_groups(weights, layer.delays)
        if layer.recurrent_weights is not None:
            recurrent_weights = prepare_dense_weights(layer.recurrent_weights,
                                                      layer.effective_sign_mode(layer.recurrent_weights),
                                                      layer.num_weight_bits)
            recurrent_groups = delay_groups(recurrent_weights, layer.recurrent_delays)
            recurrent_bound = synaptic_bound(recurrent_weights, 1, layer.weight_exp) + len(recurrent_groups)
    plan = _LayerPlan(weights, groups, recurrent_groups, synaptic_bound(weights, 1), recurrent_bound)
    _PLANS[id(layer)] = (weakref.ref(layer), plan)
    weakref.finalize(layer, _PLANS.pop, id(layer), None)
    return plan


def _shifted(bound: int, exponent: int) -> int:
    return bound << exponent if exponent >= 0 else bound >> -exponent


def input_bound(layer: DenseLayer | ConvLayer, max_abs_input: int) -> int:
    """An upper bound of |a_in|, everything reaching the layer's neurons in one step (feed-forward and
    recurrent), for feed-forward inputs with |s| ≤ ``max_abs_input``."""
    plan = _layer_plan(layer)
    if isinstance(layer, ConvLayer):
        bound = min(plan.row_abs * max_abs_input, 1 << 23)
    else:
        # Each delay group's shift may floor by one more: bound + the number of groups.
        bound = min(_shifted(plan.row_abs * max_abs_input, layer.weight_exp) + len(plan.groups), INT32_LIMIT)
    return bound + plan.recurrent_bound


def run_layer(layer: DenseLayer | ConvLayer, inputs: np.ndarray, max_abs_input: int,
              record_states: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Run one layer over all steps. ``inputs``: (B, T, *input_shape) -> spikes (B, T, *shape) uint8.

    The synapse's output at step t reaches the neurons at step t + 1 (Lava's one-step buffer), so the
    neurons see zero input at the first step. This is where the paths are chosen. Where no int32 wrap can
    act and the bounds make float sums exact (:func:`_exact_float_sums`), a feed-forward layer runs
    compiled (:func:`_run_compiled`, exact in every regime) where numba is available, else the float drive
    (:func:`_float_drive`) feeds the float64 recursion (:func:`_run_neurons_float`); everything else
    computes int64 synaptic input, for the compiled recursion or the float64 or int64 numpy ones
    (:func:`_run_neurons_int`).
    """
    batch, steps = inputs.shape[:2]
    plan = _layer_plan(layer)
    weights, groups, recurrent_groups = plan.weights, plan.groups, plan.recurrent_groups
    a_in_bound = input_bound(layer, max_abs_input)
    compiled = _compiled_recursion(layer)
    float_neurons = (a_in_bound << STATE_SHIFT) + (1 << 24) < INT32_LIMIT
    if float_neurons and _exact_float_sums(layer, max_abs_input):
        if compiled is not None:
            return _run_compiled(compiled, layer, inputs, max_abs_input, record_states)
        drive = _float_drive(layer, weights, inputs, max_abs_input)
        if _within_one_fold(layer, a_in_bound, drive, STATE_SHIFT):
            return _run_neurons_float(layer, None, recurrent_groups, record_states, drive=drive,
                                      a_in_bound=a_in_bound)
    rows = inputs.reshape(batch * steps, *inputs.shape[2:])
    if isinstance(layer, ConvLayer):
        synaptic = conv_synaptic_input(layer, rows, max_abs_input)
    elif layer.delays is not None:
        synaptic = delayed_dense_synaptic_input(layer, inputs.reshape(batch, steps, -1), max_abs_input, groups)
    else:
        synaptic = dense_synaptic_input(layer, rows.reshape(batch * steps, -1), max_abs_input, weights)
    synaptic = synaptic.reshape(batch, steps, *layer.shape)
    if compiled is not None:
        return compiled.run_neurons(layer.neurons, synaptic, 0, record_states)
    if float_neurons and _within_one_fold(layer, a_in_bound, synaptic, 0):
        return _run_neurons_float(layer, synaptic, recurrent_groups, record_states, a_in_bound=a_in_bound)
    return _run_neurons_int(layer, synaptic, recurrent_groups, record_states)


def _run_compiled(compiled, layer: DenseLayer | ConvLayer, inputs: np.ndarray, max_abs_input: int,
                  record_states: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A feed-forward layer whose sums are exact in float and can wrap nothing (run_layer checked), on the
    compiled kernels (hw_sim/compiled.py). Input sparser than DENSE_EVENT_DENSITY (dense) or
    CONV_EVENT_DENSITY (conv) is summed event by event inside the recursion, in int32 where every |sum| <
    2^31 (else int64); denser input goes through one float product (BLAS, torch's conv2d) first, as the
    drive, faster there (the crossovers: docs/loihi.md#integer-products-in-hw_sim)."""
    plan = _layer_plan(layer)
    conv = isinstance(layer, ConvLayer)
    if _density(inputs) < (CONV_EVENT_DENSITY if conv else DENSE_EVENT_DENSITY):
        dtype = np.dtype(np.int32 if plan.row_abs * max_abs_input < INT32_LIMIT else np.int64)
        key = ("events", dtype)
        if key not in plan.matrices:
            plan.matrices[key] = (compiled.conv_operands(layer, dtype) if conv
                                  else np.ascontiguousarray(plan.weights.T, dtype=dtype))
        if conv:
            return compiled.run_conv(layer, inputs, plan.matrices[key], record_states)
        return compiled.run_dense(layer.neurons, inputs, plan.matrices[key], layer.weight_exp, record_states)
    # The kernel applies the weight exponent and the 6-bit shift itself (no pass over the drive).
    drive = _float_drive(layer, plan.weights, inputs, max_abs_input, scaled=False, time_major=False)
    return compiled.run_neurons(layer.neurons, drive, 0 if conv else layer.weight_exp, record_states)


def _density(inputs: np.ndarray, sample: int = 1 << 18) -> float:
    """The fraction of non-zero entries of (B, T, ...) ``inputs``, counted on evenly spaced whole samples
    (at least one; about ``sample`` entries): all steps of a sample, as layers' rates vary with time."""
    per_sample = max(1, inputs[:1].size)
    picked = inputs[::max(1, inputs.shape[0] * per_sample // sample)]
    return np.count_nonzero(picked) / max(1, picked.size)


_COMPILED: list = []   # [the module hw_sim.compiled, or None where numba is not importable], once looked up


def _compiled_recursion(layer: DenseLayer | ConvLayer):
    """The compiled kernels (the module hw_sim.compiled) for a feed-forward layer, or None: for a recurrent
    layer (its input depends on its own spikes) or where numba is not importable. None leaves the layer to
    the numpy recursions, :func:`_run_neurons_float` and :func:`_run_neurons_int`."""
    if isinstance(layer, DenseLayer) and layer.recurrent_weights is not None:
        return None
    if not _COMPILED:
        try:
            compiled = importlib.import_module(".compiled", __package__)
        except ImportError:
            compiled = None
        _COMPILED.append(compiled)
    return _COMPILED[0]


def _within_one_fold(layer: DenseLayer | ConvLayer, a_in_bound: int, inputs: np.ndarray, shift: int) -> bool:
    """Whether Lava's one 24-bit fold of u per step keeps u in range, as the float recursion assumes:
    |a_in| < :data:`ONE_FOLD_INPUT_LIMIT` by the bound, or for the feed-forward input computed
    (``inputs >> shift``) plus the recurrent bound. A larger drive pushes u past the fold until Lava's int32
    arithmetic wraps it, which only the int path models."""
    if a_in_bound < ONE_FOLD_INPUT_LIMIT:
        return True
    largest = int(np.abs(inputs).max(initial=0)) >> shift
    return largest + _layer_plan(layer).recurrent_bound < ONE_FOLD_INPUT_LIMIT


def _exact_float_sums(layer: DenseLayer | ConvLayer, max_abs_input: int) -> bool:
    """Whether the bounds prove a float product of the layer's input exact and free of Lava's wraps.

    A conv qualifies when every |sum| < 2^23 (Lava's 24-bit wrap is then a no-op; torch's conv2d sums
    exactly, hw_sim/conv.py); a dense synapse without delays when every |Σ W s| < 2^53 (float32 below
    2^24): the product is an exact integer, and multiplying by powers of two (the weight exponent, then 64)
    and flooring stay exact.
    """
    bound = _layer_plan(layer).row_abs * max_abs_input
    if isinstance(layer, ConvLayer):
        return bound < 1 << 23
    return layer.delays is None and _exact_dtype(bound) is not None


def _float_drive(layer: DenseLayer | ConvLayer, weights: np.ndarray, inputs: np.ndarray,
                 max_abs_input: int, scaled: bool = True, time_major: bool = True) -> np.ndarray:
    """``a_in << 6`` for all steps from one float product, where :func:`_exact_float_sums` holds (the
    caller checks, and that no int32 wrap can occur); not ``scaled``: the bare sums, before the weight
    exponent and 6. ``time_major``: (T, B, *shape), as the numpy recursion steps through it, else
    (B, T, *shape), from the input as it is (no transposed copy). No integer round trip is made.
    """
    batch, steps = inputs.shape[:2]
    if time_major:
        rows = np.ascontiguousarray(np.swapaxes(inputs, 0, 1)).reshape(steps * batch, *inputs.shape[2:])
    else:
        rows = inputs.reshape(batch * steps, *inputs.shape[2:])
    if isinstance(layer, ConvLayer):
        product = exact_conv2d(layer, rows, _layer_plan(layer).row_abs * max_abs_input)
    else:
        dtype = _exact_dtype(_layer_plan(layer).row_abs * max_abs_input)
        matrices = _layer_plan(layer).matrices
        if dtype not in matrices:
            matrices[dtype] = np.ascontiguousarray(weights.T, dtype=dtype)
        product = _float_product(rows.reshape(len(rows), -1), matrices[dtype], max_abs_input, events=time_major)
        if layer.weight_exp != 0 and scaled:
            product *= dtype.type(2.0 ** layer.weight_exp)
            if layer.weight_exp < 0:
                np.floor(product, out=product)
    if scaled:
        product *= product.dtype.type(1 << STATE_SHIFT)
    return product.reshape(*((steps, batch) if time_major else (batch, steps)), *layer.shape)


def _float_product(rows: np.ndarray, matrix: np.ndarray, max_abs_input: int, events: bool = True) -> np.ndarray:
    """``rows @ matrix`` in the matrix's float dtype (exact: the caller checked the bound).

    With ``events`` (the numpy path), event-driven (:func:`event_product`) for binary rows sparser than
    EVENT_DENSITY into at least EVENT_MIN_OUTPUTS outputs, where benchmarks/hw_sim_speed.py measured it
    faster; BLAS otherwise.
    """
    if (events and max_abs_input <= 1 and matrix.shape[1] >= EVENT_MIN_OUTPUTS and rows.size
            and np.count_nonzero(rows) < EVENT_DENSITY * rows.size):
        product = event_product(rows, matrix)
        if product is not None:
            return product
    return rows.astype(matrix.dtype) @ matrix


def event_product(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray | None:
    """``rows @ matrix`` for binary ``rows`` (R, N) by gathering, for each row, the matrix rows of the
    inputs that fired and summing them (torch's embedding_bag): work in proportion to the spikes, not to
    R·N. Exact for integer matrices whose every row sum stays below 2^24 (float32) or 2^53 (float64),
    whatever the order of the additions. None when torch is not installed (the caller uses BLAS)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # read-only inputs: torch only reads them
        source = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.uint8))
        weights = torch.from_numpy(matrix)
    fired = source.nonzero()                            # (spikes, 2): row, input; row-major order
    counts = torch.bincount(fired[:, 0], minlength=rows.shape[0])
    with torch.no_grad():
        return F.embedding_bag(fired[:, 1], weights, torch.cumsum(counts, 0) - counts, mode="sum").numpy()


RecurrentGroups = list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]


def _run_neurons_int(layer, synaptic: np.ndarray, recurrent_groups: RecurrentGroups | None,
                     record_states: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The neuron recursion in int64 with Lava's int32 wraps (for sums that can leave int32); for recurrent
    layers and where numba is not installed (else hw_sim/compiled.py runs feed-forward layers).

    Recurrent spikes of step t reach the neurons at step t + 1 + d through connections of delay d; they
    wait in ``pending``, a ring of future inputs.
    """
    batch, steps = synaptic.shape[:2]
    neurons = layer.neurons
    bias = neurons.bias
    u = np.zeros((batch, *layer.shape), dtype=np.int64)
    v = np.zeros_like(u)
    spikes = np.zeros((batch, steps, *layer.shape), dtype=np.uint8)
    us = np.zeros((batch, steps, *layer.shape), dtype=np.int64) if record_states else None
    vs = np.zeros_like(us) if record_states else None
    ring = 2 + max((group[0] for group in recurrent_groups or []), default=0)
    pending = np.zeros((ring, *u.shape), dtype=np.int64)
    for t in range(steps):
        a_in = synaptic[:, t - 1] if t > 0 else np.zeros_like(u)
        if recurrent_groups is not None:
            a_in = wrap_int32(a_in + pending[t % ring])
            pending[t % ring] = 0
        u, v, fired = neuron_step(neurons, bias, u, v, a_in)
        spikes[:, t] = fired
        if record_states:
            us[:, t], vs[:, t] = u, v
        for delay, rows, columns, group in recurrent_groups or []:
            arriving = pending[(t + 1 + delay) % ring]
            arriving[:, rows] = wrap_int32(arriving[:, rows] + shift_by_exponent(
                integer_matmul(fired[:, columns], group, 1), layer.weight_exp))
    return spikes, us, vs


def state_bounds(neurons: CubaNeurons, drive_bound: int, steps: int, bias: int | None = None) -> tuple[int, int]:
    """Upper bounds of |u| and |v| over ``steps`` steps, before Lava's wrap of u and saturation of v.

    ``drive_bound`` bounds |a_in << 6| at every step. |u_t| ≤ α|u_(t-1)| + drive_bound sums to at most
    drive_bound·min(T, 1/(1 - α)), with 1 - α = (4096 - factor)/4096; v likewise with u's bound plus the
    largest |bias| (or ``bias``). Truncation and the reset only shrink the states, so the bounds hold for
    Lava's integers; applied to the negative parts of the drive and bias alone, they bound -u and -v.
    """
    def accumulated(per_step: int, factor: int) -> int:
        loss = DECAY_UNITY - factor
        return per_step * (steps if loss <= 0 else min(steps, -(-DECAY_UNITY // loss)))

    u_bound = accumulated(int(drive_bound), current_factor(neurons.du))
    bias = int(np.abs(neurons.bias).max(initial=0)) if bias is None else bias
    return u_bound, accumulated(u_bound + bias, voltage_factor(neurons.dv))


def _run_neurons_float(layer, synaptic: np.ndarray | None, recurrent_groups: RecurrentGroups | None,
                       record_states: bool, drive: np.ndarray | None = None, a_in_bound: int = INT32_LIMIT,
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The same recursion in float64, exact because every value is an integer below 2^53 (used where
    :func:`_run_neurons_int` is).

    Valid when no int32 wrap can occur (checked by the caller). ``trunc(u · f)`` with f = factor/4096 is
    exactly Lava's ``sign(p)·(|p| >> 12)``: u·factor < 2^36 and the division by 4096 are exact in float64.
    u and v live in one (2, B, ...) array, decayed and truncated together; u's wrap and v's saturation are
    skipped where :func:`state_bounds` proves them no-ops, and the reset multiplies v by "did not fire".
    Arrays are time-major so each step touches contiguous memory. Long because it is the one hot loop:
    splitting it would cost a call per step.
    """
    if drive is None:
        drive = np.moveaxis(synaptic, 1, 0).astype(np.float64) * (1 << STATE_SHIFT)   # (T, B, ...): a_in << 6
    steps, batch = drive.shape[:2]
    neurons = layer.neurons
    shape = (batch, *layer.shape)
    recurrent = [(delay, rows, columns, np.ascontiguousarray(group.T, dtype=np.float64) * (2.0 ** layer.weight_exp))
                 for delay, rows, columns, group in recurrent_groups or []]
    # The drive is known: its largest |value| bounds a_in better than the weights do (one pass over it).
    recurrent_peak = sum((int(np.abs(matrix).sum(axis=0).max(initial=0)) + 2) << STATE_SHIFT
                         for *_, matrix in recurrent)
    peaks = [min(int(peak) + recurrent_peak, a_in_bound << STATE_SHIFT)
             for peak in (drive.max(initial=0), -drive.min(initial=0))]
    u_bound, v_bound = state_bounds(neurons, max(peaks), steps)
    _, v_low = state_bounds(neurons, peaks[1], steps, bias=int(max(0, -neurons.bias.min(initial=0))))
    wrap_u = u_bound >= 1 << 23
    # Above the threshold v is reset to 0 anyway, so the upper saturation matters only for thresholds at or
    # above it; the lower one only where -v can exceed it.
    clip_high = v_bound > STATE_MAX and neurons.vth << STATE_SHIFT >= STATE_MAX
    clip_low = v_low > STATE_MAX or wrap_u
    factors = np.array([du_to_alpha(neurons.du), dv_to_beta(neurons.dv)]).reshape(2, *[1] * len(shape))
    bias = neurons.bias.astype(np.float64) if np.any(neurons.bias) else None
    threshold = float(neurons.vth << STATE_SHIFT)
    half, full, limit = float(1 << 23), float(1 << 24), np.float64(STATE_MAX)
    ring = 2 + max((group[0] for group in recurrent), default=0)
    pending = np.zeros((ring, batch, int(np.prod(layer.shape)))) if recurrent else None
    state = np.zeros((2, *shape))
    u, v = state
    quiet = np.empty((steps, *shape), dtype=bool)      # True where the neuron did not fire
    us = np.zeros((steps, *shape)) if record_states else None
    vs = np.zeros((steps, *shape)) if record_states else None
    for t in range(steps):
        np.multiply(state, factors, out=state)
        np.trunc(state, out=state)
        if t > 0:
            u += drive[t - 1]
        if recurrent:
            u += pending[t % ring].reshape(shape) * (1 << STATE_SHIFT)
            pending[t % ring] = 0.0
        if wrap_u:
            if u.max(initial=0.0) > half:
                u[u > half] -= full
            if u.min(initial=0.0) <= -half:
                u[u <= -half] += full
        v += u
        if bias is not None:
            v += bias
        if clip_high:
            np.minimum(v, limit, out=v)
        if clip_low:
            np.maximum(v, -limit, out=v)
        np.less_equal(v, threshold, out=quiet[t])
        np.multiply(v, quiet[t], out=v)
        if recurrent:
            flat = np.logical_not(quiet[t]).reshape(batch, -1)
            for delay, rows, columns, matrix in recurrent:
                pending[(t + 1 + delay) % ring][:, rows] += np.floor(flat[:, columns].astype(np.float64) @ matrix)
        if record_states:
            us[t], vs[t] = u, v
    spikes = np.moveaxis(np.logical_not(quiet, out=quiet).view(np.uint8), 0, 1)
    if record_states:
        us, vs = np.moveaxis(us, 0, 1).astype(np.int64), np.moveaxis(vs, 0, 1).astype(np.int64)
    return spikes, us, vs


def run(network: Network, x: np.ndarray, *, record_states: bool = False, device: object = None) -> RunResult:
    """Simulate ``network`` bit-exactly on a batch.

    ``x``: (batch, T, *input_shape) integer spikes (binary unless ``network.input_message_bits`` > 0,
    in which case integer payloads). Returns spikes per layer, and u and v per layer when
    ``record_states`` (each (batch, T, *shape)).

    ``device``: None runs this numpy simulator; "cpu", "cuda", "cuda:N" or a ``torch.device`` runs the
    torch backend (hw_sim/torch_backend.py, docs/loihi.md#torch-backend) there instead, for large batches.
    Both give the same :class:`RunResult`, bit for bit (numpy arrays on the host either way).
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
        # 0/1 bytes are used as they are (one read instead of a written copy; only read, never written).
        # Read-only arrays are copied: numba would compile its kernels again for them.
        binary = (device is None and x.dtype in (np.uint8, np.bool_) and x.flags.writeable
                  and (x.dtype == np.bool_ or x.max(initial=0) <= 1))
        layer_input, max_abs_input = (x if binary else np.not_equal(x, 0)).view(np.uint8), 1
    else:
        layer_input = x.astype(np.int64)
        max_abs_input = int(np.abs(layer_input).max(initial=0))
    if device is not None:
        from .torch_backend import run_layers
        return run_layers(network, layer_input, max_abs_input, record_states=record_states, device=device)
    result = RunResult(spikes=[], u=[], v=[])
    for layer in network.layers:
        spikes, us, vs = run_layer(layer, layer_input, max_abs_input, record_states)
        result.spikes.append(spikes)
        if record_states:
            result.u.append(us)
            result.v.append(vs)
        layer_input, max_abs_input = spikes, 1
    return result
