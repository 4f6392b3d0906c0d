"""Bayesian weight layers with local reparameterisation (docs/method.md#sbnn).

Weights have a factorised Gaussian posterior ``q(w) = N(mu, sigma^2)``, ``sigma = softplus(rho)``, and a
Gaussian prior ``N(0, prior_std^2)``.  Use :func:`kl_divergence` for the KL term and
:func:`freeze_posterior_sample` to draw a reproducible sample of every Bayesian layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbnn.layers.modes import Mode, ModeAware, Preactivation


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
