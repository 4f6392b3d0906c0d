"""Tests of sbnn.models: builders, modes, the surrogate baseline, learning, export description, depth."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from sbnn.estimators import EstimatorConfig
from sbnn.layers import BayesianLayer, NoisyBinaryUnits
from sbnn.models import (
    RESIDUAL_EXPORT_ERROR,
    LayerSpec,
    ModelConfig,
    ResidualModel,
    SbnnModel,
    build_model,
)

torch.set_num_threads(1)

slow = pytest.mark.skipif(os.environ.get("SBNN_SLOW_TESTS") != "1", reason="set SBNN_SLOW_TESTS=1")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spikes(shape: tuple[int, ...], rate: float, seed: int) -> torch.Tensor:
    return (torch.rand(shape, generator=_generator(seed)) < rate).float()


# One small model of each kind, with an input batch of the shape its data set provides.
SMALL_MODELS = {
    "bnn": (ModelConfig(kind="bnn", hidden=(12, 10), static_steps=2), (3, 4, 4),
            lambda: torch.rand(5, 3, 4, 4, generator=_generator(0))),
    "snn": (ModelConfig(kind="snn", hidden=(10,), recurrent=True), (20,),
            lambda: _spikes((5, 7, 20), 0.2, 0)),
    "conv_snn": (ModelConfig(kind="conv_snn", hidden=(3, 4), conv_kernels=(3, 1), conv_strides=(2,),
                             dense_hidden=(6,), recurrent=True, init_gain=2.0), (2, 12, 12),
                 lambda: _spikes((5, 6, 2, 12, 12), 0.2, 0)),
    "resnet": (ModelConfig(kind="resnet", hidden=(3, 4), resnet_blocks=1), (3, 6, 6),
               lambda: torch.rand(5, 3, 6, 6, generator=_generator(0))),
    "resnet_lif": (ModelConfig(kind="resnet", hidden=(3, 4), resnet_blocks=1, resnet_neuron="cuba_lif",
                               static_steps=3, init_gain=2.0), (3, 6, 6),
                   lambda: torch.rand(5, 3, 6, 6, generator=_generator(0))),
}
NUM_CLASSES = 3


def _small(name: str, *, seed: int = 0, **changes) -> tuple[SbnnModel, torch.Tensor]:
    config, input_shape, make_input = SMALL_MODELS[name]
    if changes:
        config = ModelConfig(**{**config.to_dict(), **changes})
    return build_model(config, input_shape, NUM_CLASSES, seed=seed), make_input()


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "mlp"}, "kind"),
        ({"hidden": ()}, "hidden"),
        ({"hidden": (8, 0)}, "hidden"),
        ({"hidden": 8}, "hidden"),
        ({"base_noise_std": 0.0}, "base_noise_std"),
        ({"threshold": -1.0}, "threshold"),
        ({"current_decay": 1.5}, "current_decay"),
        ({"readout_voltage_decay": -0.1}, "readout_voltage_decay"),
        ({"prior_std": 0.0}, "prior_std"),
        ({"init_gain": float("nan")}, "init_gain"),
        ({"static_steps": 0}, "static_steps"),
        ({"kind": "conv_snn", "hidden": (4, 8), "conv_strides": (2, 2, 2)}, "conv_strides"),
        ({"resnet_blocks": 0}, "resnet_blocks"),
        ({"resnet_neuron": "relu"}, "resnet_neuron"),
        ({"kind": "bnn", "recurrent": True}, "recurrent"),
        ({"surrogate": 1}, "surrogate"),
        ({"surrogate_slope": 0}, "surrogate_slope"),
        ({"estimator": {"method": "agr"}}, "estimator"),
        ({"kind": "snn", "estimator": EstimatorConfig("st", noise="logistic")}, "estimator"),
        ({"neuron": "relu"}, "neuron"),
        ({"kind": "bnn", "neuron": "cuba_lif", "estimator": EstimatorConfig("st", noise="logistic")}, "estimator"),
        ({"kind": "snn", "neuron": "binary", "recurrent": True}, "recurrent"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)


def test_config_accepts_toml_values_and_round_trips():
    config = ModelConfig(kind="conv_snn", hidden=[4, 8], conv_strides=[2], threshold=2,
                         estimator={"method": "iwst", "lam": 1.0})
    assert config.hidden == (4, 8) and config.conv_strides == (2,) and config.threshold == 2.0
    assert config.estimator == EstimatorConfig("iwst", lam=1.0)
    assert ModelConfig(**config.to_dict()) == config
    assert ModelConfig(kind="resnet", hidden=(16, 32, 64), resnet_blocks=3).resnet_depth == 20


def test_build_rejects_inputs_the_kind_cannot_take():
    with pytest.raises(ValueError, match="conv_snn"):
        build_model(ModelConfig(kind="conv_snn"), (700,), 20, seed=0)
    with pytest.raises(ValueError, match="resnet"):
        build_model(ModelConfig(kind="resnet"), (64,), 10, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(ModelConfig(kind="bnn"), (64,), 0, seed=0)
    model, x = _small("snn")
    with pytest.raises(ValueError, match="expected input"):
        model(x[..., :5])


# ---------------------------------------------------------------------------------------------------
# Builders: shapes, determinism, gradients
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_builders_give_logits_and_are_deterministic_for_a_seed(name):
    model, x = _small(name, seed=4)
    twin, _ = _small(name, seed=4)
    other, _ = _small(name, seed=5)
    logits = model(x, generator=_generator(1))
    assert logits.shape == (5, NUM_CLASSES) and torch.isfinite(logits).all()
    for (key, value), twin_value in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(value, twin_value), key
    torch.testing.assert_close(twin(x, generator=_generator(1)), logits, rtol=0, atol=0)
    weights = [key for key in model.state_dict() if key.endswith("weight_mu")]
    assert all(not torch.equal(model.state_dict()[key], other.state_dict()[key]) for key in weights)


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_naming_the_kinds_own_neuron_model_builds_the_same_model(name):
    config = SMALL_MODELS[name][0]
    model, x = _small(name, seed=4)
    named, _ = _small(name, seed=4, neuron=config.hidden_neuron)
    assert repr(named) == repr(model)
    for (key, value), named_value in zip(model.state_dict().items(), named.state_dict().values(), strict=True):
        assert torch.equal(value, named_value), key
    torch.testing.assert_close(named(x, generator=_generator(1)), model(x, generator=_generator(1)), rtol=0, atol=0)


def test_the_neuron_field_replaces_the_kinds_neurons():
    spiking_bnn, x = _small("bnn", neuron="cuba_lif")
    assert spiking_bnn.config.spiking and spiking_bnn(x).shape == (5, NUM_CLASSES)
    assert [spec.neuron for spec in spiking_bnn.describe() if spec.kind != "flatten"] == ["cuba_lif"] * 2 + ["integrator"]
    assert all(layer.synapse.bias is None for layer in spiking_bnn.layers)   # the LIF carries the bias
    binary_resnet, x = _small("resnet_lif", neuron="binary")
    assert not binary_resnet.config.spiking and binary_resnet(x).shape == (5, NUM_CLASSES)
    assert binary_resnet.stem.bias is not None and isinstance(binary_resnet.final_neurons, NoisyBinaryUnits)


def test_paper_scale_shapes_build():
    shd = build_model(ModelConfig(kind="snn", hidden=(32,)), (700,), 20, seed=0)
    assert shd(_spikes((2, 4, 700), 0.05, 0)).shape == (2, 20)
    dvs = build_model(ModelConfig(kind="conv_snn", hidden=(4, 4, 4, 4), dense_hidden=(16,)),
                      (2, 128, 128), 11, seed=0)
    assert [spec.output_shape for spec in dvs.describe() if spec.kind == "conv"] == [
        (4, 64, 64), (4, 32, 32), (4, 16, 16), (4, 8, 8)]
    assert dvs(_spikes((1, 2, 2, 128, 128), 0.02, 0)).shape == (1, 11)
    cifar_config = ModelConfig(kind="resnet", hidden=(4, 4, 4), resnet_blocks=3)
    cifar = build_model(cifar_config, (3, 32, 32), 10, seed=0)
    weight_layers = [name for name, _ in cifar.weight_layers() if "shortcut" not in name]
    assert len(weight_layers) == 20
    assert cifar(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_static_input_equals_the_sequence_that_repeats_it():
    model, x = _small("bnn")
    sequence = x.unsqueeze(1).expand(-1, model.config.static_steps, -1, -1, -1)
    torch.testing.assert_close(model(x, generator=_generator(2)), model(sequence, generator=_generator(2)))


@pytest.mark.parametrize("surrogate", [False, True])
@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_gradients_reach_every_trainable_parameter(name, surrogate):
    model, x = _small(name, surrogate=surrogate)
    labels = torch.arange(5) % NUM_CLASSES
    loss = F.cross_entropy(model(x, generator=_generator(3)), labels) + model.kl() / 100
    loss.backward()
    trainable = [(key, p) for key, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for key, parameter in trainable:
        assert parameter.grad is not None, key
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, key
    frozen = {key for key, p in model.named_parameters() if not p.requires_grad}
    assert frozen == ({key for key, _ in model.named_parameters() if "rho" in key} if surrogate else set())


# ---------------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bnn", "snn", "conv_snn", "resnet"])
def test_modes_mean_deterministic_noisy_random_sample_reproducible(name):
    model, x = _small(name)
    with torch.no_grad():
        assert model.mode.value == "noisy"
        first = model(x, generator=_generator(1))
        torch.testing.assert_close(model(x, generator=_generator(1)), first, rtol=0, atol=0)
        assert not torch.equal(model(x, generator=_generator(2)), first)

        model.set_mode("mean")
        mean = model(x, generator=_generator(1))
        torch.testing.assert_close(model(x, generator=_generator(2)), mean, rtol=0, atol=0)

        model.set_mode("sample")
        with pytest.raises(RuntimeError, match="freeze_sample"):
            model(x)
        model.freeze_sample(7)
        sample = model(x)
        torch.testing.assert_close(model(x, generator=_generator(5)), sample, rtol=0, atol=0)
        assert not torch.equal(sample, mean)
        model.freeze_sample(8)
        other_sample = model(x)
        model.freeze_sample(7)
        torch.testing.assert_close(model(x), sample, rtol=0, atol=0)
        assert not torch.equal(other_sample, sample)
    with pytest.raises(ValueError, match="mode"):
        model.set_mode("ensemble")


def test_frozen_sample_is_the_same_in_a_twin_model():
    model, x = _small("snn")
    twin, _ = _small("snn")
    for m in (model, twin):
        m.freeze_sample(11)
        m.set_mode("sample")
    torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)


def test_surrogate_baseline_is_deterministic_with_zero_kl_in_every_mode():
    model, x = _small("snn", surrogate=True)
    assert model.kl().item() == 0.0 and model.mode.value == "mean"
    with torch.no_grad():
        reference = model(x, generator=_generator(1))
        for mode in ("noisy", "sample", "mean"):
            model.set_mode(mode)
            model.freeze_sample(3)
            torch.testing.assert_close(model(x, generator=_generator(2)), reference, rtol=0, atol=0)
    for spec in model.describe():
        assert spec.weight is not None
    layer = model.layers[0].synapse
    assert torch.equal(model.describe()[0].weight, layer.weight_mu.detach())


# ---------------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------------


def _spike_task(count: int, seed: int, *, classes: int = 4, channels: int = 16, steps: int = 20):
    """Class ``c`` raises the firing rate of its own group of ``channels / classes`` input channels."""
    generator = _generator(seed)
    labels = torch.randint(0, classes, (count,), generator=generator)
    rates = torch.full((count, channels), 0.05)
    group = channels // classes
    for c in range(classes):
        rates[labels == c, c * group:(c + 1) * group] = 0.25
    x = (torch.rand(count, steps, channels, generator=generator) < rates[:, None, :]).float()
    return x, labels


def _train(model: SbnnModel, x, labels, *, steps: int, lr: float, kl_weight: float, seed: int = 0):
    """Adam on NLL + kl_weight * KL; returns the mean-mode (deterministic) model's NLL before and after."""

    def mean_mode_nll() -> float:
        model.set_mode("mean")
        with torch.no_grad():
            value = F.cross_entropy(model(x), labels).item()
        model.set_mode("noisy")
        return value

    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = _generator(seed)
    before = mean_mode_nll()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(x, generator=generator), labels) + kl_weight * model.kl()
        loss.backward()
        optimiser.step()
    return before, mean_mode_nll()


