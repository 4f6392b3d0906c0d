"""Noisy binary units (the BNN's neurons) and the surrogate gradient of the hard threshold."""

from __future__ import annotations

import torch
from torch import Tensor

from sbnn.estimators import DEFAULT_ESTIMATOR, EstimatorConfig
from sbnn.layers.modes import Mode, ModeAware, Preactivation, _as_preactivation


# ----------------------------------------------------------------------------------------------------
# Surrogate gradient of the hard threshold (the deterministic baseline)
# ----------------------------------------------------------------------------------------------------


class _FastSigmoidSpike(torch.autograd.Function):
    """Forward ``1[margin > 0]``; backward ``grad / (1 + slope |margin|)^2`` (SuperSpike's fast sigmoid)."""

    @staticmethod
    def forward(ctx, margin, slope):  # noqa: D102
        ctx.save_for_backward(margin)
        ctx.slope = slope
        return (margin > 0).to(margin.dtype)

    @staticmethod
    def backward(ctx, grad_spikes):  # noqa: D102
        (margin,) = ctx.saved_tensors
        return grad_spikes / (1.0 + ctx.slope * margin.abs()) ** 2, None


def _check_surrogate_slope(surrogate_slope: float | None) -> float | None:
    if surrogate_slope is None:
        return None
    if isinstance(surrogate_slope, bool) or not float(surrogate_slope) > 0:
        raise ValueError(f"surrogate_slope must be > 0 or None, got {surrogate_slope!r}")
    return float(surrogate_slope)


def fast_sigmoid_spike(margin: Tensor, slope: float) -> Tensor:
    """Hard threshold ``1[margin > 0]`` with the fast-sigmoid surrogate gradient.

    The backward pass replaces the Dirac delta by ``1 / (1 + slope |margin|)^2`` (Zenke & Ganguli 2018):
    the deterministic surrogate-gradient baseline the SBNN is compared with.

    Args:
        margin: ``V - theta`` (or ``M - theta``), any shape, floating point.
        slope: steepness ``> 0``, in 1/(units of ``margin``).

    Returns:
        Spikes in {0., 1.}, ``margin``'s shape.
    """
    return _FastSigmoidSpike.apply(margin, _check_surrogate_slope(slope))


# ----------------------------------------------------------------------------------------------------
# Noisy binary units (BNN)
# ----------------------------------------------------------------------------------------------------


def _check_base_noise(base_noise_std: float) -> float:
    if not base_noise_std > 0:
        raise ValueError(f"base_noise_std must be > 0 (it keeps silent inputs finite), got {base_noise_std}")
    return float(base_noise_std)


def standardised_margin(
    pre: Preactivation | Tensor, threshold: float | Tensor, base_noise_std: float
) -> Tensor:
    """``z = (M - theta) / sqrt(V + s0^2)`` (``V = 0`` if the pre-activation has no variance)."""
    mean, variance = _as_preactivation(pre)
    total_variance = base_noise_std**2 if variance is None else variance + base_noise_std**2
    total_variance = torch.as_tensor(total_variance, dtype=mean.dtype, device=mean.device)
    return (mean - threshold) / torch.sqrt(total_variance)


class NoisyBinaryUnits(ModeAware):
    """Binary (0/1) units driven by a Bayesian layer's pre-activation.

    Mode ``"noisy"``: ``b = sample((M - theta) / sqrt(V + s0^2))`` with the configured estimator.
    Modes ``"mean"`` and ``"sample"``: ``b = 1[M > theta]`` (no gradient, unless ``surrogate_slope``).

    Args:
        threshold: ``theta``, in the units of ``M``.
        base_noise_std: ``s0 > 0``, same units.
        estimator: the gradient estimator (:class:`sbnn.estimators.EstimatorConfig`).
        surrogate_slope: if set, the deterministic modes backpropagate through the threshold with
            :func:`fast_sigmoid_spike` of this slope (the surrogate-gradient baseline).

    Forward: a :class:`Preactivation` (or a tensor of means) of any shape -> ``b``, same shape.
    """

    def __init__(
        self,
        threshold: float = 0.0,
        base_noise_std: float = 0.1,
        estimator: EstimatorConfig = DEFAULT_ESTIMATOR,
        mode: Mode | str = Mode.NOISY,
        surrogate_slope: float | None = None,
    ) -> None:
        super().__init__(mode)
        self.threshold = float(threshold)
        self.base_noise_std = _check_base_noise(base_noise_std)
        self.estimator = estimator
        self.surrogate_slope = _check_surrogate_slope(surrogate_slope)

    def forward(self, pre: Preactivation | Tensor, generator: torch.Generator | None = None) -> Tensor:
        pre = _as_preactivation(pre)
        if self.mode is not Mode.NOISY:
            if self.surrogate_slope is not None:
                return fast_sigmoid_spike(pre.mean - self.threshold, self.surrogate_slope)
            return (pre.mean > self.threshold).to(pre.mean.dtype)
        z = standardised_margin(pre, self.threshold, self.base_noise_std)
        return self.estimator.sample(z, generator=generator)

    def extra_repr(self) -> str:
        return (
            f"threshold={self.threshold}, base_noise_std={self.base_noise_std}, "
            f"estimator={self.estimator}, {super().extra_repr()}"
        )
