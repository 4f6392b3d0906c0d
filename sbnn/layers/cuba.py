"""Loihi's CUBA-LIF dynamics in float arithmetic, as pure step functions (state in, state out).

The neuron is Lava's ``PyLifModelFloat``::

    I_t = alpha I_{t-1} + input_t
    V_t = beta V_{t-1} + I_t + bias
    s_t = 1[V_t > theta];  V_t <- 0 where s_t = 1   (the current I is not reset)

with ``alpha = (4095 - du)/4096`` and ``beta = (4096 - dv)/4096`` for Loihi's 12-bit decays (see
:func:`loihi_decays`).  The modules of :mod:`sbnn.layers.cuba_modules` run these steps over sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sbnn.estimators import DEFAULT_ESTIMATOR, EstimatorConfig, with_outcome_derivative
from sbnn.layers.binary import _check_base_noise, fast_sigmoid_spike


def loihi_decays(du: int, dv: int) -> tuple[float, float]:
    """``(alpha, beta)`` of Loihi's 12-bit decays: ``((4095 - du)/4096, (4096 - dv)/4096)``.

    Lava's bit-accurate LIF multiplies the current by ``4096 - (du + 1)`` (its current decay has an
    offset of one) and the voltage by ``4096 - dv``, then shifts right by 12 (:mod:`hw_sim.arith`).
    """
    # Imported on use: importing hw_sim loads h5py (~40 ms), which nothing else in training needs.
    from hw_sim.arith import DECAY_UNITY, du_to_alpha, dv_to_beta

    for name, value in (("du", du), ("dv", dv)):
        if not 0 <= value <= DECAY_UNITY - 1:
            raise ValueError(f"{name} must be in [0, {DECAY_UNITY - 1}], got {value}")
    return du_to_alpha(du), dv_to_beta(dv)


@dataclass(frozen=True)
class CubaParameters:
    """Constants of a CUBA neuron layer.

    ``current_decay`` (``alpha``) and ``voltage_decay`` (``beta``) are per-step multipliers in [0, 1];
    ``threshold`` (``theta``) and ``base_noise_std`` (``s0``, noisy mode only) are in voltage units.
    """

    current_decay: float
    voltage_decay: float
    threshold: float = 1.0
    base_noise_std: float = 0.1

    def __post_init__(self) -> None:
        for name in ("current_decay", "voltage_decay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not self.base_noise_std >= 0:
            raise ValueError(f"base_noise_std must be >= 0, got {self.base_noise_std}")


class CubaState(NamedTuple):
    """State of CUBA neurons: synaptic ``current`` I and membrane ``voltage`` V, each ``(batch, *shape)``."""

    current: Tensor
    voltage: Tensor


_GAUSSIAN_ONLY = "the noisy LIF's membrane noise is Gaussian: use an estimator with noise='gauss'"


def _safe_sqrt(variance: Tensor) -> Tensor:
    # sqrt with a zero (not NaN) gradient at 0, where silent binary inputs put the variance.
    positive = variance > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, variance, torch.ones_like(variance))), 0.0)


def cuba_lif_step(
    input_current: Tensor,
    state: CubaState,
    params: CubaParameters,
    bias: Tensor | float = 0.0,
    *,
    surrogate_slope: float | None = None,
) -> tuple[Tensor, CubaState]:
    """One deterministic step of Loihi's CUBA-LIF in float arithmetic.

    ``I = alpha I + input``; ``V = beta V + I + bias``; ``s = 1[V > theta]``; ``V <- 0`` where ``s``.

    Args:
        input_current: synaptic input of this step, ``(batch, *shape)``.
        state: previous :class:`CubaState`.
        params: decays and threshold (``base_noise_std`` is unused).
        bias: added to the voltage every step, broadcastable to ``(batch, *shape)``.
        surrogate_slope: if set, the spikes backpropagate through :func:`fast_sigmoid_spike` of
            ``V - theta`` (same forward); the reset passes no gradient through the spikes.

    Returns:
        ``(spikes, new_state)``: spikes in {0., 1.} and the state after the reset.
    """
    current = params.current_decay * state.current + input_current
    voltage = params.voltage_decay * state.voltage + current + bias
    if surrogate_slope is not None:
        spikes = fast_sigmoid_spike(voltage - params.threshold, surrogate_slope)
        voltage = torch.where(spikes > 0.5, torch.zeros_like(voltage), voltage)
        return spikes, CubaState(current, voltage)
    spiked = voltage > params.threshold
    voltage = torch.where(spiked, torch.zeros_like(voltage), voltage)
    return spiked.to(voltage.dtype), CubaState(current, voltage)


def _total_noise_variance(variance: Tensor, params: CubaParameters, *, out: Tensor | None = None) -> Tensor:
    """``variance + s0^2``: the variance of a step's membrane noise (docs/method.md#cuba-lif), as one
    operation that the step-by-step and the fused paths share; ``out`` optionally receives it."""
    return torch.add(variance, params.base_noise_std**2, out=out)


def _noise_scale(variance: Tensor | None, params: CubaParameters) -> tuple[Tensor | float, Tensor | float]:
    """``(s, 1/s)`` with ``s = sqrt(variance + s0^2)`` (numbers when ``variance`` is ``None``): the scale of
    a step's membrane noise.  Shared by the step-by-step and the fused paths (docs/method.md#cuba-lif)."""
    if variance is None:
        std = math.sqrt(params.base_noise_std**2)
        return std, 1.0 / std
    total_variance = _total_noise_variance(variance, params)
    return torch.sqrt(total_variance), torch.rsqrt(total_variance)


