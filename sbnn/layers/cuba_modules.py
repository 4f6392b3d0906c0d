"""Modules of CUBA neurons over sequences ``(batch, T, *neuron_shape)``: the spiking :class:`CubaLif` and
the non-spiking readout :class:`CubaIntegrator` (their step functions are in :mod:`sbnn.layers.cuba`)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sbnn.estimators import DEFAULT_ESTIMATOR, EstimatorConfig, draw_noise
from sbnn.layers.bayesian import BayesLinear, SequenceDraw
from sbnn.layers.binary import _check_base_noise, _check_surrogate_slope
from sbnn.layers.cuba import (
    _GAUSSIAN_ONLY,
    CubaParameters,
    CubaState,
    _safe_sqrt,
    cuba_lif_step,
    cuba_lif_step_noisy,
)
from sbnn.layers.fused_lif import _FusedNoisyLif, _time_major, deterministic_lif_no_grad
from sbnn.layers.modes import Mode, ModeAware, Preactivation, _add_optional, _as_preactivation, as_mode


class CubaLifOutput(NamedTuple):
    """Result of :meth:`CubaLif.run`: ``spikes`` and ``voltage`` (after reset; ``None`` when not recorded)
    shaped ``(batch, T, *shape)``, and the ``final_state``."""

    spikes: Tensor
    voltage: Tensor | None
    final_state: CubaState


def _neuron_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)


def _bias_shape(neuron_shape: tuple[int, ...]) -> tuple[int, ...]:
    # Dense layers: one bias per neuron; conv layers (C, H, W): one per channel.
    return neuron_shape if len(neuron_shape) == 1 else (neuron_shape[0],) + (1,) * (len(neuron_shape) - 1)


def _add_voltage_bias(module: CubaLif | CubaIntegrator, learn_bias: bool, device: torch.device | str | None,
                      dtype: torch.dtype | None) -> None:
    """Give ``module`` its voltage ``bias``, zero, shaped :func:`_bias_shape` of its neuron shape: a
    parameter if ``learn_bias``, else a buffer."""
    bias = torch.zeros(_bias_shape(module.neuron_shape), device=device, dtype=dtype)
    if learn_bias:
        module.bias = nn.Parameter(bias)
    else:
        module.register_buffer("bias", bias)


def _check_sequence(mean: Tensor, neuron_shape: tuple[int, ...], name: str) -> None:
    if mean.dim() != 2 + len(neuron_shape) or tuple(mean.shape[2:]) != neuron_shape:
        raise ValueError(f"{name} expects input (batch, T, *{neuron_shape}), got {tuple(mean.shape)}")


def _needs_graph(*tensors: Tensor) -> bool:
    """Whether autograd would record operations on ``tensors`` (grad mode on and one requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _zero_state(mean: Tensor) -> CubaState:
    zeros = torch.zeros_like(mean[:, 0])
    return CubaState(zeros, zeros)


class CubaLif(ModeAware):
    """A layer of CUBA-LIF neurons (Loihi dynamics), noisy or deterministic.

    Args:
        shape: neuron shape per example (``n`` or ``(C, H, W)``), excluding batch and time.
        current_decay, voltage_decay: ``alpha``, ``beta`` in [0, 1] (see :func:`loihi_decays`).
        threshold: ``theta`` (voltage units); spikes when ``V > theta``.
        base_noise_std: ``s0 > 0`` of the noisy mode (voltage units).
        learn_bias: whether the per-neuron (per-channel for conv shapes) voltage bias is a parameter; it
            starts at 0 either way.
        recurrent: add dense Bayesian recurrent weights (``shape`` must be 1-D) fed with the previous
            step's spikes; ``recurrent_kwargs`` go to its :class:`BayesLinear` (which has no bias).
        estimator: Gaussian-noise estimator of the spikes.
        surrogate_slope: if set, the deterministic modes backpropagate through the threshold with
            :func:`fast_sigmoid_spike` of this slope (the surrogate-gradient baseline).

    Forward: a :class:`Preactivation` (or tensor of means) ``(batch, T, *shape)`` -> spikes, same shape.
    Mode ``"noisy"`` runs :func:`cuba_lif_step_noisy` (a layer without recurrence and with a hard-sample
    estimator runs it as one fused autograd function with a hand-written backward through time: the
    same spikes bit for bit, a fraction of the cost); modes ``"mean"``/``"sample"`` run
    :func:`cuba_lif_step` (without recurrence and when no gradient is needed, as at evaluation, through
    :func:`deterministic_lif_no_grad`: the same spikes and voltages bit for bit, chunked over time).
    :func:`set_mode` also switches the recurrent weights.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        *,
        current_decay: float,
        voltage_decay: float,
        threshold: float = 1.0,
        base_noise_std: float = 0.1,
        learn_bias: bool = True,
        recurrent: bool = False,
        recurrent_kwargs: dict | None = None,
        estimator: EstimatorConfig = DEFAULT_ESTIMATOR,
        mode: Mode | str = Mode.NOISY,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        surrogate_slope: float | None = None,
    ) -> None:
        super().__init__(mode)
        self.neuron_shape = _neuron_shape(shape)
        self.params = CubaParameters(
            current_decay, voltage_decay, threshold, _check_base_noise(base_noise_std)
        )
        self.surrogate_slope = _check_surrogate_slope(surrogate_slope)
        if estimator.noise != "gauss":
            raise ValueError(_GAUSSIAN_ONLY)
        self.estimator = estimator
        _add_voltage_bias(self, learn_bias, device, dtype)
        self.recurrent: BayesLinear | None = None
        if recurrent:
            if len(self.neuron_shape) != 1:
                raise ValueError("recurrent weights need a 1-D neuron shape")
            kwargs = {"mode": mode, "device": device, "dtype": dtype, **(recurrent_kwargs or {})}
            self.recurrent = BayesLinear(self.neuron_shape[0], self.neuron_shape[0], bias=False, **kwargs)

    @ModeAware.mode.setter
    def mode(self, value: Mode | str) -> None:
        self._mode = as_mode(value)
        if getattr(self, "recurrent", None) is not None:
            self.recurrent.mode = self._mode

    def run(
        self,
        pre: Preactivation | Tensor,
        *,
        generator: torch.Generator | None = None,
        initial_state: CubaState | None = None,
        record_voltage: bool = True,
    ) -> CubaLifOutput:
        """Simulate all ``T`` steps; returns spikes, voltage trace (after reset; ``None`` if not
        ``record_voltage``, which saves memory in the noisy mode) and final state."""
        mean, variance = _as_preactivation(pre)
        _check_sequence(mean, self.neuron_shape, "CubaLif")
        state = initial_state if initial_state is not None else _zero_state(mean)
        noisy = self.mode is Mode.NOISY
        feedback_draw = None
        if noisy:
            # All steps' standard normal draws at once: one call, and the same noise whichever path runs.
            unit_noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            feedback_draw = self._feedback_draw(mean.shape[0], generator)
            # (a soft forward has no derivative of a hard outcome to fuse; the fused recurrence has per-step noise)
            if self.estimator.hard and feedback_draw is None:
                return self._run_fused(mean, variance, state, unit_noise, generator, record_voltage)
        elif self.recurrent is None and not _needs_graph(mean, self.bias, *state):
            # Inference in the deterministic modes: the same steps without autograd, chunked over time.
            spikes, voltages, current, voltage = deterministic_lif_no_grad(
                mean, self.bias, state.current, state.voltage, self.params, record_voltage=record_voltage
            )
            return CubaLifOutput(spikes, voltages, CubaState(current, voltage))
        previous_spikes = torch.zeros_like(mean[:, 0])
        spikes_trace, voltage_trace = [], []
        # unbind once: indexing [:, step] in the loop makes each step's backward fill a full (B, T, ...)
        # zero tensor, which made training quadratic in T.
        step_means = mean.unbind(1)
        step_variances = variance.unbind(1) if (variance is not None and noisy) else None
        step_unit_noise = unit_noise.unbind(1) if noisy else None
        for step in range(mean.shape[1]):
            step_mean = step_means[step]
            step_variance = None if step_variances is None else step_variances[step]
            if self.recurrent is not None:
                feedback = self.recurrent(previous_spikes, draw=feedback_draw)
                step_mean = step_mean + feedback.mean
                if noisy:
                    step_variance = _add_optional(step_variance, feedback.variance)
            if noisy:
                spikes, state = cuba_lif_step_noisy(
                    step_mean, step_variance, state, self.params, self.bias,
                    estimator=self.estimator, generator=generator, unit_noise=step_unit_noise[step],
                )
            else:
                spikes, state = cuba_lif_step(
                    step_mean, state, self.params, self.bias, surrogate_slope=self.surrogate_slope
                )
            previous_spikes = spikes
            spikes_trace.append(spikes)
            voltage_trace.append(state.voltage)
        return CubaLifOutput(torch.stack(spikes_trace, 1), torch.stack(voltage_trace, 1), state)

    def _feedback_draw(self, batch: int, generator: torch.Generator | None) -> SequenceDraw | None:
        """The recurrent weights' one draw per example for the sequence (``weight_noise = "per_sequence"``),
        else ``None``."""
        if self.recurrent is None or self.recurrent.weight_noise != "per_sequence":
            return None
        return self.recurrent.draw_sequence(batch, generator=generator)

    def _run_fused(
        self, mean: Tensor, variance: Tensor | None, state: CubaState, unit_noise: Tensor,
        generator: torch.Generator | None, record_voltage: bool,
    ) -> CubaLifOutput:
        """The noisy, non-recurrent case in one :class:`_FusedNoisyLif` (same result as step by step)."""
        recurrent_moments = None if self.recurrent is None else self.recurrent.stacked_moments()
        inputs = (mean, variance, self.bias, state.current, state.voltage, recurrent_moments)
        needs_derivative = _needs_graph(*(t for t in inputs if t is not None))
        spikes, voltages, final_current, final_voltage = _FusedNoisyLif.apply(
            mean, variance, unit_noise, self.bias, state.current, state.voltage, recurrent_moments,
            self.params, self.estimator, generator, needs_derivative, record_voltage,
        )
        return CubaLifOutput(
            spikes, voltages if record_voltage else None, CubaState(final_current, final_voltage)
        )

    def forward(
        self,
        pre: Preactivation | Tensor,
        generator: torch.Generator | None = None,
        initial_state: CubaState | None = None,
    ) -> Tensor:
        """Spikes ``(batch, T, *shape)`` in {0., 1.}; see :meth:`run`."""
        return self.run(pre, generator=generator, initial_state=initial_state, record_voltage=False).spikes

    def extra_repr(self) -> str:
        return f"shape={self.neuron_shape}, params={self.params}, {super().extra_repr()}"


def _integrate_no_grad(
    inputs: Tensor, bias: Tensor, current: Tensor, voltage: Tensor, voltage_noise: Tensor | None,
    params: CubaParameters,
) -> Tensor:
    """The non-spiking CUBA recursion over a whole sequence, without autograd: the membrane trace.

    The arithmetic of :func:`cuba_integrator_step` operation for operation (``I = alpha I' + input``,
    ``V = (beta V' + I) + bias``, then ``+ voltage_noise``), each correctly rounded and elementwise, so the
    trace is that of the step-by-step loop bit for bit; written into preallocated buffers, no graph.

    Args:
        inputs: the (sampled) input current, ``(batch, T, *shape)``.
        bias: the voltage bias, broadcastable to ``(batch, *shape)``.
        current, voltage: the initial state, broadcastable to ``(batch, *shape)``.
        voltage_noise: added to the voltage after each step, like ``inputs``, or ``None``.
        params: the decays (``threshold`` and ``base_noise_std`` are unused).

    Returns:
        The voltage trace ``V`` shaped like ``inputs``, in the tensors' promoted dtype.
    """
    present = [t for t in (inputs, bias, current, voltage, voltage_noise) if t is not None]
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in present))
    step_shape = inputs[:, 0].shape
    current = torch.empty(step_shape, dtype=dtype, device=inputs.device).copy_(current.detach())
    voltage = voltage.detach().expand(step_shape)
    scaled = torch.empty_like(current)
    voltages = inputs.new_empty((inputs.shape[1], *step_shape), dtype=dtype)   # time-major
    step_inputs = _time_major(inputs.detach(), 0, inputs.shape[1]).unbind(0)
    step_noise = (None,) * len(step_inputs) if voltage_noise is None else _time_major(
        voltage_noise, 0, inputs.shape[1]).unbind(0)
    bias = bias.detach()
    # The decays as 0-dim tensors of the dtype (the values the step rounds its numbers to): no step converts them.
    alpha, beta = (current.new_full((), decay) for decay in (params.current_decay, params.voltage_decay))
    for step_input, noise, step_voltage in zip(step_inputs, step_noise, voltages.unbind(0)):
        current.mul_(alpha).add_(step_input)
        torch.mul(voltage, beta, out=scaled)
        voltage = torch.add(scaled, current, out=step_voltage).add_(bias)
        if noise is not None:
            voltage.add_(noise)
    return voltages.transpose(0, 1).contiguous()


def _reverse_decay_sum(sources: Tensor, decay: float) -> Tensor:
    """``out_t = sources_t + decay out_{t+1}`` from the last step back, ``out_{T-1} = sources_{T-1}``: the
    adjoint of a leaky sum through time; ``sources`` and the result are time-major, ``(T, batch, *shape)``."""
    out = torch.empty(sources.shape, dtype=sources.dtype, device=sources.device)
    out_steps, source_steps = out.unbind(0), sources.unbind(0)
    later = out_steps[-1].copy_(source_steps[-1])
    for source, step_out in zip(source_steps[-2::-1], out_steps[-2::-1]):
        later = torch.add(source, later, alpha=decay, out=step_out)
    return out


class _FusedIntegrator(torch.autograd.Function):
    """:func:`_integrate_no_grad` (the whole sequence of :func:`cuba_integrator_step`) with a hand-written
    backward: the recursion is linear, so its adjoint needs no saved tensors, only the decays and shapes.

    With ``a_t = dL/dV_t + beta a_{t+1}`` and ``c_t = a_t + alpha c_{t+1}`` (the adjoints of the voltage
    and the current of step ``t``): ``dL/d input_t = c_t``, ``dL/d bias = sum_t a_t`` (reduced to the
    bias's shape), and the initial voltage's and current's gradients are ``beta a_0``, ``alpha c_0``.
    ``voltage_noise`` (or ``None``) is a constant.
    """

    @staticmethod
    def forward(ctx, inputs, bias, current0, voltage0, voltage_noise, params):  # noqa: D102
        ctx.params = params
        ctx.shapes = (bias.shape, current0.shape, voltage0.shape)
        return _integrate_no_grad(inputs, bias, current0, voltage0, voltage_noise, params)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_voltages):  # noqa: D102
        needs = ctx.needs_input_grad
        alpha, beta = ctx.params.current_decay, ctx.params.voltage_decay
        voltage_adjoint = _reverse_decay_sum(grad_voltages.transpose(0, 1), beta)   # time-major
        current_adjoint = _reverse_decay_sum(voltage_adjoint, alpha) if needs[0] or needs[2] else None
        bias_shape, current_shape, voltage_shape = ctx.shapes
        return (
            current_adjoint.transpose(0, 1) if needs[0] else None,
            voltage_adjoint.sum_to_size(bias_shape) if needs[1] else None,
            (alpha * current_adjoint[0]).sum_to_size(current_shape) if needs[2] else None,
            (beta * voltage_adjoint[0]).sum_to_size(voltage_shape) if needs[3] else None,
            None, None,
        )


class CubaIntegrator(ModeAware):
    """Non-spiking CUBA readout: the same current and voltage dynamics, no threshold, no reset.

    Mode ``"noisy"``: the synaptic input is sampled per step, ``input_mean + sqrt(input_variance) xi``
    (entering the current, as in :class:`CubaLif`), plus ``N(0, s0^2)`` on the voltage if ``s0 > 0``;
    modes ``"mean"``/``"sample"``: the means only.

    Args:
        shape, current_decay, voltage_decay, learn_bias: as :class:`CubaLif`.
        base_noise_std: ``s0 >= 0`` (default 0).

    Forward: :class:`Preactivation` ``(batch, T, *shape)`` -> membrane trace ``V`` ``(batch, T, *shape)``,
    the steps of :func:`cuba_integrator_step` bit for bit, run as one :class:`_FusedIntegrator` (no graph
    per step; a hand-written backward through time), or without autograd when no gradient is needed.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        *,
        current_decay: float,
        voltage_decay: float,
        base_noise_std: float = 0.0,
        learn_bias: bool = True,
        mode: Mode | str = Mode.NOISY,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(mode)
        self.neuron_shape = _neuron_shape(shape)
        self.params = CubaParameters(current_decay, voltage_decay, math.inf, base_noise_std)
        _add_voltage_bias(self, learn_bias, device, dtype)

    def forward(
        self,
        pre: Preactivation | Tensor,
        generator: torch.Generator | None = None,
        initial_state: CubaState | None = None,
    ) -> Tensor:
        mean, variance = _as_preactivation(pre)
        _check_sequence(mean, self.neuron_shape, "CubaIntegrator")
        state = initial_state if initial_state is not None else _zero_state(mean)
        noisy = self.mode is Mode.NOISY
        inputs, voltage_noise = mean, None
        # The noise of every step is drawn and formed at once, outside the recursion.
        if noisy and variance is not None:
            inputs = mean + _safe_sqrt(variance) * draw_noise(
                mean.shape, "gauss", dtype=mean.dtype, device=mean.device, generator=generator
            )
        if noisy and self.params.base_noise_std > 0:
            voltage_noise = self.params.base_noise_std * draw_noise(
                mean.shape, "gauss", dtype=mean.dtype, device=mean.device, generator=generator)
        recursion_inputs = (inputs, self.bias, state.current, state.voltage, voltage_noise, self.params)
        if not _needs_graph(inputs, self.bias, *state):
            return _integrate_no_grad(*recursion_inputs)
        return _FusedIntegrator.apply(*recursion_inputs)

    def extra_repr(self) -> str:
        return (
            f"shape={self.neuron_shape}, current_decay={self.params.current_decay}, "
            f"voltage_decay={self.params.voltage_decay}, {super().extra_repr()}"
        )