def test_spiking_mlp_learns_a_separable_spike_task():
    x, labels = _spike_task(64, 0)
    model = build_model(ModelConfig(kind="snn", hidden=(16,)), (16,), 4, seed=0)
    before, after = _train(model, x, labels, steps=30, lr=0.02, kl_weight=1e-4)
    assert after < 0.3 * before, (before, after)
    model.set_mode("mean")
    test_x, test_labels = _spike_task(128, 1)
    with torch.no_grad():
        assert (model(test_x).argmax(1) == test_labels).float().mean() > 0.9


def test_surrogate_baseline_trains_on_the_same_task_with_zero_kl():
    x, labels = _spike_task(64, 0)
    model = build_model(ModelConfig(kind="snn", hidden=(16,), surrogate=True), (16,), 4, seed=0)
    before, after = _train(model, x, labels, steps=30, lr=0.02, kl_weight=1.0)
    assert model.kl().item() == 0.0
    assert after < 0.3 * before, (before, after)


def test_binary_mlp_learns_a_static_task():
    generator = _generator(0)
    labels = torch.randint(0, 3, (96,), generator=generator)
    centres = torch.rand(3, 10, generator=generator)
    x = (centres[labels] + 0.15 * torch.randn(96, 10, generator=generator)).clamp(0, 1)
    model = build_model(ModelConfig(kind="bnn", hidden=(32,)), (10,), 3, seed=0)
    before, after = _train(model, x, labels, steps=40, lr=0.02, kl_weight=1e-4)
    assert after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------------------------------------
