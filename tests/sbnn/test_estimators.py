"""Tests of sbnn.estimators against docs/method.md#estimators and exact identities."""

from __future__ import annotations

import math
import os

import pytest
import torch

from sbnn import estimators
from sbnn.estimators import (
    EstimatorConfig,
    conditional_derivatives,
    importance_probability,
    log_unit_probabilities,
    outcome_derivative,
    sample,
    sample_given_noise,
    unit_probabilities,
)

torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64

# docs/method.md#test-vectors: (z, tau, P1, f, g_1, g_0) for Gaussian noise.
GAUSS_VECTORS = [
    (0.5, 0.5, 0.691462, 0.352065, 0.274777, 0.430646),
    (-2.0, 2.0, 0.022750, 0.053991, 0.193552, 0.117872),
    (0.0, 1.0, 0.500000, 0.398942, 0.282095, 0.282095),
]
# Logistic noise, tau = 1: (z, P1, g_1, g_0).
LOGISTIC_VECTORS = [(-1.0, 0.268941, 0.181823, 0.139589), (2.0, 0.880797, 0.103128, 0.188699)]

ALL_METHODS = [
    ("st", {}),
    ("iwst", {"p": 0.5}),
    ("iwst", {"lam": 0.3}),
    ("agr", {"tau": 0.5}),
    ("relaxed", {"tau": 0.5}),
    ("gr_mc", {"tau": 0.5, "k": 4}),
]


def _grad_of_sample(
    z: torch.Tensor, method: str, seed: int = 0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.detach().clone().requires_grad_(True)
    generator = torch.Generator(device=z.device).manual_seed(seed)
    b = sample(z, method, generator=generator, **kwargs)
    b.sum().backward()
    return b.detach(), z.grad


# ---------------------------------------------------------------------------------------------------
# docs/method.md#test-vectors
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("z, tau, p1, density, g1, g0", GAUSS_VECTORS)
def test_gauss_agr_vectors(z, tau, p1, density, g1, g0):
    zt = torch.tensor([z], dtype=F64)
    got_p1, got_density = unit_probabilities(zt, "gauss")
    got_g1, got_g0 = conditional_derivatives(zt, "agr", noise="gauss", tau=tau)
    for got, want in ((got_p1, p1), (got_density, density), (got_g1, g1), (got_g0, g0)):
        assert abs(got.item() - want) < 1e-5


@pytest.mark.parametrize("z, p1, g1, g0", LOGISTIC_VECTORS)
def test_logistic_agr_vectors(z, p1, g1, g0):
    zt = torch.tensor([z], dtype=F64)
    got_g1, got_g0 = conditional_derivatives(zt, "agr", noise="logistic", tau=1.0)
    assert abs(unit_probabilities(zt, "logistic")[0].item() - p1) < 1e-5
    assert abs(got_g1.item() - g1) < 1e-5
    assert abs(got_g0.item() - g0) < 1e-5


def test_logistic_unit_tau_closed_form_matches_quadrature_and_series():
    # The closed form (with its series near 0) against the quadrature used for other tau.
    z = torch.linspace(-10, 10, 2001, dtype=F64)
    closed = estimators._logistic_agr_g1_unit_tau(z)
    quadrature = estimators._logistic_agr_g1_quadrature(z, 1.0)
    torch.testing.assert_close(closed, quadrature, rtol=2e-6, atol=0)
    # float32 keeps the precision across the series/closed-form switch at |z| = 1.
    closed32 = estimators._logistic_agr_g1_unit_tau(z.float()).double()
    torch.testing.assert_close(closed32, closed, rtol=1e-5, atol=0)
    # Series given in docs/method.md#agr near z = 0.
    small = torch.tensor([-0.05, 0.0, 0.02], dtype=F64)
    series = 1 / 6 - small / 48 - small**2 / 160 - small**3 / 2880
    torch.testing.assert_close(estimators._logistic_agr_g1_unit_tau(small), series, rtol=1e-7, atol=0)


def test_log_unit_probabilities_consistent():
    z = torch.linspace(-6, 6, 25, dtype=F64)
    for noise in ("gauss", "logistic"):
        log_p1, log_p0, log_f = log_unit_probabilities(z, noise)
        p1, density = unit_probabilities(z, noise)
        torch.testing.assert_close(log_p1.exp(), p1)
        torch.testing.assert_close(log_p0.exp(), 1 - p1)
        torch.testing.assert_close(log_f.exp(), density)


# ---------------------------------------------------------------------------------------------------
# IW-ST identities and the backward actually used
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["gauss", "logistic"])
def test_iwst_identities(noise):
    z = torch.linspace(-8, 8, 161, dtype=F64)
    p1, density = unit_probabilities(z, noise)
    p0, _ = unit_probabilities(-z, noise)  # not 1 - p1, which cancels for large z
    g1, g0 = conditional_derivatives(z, "iwst", noise=noise, p=0.5)
    torch.testing.assert_close(g1, density / (2 * p1))
    torch.testing.assert_close(g0, density / (2 * p0))
    st1, st0 = conditional_derivatives(z, "st", noise=noise)
    for kwargs in ({"p": p1}, {"lam": 0.0}):
        w1, w0 = conditional_derivatives(z, "iwst", noise=noise, **kwargs)
        torch.testing.assert_close(w1, st1)
        torch.testing.assert_close(w0, st0)
    trapezoid = conditional_derivatives(z, "iwst", noise=noise, lam=1.0)
    torch.testing.assert_close(trapezoid[0], g1)
    torch.testing.assert_close(trapezoid[1], g0)
    torch.testing.assert_close(importance_probability(p1, lam=0.25), 0.75 * p1 + 0.125)


