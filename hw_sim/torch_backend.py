"""The torch backend of hw_sim's simulator: the same bit-exact run on the CPU or a CUDA device, for large
batches (docs/loihi.md#torch-backend).

``hw_sim.run(network, x, device="cuda")`` ("cpu", "cuda:1" or a ``torch.device`` likewise) checks the input
as the numpy simulator (hw_sim/loihi.py) does, then comes here; the :class:`~hw_sim.network.RunResult` is
the numpy simulator's, bit for bit, as numpy arrays on the host. The work is laid out the same way: each
synapse's sums for every step and the whole batch are one product, and only the neuron recursion (and
recurrent synapses) walk through time, on (T, B, ...) tensors that stay on the device between layers.

Exactness, from the bounds the numpy simulator computes (never from the data's luck):

* products are float32 where every possible |sum| stays below 2^24 and torch's float32 matmuls sum in full
  float32 (no TF32, no bf16), else float64 below 2^53: every partial sum is then an integer the type holds,
  whatever order the device adds in. CUDA has no int64 matmul, so sums that could reach 2^53 are formed in
  int64 on the CPU (:func:`hw_sim.loihi.integer_matmul`) and moved to the device.
* convolutions on CUDA run with cuDNN off and only where torch picks a plain-sum algorithm (the check of
  hw_sim/conv.py); anything else is computed on the CPU by :func:`hw_sim.conv.exact_conv2d`.
* the neuron recursion is int64 with Lava's wraps and truncations exactly as
  :func:`hw_sim.loihi.neuron_step`; a wrap is skipped only where the layer's input bound proves it a no-op.

torch is imported on first use; importing hw_sim never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .arith import DECAY_BITS, DECAY_UNITY, STATE_BITS, STATE_MAX, STATE_SHIFT, current_factor, voltage_factor
from .conv import FLOAT32_EXACT, FLOAT64_EXACT, _float32_is_direct, exact_conv2d
from .loihi import (EVENT_DENSITY, EVENT_MIN_OUTPUTS, INT32_LIMIT, ONE_FOLD_INPUT_LIMIT, _exact_dtype, _layer_plan,
                    input_bound, integer_matmul, state_bounds, synaptic_bound)
from .network import ConvLayer, DenseLayer, Network, NetworkError, RunResult

if TYPE_CHECKING:
    import torch

HALF_STATE = 1 << (STATE_BITS - 1)          # u above this (or at/below minus it) wraps by 2^24


def _torch(device=None):
    try:
        import torch
    except ImportError:
        raise NetworkError(f"device {device!r}: the torch backend needs torch, which is not installed") from None
    return torch


def resolve_device(device: "str | torch.device") -> "torch.device":
    """The ``torch.device`` for ``device`` ("cpu", "cuda", "cuda:N" or a ``torch.device``); else a one-line
    :class:`~hw_sim.network.NetworkError` "device 'X': why"."""
    torch = _torch(device)
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise NetworkError(f"device {device!r}: not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type not in ("cpu", "cuda"):
        raise NetworkError(f"device {device!r}: the torch backend runs on 'cpu' or 'cuda' only")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise NetworkError(f"device {device!r}: torch sees {count} CUDA device(s)")
    return resolved


def run_layers(network: Network, layer_input: np.ndarray, max_abs_input: int, *, record_states: bool,
               device: "str | torch.device") -> RunResult:
    """Every layer of ``network`` on ``device``.

    ``layer_input``: the first layer's checked input (B, T, *input_shape), uint8 spikes or int64 payloads
    with |value| ≤ ``max_abs_input``, as :func:`hw_sim.loihi.run` prepares it. Returns what that function
    returns: spikes (B, T, *shape) uint8 per layer, and u and v (int64) when ``record_states``.
    """
    torch = _torch(device)
    device = resolve_device(device)
    result = RunResult(spikes=[], u=[], v=[])
    with torch.no_grad():
        source = torch.from_numpy(np.ascontiguousarray(np.swapaxes(layer_input, 0, 1))).to(device)  # (T, B, ...)
        for layer in network.layers:
            synaptic = _synaptic_input(torch, layer, source, max_abs_input)
            spikes, us, vs = _run_neurons(torch, layer, synaptic, _recurrent_matrices(torch, layer, device),
                                          input_bound(layer, max_abs_input), record_states)
            del synaptic
            result.spikes.append(_batch_major(spikes))
            if record_states:
                result.u.append(_batch_major(us))
                result.v.append(_batch_major(vs))
            source, max_abs_input = spikes, 1
    return result


def _batch_major(values) -> np.ndarray:
    """A time-major (T, B, ...) tensor as the numpy simulator returns it: (B, T, ...) on the host."""
    return values.transpose(0, 1).contiguous().cpu().numpy()


def _wrap(values, bits: int):
    """Two's-complement wrap of an int64 tensor to signed ``bits``, in place (hw_sim.arith.wrap_signed)."""
    half = 1 << (bits - 1)
    return values.add_(half).bitwise_and_((half << 1) - 1).sub_(half)


