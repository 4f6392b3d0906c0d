"""Tests of sbnn.layers: local reparameterisation, KL, frozen samples, CUBA-LIF dynamics, shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sbnn.layers import cuba_modules, fused_lif
from sbnn.estimators import EstimatorConfig, unit_probabilities
from sbnn.layers import (
    BayesConv2d,
    BayesLinear,
    CubaIntegrator,
    CubaLif,
    CubaParameters,
    CubaState,
    Mode,
    NoisyBinaryUnits,
    Preactivation,
    cuba_lif_step,
    cuba_lif_step_noisy,
    freeze_posterior_sample,
    kl_divergence,
    loihi_decays,
    set_mode,
    standardised_margin,
)

torch.set_num_threads(1)
F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise_posterior(layer, seed: int) -> None:
    generator = _generator(seed)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            values = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.copy_(values * 0.5 - (2.0 if "rho" in name else 0.0))


def _binary(shape, seed: int, dtype=F64) -> torch.Tensor:
    return (torch.rand(shape, generator=_generator(seed), dtype=dtype) > 0.5).to(dtype)


def _posterior_weight_samples(layer, count: int, seed: int):
    generator = _generator(seed)
    eps = torch.randn((count, *layer.weight_mu.shape), generator=generator, dtype=layer.weight_mu.dtype)
    weights = layer.weight_mu + layer.weight_sigma * eps
    if layer.bayesian_bias:
        eps_bias = torch.randn((count, *layer.bias_mu.shape), generator=generator, dtype=F64)
        biases = layer.bias_mu + F.softplus(layer.bias_rho) * eps_bias
    else:
        biases = layer.bias.expand(count, -1)
    return weights.detach(), biases.detach()


def _assert_moments_match(samples: torch.Tensor, pre: Preactivation) -> None:
    """``samples``: (count, ...) Monte Carlo pre-activations; compare mean and variance within 5 SE."""
    count = samples.shape[0]
    mean, variance = pre.mean.detach(), pre.variance.detach()
    assert (samples.mean(0) - mean).abs().le(5 * torch.sqrt(variance / count) + 1e-12).all()
    # The sample variance of Gaussian data has standard error variance * sqrt(2 / (count - 1)).
    assert (samples.var(0) - variance).abs().le(5 * variance * math.sqrt(2 / (count - 1)) + 1e-12).all()


# ---------------------------------------------------------------------------------------------------
# Local reparameterisation and KL
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary_input", [True, False])
@pytest.mark.parametrize("bayesian_bias", [False, True])
def test_linear_local_reparameterisation_matches_monte_carlo(binary_input, bayesian_bias):
    layer = BayesLinear(8, 3, bayesian_bias=bayesian_bias, binary_input=binary_input, dtype=F64)
    _randomise_posterior(layer, seed=1)
    x = _binary((5, 8), seed=2) if binary_input else torch.randn(5, 8, generator=_generator(2), dtype=F64)
    pre = layer(x)
    weights, biases = _posterior_weight_samples(layer, 20000, seed=3)
    samples = torch.einsum("bi,soi->sbo", x, weights) + biases[:, None, :]
    _assert_moments_match(samples, pre)


def test_binary_input_saving_equals_general_formula_on_binary_inputs():
    layer = BayesLinear(6, 4, dtype=F64)
    x = _binary((3, 6), seed=4)
    binary = layer(x)
    layer.binary_input = False
    general = layer(x)
    torch.testing.assert_close(binary.variance, general.variance)


def test_conv_local_reparameterisation_matches_monte_carlo():
    layer = BayesConv2d(2, 3, 3, stride=2, padding=1, dtype=F64)
    _randomise_posterior(layer, seed=5)
    x = _binary((2, 2, 5, 5), seed=6)
    pre = layer(x)  # (2, 3, 3, 3)
    weights, biases = _posterior_weight_samples(layer, 5000, seed=7)
    patches = F.unfold(x, 3, padding=1, stride=2)  # (batch, C*k*k, L)
    samples = torch.einsum("bkl,sok->sbol", patches, weights.flatten(2)) + biases[:, None, :, None]
    _assert_moments_match(samples.unflatten(-1, (3, 3)), pre)


def test_kl_matches_monte_carlo():
    layer = BayesLinear(5, 4, bayesian_bias=True, prior_std=0.7, dtype=F64)
    _randomise_posterior(layer, seed=8)
    count = 100000
    total, variance = 0.0, 0.0
    for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
        mu, sigma = mu.detach(), F.softplus(rho.detach())
        w = mu + sigma * torch.randn((count, *mu.shape), generator=_generator(9), dtype=F64)
        log_q = torch.distributions.Normal(mu, sigma).log_prob(w).sum(tuple(range(1, w.dim())))
        log_prior = torch.distributions.Normal(0.0, 0.7).log_prob(w).sum(tuple(range(1, w.dim())))
        difference = log_q - log_prior
        total += difference.mean().item()
        variance += difference.var().item() / count
    assert abs(layer.kl().item() - total) < 5 * math.sqrt(variance)
    assert torch.isclose(kl_divergence(torch.nn.Sequential(layer)), layer.kl())


def test_kl_is_zero_at_the_prior_and_differentiable():
    layer = BayesLinear(3, 2, bias=False, prior_std=0.3, init_mu_std=0.0, init_sigma=0.3, dtype=F64)
    assert abs(layer.kl().item()) < 1e-12
    layer.weight_rho.data.fill_(-60.0)  # softplus underflows; the KL must stay finite
    kl = layer.kl()
    assert torch.isfinite(kl)
    kl.backward()
    assert torch.isfinite(layer.weight_rho.grad).all()


# ---------------------------------------------------------------------------------------------------
# Modes and frozen samples
# ---------------------------------------------------------------------------------------------------


def test_frozen_sample_is_reproducible_from_the_seed():
    layer = BayesLinear(6, 3, bayesian_bias=True, generator=_generator(0))
    first = layer.freeze_sample(21).clone()
    first_bias = layer.frozen_bias.clone()
    second = layer.freeze_sample(21)
    assert torch.equal(first, second) and torch.equal(first_bias, layer.frozen_bias)
    assert not torch.equal(first, layer.freeze_sample(22))
    layer.freeze_sample(21)
    layer.mode = "sample"
    x = _binary((4, 6), seed=1, dtype=torch.float32)
    pre = layer(x)
    assert pre.variance is None
    torch.testing.assert_close(pre.mean, x @ first.T + first_bias)
    assert torch.equal(layer.effective_weight(), first)


def test_frozen_samples_follow_the_posterior():
    layer = BayesLinear(4, 2, dtype=F64)
    _randomise_posterior(layer, seed=2)
    draws = torch.stack([layer.freeze_sample(seed).clone() for seed in range(4000)])
    sigma = layer.weight_sigma.detach()
    assert ((draws.mean(0) - layer.weight_mu.detach()).abs() < 5 * sigma / math.sqrt(4000)).all()
    assert ((draws.std(0) / sigma - 1).abs() < 0.1).all()


def test_model_sample_is_reproducible_and_modes_switch():
    def build() -> torch.nn.Sequential:
        return torch.nn.Sequential(
            BayesLinear(5, 4, generator=_generator(0)), BayesLinear(4, 2, generator=_generator(1))
        )

    model_a, model_b = build(), build()
    freeze_posterior_sample(model_a, seed=3)
    freeze_posterior_sample(model_b, seed=3)
    for a, b in zip(model_a, model_b):
        assert torch.equal(a.frozen_weight, b.frozen_weight)
    set_mode(model_a, "sample")
    assert all(layer.mode is Mode.SAMPLE for layer in model_a)
    with pytest.raises(RuntimeError, match="freeze_sample"):
        BayesLinear(2, 2, mode="sample")(torch.ones(1, 2))
    with pytest.raises(ValueError, match="unknown mode"):
        set_mode(model_a, "bogus")


def test_mean_mode_is_deterministic_posterior_mean():
    layer = BayesLinear(5, 3, mode=Mode.MEAN)
    x = _binary((2, 5), seed=3, dtype=torch.float32)
    pre = layer(x)
    assert pre.variance is None
    torch.testing.assert_close(pre.mean, F.linear(x, layer.weight_mu, layer.bias))


# ---------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------


def test_shapes_linear_and_conv():
    linear = BayesLinear(7, 4)
    for shape in ((3, 7), (3, 6, 7)):
        pre = linear(torch.ones(shape))
        assert pre.mean.shape == pre.variance.shape == (*shape[:-1], 4)
    conv = BayesConv2d(2, 5, 3, stride=2, padding=1)
    pre = conv(torch.ones(3, 2, 8, 8))
    assert pre.mean.shape == pre.variance.shape == (3, 5, 4, 4)
    pre = conv(torch.ones(3, 6, 2, 8, 8))
    assert pre.mean.shape == pre.variance.shape == (3, 6, 5, 4, 4)
    with pytest.raises(ValueError, match="expects"):
        conv(torch.ones(2, 8, 8))
    lif = CubaLif((5, 4, 4), current_decay=0.5, voltage_decay=0.9)
    spikes = lif(pre, generator=_generator(0))
    assert spikes.shape == (3, 6, 5, 4, 4)
    assert lif.bias.shape == (5, 1, 1)
    readout = CubaIntegrator(4, current_decay=0.5, voltage_decay=0.9)
    assert readout(linear(torch.ones(3, 6, 7))).shape == (3, 6, 4)
    with pytest.raises(ValueError, match="expects input"):
        readout(torch.ones(3, 4))


# ---------------------------------------------------------------------------------------------------
# Noisy binary units
# ---------------------------------------------------------------------------------------------------


def test_noisy_binary_units_fire_with_probability_of_the_margin():
    count = 40000
    mean = torch.tensor([-0.3, 0.0, 0.2, 0.5], dtype=F64)
    variance = torch.tensor([0.01, 0.2, 0.0, 0.05], dtype=F64)
    units = NoisyBinaryUnits(threshold=0.1, base_noise_std=0.2)
    pre = Preactivation(mean.repeat(count, 1), variance.repeat(count, 1))
    b = units(pre, generator=_generator(5))
    z = (mean - 0.1) / torch.sqrt(variance + 0.04)
    torch.testing.assert_close(standardised_margin(Preactivation(mean, variance), 0.1, 0.2), z)
    p1, _ = unit_probabilities(z)
    assert ((b.mean(0) - p1).abs() < 5 * torch.sqrt(p1 * (1 - p1) / count)).all()
    units.mode = "mean"
    assert torch.equal(units(Preactivation(mean, variance)), (mean > 0.1).to(F64))


def test_binary_network_backward_is_finite_with_silent_inputs():
    layer = BayesLinear(6, 3, dtype=F64)
    units = NoisyBinaryUnits(estimator=EstimatorConfig("iwst", lam=1.0))
    x = torch.zeros(4, 6, dtype=F64)  # silent inputs: V = 0, z stays finite thanks to s0
    x[0, 0] = 1.0
    b = units(layer(x), generator=_generator(1))
    (b * torch.arange(3, dtype=F64)).sum().backward()
    assert torch.isfinite(layer.weight_mu.grad).all() and torch.isfinite(layer.weight_rho.grad).all()


# ---------------------------------------------------------------------------------------------------
# CUBA-LIF
# ---------------------------------------------------------------------------------------------------


def _reference_lif(inputs, alpha, beta, threshold, bias, recurrent_weight=None):
    """Plain loop over time and neurons, written from the Loihi equations."""
    batch, steps, count = inputs.shape
    spikes = torch.zeros_like(inputs)
    voltages = torch.zeros_like(inputs)
    for n in range(batch):
        current = [0.0] * count
        voltage = [0.0] * count
        previous = [0.0] * count
        for t in range(steps):
            new_spikes = [0.0] * count
            for i in range(count):
                synaptic = inputs[n, t, i].item()
                if recurrent_weight is not None:
                    synaptic += sum(recurrent_weight[i, j].item() * previous[j] for j in range(count))
                current[i] = alpha * current[i] + synaptic
                voltage[i] = beta * voltage[i] + current[i] + bias[i].item()
                if voltage[i] > threshold:
                    new_spikes[i] = 1.0
                    voltage[i] = 0.0
                spikes[n, t, i] = new_spikes[i]
                voltages[n, t, i] = voltage[i]
            previous = new_spikes
    return spikes, voltages


@pytest.mark.parametrize("recurrent", [False, True])
def test_deterministic_lif_matches_plain_loop(recurrent):
    alpha, beta = loihi_decays(du=410, dv=205)
    inputs = torch.rand(2, 25, 4, generator=_generator(0), dtype=F64) * 0.6
    lif = CubaLif(4, current_decay=alpha, voltage_decay=beta, threshold=1.0, recurrent=recurrent,
                  mode="mean", dtype=F64)
    with torch.no_grad():
        lif.bias.copy_(torch.tensor([0.0, 0.05, -0.02, 0.1], dtype=F64))
        if recurrent:
            lif.recurrent.weight_mu.copy_(torch.randn(4, 4, generator=_generator(1), dtype=F64) * 0.3)
    output = lif.run(inputs)
    reference_spikes, reference_voltages = _reference_lif(
        inputs, alpha, beta, 1.0, lif.bias.detach(),
        lif.recurrent.weight_mu.detach() if recurrent else None,
    )
    assert output.spikes.sum() > 0 and (output.spikes.sum(1) < 25).all()
    torch.testing.assert_close(output.spikes, reference_spikes, rtol=0, atol=0)
    torch.testing.assert_close(output.voltage, reference_voltages, rtol=1e-12, atol=1e-12)


def test_lif_step_resets_voltage_only_and_spikes_strictly_above_threshold():
    params = CubaParameters(current_decay=0.5, voltage_decay=1.0, threshold=1.0)
    state = CubaState(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]))
    spikes, state = cuba_lif_step(torch.tensor([1.0, 1.5]), state, params)
    assert spikes.tolist() == [0.0, 1.0]  # V = 1.0 equals theta: no spike
    assert state.voltage.tolist() == [1.0, 0.0]
    assert state.current.tolist() == [1.0, 1.5]  # the current is not reset
    assert loihi_decays(0, 0) == (4095 / 4096, 1.0)


def test_noisy_lif_first_step_fires_with_probability_of_the_margin():
    count = 40000
    params = CubaParameters(current_decay=0.9, voltage_decay=0.8, threshold=1.0, base_noise_std=0.3)
    mean = torch.tensor([0.6, 1.0, 1.3], dtype=F64).repeat(count, 1)
    variance = torch.tensor([0.1, 0.0, 0.5], dtype=F64).repeat(count, 1)
    state = CubaState(torch.zeros_like(mean), torch.zeros_like(mean))
    spikes, new_state = cuba_lif_step_noisy(mean, variance, state, params, 0.1, generator=_generator(3))
    z = (mean[0] + 0.1 - 1.0) / torch.sqrt(variance[0] + 0.09)
    p1, _ = unit_probabilities(z)
    assert ((spikes.mean(0) - p1).abs() < 5 * torch.sqrt(p1 * (1 - p1) / count)).all()
    # The sampled membrane is consistent with the spikes and carries only the silent units forward.
    assert (new_state.voltage[spikes > 0] == 0).all()
    assert (new_state.voltage[spikes == 0] <= 1.0).all()
    # The noise enters through the current: its variance is the input variance plus s0^2.
    torch.testing.assert_close(new_state.current.var(0), variance[0] + 0.09, atol=0.02, rtol=0.05)


def test_noisy_lif_tends_to_deterministic_lif_as_noise_vanishes():
    linear = BayesLinear(6, 4, init_sigma=1e-9, dtype=F64, generator=_generator(0))
    x = _binary((3, 30, 6), seed=1)
    lif = CubaLif(4, current_decay=0.7, voltage_decay=0.9, threshold=0.5, base_noise_std=1e-9, dtype=F64)
    noisy = lif(linear(x), generator=_generator(2))
    set_mode(lif, "mean")
    set_mode(linear, "mean")
    deterministic = lif(linear(x))
    assert deterministic.sum() > 0
    assert torch.equal(noisy, deterministic)


def test_noisy_lif_backward_reaches_every_parameter():
    linear = BayesLinear(6, 4, dtype=F64, generator=_generator(0), init_mu_std=0.8)
    lif = CubaLif(4, current_decay=0.7, voltage_decay=0.9, threshold=0.5, recurrent=True, dtype=F64)
    readout = CubaIntegrator(4, current_decay=0.5, voltage_decay=0.9, dtype=F64)
    x = _binary((3, 12, 6), seed=1)
    spikes = lif(linear(x), generator=_generator(2))
    trace = readout(BayesLinear(4, 4, dtype=F64, generator=_generator(3))(spikes), generator=_generator(4))
    loss = trace.mean(1).pow(2).sum() + 1e-3 * kl_divergence(torch.nn.ModuleList([linear, lif]))
    loss.backward()
    for module in (linear, lif):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name


def _stepwise_noisy_lif(lif, mean, variance, generator, initial_state):
    """CubaLif's noisy mode written as a plain loop of cuba_lif_step_noisy, with autograd throughout."""
    unit_noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    state, spikes, voltages = initial_state, [], []
    step_spikes = torch.zeros_like(mean[:, 0])
    for t in range(mean.shape[1]):
        step_mean = mean[:, t]
        step_variance = None if variance is None else variance[:, t]
        if lif.recurrent is not None:
            feedback = lif.recurrent(step_spikes)
            step_mean = step_mean + feedback.mean
            step_variance = feedback.variance if step_variance is None else step_variance + feedback.variance
        step_spikes, state = cuba_lif_step_noisy(
            step_mean, step_variance, state, lif.params, lif.bias, estimator=lif.estimator,
            generator=generator, unit_noise=unit_noise[:, t],
        )
        spikes.append(step_spikes)
        voltages.append(state.voltage)
    return torch.stack(spikes, 1), torch.stack(voltages, 1), state


