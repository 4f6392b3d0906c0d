"""The fused noisy LIF's backward when the loss reads only some of its outputs (the voltage trace, or
only the final state): the branches where no spike gradient arrives must give the step loop's gradients.
The general case (spikes, voltages and final current together) is in tests/sbnn/test_layers.py."""

from __future__ import annotations

import pytest
import torch

from sbnn.estimators import EstimatorConfig
from sbnn.layers import CubaLif, CubaState, Preactivation, cuba_lif_step_noisy, fused_lif

F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _loop(lif: CubaLif, mean: torch.Tensor, variance: torch.Tensor, state: CubaState, seed: int):
    """The noisy layer as a plain loop of :func:`cuba_lif_step_noisy` with the same unit noise."""
    unit_noise = torch.randn(mean.shape, generator=_generator(seed), dtype=mean.dtype)
    voltages = []
    for t in range(mean.shape[1]):
        _, state = cuba_lif_step_noisy(mean[:, t], variance[:, t], state, lif.params, lif.bias,
                                       estimator=lif.estimator, unit_noise=unit_noise[:, t])
        voltages.append(state.voltage)
    return torch.stack(voltages, 1), state


@pytest.mark.parametrize("uses", ["voltages", "final state"])
@pytest.mark.parametrize("estimator", [EstimatorConfig("agr", tau=0.5), EstimatorConfig("st")])
def test_fused_gradients_without_a_spike_gradient_equal_the_loop(uses, estimator, monkeypatch):
    monkeypatch.setattr(fused_lif, "_CHUNK_ELEMENTS", 2 * 4 * 6)   # chunks of 6 steps, the last one shorter
    batch, steps, width = 2, 27, 4
    lif = CubaLif(width, current_decay=0.7, voltage_decay=0.85, threshold=0.5, base_noise_std=0.3,
                  estimator=estimator, dtype=F64)
    with torch.no_grad():
        lif.bias.copy_(torch.randn(width, generator=_generator(1), dtype=F64) * 0.2)
    mean = torch.randn((batch, steps, width), generator=_generator(2), dtype=F64) * 0.5 + 0.3
    variance = torch.rand((batch, steps, width), generator=_generator(3), dtype=F64) * 0.2
    weights = torch.randn((batch, steps, width), generator=_generator(4), dtype=F64)

    def gradients(fused: bool):
        leaves = [t.clone().requires_grad_(True) for t in (mean, variance)]
        state = CubaState(*(torch.full((batch, width), 0.1, dtype=F64, requires_grad=True) for _ in range(2)))
        lif.bias.grad = None
        if fused:
            output = lif.run(Preactivation(*leaves), generator=_generator(9), initial_state=state)
            voltages, final = output.voltage, output.final_state
        else:
            voltages, final = _loop(lif, *leaves, state, seed=9)
        loss = (voltages * weights).sum() if uses == "voltages" else (final.voltage * final.current).sum()
        loss.backward()
        return [leaves[0].grad, leaves[1].grad, state.current.grad, state.voltage.grad, lif.bias.grad.clone()]

    for name, a, b in zip(("mean", "variance", "current0", "voltage0", "bias"), gradients(True), gradients(False)):
        assert a is not None and torch.isfinite(a).all() and a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