def _shift(values, exponent: int):
    """``values << exponent``, or ``>> -exponent`` (arithmetic: floor) for a negative exponent, in place."""
    if exponent > 0:
        values <<= exponent
    elif exponent < 0:
        values >>= -exponent
    return values


def _float32_matmul_is_exact(torch) -> bool:
    """Whether torch's float32 matmuls sum in full float32 on every device (no TF32 or bf16 inputs)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    owners = (torch.backends, getattr(torch.backends.cuda, "matmul", None),
              getattr(getattr(torch.backends, "mkldnn", None), "matmul", None))
    return all(getattr(owner, "fp32_precision", "none") in ("none", "ieee") for owner in owners)


def _float_dtype(torch, bound: int):
    """The torch float dtype whose matmul is exact for sums bounded by ``bound``, or None (int64 only)."""
    exact = _exact_dtype(bound)
    if exact is None:
        return None
    return torch.float32 if exact == np.float32 and _float32_matmul_is_exact(torch) else torch.float64


def _integer_product(torch, rows, weights: np.ndarray, max_abs_input: int):
    """Exact ``rows @ weights.T``: (R, in) integers with |value| ≤ ``max_abs_input`` times (out, in) int64
    weights -> (R, out) int64, on the rows' device.

    On the CPU, binary rows sparser than hw_sim.loihi's EVENT_DENSITY into at least EVENT_MIN_OUTPUTS
    outputs take the event-driven product (:func:`_event_product`), as the numpy simulator does; on CUDA
    the product is always one dense GEMM.
    """
    dtype = _float_dtype(torch, synaptic_bound(weights, max_abs_input))
    if dtype is None:   # sums may reach 2^53: int64 on the CPU
        return torch.from_numpy(integer_matmul(rows.cpu().numpy(), weights, max_abs_input)).to(rows.device)
    matrix = torch.from_numpy(np.ascontiguousarray(weights.T)).to(device=rows.device, dtype=dtype)
    if (rows.device.type == "cpu" and max_abs_input <= 1 and matrix.shape[1] >= EVENT_MIN_OUTPUTS
            and rows.numel() and int(torch.count_nonzero(rows)) < EVENT_DENSITY * rows.numel()):
        return _event_product(torch, rows, matrix).to(torch.int64)
    return (rows.to(dtype) @ matrix).to(torch.int64)


def _event_product(torch, rows, matrix):
    """``rows @ matrix`` for binary ``rows`` (R, N): for each row, the matrix rows of the inputs that fired,
    summed (torch's embedding_bag; exact for the integer sums :func:`_float_dtype` allows, in any order)."""
    import torch.nn.functional as F

    fired = rows.nonzero()                              # (spikes, 2): row, input; row-major order
    counts = torch.bincount(fired[:, 0], minlength=rows.shape[0])
    return F.embedding_bag(fired[:, 1], matrix, torch.cumsum(counts, 0) - counts, mode="sum")


def _index(torch, indices: np.ndarray, size: int, device):
    """A device index tensor for ``indices``, or None when they are all of 0..size-1 (a plain slice)."""
    return None if indices.size == size else torch.from_numpy(indices).to(device)


def _synaptic_input(torch, layer: DenseLayer | ConvLayer, inputs, max_abs_input: int):
    """What the synapse sends for all steps: (T, B, *input_shape) -> (T, B, *shape) int64, entry t reaching
    the neurons at step t + 1; the values of hw_sim.loihi's dense, delayed dense and conv synaptic inputs."""
    steps, batch = inputs.shape[:2]
    plan = _layer_plan(layer)
    if isinstance(layer, ConvLayer):
        bound = plan.row_abs * max_abs_input
        sums = _exact_conv(torch, layer, inputs.reshape(steps * batch, *inputs.shape[2:]), bound).to(torch.int64)
        return (sums if bound < HALF_STATE else _wrap(sums, STATE_BITS)).reshape(steps, batch, *layer.shape)
    rows = inputs.reshape(steps * batch, layer.input_size)
    total = None
    for delay, out_rows, columns, group in plan.groups:
        if delay >= steps:
            continue
        index = _index(torch, columns, layer.input_size, rows.device)
        sums = _integer_product(torch, rows if index is None else rows[:, index], group, max_abs_input)
        sums = _shift(sums, layer.weight_exp).reshape(steps, batch, -1)
        index = _index(torch, out_rows, layer.shape[0], rows.device)
        if total is None and delay == 0 and index is None:
            total = sums
            continue
        if total is None:
            total = torch.zeros((steps, batch, layer.shape[0]), dtype=torch.int64, device=rows.device)
        if index is None:
            total[delay:] += sums[:steps - delay]
        else:
            total[delay:, :, index] += sums[:steps - delay]
    if total is None:
        return torch.zeros((steps, batch, layer.shape[0]), dtype=torch.int64, device=rows.device)
    # Lava's int32 channel (or delay buffer) wraps; where the sums cannot leave int32 that is a no-op.
    feed_forward_bound = input_bound(layer, max_abs_input) - plan.recurrent_bound
    return total if feed_forward_bound < INT32_LIMIT else _wrap(total, 32)


def _exact_conv(torch, layer: ConvLayer, rows, bound: int):
    """``conv(rows, layer.weights)`` on the rows' device, every value an exact integer (float tensor).
    ``rows``: (R, C, H, W); ``bound``: an upper bound of every |sum|."""
    if rows.device.type != "cpu" and bound < FLOAT64_EXACT:
        sums = _accelerator_conv(torch, layer, rows, bound)
        if sums is not None:
            return sums
    return torch.from_numpy(exact_conv2d(layer, rows.cpu().numpy(), bound)).to(rows.device)


def _accelerator_conv(torch, layer: ConvLayer, rows, bound: int):
    """The conv on the rows' device with cuDNN off, in float32 when ``bound`` < 2^24 else float64, or None
    where torch would not compute it as plain sums (hw_sim/conv.py's check; cuDNN may pick Winograd or FFT).
    Its float32 path is im2col + cuBLAS, so it also needs full-precision float32 matmuls."""
    import torch.nn.functional as F

    kernel = torch.from_numpy(np.asarray(layer.weights, dtype=np.float64)).to(rows.device)
    dtypes = ([torch.float32] if bound < FLOAT32_EXACT and _float32_matmul_is_exact(torch) else []) + [torch.float64]
    with torch.backends.cudnn.flags(enabled=False):
        for dtype in dtypes:
            source, weights = rows.to(dtype), kernel.to(dtype)
            if _float32_is_direct(torch, source, weights, layer):
                return F.conv2d(source, weights, stride=layer.stride, padding=layer.padding,
                                dilation=layer.dilation, groups=layer.groups)
    return None


def _recurrent_matrices(torch, layer: DenseLayer | ConvLayer, device) -> list:
    """The layer's recurrent delay groups on the device: [(delay, rows or None, columns or None, matrix)],
    ``matrix`` the group's weights transposed, (columns, rows), in a float dtype exact for its sums."""
    groups = _layer_plan(layer).recurrent_groups
    if not groups:
        return []
    size = layer.shape[0]
    matrices = []
    for delay, rows, columns, group in groups:
        dtype = _float_dtype(torch, synaptic_bound(group, 1))
        if dtype is None:
            raise NetworkError(f"recurrent sums of {size} neurons beyond 2^53 cannot be computed exactly")
        matrix = torch.from_numpy(np.ascontiguousarray(group.T)).to(device=device, dtype=dtype)
        matrices.append((delay, _index(torch, rows, size, device), _index(torch, columns, size, device), matrix))
    return matrices


def _send_recurrent(torch, fired, recurrent: list, pending, step: int, weight_exp: int, wrap: bool) -> None:
    """Add this step's recurrent sums (from ``fired``, (B, N) bool) to the ring ``pending`` (R, B, N) at the
    steps they arrive (step + 1 + delay), as hw_sim.loihi's int64 recursion does (int32 wraps if ``wrap``)."""
    for delay, rows, columns, matrix in recurrent:
        source = fired if columns is None else fired[:, columns]
        sums = _shift((source.to(matrix.dtype) @ matrix).to(torch.int64), weight_exp)
        arriving = pending[(step + 1 + delay) % pending.shape[0]]
        if rows is None:
            arriving += sums
            if wrap:
                _wrap(arriving, 32)
        else:
            updated = arriving[:, rows] + sums
            arriving[:, rows] = _wrap(updated, 32) if wrap else updated


def _recursion_checks(layer: DenseLayer | ConvLayer, synaptic, a_in_bound: int) -> tuple[bool, bool, bool]:
    """Which of Lava's wraps the recursion must apply: (int32 wraps, u's 24-bit wrap, v's saturation).

    |a_in| is bounded by the layer's bound, and by the largest synaptic input present plus the recurrent
    bound. Below 2^18 (|a_in << 6| < 2^24), |u| stays within 2^23 after its wrap, so |decayed u + (a_in << 6)|
    < 2^23 + 2^24 and no int32 wrap acts; u's wrap and v's saturation act only where
    hw_sim.loihi.state_bounds says they can (v's always once u may wrap).
    """
    if synaptic.numel():
        peak = max(int(synaptic.max()), -int(synaptic.min()))
        a_in_bound = min(a_in_bound, peak + _layer_plan(layer).recurrent_bound)
    if a_in_bound >= ONE_FOLD_INPUT_LIMIT:
        return True, True, True
    u_bound, v_bound = state_bounds(layer.neurons, a_in_bound << STATE_SHIFT, synaptic.shape[0])
    wrap_u = u_bound >= HALF_STATE
    return False, wrap_u, wrap_u or v_bound > STATE_MAX


def _decay(state) -> None:
    """``state = trunc(state · factor / 4096)`` in place, for ``state`` already multiplied by its factor:
    Lava's sign(p)·(|p| >> 12), computed as (p + (4095 if p < 0 else 0)) >> 12."""
    state.add_((state >> 63).bitwise_and_(DECAY_UNITY - 1)).bitwise_right_shift_(DECAY_BITS)


def _wrap_current(torch, u, one_fold: bool) -> None:
    """Lava's 24-bit wrap of u in place: above 2^23 it loses 2^24, at or below -2^23 it gains 2^24. With
    ``one_fold`` (|u| < 2^23 + 2^24, so one fold lands in (-2^23, 2^23]) a modular wrap to that range."""
    if one_fold:
        u.add_(HALF_STATE - 1).bitwise_and_((HALF_STATE << 1) - 1).sub_(HALF_STATE - 1)
    else:
        u.copy_(torch.where(u > HALF_STATE, u - (HALF_STATE << 1),
                            torch.where(u <= -HALF_STATE, u + (HALF_STATE << 1), u)))


def _run_neurons(torch, layer: DenseLayer | ConvLayer, synaptic, recurrent: list, a_in_bound: int,
                 record_states: bool):
    """The neuron recursion in int64 on the device, one step at a time: hw_sim.loihi.neuron_step exactly,
    the wraps that cannot act skipped (:func:`_recursion_checks`).

    ``synaptic``: (T, B, *shape) int64 from :func:`_synaptic_input`; ``a_in_bound`` bounds |a_in| (synaptic
    plus recurrent). Returns spikes (T, B, *shape) uint8, and u and v (T, B, *shape) int64 when
    ``record_states`` (else None). Long because it is the one hot loop.
    """
    steps, batch = synaptic.shape[:2]
    neurons, device, shape = layer.neurons, synaptic.device, (batch, *layer.shape)
    wrap_int32, wrap_u, saturate = _recursion_checks(layer, synaptic, a_in_bound)
    synaptic = synaptic if wrap_int32 else synaptic << STATE_SHIFT
    state = torch.zeros((2, *shape), dtype=torch.int64, device=device)
    u, v = state
    factors = torch.tensor([current_factor(neurons.du), voltage_factor(neurons.dv)], dtype=torch.int64,
                           device=device).reshape(2, *[1] * len(shape))
    bias = torch.from_numpy(neurons.bias).to(device) if np.any(neurons.bias) else None
    threshold = neurons.vth << STATE_SHIFT
    spikes = torch.zeros((steps, *shape), dtype=torch.uint8, device=device)
    us = torch.zeros((steps, *shape), dtype=torch.int64, device=device) if record_states else None
    vs = torch.zeros_like(us) if record_states else None
    ring = 2 + max((delay for delay, *_ in recurrent), default=0)
    pending = torch.zeros((ring, batch, layer.shape[0]), dtype=torch.int64, device=device) if recurrent else None
    for t in range(steps):
        _decay(state.mul_(factors))
        a_in = synaptic[t - 1] if t > 0 else torch.zeros_like(u)
        if recurrent:   # the synaptic input is wrapped already; the sum with the recurrent one may not be
            arriving = pending[t % ring].reshape(shape)
            a_in = _wrap(a_in + arriving, 32) if wrap_int32 else a_in + (arriving << STATE_SHIFT)
            arriving.zero_()
        if wrap_int32:
            _wrap(u, 32).add_(_wrap(a_in << STATE_SHIFT, 32))
            _wrap(u, 32)
        else:
            u += a_in
        if wrap_u:
            _wrap_current(torch, u, one_fold=not wrap_int32)
        v += u
        if bias is not None:
            v += bias
        if saturate:
            v.clamp_(-STATE_MAX, STATE_MAX)
        fired = v > threshold
        v.masked_fill_(fired, 0)
        spikes[t] = fired
        if record_states:
            us[t], vs[t] = u, v
        if recurrent:
            _send_recurrent(torch, fired.reshape(batch, -1), recurrent, pending, t, layer.weight_exp, wrap_int32)
    return spikes, us, vs