# Export description
# ---------------------------------------------------------------------------------------------------


def _run_specs(specs: list[LayerSpec], x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """A plain simulator written from the LayerSpec documentation alone.

    Returns the logits for a sequence input and the firing rate of every spiking layer.
    """
    batch, steps = x.shape[:2]
    state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    spike_counts: dict[str, float] = {}
    readout = []
    for t in range(steps):
        signal = x[:, t]
        for index, spec in enumerate(specs):
            if spec.kind == "flatten":
                assert tuple(signal.shape[1:]) == spec.input_shape
                signal = signal.reshape(batch, -1)
                continue
            if spec.kind == "conv":
                synaptic = F.conv2d(signal, spec.weight, None, spec.stride, spec.padding, spec.dilation,
                                    spec.groups)
            else:
                synaptic = signal @ spec.weight.T
            assert tuple(synaptic.shape[1:]) == spec.output_shape
            zeros = torch.zeros_like(synaptic)
            current, voltage, previous = state.get(index, (zeros, zeros, zeros))
            if spec.recurrent_weight is not None:
                synaptic = synaptic + previous @ spec.recurrent_weight.T
            current = spec.alpha * current + synaptic
            voltage = spec.beta * voltage + current + spec.bias
            if spec.readout:
                spikes = voltage
            else:
                spikes = (voltage > spec.threshold).float()
                voltage = torch.where(spikes > 0, torch.zeros_like(voltage), voltage)
                spike_counts[spec.name] = spike_counts.get(spec.name, 0.0) + spikes.mean().item()
            state[index] = (current, voltage, spikes)
            signal = spikes
        readout.append(signal)
    rates = {name: count / steps for name, count in spike_counts.items()}
    return torch.stack(readout, 1).mean(1), rates


def _randomise_biases(model: SbnnModel, seed: int) -> None:
    generator = _generator(seed)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if key.endswith("bias"):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("name", ["bnn", "snn", "conv_snn"])
def test_describe_reports_the_mean_or_the_frozen_sample_and_reproduces_the_model(name):
    model, x = _small(name)
    _randomise_biases(model, 1)
    if x.dim() == 1 + len(model.input_shape):  # a static input: present it as its sequence
        x = x.unsqueeze(1).expand(-1, model.config.static_steps, *x.shape[1:])
    synaptic_layers = list(model.layers)
    for mode in ("mean", "sample"):
        model.set_mode(mode)
        if mode == "sample":
            model.freeze_sample(5)
        specs = model.describe()
        layer_specs = [spec for spec in specs if spec.kind != "flatten"]
        assert len(layer_specs) == len(synaptic_layers)
        for spec, layer in zip(layer_specs, synaptic_layers):
            expected = layer.synapse.weight_mu if mode == "mean" else layer.synapse.frozen_weight
            assert torch.equal(spec.weight, expected.detach()) and spec.weight.device.type == "cpu"
            assert not spec.weight.requires_grad and spec.bias.shape == spec.output_shape
            recurrent = getattr(layer.neurons, "recurrent", None)
            if recurrent is not None:
                expected = recurrent.weight_mu if mode == "mean" else recurrent.frozen_weight
                assert torch.equal(spec.recurrent_weight, expected.detach())
        with torch.no_grad():
            logits, rates = _run_specs(specs, x)
            torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)
        assert len(rates) == len(layer_specs) - 1 and all(0.02 < r < 0.9 for r in rates.values()), rates
    assert specs[-1].neuron == "integrator" and specs[-1].readout and specs[-1].threshold is None
    assert specs[-1].output_shape == (NUM_CLASSES,)


