"""Bayesian layers and stochastic neurons of the SBNN (docs/method.md#sbnn).

Weights have a factorised Gaussian posterior ``q(w) = N(mu, sigma^2)``, ``sigma = softplus(rho)``, and a
Gaussian prior ``N(0, prior_std^2)``.  Every mode-aware module has a ``mode``:

``"mean"``    posterior-mean weights and deterministic units (``b = 1[M > theta]``): what deploys.
``"noisy"``   training and noisy evaluation: a layer returns the local-reparameterisation moments of its
              pre-activation, mean ``M = x mu (+ bias)`` and variance ``V = x^2 sigma^2`` (``= x sigma^2``
              for 0/1 inputs), and the unit samples ``b = 1[M + sqrt(V + s0^2) eps > theta]`` with a
              gradient estimator, i.e. ``b = sample((M - theta) / sqrt(V + s0^2))``.  Noise is fresh per
              example and per time step.
``"sample"``  one posterior sample frozen by ``freeze_sample(seed)`` (the integer network that is exported)
              with deterministic units.

Use :func:`set_mode` to switch a whole model, :func:`kl_divergence` for the KL term and
:func:`freeze_posterior_sample` to draw a reproducible sample of every Bayesian layer.

The spiking neuron is Loihi's CUBA-LIF in float arithmetic (Lava's ``PyLifModelFloat``)::

    I_t = alpha I_{t-1} + input_t
    V_t = beta V_{t-1} + I_t + bias
    s_t = 1[V_t > theta];  V_t <- 0 where s_t = 1   (the current I is not reset)

with ``alpha = (4095 - du)/4096`` and ``beta = (4096 - dv)/4096`` for Loihi's 12-bit decays (see
:func:`loihi_decays`).  The dynamics are pure step functions (state in, state out) wrapped by thin modules
that take sequences shaped ``(batch, T, *neuron_shape)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbnn.estimators import DEFAULT_ESTIMATOR, EstimatorConfig, draw_noise


# ----------------------------------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------------------------------


class Mode(str, Enum):
    """How a layer treats its weights and units (see the module docstring)."""

    MEAN = "mean"
    NOISY = "noisy"
    SAMPLE = "sample"


def as_mode(mode: Mode | str) -> Mode:
    """Parse ``"mean"``, ``"noisy"`` or ``"sample"`` (or a :class:`Mode`); ``ValueError`` otherwise."""
    try:
        return Mode(mode)
    except ValueError:
        raise ValueError(f"unknown mode {mode!r}; expected one of {[m.value for m in Mode]}") from None


class ModeAware(nn.Module):
    """Base of the modules that have a :class:`Mode`."""

    def __init__(self, mode: Mode | str = Mode.NOISY) -> None:
        super().__init__()
        self._mode = as_mode(mode)

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode | str) -> None:
        self._mode = as_mode(value)

    def extra_repr(self) -> str:
        return f"mode={self._mode.value}"


def set_mode(module: nn.Module, mode: Mode | str) -> nn.Module:
    """Set ``mode`` on every mode-aware submodule of ``module`` (itself included); returns ``module``."""
    parsed = as_mode(mode)
    for submodule in module.modules():
        if isinstance(submodule, ModeAware):
            submodule.mode = parsed
    return module


class Preactivation(NamedTuple):
    """Pre-activation of a layer of units.

    ``mean``: ``M``, in the units of the weights times the input.  ``variance``: ``V`` of the
    local-reparameterisation Gaussian, same shape, or ``None`` when the weights are deterministic (modes
    ``"mean"`` and ``"sample"``).
    """

    mean: Tensor
    variance: Tensor | None


def _as_preactivation(pre: Preactivation | Tensor) -> Preactivation:
    if isinstance(pre, Preactivation):
        return pre
    if isinstance(pre, Tensor):
        return Preactivation(pre, None)
    raise TypeError(f"expected a Preactivation or a Tensor, got {type(pre).__name__}")


def _add_optional(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


# ----------------------------------------------------------------------------------------------------
# Bayesian weight layers
# ----------------------------------------------------------------------------------------------------


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


def _log_softplus(rho: Tensor) -> Tensor:
    # log(softplus(rho)) without the log(0) of an underflowed softplus: softplus(rho) ~ e^rho for rho << 0.
    return torch.where(rho < -20.0, rho, torch.log(F.softplus(rho.clamp_min(-20.0))))


def gaussian_kl(mu: Tensor, rho: Tensor, prior_std: float) -> Tensor:
    """``KL(N(mu, softplus(rho)^2) || N(0, prior_std^2))`` summed over all elements, in nats.

    Per element: ``ln(prior_std / sigma) + (sigma^2 + mu^2) / (2 prior_std^2) - 1/2``.
    """
    sigma = F.softplus(rho)
    per_element = (
        math.log(prior_std) - _log_softplus(rho) + (sigma * sigma + mu * mu) / (2.0 * prior_std**2) - 0.5
    )
    return per_element.sum()


class BayesianLayer(ModeAware):
    """Shared machinery of :class:`BayesLinear` and :class:`BayesConv2d`.

    Parameters ``weight_mu`` and ``weight_rho`` (``sigma = softplus(rho)``); the bias is either a plain
    parameter ``bias`` (``bayesian_bias=False``) or ``bias_mu``/``bias_rho``.  ``frozen_weight`` and
    ``frozen_bias`` hold the sample drawn by :meth:`freeze_sample` (``None`` before).
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        fan_in: int,
        out_features: int,
        *,
        bias: bool,
        bayesian_bias: bool,
        prior_std: float | None,
        init_mu_std: float | None,
        init_sigma: float | None,
        binary_input: bool,
        mode: Mode | str,
        generator: torch.Generator | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__(mode)
        if bayesian_bias and not bias:
            raise ValueError("bayesian_bias=True needs bias=True")
        self.fan_in = fan_in
        self.prior_std = float(prior_std) if prior_std is not None else 1.0 / math.sqrt(fan_in)
        self.init_mu_std = float(init_mu_std) if init_mu_std is not None else 1.0 / math.sqrt(fan_in)
        self.init_sigma = float(init_sigma) if init_sigma is not None else 0.5 / math.sqrt(fan_in)
        for name, value in (("prior_std", self.prior_std), ("init_sigma", self.init_sigma)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not self.init_mu_std >= 0:
            raise ValueError(f"init_mu_std must be >= 0, got {self.init_mu_std}")
        self.binary_input = binary_input
        self.bayesian_bias = bayesian_bias
        factory = {"device": device, "dtype": dtype}
        self.weight_mu = nn.Parameter(torch.empty(weight_shape, **factory))
        self.weight_rho = nn.Parameter(torch.empty(weight_shape, **factory))
        if bias and bayesian_bias:
            self.bias_mu = nn.Parameter(torch.empty(out_features, **factory))
            self.bias_rho = nn.Parameter(torch.empty(out_features, **factory))
            self.register_parameter("bias", None)
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
            self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.register_buffer("frozen_weight", None)
        self.register_buffer("frozen_bias", None)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``mu ~ N(0, init_mu_std^2)`` (drawn on the CPU from ``generator``), ``sigma = init_sigma``,
        bias 0; clears any frozen sample."""
        with torch.no_grad():
            draw = torch.randn(self.weight_mu.shape, generator=generator, dtype=torch.float64)
            self.weight_mu.copy_(draw * self.init_mu_std)
            self.weight_rho.fill_(_inverse_softplus(self.init_sigma))
            if self.bias_mu is not None:
                self.bias_mu.zero_()
                self.bias_rho.fill_(_inverse_softplus(self.init_sigma))
            if self.bias is not None:
                self.bias.zero_()
        self.frozen_weight = None
        self.frozen_bias = None

    @property
    def weight_sigma(self) -> Tensor:
        """Posterior standard deviation of the weights, ``softplus(weight_rho)``."""
        return F.softplus(self.weight_rho)

    @property
    def bias_mean(self) -> Tensor | None:
        """Posterior mean of the bias (the bias itself if it is not Bayesian), or ``None``."""
        return self.bias_mu if self.bayesian_bias else self.bias

    def kl(self) -> Tensor:
        """Closed-form ``KL(q || prior)`` over the weights (and the bias if Bayesian), in nats (scalar)."""
        total = gaussian_kl(self.weight_mu, self.weight_rho, self.prior_std)
        if self.bayesian_bias:
            total = total + gaussian_kl(self.bias_mu, self.bias_rho, self.prior_std)
        return total

    @torch.no_grad()
    def freeze_sample(
        self, seed: int | None = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw one posterior sample ``w = mu + sigma * eps`` and keep it for mode ``"sample"``.

        Pass ``seed`` (drawn on the CPU, so a seed gives the same sample on every device) or a
        ``generator`` (drawn on the generator's device, then moved).  The bias is sampled too if Bayesian.

        Returns:
            ``frozen_weight``, shaped like ``weight_mu``: the weights to export.
        """
        if (seed is None) == (generator is None):
            raise ValueError("freeze_sample needs exactly one of seed or generator")
        if generator is None:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))

        def posterior_sample(mu: Tensor, rho: Tensor) -> Tensor:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=generator.device)
            return mu + F.softplus(rho) * eps.to(mu.device)

        self.frozen_weight = posterior_sample(self.weight_mu, self.weight_rho)
        self.frozen_bias = (
            posterior_sample(self.bias_mu, self.bias_rho) if self.bayesian_bias else None
        )
        return self.frozen_weight

    def effective_weight(self) -> Tensor:
        """The weights a deterministic forward uses: the frozen sample in mode ``"sample"``, else ``mu``."""
        if self.mode is Mode.SAMPLE:
            self._require_frozen()
            return self.frozen_weight
        return self.weight_mu

    def effective_bias(self) -> Tensor | None:
        """The bias a deterministic forward uses (frozen sample in mode ``"sample"``), or ``None``."""
        if self.mode is Mode.SAMPLE and self.bayesian_bias:
            self._require_frozen()
            return self.frozen_bias
        return self.bias_mean

    def _require_frozen(self) -> None:
        if self.frozen_weight is None:
            raise RuntimeError("mode 'sample' needs a frozen sample: call freeze_sample(seed) first")

    def _affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Preactivation:
        """Pre-activation moments for input ``x`` (shapes in the subclass docstrings).

        Mode ``"noisy"``: ``(M, V)`` with ``M = x mu + bias_mu``, ``V = x sigma^2`` if ``binary_input``
        (valid for 0/1 inputs only) else ``x^2 sigma^2``, plus ``sigma_bias^2`` for a Bayesian bias.
        Modes ``"mean"`` and ``"sample"``: ``(M, None)`` with the mean or the frozen weights.
        """
        if self.mode is not Mode.NOISY:
            return Preactivation(self._affine(x, self.effective_weight(), self.effective_bias()), None)
        bias_variance = F.softplus(self.bias_rho) ** 2 if self.bayesian_bias else None
        if self.binary_input and self._stackable_outputs:
            # x^2 = x: both moments come from one product with [mu; sigma^2] stacked along the outputs, so
            # x is read once forward and the input gradient is one product, not two and a sum.
            weight = self.stacked_moments()
            bias = None
            if self.bias_mean is not None:
                variance_of_bias = torch.zeros_like(self.bias_mean) if bias_variance is None else bias_variance
                bias = torch.cat([self.bias_mean, variance_of_bias])
            both = self._affine(x, weight, bias)
            mean, variance = both.split(self.weight_mu.shape[0], dim=self._output_dim)
            return Preactivation(mean, variance)
        mean = self._affine(x, self.weight_mu, self.bias_mean)
        squared_input = x if self.binary_input else x * x
        variance = self._affine(squared_input, self.weight_sigma**2, bias_variance)
        return Preactivation(mean, variance)

    def stacked_moments(self) -> Tensor:
        """``[mu; sigma^2]`` stacked along the output features: ``(2 out, ...)`` of ``weight_mu``'s other
        dimensions.  For 0/1 inputs one product with it gives the mean and variance of the output."""
        return torch.cat([self.weight_mu, self.weight_sigma**2])

    # Where the output features lie in _affine's result, and whether outputs may be stacked there.
    _output_dim = -1
    _stackable_outputs = True


