"""The fused noisy LIF's numba kernels (sbnn/layers/fused_lif_compiled.py) against its torch operations:
the same spikes bit for bit for the same unit noise, and the same voltages, final state and gradients of
every input up to rounding.  The torch path is forced by the ``torch_path`` fixture."""

from __future__ import annotations

import pytest
import torch

from sbnn.estimators import EstimatorConfig
from sbnn.layers import CubaLif, CubaState, Preactivation, fused_lif

pytest.importorskip("numba")

TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture
def torch_path(monkeypatch):
    """Runs :class:`fused_lif._FusedNoisyLif` with its torch operations, as where numba is not installed."""
    monkeypatch.setattr(fused_lif, "_compiled_kernels", lambda: None)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _case(dtype: torch.dtype, shape: tuple[int, ...], seed: int, with_variance: bool,
          estimator: EstimatorConfig | None = None):
    """A layer and its inputs (leaves that need gradients), random but fixed by ``seed``."""
    batch, width = shape[0], shape[2:]
    kwargs = {} if estimator is None else {"estimator": estimator}
    lif = CubaLif(width, current_decay=0.7, voltage_decay=0.85, threshold=0.5, base_noise_std=0.3,
                  dtype=dtype, **kwargs)
    with torch.no_grad():
        lif.bias.copy_(torch.randn(lif.bias.shape, generator=_generator(seed), dtype=dtype) * 0.2)
    mean = torch.randn(shape, generator=_generator(seed + 1), dtype=dtype) * 0.6 + 0.3
    variance = torch.rand(shape, generator=_generator(seed + 2), dtype=dtype) * 0.3 if with_variance else None
    state = [torch.randn((batch, *width), generator=_generator(seed + k), dtype=dtype) * 0.3 for k in (3, 4)]
    return lif, mean, variance, state


def _run(lif, mean, variance, state, seed: int, record_voltage: bool, loss_weights: torch.Tensor):
    """Outputs and gradients (of mean, variance, initial current, initial voltage, bias) of one run."""
    leaves = [t.clone().requires_grad_(True) for t in (mean, variance, *state) if t is not None]
    mean_leaf, variance_leaf = leaves[0], leaves[1] if variance is not None else None
    initial = CubaState(leaves[-2], leaves[-1])
    lif.bias.grad = None
    pre = Preactivation(mean_leaf, variance_leaf) if variance is not None else mean_leaf
    output = lif.run(pre, generator=_generator(seed), initial_state=initial, record_voltage=record_voltage)
    final = output.final_state
    loss = (output.spikes * loss_weights).sum() + (final.current * final.voltage).sum()
    if record_voltage:
        loss = loss + (output.voltage * loss_weights.flip(1)).sum()
    loss.backward()
    values = [output.spikes, output.voltage, final.current, final.voltage]
    return values, [leaf.grad for leaf in leaves] + [lif.bias.grad.clone()]


def _both_paths(monkeypatch, dtype, shape, seed, with_variance, record_voltage, estimator=None):
    lif, mean, variance, state = _case(dtype, shape, seed, with_variance, estimator)
    weights = torch.randn(shape, generator=_generator(seed + 5), dtype=dtype)
    compiled = _run(lif, mean, variance, state, seed + 6, record_voltage, weights)
    with monkeypatch.context() as patch:
        patch.setattr(fused_lif, "_compiled_kernels", lambda: None)
        reference = _run(lif, mean, variance, state, seed + 6, record_voltage, weights)
    return compiled, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("record_voltage", [False, True])
