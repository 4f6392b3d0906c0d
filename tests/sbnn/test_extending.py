"""The worked examples of docs/extending.md, each registered, used and unregistered again.

The code blocks of docs/extending.md are copied from this file; ``test_the_docs_show_this_code`` keeps them
the same.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from sbnn.backends import Simulation, backend_names, loihi_readout, register_backend, simulate, unregister_backend
from sbnn.config import config_from_dict, load_config
from sbnn.data import Dataset, DatasetLoader, load_dataset, register_dataset, unregister_dataset
from sbnn.estimators import (
    Estimator,
    EstimatorConfig,
    register_estimator,
    sample,
    unit_probabilities,
    unregister_estimator,
)
from sbnn.layers import loihi_decays
from sbnn.neurons import NeuronModel, build_cuba_lif, register_neuron, unregister_neuron



# ---------------------------------------------------------------------------------------------------
# An estimator


class TemperedStraightThrough(Estimator):
    """Straight-through with a temperature: g_1 = g_0 = f(z/tau)/tau (tau = 1 is ST)."""

    name = "tempered_st"
    takes_tau = True
    config_defaults = {"tau": 1.0}

    def conditional_derivatives(self, z, config):
        _, density = unit_probabilities(z / config.tau, config.noise)
        return density / config.tau, density / config.tau


# ---------------------------------------------------------------------------------------------------
# A dataset loader


def load_xor(*, seed: int = 0, samples: int = 64) -> Dataset:
    """Two noisy features in [0, 1], class 1 when exactly one of them is above 1/2."""
    rng = np.random.default_rng(seed)
    x = rng.random((2 * samples, 2)).astype(np.float32)
    y = ((x[:, 0] > 0.5) != (x[:, 1] > 0.5)).astype(np.int64)
    return Dataset("xor", x[:samples], y[:samples], x[samples:], y[samples:], num_classes=2, input_shape=(2,))


# ---------------------------------------------------------------------------------------------------
# A simulation backend


def run_hw_sim_per_sample(network, x, *, folder, workers=None, timeout=600.0):
    """hw_sim one sample at a time (the same numbers as the batch; less memory for long inputs)."""
    from hw_sim import RunResult

    runs = [network.run(x[i:i + 1], record_states=True) for i in range(len(x))]
    result = RunResult(*(
        [np.concatenate([getattr(run, part)[k] for run in runs]) for k in range(len(network.layers))]
        for part in ("spikes", "u", "v")
    ))
    return Simulation(result, loihi_readout(network, result))


# ---------------------------------------------------------------------------------------------------
# A neuron model


def build_integrate_and_fire(shape, config, options):
    """Integrate-and-fire: a CUBA-LIF whose current is the step's input (du = 4095: alpha = 0) and whose
    voltage has Loihi's slowest leak (dv = 1: beta = 4095/4096; beta = 1 has no NIR time constant)."""
    current_decay, voltage_decay = loihi_decays(du=4095, dv=1)
    return build_cuba_lif(shape, config, options, current_decay=current_decay, voltage_decay=voltage_decay)


INTEGRATE_AND_FIRE_RUN = """\
[data]
name = "xor"
samples = 48
encoding = "rate"
steps = 6

[model]
kind = "snn"
hidden = [8]
neuron = "integrate_and_fire"

[train]
epochs = 1
batch_size = 16
eval_samples = 1
threads = 1
"""


# ---------------------------------------------------------------------------------------------------
# Registration for the duration of a test


@pytest.fixture
def tempered_st():
    register_estimator(TemperedStraightThrough())
    yield "tempered_st"
    unregister_estimator("tempered_st")


@pytest.fixture
def xor():
    register_dataset(DatasetLoader("xor", load_xor, options=("samples",), seeded=True))
    yield "xor"
    unregister_dataset("xor")


@pytest.fixture
def integrate_and_fire():
    register_neuron(NeuronModel("integrate_and_fire", build_integrate_and_fire, spiking=True))
    yield "integrate_and_fire"
    unregister_neuron("integrate_and_fire")


@pytest.fixture
def per_sample():
    register_backend("hw_sim_per_sample", run_hw_sim_per_sample, "hw_sim, one sample at a time")
    yield "hw_sim_per_sample"
    unregister_backend("hw_sim_per_sample")