@pytest.mark.parametrize("estimator, shape, with_variance, recurrent", [
    (EstimatorConfig("agr", tau=1.0), (5,), True, False),
    (EstimatorConfig("agr", tau=0.1), (2, 3, 3), True, False),
    (EstimatorConfig("st"), (5,), False, False),
    (EstimatorConfig("iwst", lam=0.5), (5,), True, False),
    (EstimatorConfig("gr_mc", tau=1.0, k=3), (4,), True, False),
    (EstimatorConfig("agr", tau=1.0), (6,), True, True),
    (EstimatorConfig("iwst", p=0.5), (6,), False, True),
])
@pytest.mark.parametrize("chunk", ["step", "chunk", "sequence"])
def test_fused_noisy_lif_equals_the_step_by_step_loop(estimator, shape, with_variance, recurrent, chunk,
                                                      monkeypatch):
    # CubaLif runs noisy layers through one autograd function with a hand-written backward through time;
    # it must give the loop's spikes bit for bit and the loop's gradients, whether it works through time
    # a step at a time, in chunks of steps (CPU: 7 steps here, the last chunk shorter) or over the whole
    # sequence at once (accelerators), with recurrent weights too.
    per_step = chunk == "step"
    elements = 3 * math.prod(shape) * (7 if chunk == "chunk" else 1)
    monkeypatch.setattr(fused_lif, "_CACHE_SIZED_DEVICES", () if chunk == "sequence" else ("cpu",))
    monkeypatch.setattr(fused_lif, "_CHUNK_ELEMENTS", elements)
    batch, steps = 3, 40
    lif = CubaLif(shape, current_decay=0.8, voltage_decay=0.9, threshold=0.6, base_noise_std=0.2,
                  estimator=estimator, recurrent=recurrent, dtype=F64)
    with torch.no_grad():
        lif.bias.copy_(torch.randn(lif.bias.shape, generator=_generator(5), dtype=F64) * 0.1)
        if recurrent:
            lif.recurrent.weight_mu.copy_(torch.randn(6, 6, generator=_generator(10), dtype=F64) * 0.4)
            lif.recurrent.weight_rho.fill_(-1.5)
    mean = (torch.randn((batch, steps, *shape), generator=_generator(1), dtype=F64) * 0.4 + 0.2)
    variance = torch.rand((batch, steps, *shape), generator=_generator(2), dtype=F64) * 0.3
    variance = torch.where(variance < 0.05, 0.0, variance)   # silent binary inputs give exact zeros
    initial = [torch.randn((batch, *shape), generator=_generator(s), dtype=F64) * 0.3 for s in (3, 4)]
    weights = [torch.randn((batch, steps, *shape), generator=_generator(s), dtype=F64) for s in (6, 7)]
    final_weight = torch.randn((batch, *shape), generator=_generator(8), dtype=F64)

    def run(use_loop: bool):
        leaves = [t.clone().requires_grad_(True) for t in (mean, variance, *initial)]
        lif.bias.grad = None
        step_variance = leaves[1] if with_variance else None
        state = CubaState(leaves[2], leaves[3])
        if use_loop:
            spikes, voltages, final = _stepwise_noisy_lif(lif, leaves[0], step_variance, _generator(9), state)
        else:
            output = lif.run(Preactivation(leaves[0], step_variance), generator=_generator(9),
                             initial_state=state)
            spikes, voltages, final = output.spikes, output.voltage, output.final_state
        loss = (spikes * weights[0]).sum() + (voltages * weights[1]).sum() + (final.current * final_weight).sum()
        for parameter in lif.parameters():
            parameter.grad = None
        loss.backward()
        grads = [leaf.grad for leaf in leaves] + [lif.bias.grad.clone()]
        if recurrent:
            grads += [lif.recurrent.weight_mu.grad.clone(), lif.recurrent.weight_rho.grad.clone()]
        return spikes.detach(), voltages.detach(), final.current.detach(), grads

    fused, loop = run(False), run(True)
    assert 0 < fused[0].mean() < 1
    for a, b in zip(fused[:3], loop[:3]):
        assert torch.equal(a, b)
    # gr_mc's conditional draws come in another order when drawn for the whole sequence at once.
    same_draws = per_step or estimator.method != "gr_mc"
    names = ("mean", "variance", "current0", "voltage0", "bias", "recurrent mu", "recurrent rho")
    assert len(fused[3]) == len(loop[3]) == (7 if recurrent else 5)
    for name, a, b in zip(names, fused[3], loop[3]):
        if name == "variance" and not with_variance:
            assert a is None and b is None
            continue
        assert a is not None and a.abs().sum() > 0 and torch.isfinite(a).all(), name
        if same_draws:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int64 if tensor.dtype == F64 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("mode", ["mean", "sample"])
