"""The sparse 0/1-input product's numba kernels (sbnn/layers/spike_compiled.py) against the torch and numpy
operations they replace: the same positions of the ones and the same weight gradients, bit for bit.  The
torch path is forced by the ``torch_path`` fixture, as where numba is not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from sbnn.layers import bayesian
from sbnn.layers.bayesian import spike_linear, spike_positions

pytest.importorskip("numba")


@pytest.fixture
def torch_path(monkeypatch):
    monkeypatch.setattr(bayesian, "_spike_kernels", lambda: None)


def _spikes(shape: tuple[int, ...], rate: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < rate).to(dtype)


def _positions_and_weight_gradient(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, seed: int):
    """``spike_positions(x)`` and the output and gradients of ``spike_linear`` under a random linear loss."""
    ones = spike_positions(x)
    weight, bias = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    out = spike_linear(ones, weight, bias)
    loss_weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * loss_weights).sum().backward()
    return ones, out.detach(), weight.grad, bias.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,rate", [((4, 30, 70), 0.05), ((3, 17), 0.5), ((2, 5, 9), 0.0), ((6, 8), 1.0)])
def test_compiled_kernels_match_the_torch_operations(monkeypatch, dtype, shape, rate):
    x = _spikes(shape, rate, seed=1, dtype=dtype)
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn((13, shape[-1]), generator=generator, dtype=dtype)
    bias = torch.randn(13, generator=generator, dtype=dtype)
    calls = []
    kernels = bayesian._spike_kernels()
    assert kernels is not None
    for name in ("find_ones", "scatter_rows"):
        kernel = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *args, kernel=kernel, name=name: calls.append(name) or kernel(*args))
    compiled = _positions_and_weight_gradient(x, weight, bias, seed=3)
    assert calls == ["find_ones", "scatter_rows"]
    with monkeypatch.context() as patch:
        patch.setattr(bayesian, "_spike_kernels", lambda: None)
        reference = _positions_and_weight_gradient(x, weight, bias, seed=3)
    assert calls == ["find_ones", "scatter_rows"]
    for a, b in zip(compiled[0], reference[0]):   # the transposed index, the offsets, the lead shape
        assert a == b if isinstance(a, tuple) else torch.equal(a, b)
    assert compiled[0].transposed_index.is_contiguous()
    for a, b in zip(compiled[1:], reference[1:]):   # output, weight gradient, bias gradient
        assert torch.equal(a, b)
    assert (compiled[2].abs().sum() > 0) == (rate > 0)


@pytest.mark.parametrize("value", [0.5, -1.0, float("nan"), 1e-45])
def test_values_other_than_zero_and_one_are_refused_on_both_paths(monkeypatch, value):
    x = _spikes((5, 40), 0.2, seed=4, dtype=torch.float32)
    x[4, 39] = value   # the last element: found after every one
    assert spike_positions(x) is None
    monkeypatch.setattr(bayesian, "_spike_kernels", lambda: None)
    assert spike_positions(x) is None


def test_a_model_trains_the_same_on_both_paths(monkeypatch):
    from sbnn.models import ModelConfig, build_model

    x, labels = _spikes((4, 12, 50), 0.05, seed=5, dtype=torch.float32), torch.tensor([0, 1, 2, 1])

    def model() -> torch.nn.Module:
        return build_model(ModelConfig(kind="snn", hidden=(16,), init_gain=3.0), (50,), 3, seed=0)

    def train() -> list[torch.Tensor]:
        net = model()
        generator, optimizer = torch.Generator().manual_seed(6), torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x, generator=generator), labels) + net.kl() / 100
            loss.backward()
            optimizer.step()
        return [p.detach().clone() for p in net.parameters()]

    monkeypatch.setattr(bayesian, "_sparse_density_limit", lambda columns, backward, moments: 1.0)   # sparse route
    compiled = train()
    monkeypatch.setattr(bayesian, "_spike_kernels", lambda: None)
    reference = train()
    assert all(torch.equal(a, b) for a, b in zip(compiled, reference))
    assert not torch.equal(compiled[0], next(model().parameters()))   # it did train


def test_without_numba_the_torch_operations_run():
    # In a fresh interpreter where ``import numba`` fails; importing sbnn never imports numba either.
    code = ("import sys; sys.modules['numba'] = None; import torch; from sbnn.layers import bayesian; "
            "assert bayesian._spike_kernels() is None; "
            "x = torch.tensor([[0., 1., 1.], [1., 0., 0.]]); ones = bayesian.spike_positions(x); "
            "assert ones.transposed_index.tolist() == [[1, 2, 0], [0, 0, 1]], ones; "
            "assert 'sbnn.layers.spike_compiled' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_importing_sbnn_does_not_import_numba():
    code = "import sys, sbnn.layers, sbnn.models; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
