"""A trained model's description as a float network computes exactly the model's deterministic logits."""

import numpy as np
import pytest
import torch

from export.from_model import as_sequence, float_network_from_model
from sbnn.models import ModelConfig, build_model


@pytest.mark.parametrize("config, input_shape, steps", [
    (ModelConfig(kind="snn", hidden=(24,), init_gain=3.0), (12,), 20),
    (ModelConfig(kind="snn", hidden=(16,), recurrent=True, init_gain=3.0), (12,), 20),
    (ModelConfig(kind="bnn", hidden=(20, 16), static_steps=3), (10,), None),
    (ModelConfig(kind="conv_snn", hidden=(3,), dense_hidden=(10,), init_gain=3.0), (2, 8, 8), 10),
])
@pytest.mark.parametrize("weights", ["mean", "sample"])
def test_float_network_reproduces_model_logits(config, input_shape, steps, weights):
    torch.manual_seed(0)
    model = build_model(config, input_shape, 4, seed=1)
    with torch.no_grad():
        model.log_logit_scale.fill_(0.7)   # a trained, non-trivial temperature
    rng = np.random.default_rng(0)
    shape = (6, steps, *input_shape) if steps else (6, *input_shape)
    x = (rng.random(shape) < 0.3).astype(np.float32) if steps else rng.random(shape).astype(np.float32)
    network = float_network_from_model(model, weights=weights, seed=3)
    if weights == "sample":
        model.freeze_sample(3)
    model.set_mode(weights)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).double().numpy()
    spikes, voltages = network.run(as_sequence(x, input_shape, config.static_steps))
    assert any(s.sum() > 0 for s in spikes[:-1]), "silent hidden layers would prove nothing"
    logit_scale = network.metadata["logit_scale"]
    np.testing.assert_allclose(voltages[-1].mean(axis=1) * logit_scale, expected, rtol=1e-4, atol=1e-5)