@pytest.mark.parametrize("chunk", ["step", "chunk", "sequence"])
def test_deterministic_lif_without_grad_equals_the_step_loop_bit_for_bit(dtype, mode, chunk, monkeypatch):
    # Evaluation (no gradient) runs the deterministic modes chunked over time without autograd; its spikes,
    # voltages and final state must be the step loop's bit for bit (deployed-network comparisons rely on
    # it), on dense and conv shapes, with and without the surrogate, a step, 5 steps or all at a time.
    calls = []
    monkeypatch.setattr(cuba_modules, "deterministic_lif_no_grad",
                        lambda *a, **k: calls.append(1) or fused_lif.deterministic_lif_no_grad(*a, **k))
    monkeypatch.setattr(fused_lif, "_CACHE_SIZED_DEVICES", () if chunk == "sequence" else ("cpu",))
    shapes = torch.Generator().manual_seed(11)
    for case, shape in enumerate([(int(torch.randint(1, 40, (1,), generator=shapes)),),
                                  tuple(int(v) for v in torch.randint(1, 6, (3,), generator=shapes))]):
        batch = int(torch.randint(1, 5, (1,), generator=shapes))
        steps = int(torch.randint(20, 45, (1,), generator=shapes))
        elements = batch * math.prod(shape) * (1 if chunk == "step" else 5)
        monkeypatch.setattr(fused_lif, "_CHUNK_ELEMENTS", elements)
        lif = CubaLif(shape, current_decay=0.8, voltage_decay=0.93, threshold=0.7, mode=mode, dtype=dtype,
                      surrogate_slope=None if case == 0 else 5.0)
        with torch.no_grad():
            lif.bias.copy_(torch.randn(lif.bias.shape, generator=_generator(case), dtype=dtype) * 0.1)
        mean = torch.randn((batch, steps, *shape), generator=_generator(20 + case), dtype=dtype) * 0.4 + 0.1
        state = CubaState(*(torch.randn((batch, *shape), generator=_generator(seed), dtype=dtype)
                            for seed in (3, 4)))
        loop = lif.run(mean, initial_state=state)          # the bias is a parameter: the step loop runs
        assert loop.voltage.requires_grad and not calls
        with torch.no_grad():
            fast = lif.run(mean, initial_state=state)
            assert len(calls) == 1 and lif(mean, initial_state=state).dtype == dtype
        calls.clear()
        assert 0 < loop.spikes.mean() < 1
        for a, b in [(fast.spikes, loop.spikes), (fast.voltage, loop.voltage),
                     (fast.final_state.current, loop.final_state.current),
                     (fast.final_state.voltage, loop.final_state.voltage)]:
            assert a.dtype == b.dtype == dtype and a.shape == b.shape
            assert torch.equal(_bits(a), _bits(b.detach()))