def test_a_registered_estimator_samples_configures_and_trains(tempered_st, xor, tmp_path):
    z = torch.linspace(-4, 4, 41, dtype=torch.float64, requires_grad=True)
    b = sample(z, "tempered_st", tau=2.0, generator=torch.Generator().manual_seed(0))
    b.sum().backward()
    _, density = unit_probabilities(z.detach() / 2.0)
    torch.testing.assert_close(z.grad, density / 2.0)
    with pytest.raises(ValueError, match="needs a temperature"):
        EstimatorConfig("tempered_st")
    with pytest.raises(ValueError, match=r"takes no tau \(only \('agr', 'relaxed', 'gr_mc', 'tempered_st'\) do\)"):
        EstimatorConfig("st", tau=1.0)

    from sbnn.train import train

    config = config_from_dict({
        "data": {"name": "xor", "samples": 48, "encoding": "rate", "steps": 6},
        "model": {"kind": "snn", "hidden": [8]},
        "train": {"epochs": 1, "batch_size": 16, "eval_samples": 1, "threads": 1, "estimator": "tempered_st"},
    })
    assert config.train.estimator == EstimatorConfig("tempered_st", tau=1.0) == config.model.estimator
    summary = train(config, tmp_path / "run", json_mode=True)
    assert summary["epochs"] == 1 and 0.0 <= summary["test_accuracy_mean"] <= 1.0


def test_an_unregistered_estimator_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown method 'tempered_st'"):
        EstimatorConfig("tempered_st", tau=1.0)


def test_a_registered_dataset_loads_and_configures(xor, tmp_path):
    data = load_dataset("xor", seed=1, samples=32)
    assert data.x_train.shape == (32, 2) and data.num_classes == 2 and not data.is_spiking
    again = load_dataset("xor", seed=1, samples=32, encoding="rate", steps=5)
    assert again.x_train.shape == (32, 5, 2)
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("xor", num_units=3)
    path = tmp_path / "run.toml"
    path.write_text('[data]\nname = "xor"\nsamples = 8\n[model]\nkind = "bnn"\nhidden = [4]\n')
    assert load_config(path).data.options == {"samples": 8}
    path.write_text('[data]\nname = "xor"\npath = "x"\n[model]\nkind = "bnn"\nhidden = [4]\n')
    with pytest.raises(ValueError, match="data.path: dataset 'xor' is built in"):
        load_config(path)


def test_a_registered_backend_runs_like_hw_sim(per_sample):
    from hw_sim.random_networks import random_input, random_network

    assert backend_names()[:3] == ("hw_sim", "lava", "torch") and "hw_sim_per_sample" in backend_names()
    network = random_network(3, input_shape=(6,), hidden=(5,), outputs=3, readout=True)
    x = random_input(0, network, batch=3, steps=12)
    reference = simulate("hw_sim", network, x, folder=".")
    ours = simulate("hw_sim_per_sample", network, x, folder=".")
    for part in ("spikes", "u", "v"):
        for theirs, mine in zip(getattr(reference.result, part), getattr(ours.result, part), strict=True):
            np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(ours.readout, reference.readout)
    assert ours.readout.shape == (3, 12 - network.latency, 3)


def test_a_registered_neuron_model_configures_trains_and_exports(integrate_and_fire, xor, tmp_path):
    import hw_sim
    from sbnn.models import ModelConfig
    from sbnn.pipeline import export_run
    from sbnn.train import load_trained_model, train

    path = tmp_path / "run.toml"
    path.write_text(INTEGRATE_AND_FIRE_RUN)
    config = load_config(path)
    assert config.model.hidden_neuron == "integrate_and_fire" and config.model.spiking
    summary = train(config, tmp_path / "run", json_mode=True)
    assert summary["epochs"] == 1 and 0.0 <= summary["test_accuracy_mean"] <= 1.0
    hidden = load_trained_model(tmp_path / "run").describe()[0]
    assert (hidden.neuron, hidden.alpha, hidden.beta) == ("cuba_lif", 0.0, 4095 / 4096)
    folder, _ = export_run(tmp_path / "run")
    neurons = hw_sim.load(folder / "loihi.h5").layers[0].neurons
    assert (neurons.du, neurons.dv) == (4095, 1)
    with pytest.raises(ValueError, match="recurrent: neuron model 'binary' is memoryless"):
        ModelConfig(kind="snn", neuron="binary", recurrent=True)


def test_an_unregistered_neuron_model_is_refused_by_name():
    from sbnn.models import ModelConfig

    with pytest.raises(ValueError, match="neuron: must be one of cuba_lif, binary, got 'integrate_and_fire'"):
        ModelConfig(neuron="integrate_and_fire")


def test_the_docs_show_this_code():
    text = (ROOT / "docs" / "extending.md").read_text()
    source = Path(__file__).read_text()
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    for block in blocks:
        assert block in source, f"docs/extending.md shows code that tests/test_extending.py does not hold:\n{block}"
