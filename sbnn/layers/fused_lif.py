"""The noisy CUBA-LIF over a whole sequence as one autograd function with a hand-written backward."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sbnn.layers.cuba import CubaParameters, CubaState, _noisy_lif_values
from sbnn.layers.modes import _add_optional


# Devices on which the fused LIF evaluates the estimator step by step, while the step's tensors are in
# cache (on an accelerator one call over the whole sequence is faster).
_PER_STEP_DERIVATIVE_DEVICES = ("cpu",)


class _FusedNoisyLif(torch.autograd.Function):
    """A whole sequence of noisy CUBA-LIF steps with a hand-written backward through time.

    Same arithmetic as :func:`cuba_lif_step_noisy` step by step (so the same spikes, bit for bit), but
    the forward records no autograd graph and the backward is one short recursion over the adjoints of
    ``I`` and ``V``: a step costs a few tensor operations on tensors still in cache, instead of dozens
    recorded by autograd.  ``mean``, ``variance`` (or ``None``) and ``unit_noise`` are
    ``(batch, T, n)`` (any neuron shape without recurrence); ``recurrent_moments`` (or ``None``) is the
    recurrent layer's ``[mu; sigma^2]``, ``(2n, n)``, fed with the previous step's spikes as
    :meth:`BayesianLayer.forward` does.  Outputs ``spikes``, ``voltages`` (empty unless
    ``record_voltage``) and the final state.  Not for the soft ``"relaxed"`` estimator.
    """

    @staticmethod
    def forward(ctx, mean, variance, unit_noise, bias, current0, voltage0, recurrent_moments, params,
                estimator, generator, needs_derivative, record_voltage):  # noqa: D102
        ctx.set_materialize_grads(False)
        steps = mean.shape[1]
        recurrent = recurrent_moments is not None
        spikes = torch.empty_like(mean)
        voltages = torch.empty_like(mean) if record_voltage else mean.new_empty((mean.shape[0], 0))
        # Saved per step for the backward, time-major so that each step's slice is contiguous: the
        # sampled voltage before the reset, z (then g z/s) and g/s, for dL/dm = dL/db g/s and
        # dL/dVar = (dL/d(noise) xi - dL/db g z/s)/(2s); with recurrence also each step's total input
        # variance; and the spikes.
        saved = torch.empty((3 + recurrent, steps, *mean[:, 0].shape), dtype=mean.dtype, device=mean.device) \
            if needs_derivative else None
        per_step_derivative = mean.device.type in _PER_STEP_DERIVATIVE_DEVICES
        current, voltage = current0, voltage0
        fired = torch.zeros_like(mean[:, 0])
        for t in range(steps):
            step_noise = unit_noise[:, t]
            step_mean = mean[:, t]
            step_variance = None if variance is None else variance[:, t]
            if recurrent:
                feedback_mean, feedback_variance = F.linear(fired, recurrent_moments).split(mean.shape[-1], -1)
                step_mean = step_mean + feedback_mean
                step_variance = _add_optional(step_variance, feedback_variance)
                if saved is not None:
                    saved[3, t] = step_variance
            current, sampled_voltage, inverse_std, z = _noisy_lif_values(
                CubaState(current, voltage), step_mean, step_variance, step_noise, params, bias,
                out=None if saved is None else (saved[0, t], saved[1, t]),
            )
            # As sample_given_noise draws it; a fresh tensor (not the output's strided slice) feeds the
            # recurrent product, as in the step-by-step path.
            fired = torch.add(z, step_noise).gt_(0.0) if recurrent else \
                torch.add(z, step_noise, out=spikes[:, t]).gt_(0.0)
            if recurrent:
                spikes[:, t] = fired
            voltage = torch.addcmul(sampled_voltage, sampled_voltage, fired, value=-1.0)   # reset
            if record_voltage:
                voltages[:, t] = voltage
            if needs_derivative:
                if per_step_derivative:
                    derivative = estimator.outcome_derivative(z, fired, generator=generator)
                    torch.mul(derivative, inverse_std, out=saved[2, t])
                    saved[1, t].mul_(saved[2, t])
                else:
                    saved[2, t] = inverse_std
        if needs_derivative and not per_step_derivative:
            # One call over the whole sequence: on an accelerator a step's tensors are too small to
            # fill it, and each operation costs a kernel launch.
            margins = saved[1]
            derivative = estimator.outcome_derivative(margins, spikes.transpose(0, 1), generator=generator)
            saved[2].mul_(derivative)
            margins.mul_(saved[2])
        if needs_derivative:
            ctx.save_for_backward(saved, unit_noise, spikes, variance, recurrent_moments)
        ctx.params = params
        ctx.bias_shape = bias.shape
        return spikes, voltages, current, voltage

    @staticmethod
    def backward(ctx, grad_spikes, grad_voltages, grad_final_current, grad_final_voltage):  # noqa: D102
        saved, unit_noise, spikes, variance, recurrent_moments = ctx.saved_tensors
        recurrent = recurrent_moments is not None
        # The variance each step's noise had: the input's, plus the feedback's with recurrence.
        step_variances = saved[3] if recurrent else None if variance is None else variance.transpose(0, 1)
        needs = ctx.needs_input_grad
        grads = _LifGradients(
            # With recurrence the step's input gradients also feed the recurrent weights and earlier spikes.
            mean=torch.empty_like(unit_noise) if needs[0] or recurrent else None,
            variance=torch.empty_like(unit_noise) if step_variances is not None else None,
            bias=torch.zeros_like(saved[0, 0]) if needs[3] else None,
        )
        adjoint_current, adjoint_voltage = _backward_through_time(
            ctx.params, saved, unit_noise, spikes, step_variances, recurrent_moments, grads,
            grad_spikes=grad_spikes, grad_voltages=grad_voltages,
            grad_final_current=grad_final_current, grad_final_voltage=grad_final_voltage,
        )
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