def test_noisy_lif_is_reproducible_and_rejects_logistic_noise():
    linear = BayesLinear(5, 3, generator=_generator(0))
    lif = CubaLif(3, current_decay=0.6, voltage_decay=0.8, threshold=0.3)
    x = _binary((2, 10, 5), seed=1, dtype=torch.float32)
    assert torch.equal(lif(linear(x), generator=_generator(7)), lif(linear(x), generator=_generator(7)))
    with pytest.raises(ValueError, match="Gaussian"):
        CubaLif(3, current_decay=0.6, voltage_decay=0.8, estimator=EstimatorConfig("st", noise="logistic"))
    with pytest.raises(ValueError, match="current_decay"):
        CubaLif(3, current_decay=1.5, voltage_decay=0.8)


def test_integrator_matches_plain_loop_and_is_noisy_in_noisy_mode():
    inputs = torch.randn(2, 15, 3, generator=_generator(0), dtype=F64)
    readout = CubaIntegrator(3, current_decay=0.6, voltage_decay=0.85, mode="mean", dtype=F64)
    with torch.no_grad():
        readout.bias.copy_(torch.tensor([0.1, 0.0, -0.2], dtype=F64))
    trace = readout(inputs)
    current = torch.zeros(2, 3, dtype=F64)
    voltage = torch.zeros(2, 3, dtype=F64)
    for t in range(15):
        current = 0.6 * current + inputs[:, t]
        voltage = 0.85 * voltage + current + readout.bias.detach()
        torch.testing.assert_close(trace[:, t], voltage, rtol=0, atol=0)
    readout.mode = "noisy"
    pre = Preactivation(inputs, torch.full_like(inputs, 0.1))
    assert not torch.equal(readout(pre, generator=_generator(1)), trace)