@pytest.mark.parametrize("with_variance", [False, True])
@pytest.mark.parametrize("shape,seed", [((3, 17, 5), 10), ((2, 9, 3, 4), 20), ((1, 30, 33), 30)])
def test_compiled_kernels_match_the_torch_operations(monkeypatch, dtype, record_voltage, with_variance, shape,
                                                     seed):
    # Groups of one example (the derivative runs after each), to cross group boundaries too.
    monkeypatch.setattr(fused_lif, "_CHUNK_ELEMENTS", shape[1])
    calls = []
    kernels = fused_lif._compiled_kernels()
    assert kernels is not None
    monkeypatch.setattr(kernels, "lif_backward", _counting(kernels.lif_backward, calls))
    (values, grads), (reference_values, reference_grads) = _both_paths(
        monkeypatch, dtype, shape, seed, with_variance, record_voltage)
    assert calls, "the compiled backward did not run"
    assert 0 < values[0].mean() < 1
    assert torch.equal(values[0], reference_values[0])   # spikes, bit for bit
    for name, a, b in zip(("voltages", "final current", "final voltage"), values[1:], reference_values[1:]):
        if a is None:
            assert b is None and not record_voltage
            continue
        torch.testing.assert_close(a, b, **TOLERANCES[dtype], msg=name)
    names = ["mean"] + ["variance"] * with_variance + ["current0", "voltage0", "bias"]
    assert len(grads) == len(reference_grads) == len(names)
    for name, a, b in zip(names, grads, reference_grads):
        assert a is not None and torch.isfinite(a).all() and a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, **TOLERANCES[dtype], msg=name)


def test_groups_of_several_examples_and_a_shorter_last_group_match(monkeypatch):
    # Batch 5 in groups of 2: the backward runs once per group, on each group's derivatives.
    shape = (5, 11, 6)
    monkeypatch.setattr(fused_lif, "_CHUNK_ELEMENTS", 2 * shape[1] * shape[2])
    calls = []
    kernels = fused_lif._compiled_kernels()
    monkeypatch.setattr(kernels, "lif_backward", _counting(kernels.lif_backward, calls))
    (values, grads), (reference_values, reference_grads) = _both_paths(
        monkeypatch, torch.float64, shape, 60, with_variance=True, record_voltage=False)
    assert len(calls) == 3
    assert torch.equal(values[0], reference_values[0])
    for a, b in zip(grads, reference_grads):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])


def _counting(function, calls: list):
    def counted(*args):
        calls.append(1)
        return function(*args)
    return counted


def test_other_estimators_and_recurrence_take_the_torch_path():
    tensors = [torch.zeros(2, 3, 4), None, torch.zeros(2, 3, 4), torch.zeros(4), torch.zeros(2, 4),
               torch.zeros(2, 4)]
    agr = EstimatorConfig("agr", tau=1.0)
    assert fused_lif._compiled_applies(tensors, None, agr)
    assert fused_lif._compiled_applies(tensors, None, EstimatorConfig("agr", tau=0.5))
    assert not fused_lif._compiled_applies(tensors, None, EstimatorConfig("st"))
    assert not fused_lif._compiled_applies(tensors, torch.zeros(8, 4), agr)
    assert not fused_lif._compiled_applies([t if t is None else t.double() for t in tensors[:3]] + tensors[3:],
                                           None, agr)
    assert not fused_lif._compiled_applies([t if t is None else t.half() for t in tensors], None, agr)


def test_the_fallback_runs_without_the_kernels(torch_path):
    # The torch path alone still learns: the gradients are finite and reach every input.
    lif, mean, variance, state = _case(torch.float32, (2, 12, 6), 40, with_variance=True)
    weights = torch.randn(mean.shape, generator=_generator(41))
    values, grads = _run(lif, mean, variance, state, 42, True, weights)
    assert fused_lif._compiled_kernels() is None
    assert values[1] is not None and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_a_spike_free_loss_and_a_non_default_tau_match(monkeypatch):
    # Only the final state in the loss (no spike or voltage gradient arrives), AGR at tau = 0.5.
    lif, mean, variance, state = _case(torch.float64, (2, 15, 7), 50, True, EstimatorConfig("agr", tau=0.5))
    zeros = torch.zeros(mean.shape, dtype=torch.float64)
    compiled = _run(lif, mean, variance, state, 51, False, zeros)
    monkeypatch.setattr(fused_lif, "_compiled_kernels", lambda: None)
    reference = _run(lif, mean, variance, state, 51, False, zeros)
    assert torch.equal(compiled[0][0], reference[0][0])
    for a, b in zip(compiled[1], reference[1]):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])
