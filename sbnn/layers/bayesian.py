"""Bayesian weight layers with local reparameterisation (docs/method.md#sbnn).

Weights have a factorised Gaussian posterior ``q(w) = N(mu, sigma^2)``, ``sigma = softplus(rho)``, and a
Gaussian prior ``N(0, prior_std^2)``.  Use :func:`kl_divergence` for the KL term and
:func:`freeze_posterior_sample` to draw a reproducible sample of every Bayesian layer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbnn.layers.modes import Mode, ModeAware, Preactivation


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


LOG_SOFTPLUS_TAIL = -20.0   # below it, log(softplus(rho)) is taken as rho (softplus(rho) ~ e^rho)


def _log_softplus(rho: Tensor) -> Tensor:
    # log(softplus(rho)) without the log(0) of an underflowed softplus: softplus(rho) ~ e^rho for rho << 0.
    tail = LOG_SOFTPLUS_TAIL
    return torch.where(rho < tail, rho, torch.log(F.softplus(rho.clamp_min(tail))))


def gaussian_kl(mu: Tensor, rho: Tensor, prior_std: float) -> Tensor:
    """``KL(N(mu, softplus(rho)^2) || N(0, prior_std^2))`` summed over all elements, in nats.

    Per element: ``ln(prior_std / sigma) + (sigma^2 + mu^2) / (2 prior_std^2) - 1/2``.
    """
    return _GaussianKl.apply(mu, rho, float(prior_std))


class _GaussianKl(torch.autograd.Function):
    """:func:`gaussian_kl` with its gradient in closed form: a handful of weight-sized operations instead of
    autograd's two dozen, which dominated the step of a static binary MLP (about half of it on MNIST).

    ``dKL/dmu = mu / p^2``; ``dKL/drho = (sigma / p^2 - 1 / sigma) * sigmoid(rho)``, where
    ``sigmoid(rho) / sigma`` (the derivative of ``ln sigma``) is 1 below ``rho = -20`` (``sigma ~ e^rho``).
    """

    @staticmethod
    def forward(ctx, mu: Tensor, rho: Tensor, prior_std: float) -> Tensor:  # noqa: D102
        sigma = F.softplus(rho)
        flat_sigma, flat_mu = sigma.reshape(-1), mu.reshape(-1)
        squares = torch.dot(flat_sigma, flat_sigma) + torch.dot(flat_mu, flat_mu)
        # Where sigma may underflow, the guarded form; asked on the CPU only (a GPU would wait for the answer).
        ctx.tiny = rho.device.type != "cpu" or (bool(rho.numel()) and float(rho.min()) < LOG_SOFTPLUS_TAIL)
        log_terms = (_log_softplus(rho) if ctx.tiny else torch.log(sigma)).sum()
        ctx.save_for_backward(mu, rho, sigma)
        ctx.prior_variance = prior_std**2
        return mu.numel() * (math.log(prior_std) - 0.5) - log_terms + squares / (2.0 * ctx.prior_variance)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        mu, rho, sigma = ctx.saved_tensors
        grad_mu = grad_rho = None
        if ctx.needs_input_grad[0]:
            grad_mu = mu * (grad / ctx.prior_variance)
        if ctx.needs_input_grad[1]:
            slope = torch.sigmoid(rho)   # d sigma / d rho
            if ctx.tiny:
                log_sigma_slope = torch.where(rho < LOG_SOFTPLUS_TAIL, 1.0, slope / sigma)
                grad_rho = (slope * sigma).div_(ctx.prior_variance).sub_(log_sigma_slope).mul_(grad)
            else:   # sigmoid(rho) * (sigma / p^2 - 1 / sigma)
                grad_rho = slope.mul_(sigma.reciprocal().neg_().add_(sigma, alpha=1.0 / ctx.prior_variance)).mul_(grad)
        return grad_mu, grad_rho, None


WEIGHT_NOISE_MODES = ("per_step", "per_sequence")


class SequenceDraw(NamedTuple):
    """One posterior weight draw per example, held for a whole sequence (flipout; docs/method.md#weight-noise).

    Example ``b`` uses ``w_b = mu + (sigma * eps) * (r_b s_b^T)``: ``eps ~ N(0, 1)`` of the weight's shape is
    shared by the batch, ``s_b`` (one per input feature or channel) and ``r_b`` (one per output) are
    independent random signs.  ``eps`` is symmetric, so each example's ``w_b`` is exactly ``N(mu, sigma^2)``;
    the signs decorrelate the examples of a batch.  It costs one extra product, not one per example.
    """

    weight_noise: Tensor          # sigma * eps, the weight's shape
    input_signs: Tensor           # (batch, in_features or C_in) of +-1
    output_signs: Tensor          # (batch, out_features or C_out) of +-1
    bias_noise: Tensor | None     # (batch, out): each example's Bayesian-bias deviation, else None


def _random_signs(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (bits * 2 - 1).to(like.dtype)


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
        weight_noise: str = "per_step",
    ) -> None:
        super().__init__(mode)
        if bayesian_bias and not bias:
            raise ValueError("bayesian_bias=True needs bias=True")
        if weight_noise not in WEIGHT_NOISE_MODES:
            raise ValueError(f"weight_noise must be one of {', '.join(WEIGHT_NOISE_MODES)}, got {weight_noise!r}")
        self.weight_noise = weight_noise
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

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None, draw: SequenceDraw | None = None,
                single_step: bool = False) -> Preactivation:
        """Pre-activation for input ``x`` (shapes in the subclass docstrings).

        Mode ``"noisy"`` with ``weight_noise = "per_step"``: the local-reparameterisation moments ``(M, V)``,
        ``M = x mu + bias_mu``, ``V = x sigma^2`` if ``binary_input`` (valid for 0/1 inputs only) else
        ``x^2 sigma^2``, plus ``sigma_bias^2`` for a Bayesian bias; the neurons draw the weight noise afresh
        at every step.  With ``"per_sequence"``: ``(x w_b + bias_b, None)`` for one weight draw per example
        held over every step of ``x`` (``draw``, or a new :meth:`draw_sequence` from ``generator``).
        ``single_step`` says ``x`` is a one-step sequence, where both modes are the same distribution and
        the moments give the lower-variance gradient.
        Modes ``"mean"`` and ``"sample"``: ``(M, None)`` with the mean or the frozen weights.
        """
        if self.mode is not Mode.NOISY:
            return Preactivation(self._affine(x, self.effective_weight(), self.effective_bias()), None)
        if self.weight_noise == "per_sequence" and not single_step:
            if draw is None:
                draw = self.draw_sequence(x.shape[0], generator=generator)
            mean = self._affine(x, self.weight_mu, self.bias_mean)
            return Preactivation(mean + self._perturbation(x, draw), None)
        return self._moments(x)

    def draw_sequence(self, batch: int, *, generator: torch.Generator | None = None) -> SequenceDraw:
        """A :class:`SequenceDraw` for ``batch`` examples, from ``generator`` (on the weights' device)."""
        weight = self.weight_mu
        eps = torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device=weight.device)
        in_features, out_features = weight.shape[1] * self._input_groups, weight.shape[0]
        input_signs = _random_signs((batch, in_features), weight, generator)
        output_signs = _random_signs((batch, out_features), weight, generator)
        bias_noise = None
        if self.bayesian_bias:
            bias_noise = F.softplus(self.bias_rho) * torch.randn(
                (batch, out_features), generator=generator, dtype=weight.dtype, device=weight.device)
        return SequenceDraw(self.weight_sigma * eps, input_signs, output_signs, bias_noise)

    def _perturbation(self, x: Tensor, draw: SequenceDraw) -> Tensor:
        """``x (w_b - mu) + (bias_b - bias_mu)`` for each example ``b``: flipout's signs around one product."""
        out = self._affine(x * self._per_feature(draw.input_signs, x.dim()), draw.weight_noise, None)
        out = out * self._per_feature(draw.output_signs, out.dim())
        if draw.bias_noise is not None:
            out = out + self._per_feature(draw.bias_noise, out.dim())
        return out

    def _per_feature(self, values: Tensor, dims: int) -> Tensor:
        """``values`` ``(batch, features)`` viewed to broadcast against a ``dims``-dimensional activation whose
        features lie at ``_output_dim`` (a time axis, if any, lies between the batch and the features)."""
        trailing = -1 - self._output_dim
        middle = dims - 2 - trailing
        return values.reshape(values.shape[0], *(1,) * middle, values.shape[1], *(1,) * trailing)

    def _moments(self, x: Tensor) -> Preactivation:
        """The local-reparameterisation moments ``(M, V)`` of the per-step weight noise (see :meth:`forward`)."""
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
    # Input features per weight column group (a grouped conv's weight holds C_in / groups channels).
    _input_groups = 1


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
        weight_noise: ``"per_step"`` (local reparameterisation, weights redrawn every step) or
            ``"per_sequence"`` (one draw per example for the whole sequence, as a deployed posterior
            sample); see :meth:`BayesianLayer.forward` and docs/method.md#weight-noise.
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
        weight_noise: str = "per_step",
    ) -> None:
        super().__init__(
            (out_features, in_features), in_features, out_features, bias=bias,
            bayesian_bias=bayesian_bias, prior_std=prior_std, init_mu_std=init_mu_std,
            init_sigma=init_sigma, binary_input=binary_input, mode=mode, generator=generator,
            device=device, dtype=dtype, weight_noise=weight_noise,
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
        weight_noise: str = "per_step",
    ) -> None:
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        fan_in = in_channels // groups * kernel[0] * kernel[1]
        super().__init__(
            (out_channels, in_channels // groups, *kernel), fan_in, out_channels, bias=bias,
            bayesian_bias=bayesian_bias, prior_std=prior_std, init_mu_std=init_mu_std,
            init_sigma=init_sigma, binary_input=binary_input, mode=mode, generator=generator,
            device=device, dtype=dtype, weight_noise=weight_noise,
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
    def _input_groups(self) -> int:
        return self.groups

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