def test_describe_fields_per_kind():
    bnn_specs = _small("bnn")[0].describe()
    assert [s.kind for s in bnn_specs] == ["flatten", "dense", "dense", "dense"]
    assert [s.readout for s in bnn_specs] == [False, False, False, True]
    assert bnn_specs[0].input_shape == (3, 4, 4) and bnn_specs[0].output_shape == (48,)
    assert [s.weight.shape for s in bnn_specs[1:]] == [(12, 48), (10, 12), (NUM_CLASSES, 10)]
    for spec in bnn_specs[1:3]:
        neuron = (spec.neuron, spec.alpha, spec.beta, spec.threshold)
        assert neuron == ("binary", 0.0, 0.0, 0.0)
    assert bnn_specs[1].input_binary is False and bnn_specs[2].input_binary is True

    conv_specs = _small("conv_snn")[0].describe()
    assert [s.kind for s in conv_specs] == ["conv", "conv", "flatten", "dense", "dense"]
    first, second = conv_specs[:2]
    assert first.weight.shape == (3, 2, 3, 3) and first.stride == (2, 2) and first.padding == (1, 1)
    assert first.output_shape == (3, 6, 6) and first.dilation == (1, 1) and first.groups == 1
    assert second.weight.shape == (4, 3, 1, 1) and second.padding == (0, 0)
    assert second.output_shape == (4, 3, 3)
    neuron = (first.neuron, first.alpha, first.beta, first.threshold)
    assert neuron == ("cuba_lif", 0.5, 0.875, 1.0)
    assert (first.current_decay, first.voltage_decay) == (0.5, 0.875)   # the old names still read
    assert conv_specs[2].output_shape == (36,) and conv_specs[3].recurrent_weight.shape == (6, 6)