def test_outcome_with_estimator_derivative_passes_g_b_and_refuses_soft_estimators():
    # The step-by-step noisy LIF draws its spikes as Vhat > theta and attaches the estimator's g_b to them.
    from sbnn.estimators import with_outcome_derivative

    estimator = EstimatorConfig("agr", tau=0.5)
    z = torch.linspace(-3.0, 3.0, 13, dtype=F64).requires_grad_(True)
    outcomes = (torch.arange(13) % 3 == 0).to(F64)
    spikes = with_outcome_derivative(z, outcomes, estimator)
    assert torch.equal(spikes, outcomes)
    weights = torch.randn(13, generator=_generator(1), dtype=F64)
    (spikes * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights * estimator.outcome_derivative(z.detach(), outcomes))
    assert with_outcome_derivative(z.detach(), outcomes, estimator) is outcomes
    with pytest.raises(ValueError, match="soft forward"):
        with_outcome_derivative(z, outcomes, EstimatorConfig("relaxed", tau=0.5))


@pytest.mark.parametrize("tail", [False, True])
def test_kl_closed_form_gradient_equals_autograd_of_the_formula(tail):
    from sbnn.layers.bayesian import _log_softplus, gaussian_kl

    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(30, 20, generator=generator, dtype=torch.float64, requires_grad=True)
    rho = torch.randn(30, 20, generator=generator, dtype=torch.float64) * 4
    if tail:   # softplus underflows below about -745 in float64: the guarded form takes over below -20
        rho[0, :4] = torch.tensor([-25.0, -100.0, -800.0, 40.0], dtype=torch.float64)
    rho.requires_grad_(True)
    sigma = F.softplus(rho)
    formula = (math.log(0.2) - _log_softplus(rho) + (sigma * sigma + mu * mu) / (2 * 0.2**2) - 0.5).sum()
    expected = torch.autograd.grad(formula, (mu, rho))
    value = gaussian_kl(mu, rho, 0.2)
    got = torch.autograd.grad(value, (mu, rho))
    torch.testing.assert_close(value, formula.detach(), rtol=1e-12, atol=1e-9)
    for a, b in zip(got, expected):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    small = (mu[:3, :3].detach().clone().requires_grad_(), rho[:3, :3].detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda m, r: gaussian_kl(m, r, 0.3), small)
