"""Modes of the SBNN's layers and the pre-activation they pass on (docs/method.md#sbnn).

Every mode-aware module has a ``mode``:

``"mean"``    posterior-mean weights and deterministic units (``b = 1[M > theta]``): what deploys.
``"noisy"``   training and noisy evaluation: a layer returns the local-reparameterisation moments of its
              pre-activation, mean ``M = x mu (+ bias)`` and variance ``V = x^2 sigma^2`` (``= x sigma^2``
              for 0/1 inputs), and the unit samples ``b = 1[M + sqrt(V + s0^2) eps > theta]`` with a
              gradient estimator, i.e. ``b = sample((M - theta) / sqrt(V + s0^2))``.  Noise is fresh per
              example and per time step.
``"sample"``  one posterior sample frozen by ``freeze_sample(seed)`` (the integer network that is exported)
              with deterministic units.

Use :func:`set_mode` to switch a whole model.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from torch import Tensor, nn


class Mode(str, Enum):
    """How a layer treats its weights and units (see the module docstring)."""

    MEAN = "mean"
    NOISY = "noisy"
    SAMPLE = "sample"


def as_mode(mode: Mode | str) -> Mode:
    """Parse ``"mean"``, ``"noisy"`` or ``"sample"`` (or a :class:`Mode`); ``ValueError`` otherwise."""
    try:
        return Mode(mode)
    except ValueError:
        raise ValueError(f"unknown mode {mode!r}; expected one of {[m.value for m in Mode]}") from None


class ModeAware(nn.Module):
    """Base of the modules that have a :class:`Mode`."""

    def __init__(self, mode: Mode | str = Mode.NOISY) -> None:
        super().__init__()
        self._mode = as_mode(mode)

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode | str) -> None:
        self._mode = as_mode(value)

    def extra_repr(self) -> str:
        return f"mode={self._mode.value}"


def set_mode(module: nn.Module, mode: Mode | str) -> nn.Module:
    """Set ``mode`` on every mode-aware submodule of ``module`` (itself included); returns ``module``."""
    parsed = as_mode(mode)
    for submodule in module.modules():
        if isinstance(submodule, ModeAware):
            submodule.mode = parsed
    return module


class Preactivation(NamedTuple):
    """Pre-activation of a layer of units.

    ``mean``: ``M``, in the units of the weights times the input.  ``variance``: ``V`` of the
    local-reparameterisation Gaussian, same shape, or ``None`` when the weights are deterministic (modes
    ``"mean"`` and ``"sample"``).
    """

    mean: Tensor
    variance: Tensor | None


def _as_preactivation(pre: Preactivation | Tensor) -> Preactivation:
    if isinstance(pre, Preactivation):
        return pre
    if isinstance(pre, Tensor):
        return Preactivation(pre, None)
    raise TypeError(f"expected a Preactivation or a Tensor, got {type(pre).__name__}")


def _add_optional(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b