def test_residual_net_cannot_be_described_for_loihi():
    model, _ = _small("resnet")
    with pytest.raises(NotImplementedError, match=RESIDUAL_EXPORT_ERROR):
        model.describe()


# ---------------------------------------------------------------------------------------------------
# Depth without normalisation
# ---------------------------------------------------------------------------------------------------


def _quadrant_images(count: int, seed: int):
    """8x8 RGB images whose class (0-3) is the brighter quadrant."""
    generator = _generator(seed)
    labels = torch.randint(0, 4, (count,), generator=generator)
    x = 0.5 * torch.rand(count, 3, 8, 8, generator=generator)
    for index, label in enumerate(labels.tolist()):
        row, column = divmod(label, 2)
        x[index, :, 4 * row:4 * row + 4, 4 * column:4 * column + 4] += 0.5
    return x, labels


def _layer_gradient_norms(model: ResidualModel, x, labels) -> dict[str, float]:
    """Norm of d NLL / d mu for every weight layer, for one fixed noise draw."""
    model.zero_grad()
    F.cross_entropy(model(x, generator=_generator(99)), labels).backward()
    return {name: layer.weight_mu.grad.norm().item() for name, layer in model.weight_layers()}


def _check_deep_resnet_trains(config: ModelConfig, *, steps: int, max_spread: float) -> None:
    x, labels = _quadrant_images(64, 0)
    model = build_model(config, (3, 8, 8), 4, seed=0)
    assert isinstance(model, ResidualModel)
    assert len([n for n, _ in model.weight_layers() if "shortcut" not in n]) == config.resnet_depth >= 20
    norms_at_init = _layer_gradient_norms(model, x, labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.005)
    generator = _generator(0)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(x, generator=generator), labels)
        (loss + 2e-5 * model.kl()).backward()  # the ELBO's KL weight 1/N for CIFAR-10's 50,000 images
        optimiser.step()
        losses.append(loss.item())
    norms_after = _layer_gradient_norms(model, x, labels)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    for norms in (norms_at_init, norms_after):
        values = list(norms.values())
        assert min(values) > 0 and all(math.isfinite(v) for v in values), norms
        assert max(values) / min(values) < max_spread, norms


