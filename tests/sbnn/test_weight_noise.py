"""Weight noise held for a sequence (``weight_noise = "per_sequence"``, docs/method.md#weight-noise): each
example's pre-activation is the product with one posterior draw ``w_b`` for every step, and ``w_b`` follows
the posterior."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbnn.config import ConfigError, load_config
from sbnn.layers import BayesConv2d, BayesLinear, CubaLif, CubaState, Mode, cuba_lif_step_noisy
from sbnn.models import ModelConfig, build_model


def _example_weights(layer, draw, example: int) -> torch.Tensor:
    """The weights example ``example`` of ``draw`` uses: ``mu + (sigma eps) * (r s^T)``."""
    signs = torch.outer(draw.output_signs[example], draw.input_signs[example])
    if layer.weight_mu.dim() == 4:  # conv: input signs per channel; with groups, per channel of the group
        out_channels, group_channels = layer.weight_mu.shape[:2]
        per_group = out_channels // layer.groups
        rows = [signs[o, (o // per_group) * group_channels:(o // per_group + 1) * group_channels]
                for o in range(out_channels)]
        signs = torch.stack(rows)[:, :, None, None]
    return layer.weight_mu + draw.weight_noise * signs


@pytest.mark.parametrize("bayesian_bias", [False, True])
def test_dense_per_sequence_is_one_weight_draw_per_example_for_every_step(bayesian_bias):
    torch.manual_seed(0)
    layer = BayesLinear(6, 4, bias=True, bayesian_bias=bayesian_bias, binary_input=False,
                        weight_noise="per_sequence", init_sigma=0.3)
    x = torch.randn(3, 5, 6)  # (batch, T, in)
    draw = layer.draw_sequence(3, generator=torch.Generator().manual_seed(1))
    pre = layer(x, draw=draw)
    assert pre.variance is None
    for example in range(3):
        bias = layer.bias_mean + (draw.bias_noise[example] if bayesian_bias else 0.0)
        expected = F.linear(x[example], _example_weights(layer, draw, example), bias)
        torch.testing.assert_close(pre.mean[example], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_per_sequence_is_one_weight_draw_per_example(groups):
    torch.manual_seed(0)
    layer = BayesConv2d(4, 6, 3, padding=1, groups=groups, binary_input=False, weight_noise="per_sequence",
                        init_sigma=0.3)
    x = torch.randn(2, 3, 4, 5, 5)  # (batch, T, C, H, W)
    draw = layer.draw_sequence(2, generator=torch.Generator().manual_seed(2))
    pre = layer(x, draw=draw)
    for example in range(2):
        expected = F.conv2d(x[example], _example_weights(layer, draw, example), layer.bias_mean,
                            padding=1, groups=groups)
        torch.testing.assert_close(pre.mean[example], expected, rtol=1e-5, atol=1e-5)


def test_per_sequence_draws_follow_the_posterior():
    # Across draws each example's w_b is N(mu, sigma^2) (within one batch the examples share eps and
    # differ by their signs: flipout's examples are decorrelated, not independent).
    layer = BayesLinear(3, 2, bias=False, binary_input=False, weight_noise="per_sequence", init_sigma=0.5)
    x = torch.tensor([1.0, -2.0, 0.5]).reshape(1, 1, 3)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        pre = torch.cat([layer(x, generator=generator).mean[:, 0] for _ in range(8000)])
    expected_mean = F.linear(x[0, 0], layer.weight_mu)
    expected_variance = F.linear(x[0, 0] ** 2, layer.weight_sigma ** 2)
    torch.testing.assert_close(pre.mean(0), expected_mean, atol=0.05, rtol=0)
    torch.testing.assert_close(pre.var(0), expected_variance, atol=0.0, rtol=0.06)


def test_static_input_keeps_its_draw_over_time_per_sequence_but_not_per_step():
    config = dict(kind="snn", hidden=(8,), static_steps=6)
    per_sequence = build_model(ModelConfig(**config, weight_noise="per_sequence"), (5,), 3, seed=0)
    layer = per_sequence.layers[0]
    x = torch.rand(4, 5)
    pre = layer.preactivation(x, repeat_steps=6, generator=torch.Generator().manual_seed(0))
    assert pre.variance is None
    assert torch.equal(pre.mean, pre.mean[:, :1].expand_as(pre.mean))
    assert not torch.allclose(pre.mean[0, 0], pre.mean[1, 0])  # each example has its own draw
    mean_only = layer.synapse(x.flatten(1), single_step=True)  # one step: the moments, as per step
    assert mean_only.variance is not None


def test_deterministic_modes_ignore_the_weight_noise_setting():
    x = torch.rand(2, 4, 5)
    outputs = []
    for weight_noise in ("per_step", "per_sequence"):
        model = build_model(ModelConfig(kind="snn", hidden=(8,), weight_noise=weight_noise), (5,), 3, seed=0)
        model.set_mode("mean")
        outputs.append(model(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_recurrent_feedback_holds_one_draw_per_example():
    lif = CubaLif(4, current_decay=0.5, voltage_decay=0.8, recurrent=True,
                  recurrent_kwargs={"weight_noise": "per_sequence", "init_sigma": 0.8})
    torch.manual_seed(0)
    mean = torch.rand(3, 7, 4) * 2
    spikes = lif.run(mean, generator=torch.Generator().manual_seed(5)).spikes
    # By hand: the same draws in the same order (unit noise, then the recurrent draw), one w_b per example.
    generator = torch.Generator().manual_seed(5)
    unit_noise = torch.randn(mean.shape, generator=generator)
    draw = lif.recurrent.draw_sequence(3, generator=generator)
    for example in range(3):
        weights = _example_weights(lif.recurrent, draw, example)
        state = CubaState(torch.zeros(1, 4), torch.zeros(1, 4))
        previous = torch.zeros(1, 4)
        for step in range(7):
            step_mean = mean[example:example + 1, step] + F.linear(previous, weights)
            previous, state = cuba_lif_step_noisy(step_mean, None, state, lif.params, lif.bias,
                                                  estimator=lif.estimator,
                                                  unit_noise=unit_noise[example:example + 1, step])
            torch.testing.assert_close(previous[0], spikes[example, step], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["bnn", "snn", "conv_snn"])
def test_per_sequence_models_train_reproducibly(kind):
    shape = (1, 6, 6) if kind == "conv_snn" else (12,)
    config = ModelConfig(kind=kind, hidden=(4,), weight_noise="per_sequence", static_steps=3, dense_hidden=(6,))

    def gradients_after_one_step() -> dict[str, torch.Tensor]:
        model = build_model(config, shape, 3, seed=0)
        x = torch.rand(5, 4, *shape, generator=torch.Generator().manual_seed(0))
        logits = model(x, generator=torch.Generator().manual_seed(1))
        F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    first, second = gradients_after_one_step(), gradients_after_one_step()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    rho_gradients = [g for name, g in first.items() if name.endswith("weight_rho")]
    assert rho_gradients and all(g.abs().sum() > 0 for g in rho_gradients)  # sigma learns through w_b


def test_weight_noise_is_read_from_a_run_config_and_checked(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data]\nname = "randman"\n[model]\nkind = "snn"\nweight_noise = "per_sequence"\n')
    assert load_config(path).model.weight_noise == "per_sequence"
    path.write_text('[data]\nname = "randman"\n[model]\nkind = "snn"\nweight_noise = "per_epoch"\n')
    with pytest.raises(ConfigError, match="weight_noise"):
        load_config(path)
    with pytest.raises(ValueError, match="weight_noise"):
        BayesLinear(2, 2, weight_noise="sometimes")


def test_mode_sample_and_mean_never_draw():
    layer = BayesLinear(3, 2, weight_noise="per_sequence", mode=Mode.MEAN)
    x = torch.rand(2, 4, 3)
    torch.testing.assert_close(layer(x).mean, F.linear(x, layer.weight_mu, layer.bias_mean))