class BayesLinear(BayesianLayer):
    """Dense layer with a Gaussian weight posterior and local reparameterisation.

    Input ``(..., in_features)`` (e.g. ``(batch, in)`` or ``(batch, T, in)``); output a
    :class:`Preactivation` of tensors ``(..., out_features)``.

    Args:
        in_features, out_features: sizes.
        bias: add a bias (deterministic, or Bayesian if ``bayesian_bias``).
        prior_std: prior standard deviation; default ``1/sqrt(in_features)``.
        init_mu_std: standard deviation of the initial ``mu``; default ``1/sqrt(in_features)``.
        init_sigma: initial posterior standard deviation; default ``0.5/sqrt(in_features)``.
        binary_input: inputs are 0/1, so ``V = x sigma^2`` (no squaring); set ``False`` for real inputs.
        mode: initial :class:`Mode`.
        generator: random source of the initial ``mu`` (a CPU generator).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        bayesian_bias: bool = False,
        prior_std: float | None = None,
        init_mu_std: float | None = None,
        init_sigma: float | None = None,
        binary_input: bool = True,
        mode: Mode | str = Mode.NOISY,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            (out_features, in_features), in_features, out_features, bias=bias,
            bayesian_bias=bayesian_bias, prior_std=prior_std, init_mu_std=init_mu_std,
            init_sigma=init_sigma, binary_input=binary_input, mode=mode, generator=generator,
            device=device, dtype=dtype,
        )
        self.in_features = in_features
        self.out_features = out_features

    def _affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bayesian_bias={self.bayesian_bias}, binary_input={self.binary_input}, {super().extra_repr()}"
        )


class BayesConv2d(BayesianLayer):
    """2-D convolution with a Gaussian weight posterior and local reparameterisation.

    Input ``(batch, C_in, H, W)`` or ``(batch, T, C_in, H, W)``; output a :class:`Preactivation` of
    tensors ``(batch, C_out, H', W')`` or ``(batch, T, C_out, H', W')``.  Arguments as
    :class:`BayesLinear` (fan-in ``C_in/groups * kh * kw``) plus those of ``torch.nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        bayesian_bias: bool = False,
        prior_std: float | None = None,
        init_mu_std: float | None = None,
        init_sigma: float | None = None,
        binary_input: bool = True,
        mode: Mode | str = Mode.NOISY,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        fan_in = in_channels // groups * kernel[0] * kernel[1]
        super().__init__(
            (out_channels, in_channels // groups, *kernel), fan_in, out_channels, bias=bias,
            bayesian_bias=bayesian_bias, prior_std=prior_std, init_mu_std=init_mu_std,
            init_sigma=init_sigma, binary_input=binary_input, mode=mode, generator=generator,
            device=device, dtype=dtype,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups

    _output_dim = -3

    @property
    def _stackable_outputs(self) -> bool:
        # With groups, output channel o belongs to group o // (out/groups): stacking would regroup them.
        return self.groups == 1

    def _affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if x.dim() == 5:
            batch, steps = x.shape[:2]
            out = F.conv2d(
                x.flatten(0, 1), weight, bias, self.stride, self.padding, self.dilation, self.groups
            )
            return out.unflatten(0, (batch, steps))
        if x.dim() != 4:
            raise ValueError(f"BayesConv2d expects (N, C, H, W) or (N, T, C, H, W), got {tuple(x.shape)}")
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"bayesian_bias={self.bayesian_bias}, binary_input={self.binary_input}, {super().extra_repr()}"
        )


def bayesian_layers(module: nn.Module) -> list[BayesianLayer]:
    """The Bayesian layers inside ``module`` (itself included), in ``module.modules()`` order."""
    return [m for m in module.modules() if isinstance(m, BayesianLayer)]


def kl_divergence(module: nn.Module) -> Tensor:
    """Sum of :meth:`BayesianLayer.kl` over every Bayesian layer in ``module`` (nats, scalar)."""
    layers = bayesian_layers(module)
    if not layers:
        return torch.zeros(())
    return torch.stack([layer.kl() for layer in layers]).sum()


def freeze_posterior_sample(module: nn.Module, seed: int) -> None:
    """Freeze one posterior sample of every Bayesian layer in ``module`` from a single seed.

    The layers draw in ``module.modules()`` order from one CPU generator, so ``seed`` fixes the whole
    network.  Switch to it with ``set_mode(module, "sample")``.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    for layer in bayesian_layers(module):
        layer.freeze_sample(generator=generator)


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


# ----------------------------------------------------------------------------------------------------
# CUBA-LIF dynamics: pure step functions
# ----------------------------------------------------------------------------------------------------


def loihi_decays(du: int, dv: int) -> tuple[float, float]:
    """``(alpha, beta)`` of Loihi's 12-bit decays: ``((4095 - du)/4096, (4096 - dv)/4096)``.

    Lava's bit-accurate LIF multiplies the current by ``4096 - (du + 1)`` (its current decay has an
    offset of one) and the voltage by ``4096 - dv``, then shifts right by 12.
    """
    for name, value in (("du", du), ("dv", dv)):
        if not 0 <= value <= 4095:
            raise ValueError(f"{name} must be in [0, 4095], got {value}")
    return (4095 - du) / 4096, (4096 - dv) / 4096


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


def _noisy_lif_values(
    state: CubaState, step_mean: Tensor, step_variance: Tensor | None, unit_noise: Tensor,
    params: CubaParameters, bias: Tensor | float, *, out: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The arithmetic of one noisy step before the spike: ``(current, sampled_voltage, 1/s, z)``.

    The one definition, shared by the step-by-step and the fused paths so that both give bit-identical
    spikes for the same noise; ``out`` optionally receives ``(sampled_voltage, z)`` (the fused path
    writes them straight into what it saves)."""
    if step_variance is None:
        total_variance = torch.full_like(step_mean, params.base_noise_std**2)
    else:
        total_variance = step_variance + params.base_noise_std**2
    noise = torch.sqrt(total_variance) * unit_noise
    inverse_std = torch.rsqrt(total_variance)
    mean_current = torch.add(step_mean, state.current, alpha=params.current_decay)
    mean_voltage = torch.add(mean_current, state.voltage, alpha=params.voltage_decay) + bias
    sampled_out, margin_out = (None, None) if out is None else out
    z = torch.mul(mean_voltage - params.threshold, inverse_std, out=margin_out)
    sampled_voltage = torch.add(mean_voltage, noise, out=sampled_out)
    return mean_current + noise, sampled_voltage, inverse_std, z


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
    spikes = estimator.sample_given_noise(z, unit_noise, generator=generator)
    return spikes, CubaState(current, sampled_voltage * (1.0 - spikes))


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
        sampled_voltages, derivative_margin_over_std, derivative_over_std = saved[:3].unbind(0)
        recurrent = recurrent_moments is not None
        # The variance each step's noise had: the input's, plus the feedback's with recurrence.
        step_variances = saved[3] if recurrent else None if variance is None else variance.transpose(0, 1)
        base_variance = ctx.params.base_noise_std**2
        alpha, beta = ctx.params.current_decay, ctx.params.voltage_decay
        needs = ctx.needs_input_grad
        # With recurrence the step's input gradients also feed the recurrent weights and earlier spikes.
        grad_mean = torch.empty_like(unit_noise) if needs[0] or recurrent else None
        grad_variance = torch.empty_like(unit_noise) if step_variances is not None else None
        grad_bias = torch.zeros_like(sampled_voltages[0]) if needs[3] else None
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
        grad_recurrent = None
        if recurrent and needs[6]:
            # d[mu; sigma^2] = sum over steps t >= 1 and the batch of [dm_t, dVar_t]^T b_{t-1}.
            step_grads = torch.cat([grad_mean[:, 1:], grad_variance[:, 1:]], -1).flatten(0, 1)
            grad_recurrent = step_grads.T @ spikes[:, :-1].flatten(0, 1)
        return (
            grad_mean if needs[0] else None,
            grad_variance if needs[1] else None,
            None,
            grad_bias.sum_to_size(ctx.bias_shape) if grad_bias is not None else None,
            adjoint_current if needs[4] else None,
            adjoint_voltage if needs[5] else None,
            grad_recurrent,
            None, None, None, None, None,
        )


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


