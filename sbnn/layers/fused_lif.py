"""The noisy CUBA-LIF over a whole sequence as one autograd function with a hand-written backward."""

from __future__ import annotations

import functools
from types import ModuleType
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sbnn.estimators import EstimatorConfig
from sbnn.layers.bayesian import _compiled_module
from sbnn.layers.cuba import (
    CubaParameters,
    CubaState,
    _integrate_current,
    _integrate_voltage,
    _noise_scale,
    _noisy_lif_values,
    _total_noise_variance,
)
from sbnn.layers.modes import _add_optional


# Devices on which the fused LIF works through the sequence in chunks of time steps small enough to stay
# in cache (_CHUNK_ELEMENTS numbers per tensor); on an accelerator one chunk spans the whole sequence, as
# each operation costs a kernel launch and a step's tensors are too small to fill the device.
_CACHE_SIZED_DEVICES = ("cpu",)
_CHUNK_ELEMENTS = 1 << 18


def _chunk_steps(step_tensor: Tensor, steps: int) -> int:
    """Time steps per chunk for tensors shaped like ``step_tensor`` (one step, ``(batch, *shape)``)."""
    if step_tensor.device.type not in _CACHE_SIZED_DEVICES:
        return max(steps, 1)
    return max(1, min(steps, _CHUNK_ELEMENTS // max(step_tensor.numel(), 1)))


def _time_major(tensor: Tensor | None, start: int, stop: int) -> Tensor | None:
    """Steps ``start:stop`` of a ``(batch, T, ...)`` tensor as a ``(steps, batch, ...)`` view."""
    return None if tensor is None else tensor[:, start:stop].transpose(0, 1)


class _FusedNoisyLif(torch.autograd.Function):
    """A whole sequence of noisy CUBA-LIF steps with a hand-written backward through time.

    Same arithmetic as :func:`cuba_lif_step_noisy` step by step (so the same spikes, bit for bit), but
    the forward records no autograd graph.  Without recurrence everything that does not depend on the
    state (noise scale, drive, margins, the estimator's derivative) is computed for a chunk of steps at
    once, and the recursion itself is four operations per step forward and two backward
    (:func:`_forward_chunked`, :func:`_backward_chunked`); on the CPU with AGR and numba installed, the
    compiled kernels of :mod:`sbnn.layers.fused_lif_compiled` instead make one pass each way
    (:func:`_forward_compiled`, :func:`_backward_compiled`).  ``mean``, ``variance`` (or ``None``) and
    ``unit_noise`` are ``(batch, T, n)`` (any neuron shape without recurrence); ``recurrent_moments``
    (or ``None``) is the recurrent layer's ``[mu; sigma^2]``, ``(2n, n)``, fed with the previous step's
    spikes as :meth:`BayesianLayer.forward` does.  Outputs ``spikes``, ``voltages`` (empty unless
    ``record_voltage``) and the final state.  Not for the soft ``"relaxed"`` estimator.
    """

    @staticmethod
    def forward(ctx, mean, variance, unit_noise, bias, current0, voltage0, recurrent_moments, params,
                estimator, generator, needs_derivative, record_voltage):  # noqa: D102
        ctx.set_materialize_grads(False)
        ctx.params = params
        ctx.bias_shape = bias.shape
        ctx.compiled = _compiled_kernels() if _compiled_applies(
            (mean, variance, unit_noise, bias, current0, voltage0), recurrent_moments, estimator) else None
        if ctx.compiled is not None:
            spikes, voltages, current, voltage, sampled, derivatives = _forward_compiled(
                ctx.compiled, mean, variance, unit_noise, bias, current0, voltage0, params, estimator,
                generator, needs_derivative=needs_derivative, record_voltage=record_voltage,
            )
            if needs_derivative:
                ctx.save_for_backward(sampled, unit_noise, spikes, variance, *derivatives)
            return spikes, voltages, current, voltage
        steps = mean.shape[1]
        recurrent = recurrent_moments is not None
        spikes = torch.empty_like(mean)
        voltages = torch.empty_like(mean) if record_voltage else mean.new_empty((mean.shape[0], 0))
        # Saved for the backward, time-major so that each step's slice is contiguous: the sampled
        # voltage before the reset, z (then g z/s) and g/s, for dL/dm = dL/db g/s and
        # dL/dVar = (dL/d(noise) xi - dL/db g z/s)/(2s); with recurrence also each step's total input
        # variance, without it (given a variance) each step's 1/s.
        slots = 3 + (recurrent or variance is not None)
        saved = torch.empty((slots, steps, *mean[:, 0].shape), dtype=mean.dtype, device=mean.device) \
            if needs_derivative else None
        run = _forward_recurrent if recurrent else _forward_chunked
        current, voltage = run(
            mean, variance, unit_noise, bias, current0, voltage0, recurrent_moments, params, estimator,
            generator, spikes=spikes, voltages=voltages if record_voltage else None, saved=saved,
        )
        if needs_derivative:
            ctx.save_for_backward(saved, unit_noise, spikes, variance, recurrent_moments)
        return spikes, voltages, current, voltage

    @staticmethod
    def backward(ctx, grad_spikes, grad_voltages, grad_final_current, grad_final_voltage):  # noqa: D102
        if ctx.compiled is not None:
            return _backward_compiled(ctx, grad_spikes, grad_voltages, grad_final_current, grad_final_voltage)
        saved, unit_noise, spikes, variance, recurrent_moments = ctx.saved_tensors
        recurrent = recurrent_moments is not None
        # The variance each step's noise had: the input's, plus the feedback's with recurrence.
        step_variances = saved[3] if recurrent else None if variance is None else variance.transpose(0, 1)
        needs = ctx.needs_input_grad
        grads = _LifGradients(
            # With recurrence the step's input gradients also feed the recurrent weights and earlier spikes.
            mean=torch.empty_like(unit_noise),
            variance=torch.empty_like(unit_noise) if step_variances is not None else None,
            bias=torch.zeros_like(saved[0, 0]) if needs[3] else None,
        )
        if grad_voltages is not None and grad_voltages.shape[1] == 0:
            grad_voltages = None
        incoming = dict(grad_spikes=grad_spikes, grad_voltages=grad_voltages,
                        grad_final_current=grad_final_current, grad_final_voltage=grad_final_voltage)
        if recurrent:
            adjoint_current, adjoint_voltage = _backward_through_time(
                ctx.params, saved, unit_noise, spikes, step_variances, recurrent_moments, grads, **incoming)
        else:
            adjoint_current, adjoint_voltage = _backward_chunked(
                ctx.params, saved, unit_noise, spikes, variance, grads, **incoming)
        grad_recurrent = None
        if recurrent and needs[6]:
            # d[mu; sigma^2] = sum over steps t >= 1 and the batch of [dm_t, dVar_t]^T b_{t-1}.
            step_grads = torch.cat([grads.mean[:, 1:], grads.variance[:, 1:]], -1).flatten(0, 1)
            grad_recurrent = step_grads.T @ spikes[:, :-1].flatten(0, 1)
        return (
            grads.mean if needs[0] else None,
            grads.variance if needs[1] else None,
            None,
            grads.bias.sum_to_size(ctx.bias_shape) if grads.bias is not None else None,
            adjoint_current if needs[4] else None,
            adjoint_voltage if needs[5] else None,
            grad_recurrent,
            None, None, None, None, None,
        )


def _forward_recurrent(
    mean: Tensor, variance: Tensor | None, unit_noise: Tensor, bias: Tensor, current: Tensor, voltage: Tensor,
    recurrent_moments: Tensor, params: CubaParameters, estimator: EstimatorConfig,
    generator: torch.Generator | None, *, spikes: Tensor, voltages: Tensor | None, saved: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The forward of :class:`_FusedNoisyLif` with recurrence, step by step (each step's input depends
    on the previous step's spikes).  Fills ``spikes``, ``voltages`` and ``saved``; returns the final
    ``(current, voltage)``."""
    cache_sized = mean.device.type in _CACHE_SIZED_DEVICES
    fired = torch.zeros_like(mean[:, 0])
    for t in range(mean.shape[1]):
        feedback_mean, feedback_variance = F.linear(fired, recurrent_moments).split(mean.shape[-1], -1)
        step_mean = mean[:, t] + feedback_mean
        step_variance = _add_optional(None if variance is None else variance[:, t], feedback_variance)
        if saved is not None:
            saved[3, t] = step_variance
        current, sampled_voltage, inverse_std, z = _noisy_lif_values(
            CubaState(current, voltage), step_mean, step_variance, unit_noise[:, t], params, bias,
            out=None if saved is None else (saved[0, t], saved[1, t]),
        )
        # A fresh tensor (not the output's strided slice) feeds the recurrent product, as in the
        # step-by-step path.
        fired = torch.gt(sampled_voltage, params.threshold).to(mean.dtype)
        spikes[:, t] = fired
        voltage = torch.addcmul(sampled_voltage, sampled_voltage, fired, value=-1.0)   # reset
        if voltages is not None:
            voltages[:, t] = voltage
        if saved is not None and cache_sized:   # the estimator while the step's tensors are in cache
            derivative = estimator.outcome_derivative(z, fired, generator=generator)
            torch.mul(derivative, inverse_std, out=saved[2, t])
            saved[1, t].mul_(saved[2, t])
        elif saved is not None:
            saved[2, t] = inverse_std
    if saved is not None and not cache_sized:
        # One call over the whole sequence: each operation costs a kernel launch on an accelerator.
        derivative = estimator.outcome_derivative(saved[1], spikes.transpose(0, 1), generator=generator)
        saved[2].mul_(derivative)
        saved[1].mul_(saved[2])
    return current, voltage


def _work_buffers(like: Tensor, chunk: int, count: int) -> list[Tensor]:
    """``count`` time-major work buffers of ``chunk`` steps of ``like`` (one step, ``(batch, *shape)``).

    Made once per call and reused by every chunk, so that a chunk's operations write to memory that is
    likely still in cache rather than to fresh tensors."""
    return [like.new_empty((chunk, *like.shape)) for _ in range(count)]


def _chunk_noise_scale(
    variance: Tensor | None, params: CubaParameters, std_out: Tensor, inverse_out: Tensor | None
) -> tuple[Tensor | float, Tensor | float | None]:
    """``(s, 1/s)`` of a chunk of steps, ``s = sqrt(variance + s0^2)`` formed as :func:`_noise_scale` forms
    it (numbers without ``variance``), written to ``std_out`` and ``inverse_out`` (``1/s`` is not formed
    when that is ``None``).  ``1/s`` is the reciprocal of ``s`` rather than ``rsqrt`` (a square root and a
    division on the CPU): the same up to rounding, at about a third of the cost; and multiplying by it is cheaper
    than dividing by ``s``, which slows down on the derivatives' tiny values."""
    if variance is None:
        return _noise_scale(None, params)
    std = torch.sqrt(_total_noise_variance(variance, params, out=std_out), out=std_out)
    return std, None if inverse_out is None else torch.reciprocal(std, out=inverse_out)


def _forward_chunked(
    mean: Tensor, variance: Tensor | None, unit_noise: Tensor, bias: Tensor, current: Tensor, voltage: Tensor,
    recurrent_moments: None, params: CubaParameters, estimator: EstimatorConfig,
    generator: torch.Generator | None, *, spikes: Tensor, voltages: Tensor | None, saved: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The forward of :class:`_FusedNoisyLif` without recurrence, a chunk of steps at a time.

    Per chunk: the noise scale and the drive ``mean + s xi`` at once; the current recursion (one
    operation a step); ``I + bias`` at once; the voltage recursion (sampled voltage, spike, reset: three
    operations a step); then the margins and the estimator's derivative at once.  Per element every
    operation is the one :func:`_noisy_lif_values` applies, on operands of the same layout where the
    rounding could depend on it, so the spikes are those of the step-by-step path bit for bit.  All
    intermediate results go to time-major buffers reused by every chunk (:func:`_work_buffers`).
    """
    steps = mean.shape[1]
    chunk = _chunk_steps(current, steps)
    noise, scale, drive, currents, fired, reset = _work_buffers(mean[:, 0], chunk, 6)
    sampled = _work_buffers(mean[:, 0], chunk, 1)[0] if saved is None else None
    # Each step's views of the buffers, made once (indexing them anew every step costs more than the steps'
    # arithmetic); the threshold as a tensor of the input's dtype, so that no step converts the number.
    drive_steps, current_steps, fired_steps, reset_steps = (b.unbind(0) for b in (drive, currents, fired, reset))
    threshold = mean.new_full((), params.threshold)
    for start in range(0, steps, chunk):
        stop = min(start + chunk, steps)
        size = stop - start
        chunk_noise, chunk_drive, chunk_fired = noise[:size], drive[:size], fired[:size]
        # (1/s goes to the saved slot that the variance's gradient reads.)
        inverse_out = None if saved is None or variance is None else saved[3, start:stop]
        std, inverse_std = _chunk_noise_scale(_time_major(variance, start, stop), params, scale[:size], inverse_out)
        torch.mul(_time_major(unit_noise, start, stop), std, out=chunk_noise)   # s xi
        torch.add(_time_major(mean, start, stop), chunk_noise, out=chunk_drive)
        for step_drive, step_current in zip(drive_steps[:size], current_steps):
            current = _integrate_current(step_drive, current, params, out=step_current)
        torch.add(currents[:size], bias, out=chunk_drive)   # I + bias
        chunk_sampled = sampled[:size] if saved is None else saved[0, start:stop]
        for step_driven, step_sampled, step_fired, step_reset in zip(
                drive_steps[:size], chunk_sampled.unbind(0), fired_steps, reset_steps):
            _integrate_voltage(step_driven, voltage, params, out=step_sampled)
            torch.gt(step_sampled, threshold, out=step_fired)
            voltage = torch.addcmul(step_sampled, step_sampled, step_fired, value=-1.0, out=step_reset)
        _time_major(spikes, start, stop).copy_(chunk_fired)
        if voltages is not None:
            _time_major(voltages, start, stop).copy_(reset[:size])
        if saved is not None:
            margins = torch.sub(chunk_sampled, chunk_noise, out=saved[1, start:stop]).sub_(params.threshold)
            margins.mul_(inverse_std)
            derivative = estimator.outcome_derivative(margins, chunk_fired, generator=generator)
            torch.mul(derivative, inverse_std, out=saved[2, start:stop])
            margins.mul_(saved[2, start:stop])
    # (A chunk reads the previous chunk's last state before it overwrites that buffer slot.)
    return current.clone(), voltage.clone()


def _backward_chunked(
    params: CubaParameters, saved: Tensor, unit_noise: Tensor, spikes: Tensor, variance: Tensor | None,
    grads: "_LifGradients", *, grad_spikes: Tensor | None, grad_voltages: Tensor | None,
    grad_final_current: Tensor | None, grad_final_voltage: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The adjoint recursion of :func:`_forward_chunked`, a chunk of steps at a time from the last.

    With ``e_t = dL/dm_t`` (the mean membrane, through the sampled voltage and the margin) and
    ``q_t = dL/d mean_t``: ``e_t = k_t a_t + h_t``, ``a_t = beta e_{t+1} (+ dL/dV_t)`` the adjoint of
    the voltage after the reset, ``k_t = 1 - b_t - Vhat_t g_t/s_t`` and ``h_t = dL/db_t g_t/s_t``; and
    ``q_t = e_t + alpha q_{t+1}``: two operations a step.  Everything else (the bias's and the
    variance's gradients) is formed for a whole chunk at once, in work buffers reused by every chunk.
    Fills ``grads``; returns the adjoints of the initial current and voltage.
    """
    steps = saved.shape[1]
    alpha, beta = params.current_decay, params.voltage_decay
    chunk = _chunk_steps(saved[0, 0], steps)
    zeros = torch.zeros_like(saved[0, 0])
    voltage_adjoint = zeros if grad_final_voltage is None else grad_final_voltage   # a_{T-1}
    current_adjoint = zeros if grad_final_current is None else grad_final_current   # alpha q_T
    silent, keep, drive, margin_adjoint, mean_adjoint = _work_buffers(zeros, chunk, 5)   # 1 - b, k, h, e, q
    variance_work = None if grads.variance is None else _work_buffers(zeros, chunk, 2)
    step_views = [buffer.unbind(0) for buffer in (drive, keep, margin_adjoint, mean_adjoint)]
    one = zeros.new_ones(())
    for stop in range(steps, 0, -chunk):
        start = max(0, stop - chunk)
        size = stop - start
        sampled, derivative_margin_over_std, derivative_over_std = saved[:3, start:stop].unbind(0)
        not_fired = torch.sub(one, _time_major(spikes, start, stop), out=silent[:size])
        chunk_keep = torch.addcmul(not_fired, sampled, derivative_over_std, value=-1.0, out=keep[:size])
        spike_grad = _time_major(grad_spikes, start, stop)
        chunk_drive = drive[:size]
        if spike_grad is None:
            chunk_drive.zero_()
        else:
            torch.mul(spike_grad, derivative_over_std, out=chunk_drive)
        voltage_grad = _time_major(grad_voltages, start, stop)
        if voltage_grad is not None:
            chunk_drive.addcmul_(chunk_keep, voltage_grad)
        e, q = margin_adjoint[:size], mean_adjoint[:size]
        _adjoint_recursion(*(views[:size] for views in step_views), voltage_adjoint, current_adjoint, params)
        _time_major(grads.mean, start, stop).copy_(q)
        if grads.bias is not None:
            grads.bias.add_(e.sum(0))
        if variance_work is not None:
            _variance_gradient_of_chunk(
                params, e, q, voltage_adjoint, current_adjoint, sampled, not_fired, derivative_margin_over_std,
                spike_grad, voltage_grad, _time_major(unit_noise, start, stop), saved[3, start:stop],
                work=[buffer[:size] for buffer in variance_work], out=_time_major(grads.variance, start, stop),
            )
        voltage_adjoint, current_adjoint = beta * e[0], alpha * q[0]
    return current_adjoint, voltage_adjoint


def _adjoint_recursion(
    drive: Sequence[Tensor], keep: Sequence[Tensor], e: Sequence[Tensor], q: Sequence[Tensor],
    voltage_adjoint: Tensor, current_adjoint: Tensor, params: CubaParameters,
) -> None:
    """The two operations a step of :func:`_backward_chunked` over a chunk, from its last step: fills each
    step's ``e_t = h_t + k_t a_t`` and ``q_t = e_t + alpha q_{t+1}`` (lists of the steps' views), given
    the adjoints ``a``, ``alpha q`` that enter the chunk's last step from the next chunk."""
    torch.addcmul(drive[-1], voltage_adjoint, keep[-1], out=e[-1])
    torch.add(e[-1], current_adjoint, out=q[-1])
    for k in range(len(e) - 2, -1, -1):
        torch.addcmul(drive[k], e[k + 1], keep[k], value=params.voltage_decay, out=e[k])
        torch.add(e[k], q[k + 1], alpha=params.current_decay, out=q[k])


def _variance_gradient_of_chunk(
    params: CubaParameters, e: Tensor, q: Tensor, last_voltage_adjoint: Tensor, last_current_adjoint: Tensor,
    sampled: Tensor, not_fired: Tensor, derivative_margin_over_std: Tensor, spike_grad: Tensor | None,
    voltage_grad: Tensor | None, unit_noise: Tensor, inverse_std: Tensor, *, work: list[Tensor], out: Tensor,
) -> None:
    """``dL/dVar_t = ((dL/dVhat_t + dL/dI_t) xi_t - dL/db_t g_t z_t/s_t) / (2 s_t)`` for a chunk, all
    ``(steps, batch, ...)``: the noise ``s xi`` enters the current and the sampled voltage, and ``s``
    divides the margin.  ``e``, ``q`` are :func:`_backward_chunked`'s adjoints of the chunk, the last
    adjoints those that entered it from the next chunk, ``inverse_std`` the ``1/s`` the forward saved;
    ``work`` two buffers of the chunk's shape.

    With the voltage's adjoint ``a_t = beta e_{t+1} (+ dL/dV_t)``, the current's ``c_t = alpha q_{t+1}``,
    ``dL/db_t = dL/d(output spike) - a_t Vhat_t`` (the reset) and ``dL/dVhat_t = a_t (1 - b_t)``, the
    numerator is ``a_t w_t + c_t xi_t - dL/d(output spike)_t g_t z_t/s_t`` with
    ``w_t = (1 - b_t) xi_t + Vhat_t g_t z_t/s_t``: the shifted adjoints are read in place, not copied.
    """
    weight, half_numerator = work
    torch.mul(not_fired, unit_noise, out=weight).addcmul_(sampled, derivative_margin_over_std)
    # Half the numerator (halving is exact), then times 1/s.
    if spike_grad is None:
        half_numerator.zero_()
    else:
        torch.addcmul(half_numerator.new_zeros(()), spike_grad, derivative_margin_over_std, value=-0.5,
                      out=half_numerator)
    if voltage_grad is not None:
        half_numerator.addcmul_(voltage_grad, weight, value=0.5)
    half_numerator[:-1].addcmul_(e[1:], weight[:-1], value=0.5 * params.voltage_decay)
    half_numerator[:-1].addcmul_(q[1:], unit_noise[:-1], value=0.5 * params.current_decay)
    half_numerator[-1].addcmul_(last_voltage_adjoint, weight[-1], value=0.5)
    half_numerator[-1].addcmul_(last_current_adjoint, unit_noise[-1], value=0.5)
    torch.mul(half_numerator, inverse_std, out=out)


class _LifGradients(NamedTuple):
    """The gradients :func:`_backward_through_time` fills in place (``None`` where not needed): of the
    input ``mean`` and ``variance``, ``(batch, T, *shape)``, and of the ``bias`` per example,
    ``(batch, *shape)`` (summed to the bias's shape afterwards)."""

    mean: Tensor | None
    variance: Tensor | None
    bias: Tensor | None


def _backward_through_time(
    params: CubaParameters, saved: Tensor, unit_noise: Tensor, spikes: Tensor, step_variances: Tensor | None,
    recurrent_moments: Tensor | None, grads: _LifGradients, *, grad_spikes: Tensor | None,
    grad_voltages: Tensor | None, grad_final_current: Tensor | None, grad_final_voltage: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The adjoint recursion of :class:`_FusedNoisyLif`, from the last step to the first.

    ``saved`` is what the forward saved (time-major), ``step_variances`` ``(T, batch, *shape)`` the
    variance each step's noise had (``None`` without).  Fills ``grads`` and returns the adjoints of the
    initial current and voltage, ``(batch, *shape)``.
    """
    sampled_voltages, derivative_margin_over_std, derivative_over_std = saved[:3].unbind(0)
    recurrent = recurrent_moments is not None
    base_variance = params.base_noise_std**2
    alpha, beta = params.current_decay, params.voltage_decay
    grad_mean, grad_variance, grad_bias = grads
    zeros = torch.zeros_like(sampled_voltages[0])
    # dL/dI_t and dL/dV_t (after reset) from later steps; dL/db_t through the next step's feedback.
    adjoint_current = zeros if grad_final_current is None else grad_final_current
    adjoint_voltage = zeros if grad_final_voltage is None else grad_final_voltage
    grad_spike_from_feedback = None
    for t in range(sampled_voltages.shape[0] - 1, -1, -1):
        if grad_voltages is not None and grad_voltages.shape[1] > 0:
            adjoint_voltage = adjoint_voltage + grad_voltages[:, t]
        # V_t = Vhat_t (1 - b_t): the reset passes -Vhat_t to the spike and (1 - b_t) to Vhat_t.
        grad_spike = zeros if grad_spikes is None else grad_spikes[:, t]
        grad_spike = _add_optional(grad_spike, grad_spike_from_feedback)
        grad_spike = torch.addcmul(grad_spike, adjoint_voltage, sampled_voltages[t], value=-1.0)
        grad_sampled = torch.addcmul(adjoint_voltage, adjoint_voltage, spikes[:, t], value=-1.0)
        # z = (m - theta)/s and Vhat = m + noise give dL/dm; then
        # I = (alpha I' + mean) + noise and m = beta V' + (alpha I' + mean) + bias.
        adjoint_mean_voltage = torch.addcmul(grad_sampled, grad_spike, derivative_over_std[t])
        adjoint_mean_current = torch.add(
            adjoint_mean_voltage, adjoint_current, out=None if grad_mean is None else grad_mean[:, t]
        )
        if grad_bias is not None:
            grad_bias += adjoint_mean_voltage
        if grad_variance is not None:
            # s = sqrt(Var + s0^2) scales the noise (s xi) and divides the margin.
            grad_std = torch.addcmul(
                (grad_sampled + adjoint_current) * unit_noise[:, t], grad_spike,
                derivative_margin_over_std[t], value=-1.0,
            )
            # dL/dVar = dL/ds / (2s), 1/s recomputed rather than stored (one tensor less to hold).
            torch.mul(grad_std, torch.rsqrt(step_variances[t] + base_variance), out=grad_variance[:, t])
            grad_variance[:, t].mul_(0.5)
        if recurrent and t > 0:
            # feedback_t = b_{t-1} [mu; sigma^2]^T: its gradient reaches b_{t-1}.
            grad_spike_from_feedback = torch.cat([grad_mean[:, t], grad_variance[:, t]], -1) @ recurrent_moments
        adjoint_current = alpha * adjoint_mean_current
        adjoint_voltage = beta * adjoint_mean_voltage
    return adjoint_current, adjoint_voltage


@functools.cache
def _compiled_kernels() -> ModuleType | None:
    """:mod:`sbnn.layers.fused_lif_compiled` (numba kernels of the fused LIF), or ``None`` without numba."""
    return _compiled_module("sbnn.layers.fused_lif_compiled")


def _compiled_applies(
    tensors: Sequence[Tensor | None], recurrent_moments: Tensor | None, estimator: EstimatorConfig
) -> bool:
    """Whether :class:`_FusedNoisyLif` runs the compiled kernels on ``(mean, variance, unit_noise, bias,
    current0, voltage0)``: CPU tensors of one float dtype (``float32`` or ``float64``), the states one
    step's shape, no recurrence, Gaussian AGR (which draws nothing from the generator), not while
    ``torch.compile`` traces, and numba importable."""
    mean, variance, unit_noise, _, current0, voltage0 = tensors
    present = [t for t in tensors if t is not None]
    dtype = mean.dtype
    shapes_match = (current0.shape == voltage0.shape == mean[:, 0].shape
                    and all(t.shape == mean.shape for t in (variance, unit_noise) if t is not None))
    return (recurrent_moments is None and shapes_match and estimator.method == "agr" and estimator.noise == "gauss"
            and dtype in (torch.float32, torch.float64)
            and all(t.device.type == "cpu" and t.dtype == dtype for t in present)
            and not torch.compiler.is_compiling() and _compiled_kernels() is not None)


def _as_array(tensor: Tensor | None, shape: tuple[int, ...], like: Tensor) -> np.ndarray:
    """A C-contiguous numpy view of ``tensor`` reshaped to ``shape`` (copied only where not contiguous); for
    ``None`` a ``(1, 1, n)`` array of zeros of ``like``'s dtype (the kernels' absent input or output)."""
    if tensor is None:
        return np.zeros((1, 1, shape[-1]), dtype=like.detach().numpy().dtype)
    return tensor.detach().reshape(shape).contiguous().numpy()


def _lif_constants(params: CubaParameters, like: Tensor) -> np.ndarray:
    """The kernels' constants in ``like``'s dtype, each rounded as torch rounds the number it is given:
    ``[alpha, beta, theta, s0^2, s, 1/s, 1]`` (see :mod:`sbnn.layers.fused_lif_compiled`)."""
    std, inverse_std = _noise_scale(None, params)
    values = [params.current_decay, params.voltage_decay, params.threshold, params.base_noise_std**2,
              std, inverse_std, 1.0]
    return np.array(values, dtype=like.detach().numpy().dtype)


def _forward_compiled(
    kernels: ModuleType, mean: Tensor, variance: Tensor | None, unit_noise: Tensor, bias: Tensor,
    current0: Tensor, voltage0: Tensor, params: CubaParameters, estimator: EstimatorConfig,
    generator: torch.Generator | None, *, needs_derivative: bool, record_voltage: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, list[Tensor]]:
    """The forward of :class:`_FusedNoisyLif` by :func:`fused_lif_compiled.lif_forward`, a few examples at a
    time: after each group the estimator's derivative of its margins, while they are in cache.

    Returns ``(spikes, voltages, final current, final voltage, sampled, derivatives)``: ``sampled``
    ``(batch, T, n)``, the sampled voltages, and ``derivatives`` each group's derivatives ``g``,
    ``(group, T, n)`` in the order of the examples, kept as the estimator returns them (copying them into
    one tensor cost a few percent of a training step); ``None`` and ``[]`` without ``needs_derivative``."""
    batch, steps = mean.shape[:2]
    flat = (batch, steps, current0[:1].numel())
    state_shape = (batch, flat[2])
    spikes = mean.new_empty(mean.shape)
    voltages = mean.new_empty(mean.shape) if record_voltage else mean.new_empty((batch, 0))
    current = current0.detach().reshape(state_shape).clone(memory_format=torch.contiguous_format)
    voltage = voltage0.detach().reshape(state_shape).clone(memory_format=torch.contiguous_format)
    sampled = mean.new_empty(flat) if needs_derivative else None
    derivatives = []
    group = max(1, min(batch, _CHUNK_ELEMENTS // max(steps * flat[2], 1)))
    margins = mean.new_empty((group, *flat[1:])) if needs_derivative else None
    scale = None if variance is None else mean.new_empty((group, *flat[1:]))
    variance_rows = None if variance is None else variance.detach().reshape(flat)
    arrays = [_as_array(t, shape, mean) for t, shape in
              ((mean, flat), (scale, (group, *flat[1:])), (unit_noise, flat))]
    bias_rows = torch.broadcast_to(bias.detach(), current0.shape).reshape(state_shape).contiguous().numpy()
    outputs = [_as_array(t, flat, mean) for t in (spikes, voltages if record_voltage else None, sampled)]
    outputs.append(_as_array(margins, (group, *flat[1:]), mean))
    present = np.array([variance is not None, record_voltage, needs_derivative], dtype=np.int64)
    constants = _lif_constants(params, mean)
    for start in range(0, batch, group):
        stop = min(start + group, batch)
        if scale is not None:   # (as _chunk_noise_scale forms it)
            _chunk_noise_scale(variance_rows[start:stop], params, scale[:stop - start], None)
        kernels.lif_forward(*arrays, bias_rows, current.numpy(), voltage.numpy(), constants, start, stop,
                            present, *outputs)
        if needs_derivative:
            derivatives.append(estimator.outcome_derivative(
                margins[:stop - start], spikes.view(flat)[start:stop], generator=generator).contiguous())
    return spikes, voltages, current.view(current0.shape), voltage.view(voltage0.shape), sampled, derivatives


def _example_rows(arrays: list[np.ndarray], per_example: list, start: int, stop: int) -> list[np.ndarray]:
    """Examples ``start:stop`` of each array that holds one row per example (``per_example``), the others whole."""
    return [array[start:stop] if split else array for array, split in zip(arrays, per_example)]


def _backward_compiled(
    ctx, grad_spikes: Tensor | None, grad_voltages: Tensor | None, grad_final_current: Tensor | None,
    grad_final_voltage: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """The backward of :class:`_FusedNoisyLif` by :func:`fused_lif_compiled.lif_backward`, for a forward run
    by :func:`_forward_compiled`, one call per group of examples (the groups of its derivatives): the
    gradients :meth:`_FusedNoisyLif.backward` returns."""
    sampled, unit_noise, spikes, variance, *derivatives = ctx.saved_tensors
    needs = ctx.needs_input_grad
    flat = sampled.shape
    state_shape = (flat[0], flat[2])
    if grad_voltages is not None and grad_voltages.shape[1] == 0:
        grad_voltages = None

    def adjoint(grad: Tensor | None) -> Tensor:
        if grad is None:
            return sampled.new_zeros(state_shape)
        return grad.detach().reshape(state_shape).clone(memory_format=torch.contiguous_format)

    voltage_adjoint, current_adjoint = adjoint(grad_final_voltage), adjoint(grad_final_current)
    grad_mean = sampled.new_empty(flat)
    grad_variance = sampled.new_empty(flat) if variance is not None and needs[1] else None
    grad_bias = sampled.new_zeros(state_shape)
    optional = (variance, grad_spikes, grad_voltages, grad_variance)
    present = np.array([t is not None for t in optional], dtype=np.int64)
    inputs = [_as_array(t, flat, sampled) for t in (sampled, unit_noise, *optional[:3])]
    outputs = [voltage_adjoint.numpy(), current_adjoint.numpy(), grad_mean.numpy(),
               _as_array(grad_variance, flat, sampled), grad_bias.numpy()]
    # Which arrays hold one row per example (an absent one, (1, 1, n), serves every group whole).
    input_rows, output_rows = [True, True, *present[:3]], [True, True, True, present[3], True]
    constants = _lif_constants(ctx.params, sampled)
    start = 0
    for derivative in derivatives:
        stop = start + derivative.shape[0]
        sampled_group, noise_group, *optional_group = _example_rows(inputs, input_rows, start, stop)
        ctx.compiled.lif_backward(sampled_group, derivative.numpy(), noise_group, *optional_group, constants, present,
                                  *_example_rows(outputs, output_rows, start, stop))
        start = stop
    return (
        grad_mean.view(spikes.shape) if needs[0] else None,
        grad_variance.view(spikes.shape) if grad_variance is not None else None,
        None,
        grad_bias.view(spikes[:, 0].shape).sum_to_size(ctx.bias_shape) if needs[3] else None,
        current_adjoint.view(spikes[:, 0].shape) if needs[4] else None,
        voltage_adjoint.view(spikes[:, 0].shape) if needs[5] else None,
        None, None, None, None, None, None,
    )


# Integer types as wide as each floating type: the reset clears a spiking unit's voltage bits.
_SAME_WIDTH_INTEGERS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def deterministic_lif_no_grad(
    mean: Tensor, bias: Tensor, current: Tensor, voltage: Tensor, params: CubaParameters, *,
    record_voltage: bool,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """The deterministic CUBA-LIF over a whole sequence, without autograd, a chunk of steps at a time.

    The arithmetic of :func:`cuba_lif_step` operation for operation (``I = alpha I' + input``,
    ``V = (beta V' + I) + bias``, spike ``V > theta``), each correctly rounded and elementwise, so the
    spikes and voltages are those of the step-by-step loop bit for bit; the reset ``V <- 0`` where it
    spiked ANDs ``V``'s bits with ``spike - 1`` (all ones, or zero: +0.), exact for every value
    (``torch.where`` and boolean tensors are several times slower on the CPU).  Everything is written
    into preallocated time-major buffers (no allocation, no autograd, eight operations a step) and
    copied out once per chunk.  For inference only: it records no graph.

    Args:
        mean: the input current, ``(batch, T, *shape)``.
        bias: the voltage bias, broadcastable to ``(batch, *shape)``.
        current, voltage: the initial state, ``(batch, *shape)``.
        params: decays and threshold.
        record_voltage: whether to return the voltage trace (after the reset).

    Returns:
        ``(spikes, voltages or None, final current, final voltage)``, spikes in {0., 1.} shaped like ``mean``.
    """
    steps = mean.shape[1]
    alpha, beta, threshold = params.current_decay, params.voltage_decay, params.threshold
    chunk = _chunk_steps(current, steps)
    currents = torch.empty((chunk, *current.shape), dtype=mean.dtype, device=mean.device)
    voltages_buffer, scaled = torch.empty_like(currents), torch.empty_like(current)
    bits = _SAME_WIDTH_INTEGERS[mean.element_size()]
    fired = torch.empty(currents.shape, dtype=bits, device=mean.device)   # the spikes, 0 or 1
    keep = torch.empty(current.shape, dtype=bits, device=mean.device)      # spike - 1: 0 or all ones
    spikes = torch.empty_like(mean)
    voltages = torch.empty_like(mean) if record_voltage else None
    current, voltage, bias = current.detach(), voltage.detach(), bias.detach()
    for start in range(0, steps, chunk):
        size = min(start + chunk, steps) - start
        inputs = _time_major(mean.detach(), start, start + size)
        for k in range(size):
            # Each product goes to ``scaled`` before its sum overwrites a buffer slot the state may occupy.
            torch.mul(current, alpha, out=scaled)
            current = torch.add(scaled, inputs[k], out=currents[k])
            torch.mul(voltage, beta, out=scaled)
            voltage = torch.add(scaled, current, out=voltages_buffer[k]).add_(bias)
            torch.gt(voltage, threshold, out=fired[k])
            voltage.view(bits).bitwise_and_(torch.sub(fired[k], 1, out=keep))
        spikes[:, start:start + size] = fired[:size].transpose(0, 1)
        if voltages is not None:
            voltages[:, start:start + size] = voltages_buffer[:size].transpose(0, 1)
    return spikes, voltages, current.clone(), voltage.clone()