@pytest.mark.parametrize("method, kwargs", [m for m in ALL_METHODS if m[0] in ("st", "iwst", "agr")])
@pytest.mark.parametrize("noise", ["gauss", "logistic"])
def test_backward_uses_conditional_derivative_of_sampled_outcome(method, kwargs, noise):
    z = torch.linspace(-3, 3, 301, dtype=F64)
    b, grad = _grad_of_sample(z, method, noise=noise, **kwargs)
    g1, g0 = conditional_derivatives(z, method, noise=noise, **kwargs)
    assert set(b.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(grad, torch.where(b > 0.5, g1, g0))


# ---------------------------------------------------------------------------------------------------
# AGR against Gumbel–Rao Monte Carlo and in its limits
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["gauss", "logistic"])
@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_agr_equals_gr_mc_with_large_k(noise, tau):
    z_values = torch.tensor([-1.5, 0.0, 0.7, 2.0], dtype=F64)
    copies = 3000
    z = z_values.repeat(copies)
    b, grad = _grad_of_sample(z, "gr_mc", seed=1, noise=noise, tau=tau, k=64)
    g1, g0 = conditional_derivatives(z_values, "agr", noise=noise, tau=tau)
    b, grad = b.view(copies, -1), grad.view(copies, -1)
    for outcome, agr in ((1.0, g1), (0.0, g0)):
        for column in range(len(z_values)):
            estimates = grad[b[:, column] == outcome, column]
            assert len(estimates) > 50
            standard_error = estimates.std() / math.sqrt(len(estimates))
            assert abs(estimates.mean() - agr[column]) < 5 * standard_error + 1e-9


@pytest.mark.parametrize("noise", ["gauss", "logistic"])
def test_agr_limits(noise):
    z = torch.linspace(-3, 3, 61, dtype=F64)
    # tau -> 0: IW-ST(1/2).
    g1, g0 = conditional_derivatives(z, "agr", noise=noise, tau=1e-3)
    w1, w0 = conditional_derivatives(z, "iwst", noise=noise, p=0.5)
    torch.testing.assert_close(g1, w1, rtol=5e-3, atol=0)
    torch.testing.assert_close(g0, w0, rtol=5e-3, atol=0)
    # tau -> inf: ST up to a scale common to both outcomes (g_1 / g_0 -> 1).
    g1, g0 = conditional_derivatives(z, "agr", noise=noise, tau=1e3)
    torch.testing.assert_close(g1 / g0, torch.ones_like(z), rtol=1e-2, atol=0)
    # And in between, AGR's effective p lies between P1 (ST) and 1/2 (for Gaussian: Phi(r)).
    p1, density = unit_probabilities(z, noise)
    g1, _ = conditional_derivatives(z, "agr", noise=noise, tau=1.0)
    effective_p = g1 * p1 / (g1 * p1 + conditional_derivatives(z, "agr", noise=noise, tau=1.0)[1] * (1 - p1))
    low, high = torch.minimum(p1, torch.full_like(p1, 0.5)), torch.maximum(p1, torch.full_like(p1, 0.5))
    assert bool(((effective_p >= low - 1e-12) & (effective_p <= high + 1e-12)).all())


