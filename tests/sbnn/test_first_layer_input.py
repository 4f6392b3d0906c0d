"""A layer built with ``binary_input=False`` fed 0/1 data: the run-time check (one stacked product) and the
sparse product that gathers weight rows, against the general formula ``M = x mu``, ``V = x^2 sigma^2``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbnn.layers import BayesConv2d, BayesLinear, freeze_posterior_sample, set_mode
from sbnn.layers import bayesian
from sbnn.layers.bayesian import spike_positions
from sbnn.models import ModelConfig, build_model

torch.set_num_threads(1)
F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spikes(shape: tuple[int, ...], rate: float, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.rand(shape, generator=_generator(seed)) < rate).to(dtype)


def _randomise_posterior(layer: torch.nn.Module, seed: int) -> None:
    generator = _generator(seed)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            values = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.copy_(values * 0.5 - (2.0 if "rho" in name else 0.0))


@pytest.fixture(params=["sparse", "dense"])
def path(request, monkeypatch) -> str:
    """Force the sparse product (any density) or the dense one for 0/1 data."""
    limit = 1.0 if request.param == "sparse" else -1.0
    monkeypatch.setattr(bayesian, "_sparse_density_limit", lambda columns, backward, moments: limit)
    return request.param


def _outputs_and_grads(layer: torch.nn.Module, x: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """The layer's outputs on ``x`` and the gradients of a random linear loss of them wrt its parameters."""
    layer.zero_grad(set_to_none=True)
    pre = layer(x, generator=_generator(seed))
    outputs = [t for t in pre if t is not None]
    generator = _generator(seed + 1)
    loss = sum((t * torch.randn(t.shape, generator=generator, dtype=t.dtype)).sum() for t in outputs)
    loss.backward()
    grads = [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    return [t.detach() for t in outputs] + grads


# ---------------------------------------------------------------------------------------------------
# Positions of the ones
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 8), (3, 5, 7), (1, 1, 1)])
def test_spike_positions_are_the_ones_in_row_major_order(dtype, shape):
    x = _spikes(shape, 0.3, seed=1, dtype=dtype)
    x.view(-1)[0] = -0.0    # zero bits but for the sign: not a one
    ones = spike_positions(x)
    rows, columns = x.reshape(-1, shape[-1]).nonzero().unbind(1)
    assert torch.equal(ones.transposed_index, torch.stack([columns, rows]))
    counts = x.reshape(-1, shape[-1]).sum(1).long()
    assert torch.equal(ones.offsets, torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]))
    assert ones.lead_shape == shape[:-1]


def test_spike_positions_of_a_strided_view():
    x = _spikes((8, 5), 0.3, seed=2).t()
    rows, columns = x.nonzero().unbind(1)
    assert torch.equal(spike_positions(x).transposed_index, torch.stack([columns, rows]))


@pytest.mark.parametrize("value", [0.5, -1.0, 2.0, float("nan"), float("inf"), 1e-45])
def test_spike_positions_refuse_values_other_than_zero_and_one(value):
    x = _spikes((4, 6), 0.3, seed=3)
    x[2, 3] = value
    assert spike_positions(x) is None


# ---------------------------------------------------------------------------------------------------
# The layer: same moments and gradients as the general formula
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("bayesian_bias", [False, True])
def test_binary_data_gives_the_general_formula(path, dtype, bayesian_bias):
    layer = BayesLinear(12, 5, bayesian_bias=bayesian_bias, binary_input=False, dtype=dtype)
    _randomise_posterior(layer, seed=4)
    x = _spikes((3, 4, 12), 0.2, seed=5, dtype=dtype)
    kind = layer._inspect_input(x, moments=True)
    assert kind.binary and (kind.ones is not None) == (path == "sparse")
    mean, variance, *grads = _outputs_and_grads(layer, x, seed=6)

    layer.zero_grad(set_to_none=True)
    bias_variance = F.softplus(layer.bias_rho) ** 2 if bayesian_bias else None
    expected_mean = F.linear(x, layer.weight_mu, layer.bias_mean)
    expected_variance = F.linear(x * x, layer.weight_sigma**2, bias_variance)
    generator = _generator(7)
    loss = sum((t * torch.randn(t.shape, generator=generator, dtype=dtype)).sum()
               for t in (expected_mean, expected_variance))
    loss.backward()
    torch.testing.assert_close(mean, expected_mean.detach())
    torch.testing.assert_close(variance, expected_variance.detach())
    for grad, parameter in zip(grads, layer.parameters()):
        torch.testing.assert_close(grad, parameter.grad)


@pytest.mark.parametrize("mode, weight_noise", [("noisy", "per_step"), ("noisy", "per_sequence"),
                                                ("mean", "per_step"), ("sample", "per_step")])