def test_twenty_layer_binary_resnet_trains_with_balanced_layer_gradients():
    config = ModelConfig(kind="resnet", hidden=(8, 8, 8), resnet_blocks=3)
    _check_deep_resnet_trains(config, steps=40, max_spread=100.0)


@slow
@pytest.mark.slow
@pytest.mark.parametrize("neuron, blocks", [("binary", 8), ("cuba_lif", 3)])
def test_deeper_and_spiking_resnets_train_with_balanced_layer_gradients(neuron, blocks):
    config = ModelConfig(kind="resnet", hidden=(8, 8, 8), resnet_blocks=blocks, resnet_neuron=neuron,
                         static_steps=4 if neuron == "cuba_lif" else 1,
                         init_gain=2.0 if neuron == "cuba_lif" else 1.0)
    _check_deep_resnet_trains(config, steps=60, max_spread=100.0)


def test_every_weight_layer_of_the_resnet_is_bayesian():
    model, _ = _small("resnet")
    names = [name for name, _ in model.weight_layers()]
    assert names[0] == "stem" and names[-1] == "readout.synapse"
    assert all(isinstance(layer, BayesianLayer) for _, layer in model.weight_layers())


def test_surrogate_evaluation_runs_one_deterministic_pass_for_all_three_predictions():
    # A point estimate's noisy and ensemble predictions are its mean one: evaluation must not recompute it.
    from sbnn.evaluate import evaluate_split, predict_all

    model = build_model(ModelConfig(kind="snn", hidden=(8,), surrogate=True), (5,), 3, seed=0)
    x = (torch.rand(6, 12, 5, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    passes = []
    model.register_forward_hook(lambda module, args, output: passes.append(1))
    predictions = predict_all(model, x, samples=4, seed=0)
    assert len(passes) == 1
    assert predictions["noisy"] is predictions["mean"] and predictions["ensemble"] is predictions["mean"]
    summary = evaluate_split(model, x, torch.tensor([0, 1, 2, 0, 1, 2]), samples=4, seed=0)
    assert len(passes) == 2 and summary["noisy"] == summary["mean"] == summary["ensemble"]
