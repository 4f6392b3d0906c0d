"""Bayesian weight layers with local reparameterisation (docs/method.md#sbnn).

Weights have a factorised Gaussian posterior ``q(w) = N(mu, sigma^2)``, ``sigma = softplus(rho)``, and a
Gaussian prior ``N(0, prior_std^2)``.  Use :func:`kl_divergence` for the KL term and
:func:`freeze_posterior_sample` to draw a reproducible sample of every Bayesian layer.
"""

from __future__ import annotations

import functools
import importlib
import math
from types import ModuleType
from typing import NamedTuple

import numpy as np
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


# Costs of a first layer's two routes for a 0/1 input on one CPU thread, in ns: the mean of the "fitted"
# lines of three runs of benchmarks/sparse_product_crossover.py, which times the layer's own forward and
# backward on both routes (SHD and MNIST first layers, 2-40 % density).  Finding the ones, per input
# element; the dense route's check that x^2 = x, per input element, paid for the moments only; the dense
# product and its weight gradient, per input element and output column; gathering weight rows (forward)
# and scattering gradient rows (weight gradient), per one and output column.  The modelled crossovers are
# within 2 % density of the measured ones in training (SHD 22 %, MNIST 19 %), within about 5 % in
# evaluation (measured 12-13 % for the mean, 21-28 % for the moments).
_SCAN_COST = 2.1
_CHECK_COST = 2.6
_DENSE_COSTS = (0.017, 0.022)
_SPARSE_COSTS = (0.077, 0.114)
_SAMPLE_SIZE = 4096   # input elements (evenly strided) that decide whether to look for the ones at all


def _sparse_density_limit(columns: int, backward: bool, moments: bool,
                          costs: tuple[float, float, tuple[float, float], tuple[float, float]] | None = None
                          ) -> float:
    """The density of ones below which the sparse products are faster than the dense ones, for ``columns``
    output columns in all, with (``backward``) or without the weights' gradient, for the ``moments`` (where
    the dense route checks the whole input) or one product.  ``costs`` (ns): ``(scan, check, dense,
    sparse)`` as :data:`_SCAN_COST`, :data:`_CHECK_COST`, :data:`_DENSE_COSTS`, :data:`_SPARSE_COSTS` (the
    default)."""
    scan, check, dense_costs, sparse_costs = costs or (_SCAN_COST, _CHECK_COST, _DENSE_COSTS, _SPARSE_COSTS)
    dense = columns * (dense_costs[0] + backward * dense_costs[1]) + moments * check
    sparse_per_density = columns * (sparse_costs[0] + backward * sparse_costs[1])
    return (dense - scan) / sparse_per_density


class SpikePositions(NamedTuple):
    """Where a 0/1 input ``x`` of shape ``(*lead, in_features)`` holds its ones, ``x`` viewed as
    ``(rows, in_features)`` in row-major order."""

    transposed_index: Tensor   # (2, ones) int64: each one's (input feature, row), by row then feature
    offsets: Tensor            # (rows + 1,) int64: the ones of row r are entries offsets[r]:offsets[r + 1]
    lead_shape: tuple[int, ...]


def _nonzero_positions(flat: Tensor) -> Tensor:
    """The positions of the nonzero values of the 1-D ``flat``, ascending (int64)."""
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        # numpy finds the nonzeros of a boolean array without a branch per element; torch's nonzero()
        # mispredicts its branches on spike data (2-3x slower at 5-10 % density).
        return torch.from_numpy(np.flatnonzero(flat.detach().numpy() != 0))
    return flat.nonzero().squeeze(1)


