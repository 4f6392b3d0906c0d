"""Tests of sbnn.aux_loss: penalty values by hand, gradient flow, recording, registry errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sbnn.aux_loss import (
    DEFAULT_PENALTY,
    PENALTIES,
    default_penalty,
    infer_base_noise_std,
    make_penalty,
    margin_saturation,
    record_activity,
    weight_noise_ratio,
)
from sbnn.layers import BayesConv2d, BayesLinear, NoisyBinaryUnits

torch.set_num_threads(1)
F64 = torch.float64
BASE_NOISE = 0.1


class TwoLayerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.first = BayesLinear(2, 2, bias=False, generator=generator, dtype=F64)
        self.first_units = NoisyBinaryUnits(threshold=0.0, base_noise_std=BASE_NOISE)
        self.second = BayesLinear(2, 1, bias=False, generator=generator, dtype=F64)
        self.second_units = NoisyBinaryUnits(threshold=0.5, base_noise_std=BASE_NOISE)
        with torch.no_grad():
            self.first.weight_mu.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
            self.first.weight_rho.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.5]]))
            self.second.weight_mu.copy_(torch.tensor([[3.0, -1.0]]))
            self.second.weight_rho.copy_(torch.tensor([[0.2, -0.3]]))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        hidden = self.first_units(self.first(x), generator=generator)
        return self.second_units(self.second(hidden), generator=generator)


def _number(tensor: torch.Tensor) -> float:
    return tensor.detach().item()


def _softplus(value: float) -> float:
    return math.log1p(math.exp(value))


def test_weight_noise_ratio_against_hand_computation_with_a_record():
    model = TwoLayerNet()
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    with record_activity(model) as record:
        model(x, generator=torch.Generator().manual_seed(0))

    sigma_1 = [[_softplus(0.0), _softplus(1.0)], [_softplus(-1.0), _softplus(0.5)]]
    mu_1 = [[1.0, -2.0], [0.5, 0.0]]
    # Unit j of the first layer: V_j = sum_i x_i^2 sigma_ji^2 (binary inputs: x_i), averaged over the 2 examples.
    mean_input = [1.0, 0.5]
    terms = []
    for j in range(2):
        variance = sum(mean_input[i] * sigma_1[j][i] ** 2 for i in range(2))
        terms += [mu_1[j][i] ** 2 / (variance + BASE_NOISE**2) for i in range(2)]
    # The second layer sees the sampled hidden states; its recorded variance is used as it is.
    second_variance = float(record.variances[id(model.second)][0].detach().mean())
    terms += [mu ** 2 / (second_variance + BASE_NOISE**2) for mu in (3.0, -1.0)]
    expected = sum(terms) / len(terms)

    value = weight_noise_ratio([model.first, model.second], record, base_noise_std=BASE_NOISE)
    assert _number(value) == pytest.approx(expected, rel=1e-12)
    penalty = make_penalty("weight_noise_ratio", 0.5)
    assert _number(penalty(model, record)) == pytest.approx(0.5 * expected, rel=1e-12)


def test_weight_noise_ratio_without_a_record_assumes_half_active_inputs():
    layer = BayesLinear(2, 1, bias=False, dtype=F64)
    with torch.no_grad():
        layer.weight_mu.copy_(torch.tensor([[2.0, -1.0]]))
        layer.weight_rho.copy_(torch.tensor([[0.0, 0.0]]))
    variance = 0.5 * 2 * _softplus(0.0) ** 2 + 0.2**2
    expected = (4.0 + 1.0) / variance / 2
    assert _number(weight_noise_ratio([layer], base_noise_std=0.2)) == pytest.approx(expected, rel=1e-12)


def test_weight_noise_ratio_conv_uses_channel_variance():
    conv = BayesConv2d(1, 2, 2, bias=False, dtype=F64)
    x = torch.ones(3, 1, 3, 3, dtype=F64)
    with record_activity(conv) as record:
        conv(x)
    sigma_squared = conv.weight_sigma.detach() ** 2
    variance = sigma_squared.flatten(1).sum(1) + BASE_NOISE**2  # every input is 1
    expected = (conv.weight_mu.detach() ** 2 / variance.view(2, 1, 1, 1)).mean()
    value = weight_noise_ratio([conv], record, base_noise_std=BASE_NOISE)
    assert _number(value) == pytest.approx(float(expected), rel=1e-12)


def test_margin_saturation_against_hand_computation():
    model = TwoLayerNet()
    x = torch.tensor([[1.0, 1.0]], dtype=F64)
    with record_activity(model) as record:
        output = model(x, generator=torch.Generator().manual_seed(1))
    # First layer: M = x mu^T, V = x sigma^2, z = M / sqrt(V + s0^2).
    z_first = []
    for mu_row, rho_row in (([1.0, -2.0], [0.0, 1.0]), ([0.5, 0.0], [-1.0, 0.5])):
        mean = sum(mu_row)
        variance = sum(_softplus(r) ** 2 for r in rho_row)
        z_first.append(mean / math.sqrt(variance + BASE_NOISE**2))
    # The second layer's margin depends on the sampled hidden state (checked in the next test).
    assert len(record.margins) == 2
    torch.testing.assert_close(record.margins[0][0], torch.tensor(z_first, dtype=F64))
    z_second = _number(record.margins[1][0, 0])
    expected = (z_first[0] ** 2 + z_first[1] ** 2 + z_second**2) / 3
    assert _number(margin_saturation(record)) == pytest.approx(expected, rel=1e-12)
    assert _number(make_penalty("margin_saturation", 2.0)(model, record)) == pytest.approx(2 * expected, rel=1e-12)
    assert output.shape == (1, 1)


def test_second_layer_margin_matches_recomputation():
    model = TwoLayerNet()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    generator = torch.Generator().manual_seed(5)
    with record_activity(model) as record:
        model(x, generator=generator)
    # Re-run the first layer with the same seed to get the sampled hidden state.
    hidden = model.first_units(model.first(x), generator=torch.Generator().manual_seed(5))
    pre = model.second(hidden)
    expected = (pre.mean - 0.5) / torch.sqrt(pre.variance + BASE_NOISE**2)
    torch.testing.assert_close(record.margins[1], expected)


@pytest.mark.parametrize("name", ["weight_noise_ratio", "margin_saturation"])
def test_penalty_gradients_flow_to_mean_and_scale(name):
    model = TwoLayerNet()
    x = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)
    with record_activity(model) as record:
        model(x, generator=torch.Generator().manual_seed(0))
    make_penalty(name, 1.0)(model, record).backward()
    for parameter in (model.first.weight_mu, model.first.weight_rho):
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        assert bool(torch.isfinite(parameter.grad).all())


def test_none_penalty_is_zero_and_default_is_registered():
    model = TwoLayerNet()
    value = make_penalty("none", 3.0)(model)
    assert _number(value) == 0.0 and value.dtype == F64
    assert DEFAULT_PENALTY in PENALTIES
    assert default_penalty().name == DEFAULT_PENALTY
    # A zero weight skips the computation entirely (no record needed).
    assert _number(make_penalty("margin_saturation", 0.0)(model)) == 0.0


def test_registry_and_argument_errors():
    with pytest.raises(ValueError, match="unknown auxiliary penalty 'curvature'"):
        make_penalty("curvature", 1.0)
    for weight in (-1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="weight"):
            make_penalty("weight_noise_ratio", weight)
    with pytest.raises(ValueError, match="record"):
        make_penalty("margin_saturation", 1.0)(TwoLayerNet())
    model = TwoLayerNet()
    with record_activity(model) as empty:
        pass
    with pytest.raises(ValueError, match="recorded margins"):
        margin_saturation(empty)
    with pytest.raises(ValueError, match="base noise"):
        infer_base_noise_std(nn.Sequential(BayesLinear(2, 2)))
    mixed = nn.Sequential(NoisyBinaryUnits(base_noise_std=0.1), NoisyBinaryUnits(base_noise_std=0.2))
    with pytest.raises(ValueError, match="several"):
        infer_base_noise_std(mixed)
    assert infer_base_noise_std(TwoLayerNet()) == BASE_NOISE


def test_hooks_are_removed_after_the_block():
    model = TwoLayerNet()
    x = torch.ones(1, 2, dtype=F64)
    with record_activity(model) as record:
        model(x)
    model(x)
    assert len(record.margins) == 2