# ----------------------------------------------------------------------------------------------------
# CUBA modules
# ----------------------------------------------------------------------------------------------------


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


def _check_sequence(mean: Tensor, neuron_shape: tuple[int, ...], name: str) -> None:
    if mean.dim() != 2 + len(neuron_shape) or tuple(mean.shape[2:]) != neuron_shape:
        raise ValueError(f"{name} expects input (batch, T, *{neuron_shape}), got {tuple(mean.shape)}")


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
    :func:`cuba_lif_step`.  :func:`set_mode` also switches the recurrent weights.
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
        bias = torch.zeros(_bias_shape(self.neuron_shape), device=device, dtype=dtype)
        if learn_bias:
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("bias", bias)
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
        if noisy:
            # All steps' standard normal draws at once: one call, and the same noise whichever path runs.
            unit_noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            if self.estimator.hard:  # (a soft forward has no derivative of a hard outcome to fuse)
                return self._run_fused(mean, variance, state, unit_noise, generator, record_voltage)
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
                feedback = self.recurrent(previous_spikes)
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

    def _run_fused(
        self, mean: Tensor, variance: Tensor | None, state: CubaState, unit_noise: Tensor,
        generator: torch.Generator | None, record_voltage: bool,
    ) -> CubaLifOutput:
        """The noisy, non-recurrent case in one :class:`_FusedNoisyLif` (same result as step by step)."""
        recurrent_moments = None if self.recurrent is None else self.recurrent.stacked_moments()
        inputs = (mean, variance, self.bias, state.current, state.voltage, recurrent_moments)
        needs_derivative = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
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