def _compiled_module(name: str) -> ModuleType | None:
    """The module of numba kernels ``name``, or ``None`` where numba does not import.  Called on first use
    (and cached by the caller), so that importing ``sbnn`` never imports numba."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@functools.cache
def _spike_kernels() -> ModuleType | None:
    """:mod:`sbnn.layers.spike_compiled` (numba kernels of the sparse product), or ``None`` without numba."""
    return _compiled_module("sbnn.layers.spike_compiled")


def _kernels_for(tensor: Tensor) -> ModuleType | None:
    """:func:`_spike_kernels` where they apply to ``tensor`` (a nonempty CPU float32/float64 one), else ``None``."""
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64) or not tensor.numel():
        return None
    return _spike_kernels()


def spike_positions(x: Tensor) -> SpikePositions | None:
    """The ones of ``x`` (``(*lead, in_features)``), or ``None`` if some value is neither 0 nor 1."""
    kernels = _kernels_for(x)
    if kernels is not None:   # one pass instead of numpy's and torch's half a dozen
        rows = x.detach().reshape(-1, x.shape[-1]).contiguous()
        columns = np.empty(rows.numel(), dtype=np.int32)   # room for every element: 4 bytes each
        offsets = torch.empty(rows.shape[0] + 1, dtype=torch.int64)
        count = kernels.find_ones(rows.numpy(), columns, offsets.numpy())
        if count < 0:
            return None
        index = torch.empty((2, count), dtype=torch.int64)
        kernels.index_of_ones(columns, offsets.numpy(), index.numpy())
        return SpikePositions(index, offsets, tuple(x.shape[:-1]))
    flat = x.reshape(-1)
    index = _nonzero_positions(flat)
    if not bool(flat.take(index).eq(1).all()):
        return None
    in_features = x.shape[-1]
    transposed_index = torch.empty((2, index.numel()), dtype=torch.int64, device=x.device)
    rows = torch.div(index, in_features, rounding_mode="floor", out=transposed_index[1])
    torch.sub(index, rows * in_features, out=transposed_index[0])
    offsets = torch.zeros(flat.numel() // max(in_features, 1) + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(torch.bincount(rows, minlength=offsets.numel() - 1), 0, out=offsets[1:])
    return SpikePositions(transposed_index, offsets, tuple(x.shape[:-1]))


def spike_linear(ones: SpikePositions, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` for the 0/1 input ``x`` whose ones are ``ones``: a sum of the weight
    columns of the inputs that are 1, and for the weight's gradient a scatter of the output gradient's rows
    (no gradient reaches ``x``).  The dense product's values up to the order of the sums."""
    out = _SpikeLinear.apply(weight, bias, ones)
    return out.reshape(*ones.lead_shape, weight.shape[0])


class _SpikeLinear(torch.autograd.Function):
    """:func:`spike_linear` as an autograd function, output ``(rows, out_features)``."""

    @staticmethod
    def forward(ctx, weight: Tensor, bias: Tensor | None, ones: SpikePositions) -> Tensor:  # noqa: D102
        # embedding_bag gathers contiguous rows: one per one, from the transposed weight (in, out).
        out = F.embedding_bag(ones.transposed_index[0], weight.t().contiguous(), ones.offsets, mode="sum",
                              include_last_offset=True)
        if bias is not None:
            out += bias
        ctx.save_for_backward(ones.transposed_index, ones.offsets)
        ctx.in_features = weight.shape[1]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        transposed_index, offsets = ctx.saved_tensors
        grad_weight = grad_bias = None
        kernels = _kernels_for(grad)
        if ctx.needs_input_grad[0] and kernels is not None:
            # The sparse matrix product's sums in its order (so its values), at about half its time.
            transposed_grad = grad.new_zeros((ctx.in_features, grad.shape[1]))
            kernels.scatter_rows(transposed_index[0].numpy(), offsets.numpy(), grad.detach().contiguous().numpy(),
                                 transposed_grad.numpy())
            grad_weight = transposed_grad.t()
        elif ctx.needs_input_grad[0]:
            # dW^T = x^T grad: row c of dW^T sums grad's rows r with x[r, c] = 1, taken in row order.
            values = torch.ones(transposed_index.shape[1], dtype=grad.dtype, device=grad.device)
            transposed_input = torch.sparse_coo_tensor(
                transposed_index, values, (ctx.in_features, grad.shape[0]), check_invariants=False)
            grad_weight = torch.sparse.mm(transposed_input, grad.contiguous()).t()
        if ctx.needs_input_grad[1]:
            grad_bias = grad.sum(0)
        return grad_weight, grad_bias, None