def _integrate_current(drive: Tensor, current: Tensor, params: CubaParameters, *, out: Tensor | None = None) -> Tensor:
    """``I = alpha I' + drive`` (the sampled current), as one operation both paths share: with operands of
    the same layout it gives the same bits in the step-by-step and the fused paths."""
    return torch.add(drive, current, alpha=params.current_decay, out=out)


def _integrate_voltage(
    driven_current: Tensor, voltage: Tensor, params: CubaParameters, *, out: Tensor | None = None
) -> Tensor:
    """The sampled membrane before the spike, ``Vhat = (I + bias) + beta V'``; ``driven_current`` is ``I + bias``."""
    return torch.add(driven_current, voltage, alpha=params.voltage_decay, out=out)


def _noisy_lif_values(
    state: CubaState, step_mean: Tensor, step_variance: Tensor | None, unit_noise: Tensor,
    params: CubaParameters, bias: Tensor | float, *, out: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | float, Tensor]:
    """The arithmetic of one noisy step before the spike: ``(current, sampled_voltage, 1/s, z)``.

    ``drive = mean + s xi``, ``I = alpha I' + drive``, ``Vhat = (I + bias) + beta V'``; the spike is
    ``Vhat > theta``, the same event as ``z + xi > 0`` for the margin ``z = (Vhat - s xi - theta)/s`` of
    the mean membrane.  The one definition of the step, shared by the step-by-step and the fused paths
    (whose whole-sequence operations are correctly rounded elementwise ones), so that both give
    bit-identical spikes for the same noise; ``out`` optionally receives ``(sampled_voltage, z)``.
    """
    std, inverse_std = _noise_scale(step_variance, params)
    noise = std * unit_noise
    current = _integrate_current(step_mean + noise, state.current, params)
    sampled_out, margin_out = (None, None) if out is None else out
    sampled_voltage = _integrate_voltage(current + bias, state.voltage, params, out=sampled_out)
    if margin_out is None:   # (autograd records this path: no in-place operations)
        return current, sampled_voltage, inverse_std, (sampled_voltage - noise - params.threshold) * inverse_std
    z = torch.sub(sampled_voltage, noise, out=margin_out).sub_(params.threshold).mul_(inverse_std)
    return current, sampled_voltage, inverse_std, z


def cuba_lif_step_noisy(
    input_mean: Tensor,
    input_variance: Tensor | None,
    state: CubaState,
    params: CubaParameters,
    bias: Tensor | float = 0.0,
    *,
    estimator: EstimatorConfig = DEFAULT_ESTIMATOR,
    generator: torch.Generator | None = None,
    unit_noise: Tensor | None = None,
) -> tuple[Tensor, CubaState]:
    """One noisy step: local-reparameterisation noise through the current, spikes by an estimator.

    Given the (sampled) past, the step's synaptic input is Gaussian with the input's mean and variance
    plus a base variance ``s0^2`` that keeps silent inputs finite, fresh each step:
    ``I_t = alpha I + input_mean + s_t xi``, ``s_t = sqrt(input_variance + s0^2)``.  So the voltage
    ``V_t = beta V + I_t + bias`` is ``N(m_t, s_t^2)`` with ``m_t = beta V + alpha I + input_mean + bias``,
    and the spike is ``sample(z_t)``, ``z_t = (m_t - theta)/s_t``, drawn with the same ``xi``; the
    sampled ``I_t`` and ``V_t`` carry the recursion forward (``V_t`` reset to 0 where the unit spiked).
    Gradients reach ``m_t``/``s_t`` through the estimator and the carried state by reparameterisation.

    Args:
        input_mean, input_variance: moments of the synaptic input, ``(batch, *shape)``; variance ``None``
            means deterministic weights (only the base noise remains).
        state, params, bias: as :func:`cuba_lif_step`; ``params.base_noise_std`` must be > 0.
        estimator: Gaussian-noise estimator for the spikes.
        generator: random source on the input's device (for ``unit_noise`` when it is not given, and
            for ``"gr_mc"``).
        unit_noise: the step's standard normal draw ``xi``, of the input's shape.

    Returns:
        ``(spikes, new_state)``.
    """
    if estimator.noise != "gauss":
        raise ValueError(_GAUSSIAN_ONLY)
    _check_base_noise(params.base_noise_std)
    if unit_noise is None:
        unit_noise = torch.randn(
            input_mean.shape, generator=generator, dtype=input_mean.dtype, device=input_mean.device
        )
    current, sampled_voltage, _, z = _noisy_lif_values(
        state, input_mean, input_variance, unit_noise, params, bias
    )
    if estimator.hard:
        fired = (sampled_voltage > params.threshold).to(sampled_voltage.dtype)
        spikes = with_outcome_derivative(z, fired, estimator, generator)
    else:
        spikes = estimator.sample_given_noise(z, unit_noise, generator=generator)
    return spikes, CubaState(current, sampled_voltage * (1.0 - spikes))



def cuba_integrator_step(
    input_current: Tensor,
    state: CubaState,
    params: CubaParameters,
    bias: Tensor | float = 0.0,
) -> CubaState:
    """One step of the non-spiking CUBA integrator: ``I = alpha I + input``; ``V = beta V + I + bias``."""
    current = params.current_decay * state.current + input_current
    voltage = params.voltage_decay * state.voltage + current + bias
    return CubaState(current, voltage)