class CubaIntegrator(ModeAware):
    """Non-spiking CUBA readout: the same current and voltage dynamics, no threshold, no reset.

    Mode ``"noisy"``: the synaptic input is sampled per step, ``input_mean + sqrt(input_variance) xi``
    (entering the current, as in :class:`CubaLif`), plus ``N(0, s0^2)`` on the voltage if ``s0 > 0``;
    modes ``"mean"``/``"sample"``: the means only.

    Args:
        shape, current_decay, voltage_decay, learn_bias: as :class:`CubaLif`.
        base_noise_std: ``s0 >= 0`` (default 0).

    Forward: :class:`Preactivation` ``(batch, T, *shape)`` -> membrane trace ``V`` ``(batch, T, *shape)``.
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
        bias = torch.zeros(_bias_shape(self.neuron_shape), device=device, dtype=dtype)
        if learn_bias:
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("bias", bias)

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
            voltage_noise = (self.params.base_noise_std * draw_noise(
                mean.shape, "gauss", dtype=mean.dtype, device=mean.device, generator=generator
            )).unbind(1)
        voltage_trace = []
        for step, step_input in enumerate(inputs.unbind(1)):   # unbind: see CubaLif.run
            state = cuba_integrator_step(step_input, state, self.params, self.bias)
            if voltage_noise is not None:
                state = CubaState(state.current, state.voltage + voltage_noise[step])
            voltage_trace.append(state.voltage)
        return torch.stack(voltage_trace, 1)

    def extra_repr(self) -> str:
        return (
            f"shape={self.neuron_shape}, current_decay={self.params.current_decay}, "
            f"voltage_decay={self.params.voltage_decay}, {super().extra_repr()}"
        )


__all__ = [
    "DEFAULT_ESTIMATOR",
    "BayesConv2d",
    "BayesLinear",
    "BayesianLayer",
    "CubaIntegrator",
    "CubaLif",
    "CubaLifOutput",
    "CubaParameters",
    "CubaState",
    "Mode",
    "ModeAware",
    "NoisyBinaryUnits",
    "Preactivation",
    "as_mode",
    "bayesian_layers",
    "cuba_integrator_step",
    "cuba_lif_step",
    "cuba_lif_step_noisy",
    "fast_sigmoid_spike",
    "freeze_posterior_sample",
    "gaussian_kl",
    "kl_divergence",
    "loihi_decays",
    "set_mode",
    "standardised_margin",
]