class _InputKind(NamedTuple):
    """What a layer learned about its input at run time (:meth:`BayesianLayer._inspect_input`)."""

    binary: bool                  # every value is 0 or 1 (x^2 = x)
    ones: SpikePositions | None   # where the ones are, if the sparse product is to be used


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
        bias 0; clears any frozen sample. A layer on the meta device (a model built only to be sized) draws
        nothing: a random draw there would import ``torch._dynamo`` (about a second) for no values."""
        if self.weight_mu.is_meta:
            return
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

        A layer built with ``binary_input=False`` checks a CPU input that needs no gradient (data) at run
        time: if it is 0/1 the moments take one product as with ``binary_input``, and if it is sparse
        enough a dense layer's products gather the weights of the inputs that are 1 (:func:`spike_linear`).
        Either gives the same values as the general formula up to the order of the sums.
        """
        moments = self.mode is Mode.NOISY and (self.weight_noise == "per_step" or single_step)
        kind = self._inspect_input(x, moments)
        if self.mode is not Mode.NOISY:
            return Preactivation(self._product(x, kind, self.effective_weight(), self.effective_bias()), None)
        if self.weight_noise == "per_sequence" and not single_step:
            if draw is None:
                draw = self.draw_sequence(x.shape[0], generator=generator)
            mean = self._product(x, kind, self.weight_mu, self.bias_mean)
            return Preactivation(mean + self._perturbation(x, draw), None)
        return self._moments(x, kind)

    def _inspect_input(self, x: Tensor, moments: bool) -> _InputKind:
        """Whether ``x`` is 0/1 (as declared by ``binary_input``, or found on a CPU data input) and, for a
        sparse enough 0/1 input to a dense layer, where its ones are.  Only the ``moments`` (mean and
        variance) gain from a dense 0/1 input, so only for them is a dense input checked in full."""
        if self.binary_input:
            return _InputKind(True, None)
        if x.requires_grad or x.device.type != "cpu" or not x.is_floating_point() or not x.numel():
            return _InputKind(False, None)
        flat = x.reshape(-1)
        sample = flat[::max(1, flat.numel() // _SAMPLE_SIZE)]
        if not torch.equal(sample * sample, sample):
            return _InputKind(False, None)   # real-valued, as declared
        products = 2 if moments else 1   # mean and variance, or one product
        backward = torch.is_grad_enabled() and self.effective_weight().requires_grad
        max_density = _sparse_density_limit(products * self.weight_mu.shape[0], backward, moments)
        sparse_capable = self._sparse_products and x.dtype in (torch.float32, torch.float64)
        if sparse_capable and int(sample.count_nonzero()) <= max_density * sample.numel():
            ones = spike_positions(x)
            if ones is None:
                return _InputKind(False, None)
            sparse = int(ones.offsets[-1]) <= max_density * flat.numel()
            return _InputKind(True, ones if sparse else None)
        # x^2 = x element for element: the general formula's x^2 sigma^2 is then x sigma^2 exactly.
        return _InputKind(moments and torch.equal(x * x, x), None)

    def _product(self, x: Tensor, kind: _InputKind, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``_affine(x, weight, bias)``, by :func:`spike_linear` where ``kind`` holds the input's ones."""
        return self._affine(x, weight, bias) if kind.ones is None else spike_linear(kind.ones, weight, bias)

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

    def _moments(self, x: Tensor, kind: _InputKind) -> Preactivation:
        """The local-reparameterisation moments ``(M, V)`` of the per-step weight noise (see :meth:`forward`)."""
        bias_variance = F.softplus(self.bias_rho) ** 2 if self.bayesian_bias else None
        if kind.binary and self._stackable_outputs and kind.ones is None:
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
        mean = self._product(x, kind, self.weight_mu, self.bias_mean)
        squared_input = x if kind.binary else x * x
        variance = self._product(squared_input, kind, self.weight_sigma**2, bias_variance)
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
    # Whether a sparse 0/1 input may take spike_linear (dense layers only).
    _sparse_products = False


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
        binary_input: inputs are 0/1, so ``V = x sigma^2`` (no squaring); set ``False`` for real inputs
            (data inputs are then checked at run time, see :meth:`BayesianLayer.forward`).
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

    _sparse_products = True

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