def test_gauss_agr_effective_p_is_phi_r():
    z = torch.linspace(-4, 4, 41, dtype=F64)
    tau = 0.7
    p1, _ = unit_probabilities(z, "gauss")
    g1, g0 = conditional_derivatives(z, "agr", noise="gauss", tau=tau)
    effective_p = g1 * p1 / (g1 * p1 + g0 * (1 - p1))
    torch.testing.assert_close(effective_p, torch.special.ndtr(z * tau / math.hypot(tau, 1.0)))


# ---------------------------------------------------------------------------------------------------
# Numerical safety, forward distribution, reproducibility
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("noise", ["gauss", "logistic"])
def test_finite_on_extreme_grid(dtype, noise):
    z = torch.linspace(-40, 40, 161, dtype=dtype)
    for tau in (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3):
        g1, g0 = conditional_derivatives(z, "agr", noise=noise, tau=tau)
        assert torch.isfinite(g1).all() and torch.isfinite(g0).all()
        assert (g1 >= 0).all() and (g0 >= 0).all()
        for method, kwargs in ALL_METHODS:
            if "tau" in kwargs:
                kwargs = {**kwargs, "tau": tau}
            elif tau != 1.0:
                continue
            b, grad = _grad_of_sample(z, method, noise=noise, **kwargs)
            assert b.dtype == dtype and b.shape == z.shape
            assert torch.isfinite(b).all() and torch.isfinite(grad).all(), (method, tau)
            assert (grad >= 0).all()
    for method, kwargs in (("iwst", {"p": 0.5}), ("iwst", {"lam": 1.0}), ("st", {})):
        g1, g0 = conditional_derivatives(z, method, noise=noise, **kwargs)
        assert torch.isfinite(g1).all() and torch.isfinite(g0).all()


@pytest.mark.parametrize("dtype, rtol, log_floor", [(torch.float32, 3e-5, -60.0), (F64, 1e-11, -600.0)])
def test_fast_gauss_agr_outcome_derivative_matches_log_space_form(dtype, rtol, log_floor):
    # Training uses an erfc / Mills-ratio form of AGR's g_b (log_ndtr was most of a step's time); it
    # must agree with the log-space conditional derivatives, flush only values below e^floor to 0, and
    # never produce a subnormal number (they slow x86 arithmetic several-fold).
    z = torch.linspace(-40, 40, 20001, dtype=dtype)
    for tau in (1e-3, 1e-2, 0.1, 0.5, 1.0, 2.0, 10.0, 100.0, 1e3):
        reference_g1, reference_g0 = conditional_derivatives(z.to(F64), "agr", tau=tau)
        for outcome, reference in ((1.0, reference_g1), (0.0, reference_g0)):
            got = outcome_derivative(z, torch.full_like(z, outcome), "agr", tau=tau)
            assert got.dtype == dtype and torch.isfinite(got).all()
            assert not ((got != 0) & (got.abs() < torch.finfo(dtype).tiny)).any(), (tau, outcome)
            flushed = got == 0
            assert (reference[flushed] < 2 * math.exp(log_floor)).all(), (tau, outcome)
            kept = ~flushed
            torch.testing.assert_close(got[kept].to(F64), reference[kept], rtol=rtol, atol=0)


def test_outcome_derivative_refuses_the_soft_estimator_and_mismatched_shapes():
    with pytest.raises(ValueError, match="soft forward"):
        outcome_derivative(torch.zeros(3), torch.zeros(3), "relaxed", tau=1.0)
    with pytest.raises(ValueError, match="shape"):
        outcome_derivative(torch.zeros(3), torch.zeros(4), "st")


