"""Gradient estimators for noisy binary units (docs/method.md#noisy-units, #estimators).

A unit with standardised margin ``z`` (dimensionless: the margin divided by the unit's noise scale)
fires ``b = 1[z + eps > 0]``, where ``eps`` is standard symmetric noise with CDF ``F`` and density ``f``:
``noise="gauss"`` (``F = Phi``, the probit/SBNN case) or ``noise="logistic"`` (``F = sigmoid``).
So ``P1 = P(b = 1) = F(z)`` and ``dE[L]/dz = f(z) * (L(1) - L(0))``.

:func:`sample` returns the hard sample ``b`` (a float tensor of 0s and 1s) whose backward pass is the chosen
estimator of that derivative, ``db/dz := g_b``:

``"st"``       straight-through: ``g_1 = g_0 = f(z)``.
``"iwst"``     importance-weighted ST: ``g_1 = f*p/P1``, ``g_0 = f*(1-p)/P0``, with a fixed ``p`` or
               the mixing form ``p = (1-lam)*P1 + lam/2`` (see :func:`importance_probability`, the one
               place ``p`` is defined).
``"agr"``      analytical Gumbel–Rao: ``g_b = E[d F((z+eps)/tau)/dz | b]`` in closed form (no sampling).
``"relaxed"``  binary concrete: the *soft* forward ``F((z+eps)/tau)`` with its exact gradient.
``"gr_mc"``    Gumbel–Rao Monte Carlo: hard forward, backward the relaxed Jacobian at ``tau`` averaged over
               ``k`` noise draws conditioned on the sampled ``b``.

Each method is one :class:`Estimator` subclass, registered by name (:func:`register_estimator`); the
name is the only dispatch, and adding a method is one class plus one registration line
(docs/extending.md#estimator).  :data:`DEFAULT_ESTIMATOR` (AGR, ``tau = 1``) is the one default.

``tau`` is measured in units of the noise scale.  The derivative formulas are evaluated in log space, or
(Gaussian AGR of the sampled outcome, the training hot path) as erfc ratios with Mills ratios in the far
tail, so they are finite (no NaN, no Inf) for ``|z| <= 40`` and ``1e-3 <= tau <= 1e3`` in float32 and
float64.  The code is device-agnostic.  It branches in Python on hyperparameters, and on tensor values
only to skip the far tail on the CPU when eager; under ``torch.compile`` and on accelerators it
evaluates every branch, so it traces without graph breaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.special import erfc, log_ndtr, ndtri

from sbnn.registry import Registry

Method = Literal["st", "iwst", "agr", "relaxed", "gr_mc"]
NoiseKind = Literal["gauss", "logistic"]

# The built-in methods; estimator_names() lists every registered one (register_estimator).
METHODS: tuple[str, ...] = ("st", "iwst", "agr", "relaxed", "gr_mc")
NOISE_KINDS: tuple[str, ...] = ("gauss", "logistic")
# An estimator's settings: the EstimatorConfig fields besides method and noise.
SETTINGS: tuple[str, ...] = ("tau", "p", "lam", "k")

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)


# ----------------------------------------------------------------------------------------------------
# Per-unit noise: CDF and density
# ----------------------------------------------------------------------------------------------------


def _gauss_cdf(x: Tensor) -> Tensor:
    # torch.special.ndtr loses the lower tail to cancellation (2% off at -8 in float64, 0 below -5.5 in
    # float32); erfc keeps full relative precision there.
    return 0.5 * erfc(-_SQRT_HALF * x)


def _log_density(x: Tensor, noise: str) -> Tensor:
    if noise == "gauss":
        return -0.5 * x * x - _LOG_SQRT_2PI
    return -F.softplus(x) - F.softplus(-x)


def log_unit_probabilities(z: Tensor, noise: NoiseKind = "gauss") -> tuple[Tensor, Tensor, Tensor]:
    """Log firing probabilities and log noise density of units with standardised margin ``z``.

    Args:
        z: standardised margins, any shape.
        noise: ``"gauss"`` or ``"logistic"``.

    Returns:
        ``(log P1, log P0, log f)``, each of ``z``'s shape, with ``P1 = F(z)``, ``P0 = F(-z)`` and
        ``f = F'(z)``.  Finite wherever ``z`` is finite (``P1`` itself underflows for Gaussian ``z < -38``).
    """
    _check_noise(noise)
    if noise == "gauss":
        return log_ndtr(z), log_ndtr(-z), _log_density(z, noise)
    log_p1 = F.logsigmoid(z)
    log_p0 = F.logsigmoid(-z)
    return log_p1, log_p0, log_p1 + log_p0


def unit_probabilities(z: Tensor, noise: NoiseKind = "gauss") -> tuple[Tensor, Tensor]:
    """Exact firing probability and noise density of units with standardised margin ``z``.

    Returns:
        ``(P1, f)`` of ``z``'s shape: ``P1 = P(b = 1) = F(z)`` and ``f = F'(z)``, the factor in
        ``dE[L]/dz = f * (L(1) - L(0))``.  Differentiable.
    """
    _check_noise(noise)
    if noise == "gauss":
        return _gauss_cdf(z), torch.exp(_log_density(z, noise))
    p1 = torch.sigmoid(z)
    return p1, p1 * torch.sigmoid(-z)


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------


def _check_noise(noise: str) -> None:
    if noise not in NOISE_KINDS:
        raise ValueError(f"unknown noise {noise!r}; expected one of {NOISE_KINDS}")


def _check_unit_interval(name: str, value: float | Tensor) -> None:
    if isinstance(value, Tensor):
        if value.is_floating_point() is False:
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        # A data-dependent check would force a graph break, so it is skipped while compiling.
        if not torch.compiler.is_compiling() and bool(((value < 0) | (value > 1) | value.isnan()).any()):
            raise ValueError(f"{name} must lie in [0, 1]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _only(flag: str) -> str:
    """``only 'x' does`` / ``only ('x', 'y') do``: the registered methods that take a setting."""
    names = tuple(name for name, estimator in _REGISTRY.items() if getattr(estimator, flag))
    return f"only {names[0]!r} does" if len(names) == 1 else f"only {names} do"


def _check_arguments(
    method: str,
    noise: str,
    tau: float | None,
    p: float | Tensor | None,
    lam: float | None,
    k: int | None,
) -> None:
    """Raise ``ValueError`` for an unknown method or noise, or a missing, unused or out-of-range setting.

    Each setting has one meaning whichever estimator takes it (see :class:`Estimator`); what an estimator
    takes is declared by its ``takes_*`` flags.
    """
    estimator = _REGISTRY.get(method)
    _check_noise(noise)
    if estimator.takes_tau:
        if tau is None:
            raise ValueError(f"method {method!r} needs a temperature tau > 0")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise ValueError(f"tau must be a positive number, got {tau!r}")
        if not 0.0 < tau < math.inf:  # (comparisons, unlike math.isfinite, trace under torch.compile)
            raise ValueError(f"tau must be finite and > 0, got {tau!r}")
    elif tau is not None:
        raise ValueError(f"method {method!r} takes no tau ({_only('takes_tau')})")
    if estimator.takes_p_or_lam:
        if (p is None) == (lam is None):
            raise ValueError(f"method {method!r} needs exactly one of p (fixed) or lam (mixing form)")
        if p is not None:
            _check_unit_interval("p", p)
        else:
            _check_unit_interval("lam", lam)
            if isinstance(lam, Tensor):
                raise ValueError("lam must be a number, not a tensor")
    elif p is not None or lam is not None:
        raise ValueError(f"method {method!r} takes no p or lam ({_only('takes_p_or_lam')})")
    if estimator.takes_k:
        if k is None:
            raise ValueError(f"method {method!r} needs the number of conditional noise draws k >= 1")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
    elif k is not None:
        raise ValueError(f"method {method!r} takes no k ({_only('takes_k')})")


# ----------------------------------------------------------------------------------------------------
# IW-ST
# ----------------------------------------------------------------------------------------------------


def importance_probability(
    p1: Tensor, *, p: float | Tensor | None = None, lam: float | None = None
) -> Tensor:
    """The ``p`` of IW-ST(p), the single place it is defined (docs/method.md#iwst).

    Args:
        p1: firing probabilities ``P1``, any shape.
        p: a fixed ``p`` in [0, 1] (number, or tensor broadcastable to ``p1``), or
        lam: the mixing weight of ``p = (1 - lam) * P1 + lam / 2`` (``lam = 0`` is ST, ``lam = 1`` the
            trapezoid rule ``p = 1/2``).  Exactly one of ``p`` and ``lam``.

    Returns:
        ``p`` broadcast to ``p1``'s shape, dtype and device.
    """
    if (p is None) == (lam is None):
        raise ValueError("importance_probability needs exactly one of p or lam")
    if p is not None:
        return torch.as_tensor(p, dtype=p1.dtype, device=p1.device).expand_as(p1)
    return (1.0 - lam) * p1 + 0.5 * lam


def _iwst_derivatives(
    z: Tensor, noise: str, p: float | Tensor | None, lam: float | None
) -> tuple[Tensor, Tensor]:
    log_p1, log_p0, log_f = log_unit_probabilities(z, noise)
    weight = importance_probability(torch.exp(log_p1), p=p, lam=lam)
    # f / P_b is formed in log space: both factors underflow together in the tails.
    g1 = weight * torch.exp(log_f - log_p1)
    g0 = (1.0 - weight) * torch.exp(log_f - log_p0)
    return g1, g0


# ----------------------------------------------------------------------------------------------------
# AGR: Gaussian noise, probit relaxation, any tau
# ----------------------------------------------------------------------------------------------------


def _gauss_agr_derivatives(z: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    # g_1 = c Phi(r) / Phi(z),  g_0 = c Phi(-r) / Phi(-z),  c = phi(z/S)/S,  r = z tau / S,  S = sqrt(tau^2+1)
    scale = math.hypot(tau, 1.0)
    z_scaled = z / scale
    log_c = -0.5 * z_scaled * z_scaled - math.log(scale) - _LOG_SQRT_2PI
    r = z * (tau / scale)
    g1 = torch.exp(log_c + log_ndtr(r) - log_ndtr(z))
    g0 = torch.exp(log_c + log_ndtr(-r) - log_ndtr(-z))
    return g1, g0


# Beyond this standardised margin against the sampled outcome, erfc(|a|/sqrt 2) nears float32's smallest
# normal number, so the outcome derivative switches to Mills ratios.
_AGR_TAIL = 10.0
_MILLS_DEPTH = 8
_SQRT_2PI = math.sqrt(2.0 * math.pi)
# Derivatives below exp(floor) are returned as exact zeros: subnormal numbers make x86 arithmetic ~5x
# slower, and (times an upstream gradient) they would spread through the backward pass.
_LOG_DERIVATIVE_FLOOR = {torch.float16: -9.0, torch.bfloat16: -60.0, torch.float32: -60.0}
_LOG_DERIVATIVE_FLOOR_DEFAULT = -600.0


def _mills_ratio_tail(t: Tensor) -> Tensor:
    """Mills ratio ``R(t) = Phi(-t)/phi(t)`` for ``t >= _AGR_TAIL`` by Laplace's continued fraction
    ``1/(t + 1/(t + 2/(t + ...)))``, depth 8: relative error below 1e-13 there."""
    denominator = t
    for n in range(_MILLS_DEPTH, 0, -1):
        denominator = t + n / denominator
    return 1.0 / denominator


def _gauss_agr_derivative_of_outcome(z: Tensor, b: Tensor, tau: float) -> Tensor:
    """``g_b`` of Gaussian AGR for the sampled outcome only, without log-CDFs (they dominated a step).

    With ``a = (2b - 1) z`` (the margin towards the sampled outcome), ``k = tau/S``, ``S = sqrt(tau^2+1)``:
    ``g_b = c Phi(k a)/Phi(a)``, ``c = phi(z/S)/S``, evaluated as ``c erfc(-k a/sqrt2)/erfc(-a/sqrt2)``.
    Where ``a < -10`` (probability below 1e-23 for a sampled outcome) ``erfc`` nears underflow, and the
    same value is formed from Mills ratios, in which the exponentials cancel exactly:
    ``g_b = R(-k a) / (R(-a) S sqrt(2 pi))``.  Against the log-space form, for ``|z| <= 40`` and
    ``1e-3 <= tau <= 1e3``: relative error below 3e-5 in float32 and 1e-11 in float64, except that
    values below ``e^-60`` (float32; ``e^-600`` in float64) are returned as 0 (see
    ``_LOG_DERIVATIVE_FLOOR``).  No intermediate is subnormal.  Written for few tensor operations: it
    runs once per neuron and time step.
    """
    scale = math.hypot(tau, 1.0)
    k = tau / scale
    floor = _LOG_DERIVATIVE_FLOOR.get(z.dtype, _LOG_DERIVATIVE_FLOOR_DEFAULT)
    log_factor = -math.log(scale * _SQRT_2PI)
    fired = b.to(z.dtype) if b.dtype == torch.bool else b
    # x = -a/sqrt2 = z/sqrt2 - sqrt2 b z: erfc(x) = 2 Phi(a).
    erfc_argument = torch.addcmul(z * _SQRT_HALF, fired, z, value=-math.sqrt(2.0))
    # Skipping the (rare) tail is a data-dependent branch: a compiled graph always evaluates it, and so
    # does an accelerator, where asking would wait for the device at every call.
    has_tail = (z.device.type != "cpu" or torch.compiler.is_compiling()
                or bool(erfc_argument.amax() > _AGR_TAIL * _SQRT_HALF))
    towards_outcome = None
    if has_tail:
        towards_outcome = erfc_argument * -math.sqrt(2.0)
        # The clamp keeps erfc normal; the lanes it changes take the tail value below.
        erfc_argument.clamp_max_(_AGR_TAIL * _SQRT_HALF)
    # c (with its constant factor), flushed to 0 below e^floor after the exponential: an exp that
    # underflows is ~100x slower on x86.
    log_c = (z * z).mul_(-0.5 / (scale * scale)).add_(log_factor).clamp_min_(floor)
    c = torch.threshold_(log_c.exp_(), math.exp(floor), 0.0)
    erfc_z = erfc(erfc_argument)
    derivative = erfc(erfc_argument.mul_(k), out=erfc_argument).mul_(c).div_(erfc_z)
    if has_tail:
        t_z = (-towards_outcome).clamp_min(_AGR_TAIL)
        t_r = t_z * k
        # R(t) = erfc(t/sqrt2) exp(t^2/2) sqrt(pi/2), exact and normal for t < 10.
        t_r_low = t_r.clamp_max(_AGR_TAIL)
        mills_r = torch.where(
            t_r < _AGR_TAIL,
            erfc(t_r_low * _SQRT_HALF) * torch.exp(0.5 * t_r_low * t_r_low) * (0.5 * _SQRT_2PI),
            _mills_ratio_tail(t_r.clamp_min(_AGR_TAIL)),
        )
        tail_derivative = mills_r / _mills_ratio_tail(t_z) * math.exp(log_factor)
        derivative = torch.where(towards_outcome < -_AGR_TAIL, tail_derivative, derivative)
    return derivative


# ----------------------------------------------------------------------------------------------------
# AGR: logistic noise, logistic relaxation
# ----------------------------------------------------------------------------------------------------

# Taylor coefficients of g_1(z) at z = 0 for tau = 1 (exact rationals, from sympy).  Through z^11 the
# truncation error is below 1e-8 for |z| < 1; beyond |z| = 1 the closed form has lost at most ~1e-6
# relative precision to cancellation in float32.
_LOGISTIC_SERIES = (
    1 / 6,
    -1 / 48,
    -1 / 160,
    -1 / 2880,
    1 / 3360,
    11 / 161280,
    -13 / 1612800,
    -7 / 1382400,
    -1 / 11827200,
    113 / 383201280,
    36161 / 1162377216000,
    -108379 / 6974263296000,
)
_LOGISTIC_SERIES_RADIUS = 1.0


def _logistic_agr_g1_unit_tau(z: Tensor) -> Tensor:
    """``g_1(z)`` for logistic noise and logistic relaxation at ``tau = 1`` (docs/method.md#agr).

    With ``A = e^z``: ``g_1 = [1 + 2A - 3A^2 + 2(1+A)^2 ln((1+A)/2)] / [2(A-1)^3]``.  For ``z > 0`` the same
    expression is evaluated with ``B = e^-z`` (numerator and denominator multiplied by ``B^3``) so
    nothing overflows; near ``z = 0`` the Taylor series replaces the 0/0 form.
    """
    near_zero = z.abs() < _LOGISTIC_SERIES_RADIUS
    # Each branch is evaluated on a safe stand-in where it is not selected, so no lane divides by zero.
    z_neg = torch.where(z <= -_LOGISTIC_SERIES_RADIUS, z, torch.full_like(z, -2.0 * _LOGISTIC_SERIES_RADIUS))
    a = torch.exp(z_neg)
    num_neg = 1.0 + 2.0 * a - 3.0 * a * a + 2.0 * (1.0 + a) ** 2 * (torch.log1p(a) - _LOG_2)
    g1_neg = num_neg / (2.0 * torch.expm1(z_neg) ** 3)

    z_pos = torch.where(z >= _LOGISTIC_SERIES_RADIUS, z, torch.full_like(z, 2.0 * _LOGISTIC_SERIES_RADIUS))
    b = torch.exp(-z_pos)
    num_pos = b**3 + 2.0 * b * b - 3.0 * b + 2.0 * b * (1.0 + b) ** 2 * (z_pos + torch.log1p(b) - _LOG_2)
    g1_pos = num_pos / (2.0 * (-torch.expm1(-z_pos)) ** 3)

    z_small = torch.where(near_zero, z, torch.zeros_like(z))
    series = torch.full_like(z, _LOGISTIC_SERIES[-1])
    for coefficient in reversed(_LOGISTIC_SERIES[:-1]):
        series = series * z_small + coefficient
    return torch.where(near_zero, series, torch.where(z > 0, g1_pos, g1_neg))


def _tanh_sinh_nodes(step: float, t_max: float) -> tuple[list[float], list[float], list[float]]:
    """Nodes of the trapezoid rule in ``t`` for ``x = sigmoid(pi sinh t)`` on (0, 1) (tanh-sinh).

    Returns ``(log x, log(1 - x), log dx/dt + log step)`` as Python floats, computed in float64.
    """
    count = int(round(2 * t_max / step)) + 1
    log_x, log_one_minus_x, log_weight = [], [], []
    for i in range(count):
        t = -t_max + i * step
        y = math.pi * math.sinh(t)
        log_sig = -math.log1p(math.exp(-y)) if y > 0 else y - math.log1p(math.exp(y))
        log_sig_neg = log_sig - y  # log sigmoid(-y) = log sigmoid(y) - y
        log_x.append(log_sig)
        log_one_minus_x.append(log_sig_neg)
        log_weight.append(math.log(step * math.pi * math.cosh(t)) + log_sig + log_sig_neg)
    return log_x, log_one_minus_x, log_weight


# 65 nodes, step 1/8 on t in [-4, 4]: x reaches within e^-85 of both ends.
_QUAD_LOG_X, _QUAD_LOG_1MX, _QUAD_LOG_W = _tanh_sinh_nodes(step=1 / 8, t_max=4.0)
# For tau <= 1 the variable is s = (1 + x)/2 in (1/2, 1), the relaxation's value; precompute logit(s).
_QUAD_LOGIT_S = [
    math.log1p(-math.exp(l1mx - _LOG_2)) - (l1mx - _LOG_2) for l1mx in _QUAD_LOG_1MX
]
_QUAD_LOG_W_S = [lw - _LOG_2 for lw in _QUAD_LOG_W]
_QUAD_CHUNK = 13


def _logsumexp_over_nodes(log_terms_of_chunk, node_count: int) -> Tensor:
    """Streaming log-sum-exp over quadrature nodes, ``_QUAD_CHUNK`` at a time, to bound memory."""
    total_max = None
    total_sum = None
    for start in range(0, node_count, _QUAD_CHUNK):
        terms = log_terms_of_chunk(start, min(start + _QUAD_CHUNK, node_count))
        chunk_max = terms.amax(-1)
        if total_max is None:
            total_max = chunk_max
            total_sum = torch.exp(terms - chunk_max.unsqueeze(-1)).sum(-1)
        else:
            new_max = torch.maximum(total_max, chunk_max)
            total_sum = total_sum * torch.exp(total_max - new_max) + torch.exp(
                terms - new_max.unsqueeze(-1)
            ).sum(-1)
            total_max = new_max
    return total_max + torch.log(total_sum)


def _logistic_agr_g1_quadrature(z: Tensor, tau: float) -> Tensor:
    """``g_1 = E[d sigmoid((z+eps)/tau)/dz | z + eps > 0]`` for logistic ``eps``, by fixed quadrature.

    With ``u = z + eps`` and ``k_tau(u) = sigmoid'(u/tau)/tau``,
    ``g_1 = int_0^inf k_tau(u) f(u - z) du / P1``.
    The narrower of the two densities becomes the integration variable, integrated by a fixed 65-node
    tanh-sinh (trapezoid in ``t``) rule, all in log space:

    * ``tau <= 1``: ``s = sigmoid(u/tau)`` in (1/2, 1): ``g_1 P1 = int_{1/2}^1 f(tau logit(s) - z) ds``.
    * ``tau > 1``: ``v`` = the conditional noise quantile, ``u = z + F^-1(P0 + P1 v)``:
      ``g_1 = int_0^1 k_tau(u(v)) dv``.

    Checked against 40-digit adaptive quadrature: relative error below 1e-6 for ``|z| <= 10`` and all
    ``tau`` in [1e-3, 1e3]; larger (up to ~1e-2) only for ``z`` near 40 with ``tau`` near 1, where
    ``g_1`` itself is below 1e-15.
    """
    node_count = len(_QUAD_LOG_W)
    zz = z.unsqueeze(-1)

    def nodes(values: list[float], start: int, stop: int) -> Tensor:
        return torch.tensor(values[start:stop], dtype=z.dtype, device=z.device)

    if tau <= 1.0:

        def log_terms(start: int, stop: int) -> Tensor:
            x = tau * nodes(_QUAD_LOGIT_S, start, stop) - zz
            return nodes(_QUAD_LOG_W_S, start, stop) + _log_density(x, "logistic")

        return torch.exp(_logsumexp_over_nodes(log_terms, node_count) - F.logsigmoid(z))

    log_p1 = F.logsigmoid(zz)
    log_p0 = F.logsigmoid(-zz)

    def log_terms(start: int, stop: int) -> Tensor:
        log_q = torch.logaddexp(log_p0, log_p1 + nodes(_QUAD_LOG_X, start, stop))
        log_one_minus_q = log_p1 + nodes(_QUAD_LOG_1MX, start, stop)
        u = zz + log_q - log_one_minus_q
        return nodes(_QUAD_LOG_W, start, stop) + _log_density(u / tau, "logistic") - math.log(tau)

    return torch.exp(_logsumexp_over_nodes(log_terms, node_count))


def _logistic_agr_derivatives(z: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    # Symmetric noise: g_0(z) = g_1(-z).
    if tau == 1.0:
        return _logistic_agr_g1_unit_tau(z), _logistic_agr_g1_unit_tau(-z)
    return _logistic_agr_g1_quadrature(z, tau), _logistic_agr_g1_quadrature(-z, tau)


# ----------------------------------------------------------------------------------------------------
# Gumbel–Rao Monte Carlo
# ----------------------------------------------------------------------------------------------------


def _gauss_quantile_from_log(log_p: Tensor) -> Tensor:
    """``Phi^-1(exp(log_p))`` for ``log_p <= 0``, accurate also where ``exp(log_p)`` underflows."""
    deep_tail = log_p < -20.0
    direct = ndtri(torch.exp(log_p))
    # Asymptotic start  -x^2/2 - log(-x) - log sqrt(2 pi) = log_p, then Newton steps on log Phi.
    tail_log_p = torch.where(deep_tail, log_p, torch.full_like(log_p, -30.0))
    a = -2.0 * tail_log_p - 2.0 * _LOG_SQRT_2PI
    x = -torch.sqrt(a - torch.log(a))
    for _ in range(3):
        log_cdf = log_ndtr(x)
        x = x - (log_cdf - tail_log_p) * torch.exp(log_cdf - _log_density(x, "gauss"))
    return torch.where(deep_tail, x, direct)


def _quantile_from_log(log_p: Tensor, noise: str) -> Tensor:
    if noise == "gauss":
        return _gauss_quantile_from_log(log_p)
    return log_p - torch.log(-torch.expm1(log_p))


def _gr_mc_derivative(
    z: Tensor, b: Tensor, noise: str, tau: float, k: int, generator: torch.Generator | None
) -> Tensor:
    """Relaxed Jacobian ``f((z+eps)/tau)/tau`` averaged over ``k`` draws of ``eps`` given the sample ``b``.

    Holds ``k`` times ``z``'s size in memory: a check of AGR, not a training method for large layers.
    """
    log_p1, log_p0, _ = log_unit_probabilities(z, noise)
    # w in (0, 1]: inverse-CDF sampling of the noise truncated to the sampled outcome's side.
    log_w = torch.log1p(-torch.rand((k, *z.shape), generator=generator, dtype=z.dtype, device=z.device))
    # b = 1: eps > -z, eps = -F^-1(P1 w);  b = 0: eps < -z, eps = F^-1(P0 w).  u = z + eps, clamped onto
    # its side of 0 against rounding.
    u_fired = (z - _quantile_from_log(log_p1 + log_w, noise)).clamp_min(0.0)
    u_silent = (z + _quantile_from_log(log_p0 + log_w, noise)).clamp_max(0.0)
    u = torch.where(b > 0.5, u_fired, u_silent)
    jacobian = torch.exp(_log_density(u / tau, noise) - math.log(tau))
    return jacobian.mean(0)


# ----------------------------------------------------------------------------------------------------
# The estimators, one class each, and their registry
# ----------------------------------------------------------------------------------------------------


def _fired(b: Tensor) -> Tensor:
    return b if b.dtype == torch.bool else b > 0.5


class Estimator:
    """One gradient estimator of noisy binary units, known to the rest of sbnn by its ``name``.

    To add one (docs/extending.md#estimator): subclass, set ``name`` and the ``takes_*`` flags, implement
    :meth:`conditional_derivatives` (or :meth:`outcome_derivative` when the backward is not a function of
    ``(z, b)`` alone, or :meth:`soft_sample` for a soft forward), and register an instance with
    :func:`register_estimator`.  From then on :func:`sample`, :class:`EstimatorConfig`, every layer, the
    run configs (``[train] estimator = "<name>"``) and ``sbnn bias`` accept it.

    The methods receive the validated :class:`EstimatorConfig`.  Its settings have one meaning and one
    check each, whichever estimator takes them (:func:`_check_arguments`); an estimator refuses those it
    does not take:

    * ``takes_tau``: needs ``tau``, a relaxation temperature, finite and > 0, in units of the noise scale;
    * ``takes_p_or_lam``: needs exactly one of IW-ST's ``p`` in [0, 1] (number or tensor) or ``lam`` in
      [0, 1] (see :func:`importance_probability`);
    * ``takes_k``: needs ``k``, a number of noise draws, an integer >= 1.

    A setting of a new kind is one more :class:`EstimatorConfig` field and one more rule there.
    """

    name: ClassVar[str]
    takes_tau: ClassVar[bool] = False
    takes_p_or_lam: ClassVar[bool] = False
    takes_k: ClassVar[bool] = False
    # Hard forward b = 1[z + eps > 0] with the backward g_b; False: soft_sample is the forward and its
    # autograd gradient the backward (no derivative of a hard outcome).
    hard: ClassVar[bool] = True
    # The backward is a function of (z, b) alone, so conditional_derivatives gives the pair (g_1, g_0).
    conditional: ClassVar[bool] = True
    # What the bare name means in a run config (the settings it cannot do without).
    config_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def defaults_for(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The config defaults that fill in a settings table which names ``given`` (a bare name: ``{}``)."""
        return dict(self.config_defaults)

    def conditional_derivatives(self, z: Tensor, config: EstimatorConfig) -> tuple[Tensor, Tensor]:
        """``(g_1, g_0)`` of ``z``'s shape: the backward after a 1 and after a 0 (``conditional`` ones)."""
        raise NotImplementedError(f"estimator {self.name!r} has no conditional derivatives")

    def outcome_derivative(
        self, z: Tensor, b: Tensor, config: EstimatorConfig, generator: torch.Generator | None
    ) -> Tensor:
        """``g_b`` for the drawn outcomes ``b`` (0./1. or bool, ``z``'s shape); ``hard`` estimators only."""
        g1, g0 = self.conditional_derivatives(z, config)
        return torch.where(_fired(b), g1, g0)

    def soft_sample(self, z: Tensor, noise_sample: Tensor, config: EstimatorConfig) -> Tensor:
        """The soft forward of an estimator that is not ``hard``, differentiable by autograd."""
        raise NotImplementedError(f"estimator {self.name!r} has a hard forward")


class StraightThrough(Estimator):
    """``"st"``: ``g_1 = g_0 = f(z)`` (docs/method.md#estimators)."""

    name = "st"

    def conditional_derivatives(self, z: Tensor, config: EstimatorConfig) -> tuple[Tensor, Tensor]:  # noqa: D102
        _, density = unit_probabilities(z, config.noise)
        return density, density


class ImportanceWeightedST(Estimator):
    """``"iwst"``: ``g_1 = f p/P1``, ``g_0 = f (1 - p)/P0`` (docs/method.md#iwst)."""

    name = "iwst"
    takes_p_or_lam = True
    config_defaults = MappingProxyType({"p": 0.5})

    def defaults_for(self, given: Mapping[str, Any]) -> dict[str, Any]:  # noqa: D102
        # p and lam are alternatives: p = 1/2 only when neither is given.
        return {} if "lam" in given else dict(self.config_defaults)

    def conditional_derivatives(self, z: Tensor, config: EstimatorConfig) -> tuple[Tensor, Tensor]:  # noqa: D102
        return _iwst_derivatives(z, config.noise, config.p, config.lam)


class AnalyticalGumbelRao(Estimator):
    """``"agr"``: ``g_b = E[dF((z+eps)/tau)/dz | b]`` in closed form (docs/method.md#agr)."""

    name = "agr"
    takes_tau = True
    config_defaults = MappingProxyType({"tau": 1.0})

    def conditional_derivatives(self, z: Tensor, config: EstimatorConfig) -> tuple[Tensor, Tensor]:  # noqa: D102
        if config.noise == "gauss":
            return _gauss_agr_derivatives(z, config.tau)
        return _logistic_agr_derivatives(z, config.tau)

    def outcome_derivative(
        self, z: Tensor, b: Tensor, config: EstimatorConfig, generator: torch.Generator | None
    ) -> Tensor:  # noqa: D102
        if config.noise == "gauss":  # the training hot path (docs/method.md#numerics)
            return _gauss_agr_derivative_of_outcome(z, b, config.tau)
        return super().outcome_derivative(z, b, config, generator)


class Relaxed(Estimator):
    """``"relaxed"``: the soft forward ``F((z + eps)/tau)`` with its exact gradient."""

    name = "relaxed"
    takes_tau = True
    hard = False
    conditional = False
    config_defaults = MappingProxyType({"tau": 1.0})

    def soft_sample(self, z: Tensor, noise_sample: Tensor, config: EstimatorConfig) -> Tensor:  # noqa: D102
        relaxed_input = (z + noise_sample) / config.tau
        return _gauss_cdf(relaxed_input) if config.noise == "gauss" else torch.sigmoid(relaxed_input)


class GumbelRaoMonteCarlo(Estimator):
    """``"gr_mc"``: the relaxed Jacobian averaged over ``k`` noise draws given ``b`` (a check of AGR)."""

    name = "gr_mc"
    takes_tau = True
    takes_k = True
    conditional = False
    config_defaults = MappingProxyType({"tau": 1.0, "k": 8})

    def outcome_derivative(
        self, z: Tensor, b: Tensor, config: EstimatorConfig, generator: torch.Generator | None
    ) -> Tensor:  # noqa: D102
        return _gr_mc_derivative(z, b, config.noise, config.tau, config.k, generator)


def _check_estimator(name: str, estimator: Estimator) -> None:
    if not estimator.hard and estimator.conditional:
        raise ValueError(f"estimator {name!r}: a soft forward has no conditional derivatives (conditional = False)")


_REGISTRY: Registry[Estimator] = Registry("estimator", unknown="unknown method {name}; expected one of {names_tuple}",
                                          check=_check_estimator)


def register_estimator(estimator: Estimator, *, replace: bool = False) -> Estimator:
    """Make ``estimator`` known by its ``name`` to :func:`sample`, :class:`EstimatorConfig`, the layers and
    the run configs.  Returns it.  A name already taken is refused unless ``replace``."""
    if not isinstance(estimator, Estimator):
        raise TypeError(f"register an Estimator instance, got {estimator!r}")
    return _REGISTRY.register(getattr(estimator, "name", None), estimator, replace=replace)


def unregister_estimator(name: str) -> None:
    """Forget a registered estimator (the built-in ones stay)."""
    _REGISTRY.unregister(name)


def get_estimator(name: str) -> Estimator:
    """The registered estimator called ``name``."""
    return _REGISTRY.get(name)


def estimator_names() -> tuple[str, ...]:
    """The names of the registered estimators, the built-in ones (:data:`METHODS`) first."""
    return _REGISTRY.names()


for _estimator in (StraightThrough(), ImportanceWeightedST(), AnalyticalGumbelRao(), Relaxed(),
                   GumbelRaoMonteCarlo()):
    register_estimator(_estimator)
del _estimator
_REGISTRY.seal_built_ins()


# ----------------------------------------------------------------------------------------------------
# The autograd function and the public entry points
# ----------------------------------------------------------------------------------------------------


class _HardSampleWithEstimator(torch.autograd.Function):
    """Forward ``1[z + eps > 0]``; backward ``grad * g_b`` with ``g_b`` computed (and saved) in forward.

    Saving ``g_b`` costs one tensor, the same as saving ``z``, and keeps backward a single multiply.
    """

    @staticmethod
    def forward(ctx, z, noise_sample, config, generator):  # noqa: D102
        b = (z + noise_sample > 0).to(z.dtype)
        derivative = _REGISTRY[config.method].outcome_derivative(z, b, config, generator)
        ctx.save_for_backward(derivative)
        return b

    @staticmethod
    def backward(ctx, grad_b):  # noqa: D102
        (derivative,) = ctx.saved_tensors
        return grad_b * derivative, None, None, None


class _HardOutcomeWithEstimator(torch.autograd.Function):
    """Forward the outcomes ``b`` drawn elsewhere (0./1.); backward ``grad * g_b`` as
    :class:`_HardSampleWithEstimator`."""

    @staticmethod
    def forward(ctx, z, b, config, generator):  # noqa: D102
        ctx.save_for_backward(_REGISTRY[config.method].outcome_derivative(z, b, config, generator))
        return b.clone()

    @staticmethod
    def backward(ctx, grad_b):  # noqa: D102
        (derivative,) = ctx.saved_tensors
        return grad_b * derivative, None, None, None


def with_outcome_derivative(
    z: Tensor, b: Tensor, config: EstimatorConfig, generator: torch.Generator | None = None
) -> Tensor:
    """The hard outcomes ``b`` (0./1., ``z``'s shape and dtype, drawn by the caller from ``z``'s noise)
    with the backward ``db/dz := g_b`` of ``config``'s estimator attached; ``b`` itself if ``z`` needs
    no gradient.  For hard estimators only (``config.hard``)."""
    if not config.hard:
        raise ValueError(f"estimator {config.method!r} has a soft forward: it has no derivative of a hard outcome")
    if not z.requires_grad:
        return b
    return _HardOutcomeWithEstimator.apply(z, b, config, generator)


def _and_list(names: tuple[str, ...]) -> str:
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def conditional_derivatives(
    z: Tensor,
    method: Method,
    *,
    noise: NoiseKind = "gauss",
    tau: float | None = None,
    p: float | Tensor | None = None,
    lam: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The backward ``db/dz`` a deterministic-backward estimator uses for each outcome.

    Args:
        z: standardised margins, any shape.
        method: ``"st"``, ``"iwst"`` or ``"agr"`` (the methods whose backward is a function of ``(z, b)``;
            registered ones with ``conditional = True`` too).
        noise, tau, p, lam: as in :func:`sample`.

    Returns:
        ``(g_1, g_0)`` of ``z``'s shape: the derivative used when the sample is 1, and when it is 0.
        The estimator's mean is ``P1 * g_1 * L'(1) + P0 * g_0 * L'(0)``.
    """
    supported = tuple(name for name, estimator in _REGISTRY.items() if estimator.conditional)
    if method not in supported:
        raise ValueError(f"conditional_derivatives supports {_and_list(supported)}, not {method!r}")
    config = EstimatorConfig(method, noise, tau, p, lam, None)
    return _REGISTRY[method].conditional_derivatives(z, config)


def _outcome_derivative(
    config: EstimatorConfig, z: Tensor, b: Tensor, generator: torch.Generator | None
) -> Tensor:
    estimator = _REGISTRY[config.method]
    if not estimator.hard:
        raise ValueError(
            f"method {config.method!r} has a soft forward, so it has no derivative of a hard outcome"
        )
    if b.shape != z.shape:
        raise ValueError(f"b has shape {tuple(b.shape)}, z has {tuple(z.shape)}")
    return estimator.outcome_derivative(z, b, config, generator)


def outcome_derivative(
    z: Tensor,
    b: Tensor,
    method: Method,
    *,
    noise: NoiseKind = "gauss",
    tau: float | None = None,
    p: float | Tensor | None = None,
    lam: float | None = None,
    k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The backward ``db/dz`` that :func:`sample` attaches to the drawn outcomes ``b``.

    For callers that run the forward pass themselves (the fused spiking layer): the hard outcomes ``b``
    (0./1. or bool, ``z``'s shape) were drawn as ``1[z + eps > 0]``, and the result is ``g_b`` elementwise, of
    ``z``'s shape.  ``"relaxed"`` has no hard outcome and is refused; ``"gr_mc"`` draws from ``generator``.
    """
    return _outcome_derivative(EstimatorConfig(method, noise, tau, p, lam, k), z, b, generator)


def draw_noise(
    shape: torch.Size | tuple[int, ...],
    noise: NoiseKind = "gauss",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard unit noise ``eps`` (standard Gaussian, or standard logistic with scale 1) of ``shape``."""
    _check_noise(noise)
    if noise == "gauss":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    uniform = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    uniform = uniform.clamp_min(torch.finfo(dtype).tiny)
    return torch.log(uniform) - torch.log1p(-uniform)


def _check_margins(z: Tensor) -> None:
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")


def _sample_given_noise(
    config: EstimatorConfig, z: Tensor, noise_sample: Tensor, generator: torch.Generator | None
) -> Tensor:
    _check_margins(z)
    if noise_sample.shape != z.shape:
        raise ValueError(f"noise_sample has shape {tuple(noise_sample.shape)}, z has {tuple(z.shape)}")
    estimator = _REGISTRY[config.method]
    if not estimator.hard:
        return estimator.soft_sample(z, noise_sample, config)
    if not z.requires_grad:
        return (z + noise_sample > 0).to(z.dtype)
    return _HardSampleWithEstimator.apply(z, noise_sample, config, generator)


def _sample(config: EstimatorConfig, z: Tensor, generator: torch.Generator | None) -> Tensor:
    _check_margins(z)
    noise_sample = draw_noise(z.shape, config.noise, dtype=z.dtype, device=z.device, generator=generator)
    return _sample_given_noise(config, z, noise_sample, generator)


def sample_given_noise(
    z: Tensor,
    noise_sample: Tensor,
    method: Method,
    *,
    noise: NoiseKind = "gauss",
    tau: float | None = None,
    p: float | Tensor | None = None,
    lam: float | None = None,
    k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`sample` with the unit noise supplied: ``b = 1[z + noise_sample > 0]``.

    For callers that need the noise itself, e.g. the spiking layer, which carries the sampled membrane
    potential ``m + s * noise_sample`` forward.  ``noise_sample`` must have ``z``'s shape and be drawn
    from ``noise``'s standard distribution; ``generator`` then only feeds ``"gr_mc"``'s conditional draws.
    """
    return _sample_given_noise(EstimatorConfig(method, noise, tau, p, lam, k), z, noise_sample, generator)


def sample(
    z: Tensor,
    method: Method,
    *,
    noise: NoiseKind = "gauss",
    tau: float | None = None,
    p: float | Tensor | None = None,
    lam: float | None = None,
    k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample noisy binary units and attach a gradient estimator (docs/method.md#estimators).

    Args:
        z: standardised margins (margin over noise scale, dimensionless), any shape, floating point.
        method: ``"st"``, ``"iwst"``, ``"agr"``, ``"relaxed"`` or ``"gr_mc"`` (or a registered name, see
            :func:`register_estimator`).
        noise: ``"gauss"`` (probit units) or ``"logistic"``.
        tau: relaxation temperature in units of the noise scale; required by ``"agr"``, ``"relaxed"`` and
            ``"gr_mc"``, refused by the others.
        p: IW-ST's fixed ``p`` in [0, 1] (number or tensor broadcastable to ``z``); ``"iwst"`` only.
        lam: IW-ST's mixing weight, ``p = (1 - lam) P1 + lam/2``; ``"iwst"`` only, exclusive with ``p``.
        k: number of conditional noise draws of ``"gr_mc"``.
        generator: random source for the unit noise (and ``"gr_mc"``'s draws), on ``z``'s device; the
            same seed gives the same samples.

    Returns:
        A tensor of ``z``'s shape, dtype and device: hard samples ``b = 1[z + eps > 0]`` in {0., 1.}, except
        for ``"relaxed"``, which returns the soft ``F((z + eps)/tau)`` in [0, 1].  Its backward is the
        chosen estimator ``db/dz := g_b`` (exact gradient for ``"relaxed"``).

    Raises:
        ValueError: unknown method or noise, missing or unused settings, ``tau <= 0``, ``p`` or ``lam``
            outside [0, 1], ``k < 1``.
    """
    return _sample(EstimatorConfig(method, noise, tau, p, lam, k), z, generator)


@dataclass(frozen=True)
class EstimatorConfig:
    """A validated choice of estimator and its settings, to hand to layers (see :func:`sample`).

    ``method`` has no default: the one default estimator is :data:`DEFAULT_ESTIMATOR`.
    """

    method: Method
    noise: NoiseKind = "gauss"
    tau: float | None = None
    p: float | None = None
    lam: float | None = None
    k: int | None = None

    def __post_init__(self) -> None:
        _check_arguments(self.method, self.noise, self.tau, self.p, self.lam, self.k)

    @property
    def estimator(self) -> Estimator:
        """The registered :class:`Estimator` of ``method``."""
        return get_estimator(self.method)

    @property
    def hard(self) -> bool:
        """Whether the forward is the hard sample (every method but ``"relaxed"``)."""
        return get_estimator(self.method).hard

    def sample(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """:func:`sample` with these settings."""
        return _sample(self, z, generator)

    def sample_given_noise(
        self, z: Tensor, noise_sample: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """:func:`sample_given_noise` with these settings."""
        return _sample_given_noise(self, z, noise_sample, generator)

    def outcome_derivative(self, z: Tensor, b: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """:func:`outcome_derivative` with these settings."""
        return _outcome_derivative(self, z, b, generator)


# The one default estimator: of the layers, of ModelConfig and of the run configs' [train] estimator (and
# the method of an estimator table that names none).  docs/method.md#agr.
DEFAULT_ESTIMATOR = EstimatorConfig("agr", noise="gauss", tau=1.0)


__all__ = [
    "DEFAULT_ESTIMATOR",
    "METHODS",
    "NOISE_KINDS",
    "SETTINGS",
    "Estimator",
    "EstimatorConfig",
    "conditional_derivatives",
    "draw_noise",
    "estimator_names",
    "get_estimator",
    "importance_probability",
    "log_unit_probabilities",
    "outcome_derivative",
    "register_estimator",
    "sample",
    "sample_given_noise",
    "unit_probabilities",
    "unregister_estimator",
    "with_outcome_derivative",
]