def test_every_mode_matches_the_path_an_input_with_a_gradient_takes(path, mode, weight_noise):
    # An input that needs a gradient is never inspected: it takes the general formula (x^2 sigma^2).
    layer = BayesLinear(16, 6, binary_input=False, weight_noise=weight_noise, dtype=F64)
    _randomise_posterior(layer, seed=8)
    freeze_posterior_sample(layer, seed=9)
    set_mode(layer, mode)
    x = _spikes((2, 5, 16), 0.25, seed=10, dtype=F64)
    assert layer._inspect_input(x, moments=True).binary
    assert not layer._inspect_input(x.clone().requires_grad_(), moments=True).binary
    inspected = _outputs_and_grads(layer, x, seed=11)
    general = _outputs_and_grads(layer, x.clone().requires_grad_(), seed=11)
    assert len(inspected) == len(general)
    for a, b in zip(inspected, general):
        torch.testing.assert_close(a, b)


def test_input_gradient_is_that_of_the_general_formula():
    layer = BayesLinear(10, 4, binary_input=False, dtype=F64)
    _randomise_posterior(layer, seed=12)
    x = _spikes((3, 10), 0.5, seed=13, dtype=F64).requires_grad_()
    pre = layer(x)
    (pre.mean.sum() + pre.variance.sum()).backward()
    # d/dx of x mu + x^2 sigma^2: mu + 2 x sigma^2 (x sigma^2 would give mu + sigma^2).
    expected = layer.weight_mu.sum(0) + 2 * x.detach() * (layer.weight_sigma**2).sum(0)
    torch.testing.assert_close(x.grad, expected.detach())


def test_real_valued_data_keeps_the_general_formula(path):
    layer = BayesLinear(8, 3, binary_input=False, dtype=F64)
    _randomise_posterior(layer, seed=14)
    x = torch.rand(4, 8, generator=_generator(15), dtype=F64)
    assert layer._inspect_input(x, moments=True) == (False, None)
    pre = layer(x)
    torch.testing.assert_close(pre.variance, F.linear(x * x, layer.weight_sigma**2))


def test_a_value_the_sample_misses_keeps_the_general_formula(path):
    # 8192 values are sampled every second one: an odd position escapes the sample, not the full check.
    layer = BayesLinear(64, 3, binary_input=False, dtype=F64)
    _randomise_posterior(layer, seed=16)
    x = _spikes((128, 64), 0.1, seed=17, dtype=F64)
    x[5, 7] = 0.5
    assert layer._inspect_input(x, moments=True) == (False, None)
    torch.testing.assert_close(layer(x).variance, F.linear(x * x, layer.weight_sigma**2))


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_on_binary_data_gives_the_general_formula(groups):
    layer = BayesConv2d(4, 6, 3, padding=1, groups=groups, binary_input=False, dtype=F64)
    _randomise_posterior(layer, seed=18)
    x = _spikes((2, 3, 4, 5, 5), 0.3, seed=19, dtype=F64)
    assert layer._inspect_input(x, moments=True) == (True, None)
    inspected = _outputs_and_grads(layer, x, seed=20)
    general = _outputs_and_grads(layer, x.clone().requires_grad_(), seed=20)
    for a, b in zip(inspected, general):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------------
# Where it is used: the first layer of a spiking model
# ---------------------------------------------------------------------------------------------------


def test_sparse_spike_data_takes_the_sparse_product_with_the_measured_limits():
    # The SHD first layer (benchmarks/sparse_product_crossover.py): training gathers up to about 20 %
    # density, so at 5 and 15 % but not at 30 %; an evaluation of its mean (no weight gradient) up to about
    # 11 %, so at 5 % but not at 15 %.
    layer = BayesLinear(700, 256, binary_input=False)
    sparse, middle, dense = (_spikes((2, 20, 700), rate, seed=21) for rate in (0.05, 0.15, 0.3))
    assert layer._inspect_input(sparse, moments=True).ones is not None
    assert layer._inspect_input(middle, moments=True).ones is not None
    assert layer._inspect_input(dense, moments=True) == (True, None)
    set_mode(layer, "mean")
    assert layer._inspect_input(sparse, moments=False).ones is not None
    with torch.no_grad():   # (and a dense 0/1 input is not checked in full where only the mean is formed)
        assert layer._inspect_input(sparse, moments=False).ones is not None
        assert layer._inspect_input(middle, moments=False) == (False, None)


def test_snn_model_on_spike_data_trains_as_with_the_dense_product(monkeypatch):
    config = ModelConfig(kind="snn", hidden=(160,), init_gain=3.0)
    model = build_model(config, (30,), 4, seed=0).double()
    x = _spikes((6, 12, 30), 0.04, seed=22, dtype=F64)
    labels = torch.arange(6) % 4
    first = model.layers[0].synapse
    assert first.binary_input is False and model.describe()[0].input_binary is False

    def loss_and_grads() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        logits = model(x, generator=_generator(23))
        (F.cross_entropy(logits, labels) + model.kl() / 1000).backward()
        return [logits.detach()] + [p.grad.clone() for p in model.parameters()]

    assert first._inspect_input(x, moments=True).ones is not None
    sparse = loss_and_grads()
    assert first.weight_mu.grad.abs().sum() > 0 and first.weight_rho.grad.abs().sum() > 0
    monkeypatch.setattr(bayesian, "_sparse_density_limit", lambda columns, backward, moments: -1.0)
    assert first._inspect_input(x, moments=True) == (True, None)
    dense = loss_and_grads()
    for a, b in zip(sparse, dense):
        torch.testing.assert_close(a, b)