@pytest.mark.parametrize("noise", ["gauss", "logistic"])
def test_gr_mc_conditional_draws_finite_for_unlikely_outcomes(noise):
    z = torch.linspace(-40, 40, 81, dtype=torch.float32)
    generator = torch.Generator().manual_seed(3)
    for outcome in (0.0, 1.0):
        for tau in (1e-3, 1.0, 1e3):
            outcomes = torch.full_like(z, outcome)
            derivative = estimators._gr_mc_derivative(z, outcomes, noise, tau, 8, generator)
            assert torch.isfinite(derivative).all()


@pytest.mark.parametrize("noise", ["gauss", "logistic"])
@pytest.mark.parametrize("device", DEVICES)
def test_forward_mean_matches_firing_probability(noise, device):
    z_values = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.7], device=device)
    count = 40000
    z = z_values.repeat(count, 1)
    generator = torch.Generator(device=device).manual_seed(5)
    b = sample(z, "agr", noise=noise, tau=1.0, generator=generator)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    p1, _ = unit_probabilities(z_values, noise)
    standard_error = torch.sqrt(p1 * (1 - p1) / count)
    assert ((b.mean(0) - p1).abs() < 5 * standard_error).all()


@pytest.mark.parametrize("method, kwargs", ALL_METHODS)
def test_same_seed_same_samples(method, kwargs):
    z = torch.randn(64, generator=torch.Generator().manual_seed(0))
    first = _grad_of_sample(z, method, seed=11, **kwargs)
    second = _grad_of_sample(z, method, seed=11, **kwargs)
    other = _grad_of_sample(z, method, seed=12, **kwargs)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_sample_given_noise_is_the_noise_threshold():
    z = torch.linspace(-2, 2, 9)
    noise_sample = torch.linspace(1, -1, 9)
    b = sample_given_noise(z, noise_sample, "st")
    assert torch.equal(b, (z + noise_sample > 0).float())


@pytest.mark.parametrize("noise", ["gauss", "logistic"])
def test_gradcheck_relaxed(noise):
    z = torch.linspace(-2, 2, 7, dtype=F64, requires_grad=True)

    def relaxed(z_input: torch.Tensor) -> torch.Tensor:
        fixed_noise = torch.Generator().manual_seed(7)
        return sample(z_input, "relaxed", noise=noise, tau=0.5, generator=fixed_noise)

    assert torch.autograd.gradcheck(relaxed, (z,))
    assert torch.autograd.gradgradcheck(relaxed, (z,))


