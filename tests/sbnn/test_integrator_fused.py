"""CubaIntegrator's fused recursion against the step-by-step loop of cuba_integrator_step."""

import pytest
import torch

from sbnn.estimators import draw_noise
from sbnn.layers import CubaIntegrator, CubaState, Preactivation, cuba_integrator_step
from sbnn.layers.cuba import _safe_sqrt
from sbnn.layers.cuba_modules import _FusedIntegrator

F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(readout, pre, generator=None, initial_state=None):
    """CubaIntegrator's forward as it was: a Python loop of cuba_integrator_step under autograd."""
    mean, variance = pre.mean, pre.variance
    state = initial_state or CubaState(torch.zeros_like(mean[:, 0]), torch.zeros_like(mean[:, 0]))
    inputs, voltage_noise = mean, None
    if readout.mode.value == "noisy" and variance is not None:
        inputs = mean + _safe_sqrt(variance) * draw_noise(mean.shape, "gauss", dtype=mean.dtype, generator=generator)
    if readout.mode.value == "noisy" and readout.params.base_noise_std > 0:
        voltage_noise = readout.params.base_noise_std * draw_noise(
            mean.shape, "gauss", dtype=mean.dtype, generator=generator)
    trace = []
    for step in range(mean.shape[1]):
        state = cuba_integrator_step(inputs[:, step], state, readout.params, readout.bias)
        if voltage_noise is not None:
            state = CubaState(state.current, state.voltage + voltage_noise[:, step])
        trace.append(state.voltage)
    return torch.stack(trace, 1)


def _case(shape, dtype, seed=0, mode="mean", base_noise_std=0.0):
    """A readout with a nonzero bias, an input Preactivation (batch 3, 9 steps) and a random initial state."""
    gen = _generator(seed)
    readout = CubaIntegrator(shape, current_decay=0.7, voltage_decay=0.93, base_noise_std=base_noise_std,
                             mode=mode, dtype=dtype)
    with torch.no_grad():
        readout.bias.copy_(torch.randn(readout.bias.shape, generator=gen, dtype=dtype))
    full = (3, 9, *readout.neuron_shape)
    pre = Preactivation(torch.randn(full, generator=gen, dtype=dtype), torch.rand(full, generator=gen, dtype=dtype))
    state = CubaState(*(torch.randn(full[:1] + full[2:], generator=gen, dtype=dtype) for _ in range(2)))
    return readout, pre, state


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", [5, (2, 3, 4)])
def test_forward_is_bit_identical_to_the_step_loop(dtype, shape):
    readout, pre, state = _case(shape, dtype)
    expected = _reference(readout, pre, initial_state=state)
    trace = readout(pre, initial_state=state)   # the autograd function (the bias is a parameter)
    assert trace.grad_fn is not None and trace.dtype == dtype and trace.is_contiguous()
    assert torch.equal(trace, expected)
    with torch.no_grad():
        assert torch.equal(readout(pre, initial_state=state), expected)
    assert torch.equal(readout(pre), _reference(readout, pre))   # zero initial state


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_noisy_mode_gives_the_trace_of_the_step_loop(dtype):
    readout, pre, state = _case(4, dtype, mode="noisy", base_noise_std=0.3)
    trace = readout(pre, generator=_generator(5), initial_state=state)
    assert torch.equal(trace, _reference(readout, pre, generator=_generator(5), initial_state=state))
    assert not torch.equal(trace, readout(pre, generator=_generator(6), initial_state=state))
    mean_only = Preactivation(pre.mean, None)   # only the voltage noise
    assert torch.equal(readout(mean_only, generator=_generator(7)),
                       _reference(readout, mean_only, generator=_generator(7)))


@pytest.mark.parametrize("mode", ["mean", "noisy"])
@pytest.mark.parametrize("shape", [4, (2, 3, 3)])
def test_gradients_match_autograd_through_the_step_loop(mode, shape):
    readout, pre, state = _case(shape, F64, mode=mode, base_noise_std=0.2)
    leaves = [pre.mean, pre.variance, state.current, state.voltage]
    for leaf in leaves:
        leaf.requires_grad_(True)
    weights = torch.randn(pre.mean.shape, generator=_generator(9), dtype=F64)
    grads = []
    for run in (readout, lambda *a, **k: _reference(readout, *a, **k)):
        trace = run(pre, generator=_generator(3), initial_state=state)
        grads.append(torch.autograd.grad((trace * weights).sum(), [readout.bias, *leaves], allow_unused=True))
    for fused, expected in zip(*grads):
        if expected is None:   # (the variance in the mean mode)
            assert fused is None
            continue
        assert fused.shape == expected.shape and expected.abs().sum() > 0
        torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_of_the_fused_function():
    gen = _generator(11)
    inputs, noise = (torch.randn(2, 4, 3, generator=gen, dtype=F64) for _ in range(2))
    bias = torch.randn(3, generator=gen, dtype=F64)
    current0, voltage0 = (torch.randn(2, 3, generator=gen, dtype=F64) for _ in range(2))
    params = CubaIntegrator(3, current_decay=0.6, voltage_decay=0.8).params
    tensors = [t.requires_grad_(True) for t in (inputs, bias, current0, voltage0)]
    assert torch.autograd.gradcheck(lambda *t: _FusedIntegrator.apply(*t, noise, params), tensors)
    assert torch.autograd.gradcheck(lambda *t: _FusedIntegrator.apply(*t, None, params), tensors)


def test_without_gradients_nothing_is_recorded():
    readout, pre, state = _case(4, torch.float32)
    with torch.no_grad():
        trace = readout(pre, initial_state=state)
    assert trace.grad_fn is None and not trace.requires_grad
    readout.bias.requires_grad_(False)   # grad mode on, but nothing requires a gradient
    trace = readout(pre, initial_state=state)
    assert trace.grad_fn is None and torch.equal(trace, _reference(readout, pre, initial_state=state))
