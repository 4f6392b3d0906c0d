"""The fused noisy CUBA-LIF's recursions compiled with numba: one pass over the data forward, one backward.

:class:`sbnn.layers.fused_lif._FusedNoisyLif` imports this module only for CPU tensors without recurrence
and with the AGR estimator, and runs its torch operations where numba is not installed; importing
``sbnn`` never imports numba.  Per example, the kernels step through time with the neurons' states in two
rows of length ``n`` (in L1), the loop over the neurons branch-free so that it vectorises; every
per-element operation is the one the torch path applies (``torch.add(x, y, alpha=a)`` is a fused
multiply-add on the CPU, :func:`_fma`), so the spikes are the torch path's bit for bit for the same unit
noise (the noise scale ``sqrt(var + s0^2)`` comes from torch too: its ``sqrt`` is not always correctly
rounded).  The estimator's derivative (erfc, exp: docs/method.md#numerics) stays in torch, whose
vectorised special functions are far faster than numba's scalar ones, on a few examples at a time while
their margins are in cache.  Compiled code is cached on disk (``cache=True``): only the first run on a
machine compiles (about a second per dtype).

Everything is batch-major, ``(B, T, n)`` C-contiguous, of one float dtype; an absent input or output is a
``(1, 1, n)`` array (zeros where read) and a flag in ``present``, so that one compiled version per dtype
serves every case.  ``constants`` (the inputs' dtype) = ``[alpha, beta, theta, s0^2, s, 1/s, 1]``, ``s`` and ``1/s`` the noise
scale and its reciprocal used when no input variance is given.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _fma(typingctx, a, b, c):
    """``a b + c`` rounded once (LLVM's ``fma``), for three operands of one float type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@njit(cache=True, nogil=True, error_model="numpy")
def _forward_row(mean, scale, noise, bias, current, voltage, constants, has_scale, spikes, voltages, sampled,
                 margins):
    """One example's step of :func:`lif_forward`, all rows ``(n,)``, branch-free so that the loop
    vectorises (``scale`` is read whatever ``has_scale``, and used only with it)."""
    alpha, beta, threshold = constants[0], constants[1], constants[2]
    zero, one = constants[6] - constants[6], constants[6]
    for i in range(mean.shape[0]):
        std = scale[i]
        inverse = one / std
        if not has_scale:
            std, inverse = constants[4], constants[5]
        drawn = noise[i] * std
        new_current = _fma(alpha, current[i], mean[i] + drawn)
        vhat = _fma(beta, voltage[i], new_current + bias[i])
        fired = vhat > threshold
        spikes[i] = one if fired else zero
        current[i] = new_current
        voltage[i] = zero if fired else vhat
        voltages[i] = zero if fired else vhat
        sampled[i] = vhat
        margins[i] = ((vhat - drawn) - threshold) * inverse


@njit(cache=True, nogil=True)
def lif_forward(mean: np.ndarray, scale: np.ndarray, noise: np.ndarray, bias: np.ndarray, current: np.ndarray,
                voltage: np.ndarray, constants: np.ndarray, start: int, stop: int, present: np.ndarray,
                spikes: np.ndarray, voltages: np.ndarray, sampled: np.ndarray, margins: np.ndarray) -> None:
    """Examples ``start:stop`` of the noisy LIF forward.

    ``mean``, ``noise`` (the unit noise xi): ``(B, T, n)``; ``scale[b - start]``: the noise scale
    ``s = sqrt(var + s0^2)`` (formed by torch: its ``sqrt`` is not always correctly rounded, and the spikes
    must be the torch path's); ``bias``, ``current``, ``voltage``: ``(B, n)``, the state updated in place
    to the final one.  Writes ``spikes`` (0./1.), ``voltages`` (after the reset), ``sampled`` (the sampled
    voltage before the reset) and ``margins[b - start]`` (``z = (Vhat - s xi - theta)/s``).  ``present``
    (3 ints, 1 or 0): whether ``scale`` (else ``s`` is the fixed one), ``voltages``, ``sampled`` and
    ``margins`` are given; an absent one is any ``(1, 1, n)`` array, every step's row its one row.  Per
    element: ``I = fma(alpha, I', mean + s xi)``, ``Vhat = fma(beta, V', I + bias)``, spike
    ``Vhat > theta``, ``V = 0`` where it spiked, else ``Vhat``.
    """
    cs, os, ss = present[0], present[1], present[2]
    for b in range(start, stop):
        for t in range(mean.shape[1]):
            _forward_row(mean[b, t], scale[(b - start) * cs, t * cs], noise[b, t], bias[b], current[b],
                         voltage[b], constants, cs == 1, spikes[b, t], voltages[b * os, t * os],
                         sampled[b * ss, t * ss], margins[(b - start) * ss, t * ss])


@njit(cache=True, nogil=True, error_model="numpy")
def _backward_row(sampled, derivative, noise, variance, grad_spikes, grad_voltages, constants,
                  has_variance, voltage_adjoint, current_adjoint, grad_mean, grad_variance, grad_bias):
    """One example's step of :func:`lif_backward`, all rows ``(n,)``, branch-free (absent rows read as 0)."""
    alpha, beta, threshold = constants[0], constants[1], constants[2]
    zero, one = constants[6] - constants[6], constants[6]
    half = one / (one + one)
    for i in range(sampled.shape[0]):
        std = math.sqrt(variance[i] + constants[3])
        inverse = one / std
        if not has_variance:
            std, inverse = constants[4], constants[5]
        a = voltage_adjoint[i] + grad_voltages[i]
        vhat = sampled[i]
        grad_spike = grad_spikes[i] - a * vhat
        grad_sampled = zero if vhat > threshold else a   # (a spike is Vhat > theta)
        derivative_over_std = derivative[i] * inverse
        e = grad_sampled + grad_spike * derivative_over_std
        q = e + current_adjoint[i]
        grad_mean[i] = q
        grad_bias[i] += e
        z = ((vhat - noise[i] * std) - threshold) * inverse
        numerator = (grad_sampled + current_adjoint[i]) * noise[i] - grad_spike * (z * derivative_over_std)
        grad_variance[i] = half * numerator * inverse
        voltage_adjoint[i] = beta * e
        current_adjoint[i] = alpha * q


@njit(cache=True, nogil=True)
def lif_backward(sampled: np.ndarray, derivative: np.ndarray, noise: np.ndarray, variance: np.ndarray,
                 grad_spikes: np.ndarray, grad_voltages: np.ndarray, constants: np.ndarray,
                 present: np.ndarray, voltage_adjoint: np.ndarray, current_adjoint: np.ndarray,
                 grad_mean: np.ndarray, grad_variance: np.ndarray, grad_bias: np.ndarray) -> None:
    """The adjoint recursion of :func:`lif_forward`, each example from its last step to its first.

    ``sampled`` (Vhat; the spike ``b_t`` is ``Vhat_t > theta``, not read from memory), ``derivative`` (the
    estimator's g), ``noise``, ``variance``, the incoming ``grad_spikes`` and ``grad_voltages``:
    ``(B, T, n)``.  ``voltage_adjoint``, ``current_adjoint`` ``(B, n)`` enter as the final state's gradients
    (``a_{T-1}`` without the last step's voltage gradient, and ``alpha q_T``) and leave as the initial
    state's.  With ``a_t`` the voltage's adjoint,
    ``c_t = alpha q_{t+1}``, ``dL/db_t = dL/d(spike)_t - a_t Vhat_t``: ``e_t = a_t (1 - b_t) + dL/db_t
    g_t/s_t``, ``q_t = e_t + c_t`` (written to ``grad_mean``), ``grad_bias[b] = sum_t e_t``, and
    ``dL/dVar_t = ((a_t (1 - b_t) + c_t) xi_t - dL/db_t g_t z_t/s_t) / (2 s_t)`` (to ``grad_variance``).
    ``present`` (4 ints, 1 or 0): whether ``variance``, ``grad_spikes``, ``grad_voltages`` and
    ``grad_variance`` are given; an absent one is a ``(1, 1, n)`` array, zeros where it is read.
    """
    vs, gs, gv, ws = present[0], present[1], present[2], present[3]
    for b in range(sampled.shape[0]):
        for t in range(sampled.shape[1] - 1, -1, -1):
            _backward_row(sampled[b, t], derivative[b, t], noise[b, t], variance[b * vs, t * vs],
                          grad_spikes[b * gs, t * gs], grad_voltages[b * gv, t * gv], constants, vs == 1,
                          voltage_adjoint[b], current_adjoint[b], grad_mean[b, t],
                          grad_variance[b * ws, t * ws], grad_bias[b])