def test_relaxed_is_soft_and_tends_to_hard():
    z = torch.linspace(-3, 3, 50, dtype=F64)
    soft = sample(z, "relaxed", tau=0.5, generator=torch.Generator().manual_seed(2))
    assert ((soft > 0) & (soft < 1)).any()
    hard = sample(z, "st", generator=torch.Generator().manual_seed(2))
    nearly_hard = sample(z, "relaxed", tau=1e-6, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(nearly_hard, hard, atol=1e-6, rtol=0)


def test_estimator_config_matches_sample():
    z = torch.randn(32, requires_grad=True)
    config = EstimatorConfig("iwst", lam=0.5)
    b = config.sample(z, generator=torch.Generator().manual_seed(4))
    reference = sample(z, "iwst", lam=0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(b, reference)


# ---------------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, kwargs, message",
    [
        ("bogus", {}, "unknown method"),
        ("st", {"noise": "cauchy"}, "unknown noise"),
        ("agr", {}, "needs a temperature"),
        ("agr", {"tau": 0.0}, "tau must be finite and > 0"),
        ("relaxed", {"tau": -1.0}, "tau must be finite and > 0"),
        ("gr_mc", {"tau": float("inf"), "k": 2}, "tau must be finite and > 0"),
        ("gr_mc", {"tau": 1.0}, "needs the number"),
        ("gr_mc", {"tau": 1.0, "k": 0}, "k must be an integer"),
        ("iwst", {}, "exactly one of p"),
        ("iwst", {"p": 0.5, "lam": 0.5}, "exactly one of p"),
        ("iwst", {"p": 1.5}, r"p must lie in \[0, 1\]"),
        ("iwst", {"p": torch.tensor([0.2, -0.1, 0.3, 0.4])}, r"p must lie in \[0, 1\]"),
        ("iwst", {"lam": -0.1}, r"lam must lie in \[0, 1\]"),
        ("st", {"tau": 1.0}, "takes no tau"),
        ("st", {"p": 0.5}, "takes no p or lam"),
        ("agr", {"tau": 1.0, "k": 3}, "takes no k"),
    ],
)
def test_invalid_arguments(method, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(torch.zeros(4), method, **kwargs)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="floating-point"):
        sample(torch.zeros(3, dtype=torch.int64), "st")
    with pytest.raises(ValueError, match="noise_sample has shape"):
        sample_given_noise(torch.zeros(3), torch.zeros(4), "st")
    with pytest.raises(ValueError, match="needs a temperature"):
        EstimatorConfig("agr")
    with pytest.raises(ValueError, match="supports 'st', 'iwst' and 'agr'"):
        conditional_derivatives(torch.zeros(2), "relaxed", tau=1.0)


# ---------------------------------------------------------------------------------------------------
# torch.compile and devices
# ---------------------------------------------------------------------------------------------------


def _compile_or_skip(function, backend: str):
    try:
        import torch._dynamo  # noqa: F401
    except Exception as error:  # pragma: no cover - depends on the installation
        pytest.skip(f"torch.compile unavailable: {error}")
    if not torch._dynamo.is_dynamo_supported():  # pragma: no cover
        pytest.skip("torch.compile is not supported on this Python")
    torch._dynamo.reset()
    return torch.compile(function, backend=backend, fullgraph=True)


def _tiny_loss_function(method: str, kwargs: dict):
    def loss(z: torch.Tensor) -> torch.Tensor:
        b = sample(2.0 * z, method, **kwargs)
        return (b * torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)).sum()

    return loss


@pytest.mark.parametrize(
    "method, kwargs",
    [("agr", {"tau": 0.5}), ("agr", {"tau": 2.0, "noise": "logistic"}), ("iwst", {"lam": 1.0}),
     ("gr_mc", {"tau": 1.0, "k": 2}), ("relaxed", {"tau": 0.5})],
)
def test_traces_under_torch_compile_without_graph_breaks(method, kwargs):
    # aot_eager traces the autograd.Function forward and backward through dynamo and AOTAutograd
    # (fullgraph: any graph break fails) without paying for C++ code generation.
    compiled = _compile_or_skip(_tiny_loss_function(method, kwargs), "aot_eager")
    z = torch.randn(3, 5, requires_grad=True)
    compiled(z).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SBNN_SLOW_TESTS") != "1", reason="inductor compiles for ~30 s; set SBNN_SLOW_TESTS=1"
)
def test_inductor_compile_matches_eager():
    loss = _tiny_loss_function("agr", {"tau": 0.5})
    compiled = _compile_or_skip(loss, "inductor")
    z = torch.randn(3, 5, dtype=F64)
    z_compiled = z.clone().requires_grad_(True)
    compiled(z_compiled).backward()
    # Same z, outcomes differ by the noise; compare the backward against the conditional derivatives.
    g1, g0 = conditional_derivatives(2.0 * z, "agr", tau=0.5)
    weights = torch.arange(1, 6, dtype=F64)
    assert torch.isfinite(z_compiled.grad).all()
    per_outcome = torch.stack([2.0 * weights * g1, 2.0 * weights * g0])
    assert bool(((z_compiled.grad - per_outcome).abs().amin(0) < 1e-9).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method, kwargs", ALL_METHODS)
def test_cuda_matches_cpu_derivatives(method, kwargs):
    z = torch.linspace(-40, 40, 81)
    b, grad = _grad_of_sample(z.cuda(), method, **kwargs)
    assert b.device.type == "cuda" and torch.isfinite(grad).all()
    if method in ("st", "iwst", "agr"):
        g1, g0 = conditional_derivatives(z, method, **kwargs)
        # atol: Gaussian AGR flushes derivatives below e^-60 (float32) to 0, see the fast-form test.
        torch.testing.assert_close(grad.cpu(), torch.where(b.cpu() > 0.5, g1, g0), rtol=1e-5, atol=1e-25)
