"""Bias-minimising auxiliary losses (docs/method.md#aux-loss), pluggable and weighted.

After importance weighting, what is left of an estimator's bias comes from the curvature of the
downstream loss in a single unit's flip.  A flip of unit ``i`` moves the standardised margin of a unit
``j`` it drives by ``mu_ji / s_j`` (``s_j`` the noise scale of unit ``j``), so large ratios make the flip
"far" in margin units and the downstream loss strongly nonlinear across it.  Candidate penalties:

``"none"``                0.
``"weight_noise_ratio"``  mean over synapses of ``(mu_ji / s_j)^2``, with ``s_j^2 = mean(V_j) + s0^2``
                          (``V_j`` the local-reparameterisation variance of unit ``j``'s pre-activation,
                          averaged over the recorded batch, ``s0`` the base noise).
``"margin_saturation"``   mean over recorded units and examples of ``z_j^2``, ``z`` the standardised
                          margins the noisy binary units sampled from.

Usage in a training step (the record keeps the graph, so the penalty's gradient flows)::

    penalty = make_penalty("weight_noise_ratio", weight=0.1)
    with record_activity(model) as record:
        logits = model(x)
    loss = nll + kl_term + penalty(model, record)

Recording is done with forward hooks (nothing in :mod:`sbnn.layers` changes): every
:class:`~sbnn.layers.NoisyBinaryUnits` in mode ``"noisy"`` records its margins ``z``, every
:class:`~sbnn.layers.BayesianLayer` in mode ``"noisy"`` records its output variance.  Spiking layers
(:class:`~sbnn.layers.CubaLif`) compute their margins internally and record none: use
``weight_noise_ratio`` for spiking models.

Which penalty is the default is decided by ``benchmarks/estimator_bias.py`` (see :data:`DEFAULT_PENALTY`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from sbnn.layers import (
    BayesConv2d,
    BayesianLayer,
    CubaLif,
    Mode,
    NoisyBinaryUnits,
    bayesian_layers,
    standardised_margin,
)

PENALTIES: tuple[str, ...] = ("none", "weight_noise_ratio", "margin_saturation")

# Chosen by benchmarks/estimator_bias.py (digits, enumerable 10-6 binary net trained with AGR tau=1 for
# 30 epochs, 5 seeds; exact relative bias of AGR(tau=1) on the trained net, mean +- s.e.; accuracy with
# mean weights / noisy units):
#   none                      0.70 +- 0.04   0.754 / 0.779
#   margin_saturation  0.03   0.58 +- 0.03   0.751 / 0.751
#   weight_noise_ratio 1.0    0.51 +- 0.02   0.671 / 0.673   (smaller weights: no significant change)
# Unpenalised runs stopped at 10 and 20 epochs, whose expected cross-entropy brackets the penalised
# runs', have 0.52 and 0.64: the penalties lower the relative bias only as much as fitting less does, and
# the absolute bias does not fall significantly.  The measurement supports no penalty by default.
DEFAULT_PENALTY = "none"
DEFAULT_PENALTY_WEIGHT = 0.0

# Without a recorded batch, inputs are taken to be active with probability 1/2 (so E[x^2] = 1/2 for 0/1
# inputs) when estimating a unit's noise variance from the weights.
_ASSUMED_MEAN_SQUARED_INPUT = 0.5


# ----------------------------------------------------------------------------------------------------
# Recording margins and pre-activation variances
# ----------------------------------------------------------------------------------------------------


@dataclass
class ActivityRecord:
    """What the forward passes inside :func:`record_activity` saw (graph-connected tensors).

    Attributes:
        margins: standardised margins ``z`` of each call of a noisy :class:`NoisyBinaryUnits`, each of the
            pre-activation's shape (e.g. ``(batch, units)``).
        variances: per Bayesian layer (keyed by ``id(layer)``), the output variances ``V`` of each call,
            each of the layer's output shape.
    """

    margins: list[Tensor] = field(default_factory=list)
    variances: dict[int, list[Tensor]] = field(default_factory=dict)

    def clear(self) -> None:
        self.margins.clear()
        self.variances.clear()


@contextmanager
def record_activity(model: nn.Module) -> Iterator[ActivityRecord]:
    """Record margins and pre-activation variances of the forward passes run inside the block.

    The hooks are removed on exit; the returned record keeps what was recorded.
    """
    record = ActivityRecord()

    def on_units(module: NoisyBinaryUnits, args: tuple, kwargs: dict, output: Tensor) -> None:
        if module.mode is not Mode.NOISY:
            return
        pre = args[0] if args else kwargs["pre"]
        record.margins.append(standardised_margin(pre, module.threshold, module.base_noise_std))

    def on_layer(module: BayesianLayer, args: tuple, output) -> None:
        if module.mode is Mode.NOISY and output.variance is not None:
            record.variances.setdefault(id(module), []).append(output.variance)

    handles = []
    for module in model.modules():
        if isinstance(module, NoisyBinaryUnits):
            handles.append(module.register_forward_hook(on_units, with_kwargs=True))
        elif isinstance(module, BayesianLayer):
            handles.append(module.register_forward_hook(on_layer))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------------------------------
# The penalties
# ----------------------------------------------------------------------------------------------------


def infer_base_noise_std(model: nn.Module) -> float:
    """The base noise ``s0`` shared by every noisy binary or spiking unit in ``model``.

    Raises:
        ValueError: the model has no such units, or they use different ``s0`` (pass it explicitly then).
    """
    values = set()
    for module in model.modules():
        if isinstance(module, NoisyBinaryUnits):
            values.add(module.base_noise_std)
        elif isinstance(module, CubaLif):
            values.add(module.params.base_noise_std)
    if len(values) != 1:
        found = "no noisy units" if not values else f"several base noises {sorted(values)}"
        raise ValueError(f"cannot infer the base noise s0: the model has {found}; pass base_noise_std")
    return values.pop()


def _output_channel_dim(layer: BayesianLayer, variance: Tensor) -> int:
    # Dense layers put units last; convolutions put channels third from last ((N, C, H, W) or (N, T, C, H, W)).
    return variance.dim() - 3 if isinstance(layer, BayesConv2d) else variance.dim() - 1


def _mean_unit_variance(layer: BayesianLayer, recorded: Sequence[Tensor] | None) -> Tensor:
    """``mean(V_j)`` per output unit (channel), ``(out,)``: from the recorded calls, else from the weights."""
    if recorded:
        per_call = []
        for variance in recorded:
            channel_dim = _output_channel_dim(layer, variance)
            other_dims = [d for d in range(variance.dim()) if d != channel_dim]
            per_call.append(variance.mean(dim=other_dims) if other_dims else variance)
        return torch.stack(per_call).mean(0)
    sigma_squared = layer.weight_sigma**2
    variance = _ASSUMED_MEAN_SQUARED_INPUT * sigma_squared.flatten(1).sum(1)
    if layer.bayesian_bias:
        variance = variance + torch.nn.functional.softplus(layer.bias_rho) ** 2
    return variance


def weight_noise_ratio(
    layers: Sequence[BayesianLayer],
    record: ActivityRecord | None = None,
    *,
    base_noise_std: float,
) -> Tensor:
    """Mean over all synapses of ``(mu_ji / s_j)^2`` (dimensionless scalar).

    Args:
        layers: the Bayesian layers whose synapses count (each weight ``mu`` of shape ``(out, ...)``).
        record: a record of the current forward pass; a layer recorded there uses its measured mean
            variance ``V_j``, a layer absent from it ``V_j = 1/2 sum_i sigma_ji^2`` (inputs active half
            the time).
        base_noise_std: ``s0``, the base noise of the units the layers drive (pre-activation units).

    Returns:
        The scalar penalty, differentiable in ``mu`` and ``sigma`` (and in the recorded graph).
    """
    if not layers:
        raise ValueError("weight_noise_ratio needs at least one Bayesian layer")
    if not base_noise_std >= 0:
        raise ValueError(f"base_noise_std must be >= 0, got {base_noise_std}")
    total, count = None, 0
    for layer in layers:
        recorded = record.variances.get(id(layer)) if record is not None else None
        noise_variance = _mean_unit_variance(layer, recorded) + base_noise_std**2
        mu = layer.weight_mu
        broadcast = (-1,) + (1,) * (mu.dim() - 1)
        layer_sum = (mu * mu / noise_variance.reshape(broadcast)).sum()
        total = layer_sum if total is None else total + layer_sum
        count += mu.numel()
    return total / count


def margin_saturation(record: ActivityRecord) -> Tensor:
    """Mean of ``z^2`` over every recorded unit, example (and time step) (dimensionless scalar).

    Raises:
        ValueError: nothing was recorded (run the forward pass inside :func:`record_activity`, in mode
            ``"noisy"``; spiking layers record no margins).
    """
    if not record.margins:
        raise ValueError(
            "margin_saturation needs recorded margins: run the forward pass inside record_activity(model) "
            "with NoisyBinaryUnits in mode 'noisy'"
        )
    squares = torch.cat([z.reshape(-1) ** 2 for z in record.margins])
    return squares.mean()


@dataclass(frozen=True)
class Penalty:
    """A weighted auxiliary penalty; call it as ``penalty(model, record) -> weight * value`` (scalar).

    Attributes:
        name: one of :data:`PENALTIES`.
        weight: its multiplier, ``>= 0``.
        base_noise_std: ``s0`` for ``weight_noise_ratio``; ``None`` infers it from the model.
    """

    name: str
    weight: float
    base_noise_std: float | None = None

    def value(self, model: nn.Module, record: ActivityRecord | None = None) -> Tensor:
        """The unweighted penalty of ``model`` (and of the recorded forward pass), scalar."""
        if self.name == "none":
            return _zero_like_parameters(model)
        if self.name == "weight_noise_ratio":
            base_noise = self.base_noise_std if self.base_noise_std is not None else infer_base_noise_std(model)
            return weight_noise_ratio(bayesian_layers(model), record, base_noise_std=base_noise)
        if record is None:
            raise ValueError("margin_saturation needs the record of the forward pass (see record_activity)")
        return margin_saturation(record)

    def __call__(self, model: nn.Module, record: ActivityRecord | None = None) -> Tensor:
        if self.name == "none" or self.weight == 0:
            return _zero_like_parameters(model)
        return self.weight * self.value(model, record)


def _zero_like_parameters(model: nn.Module) -> Tensor:
    parameter = next(model.parameters(), None)
    if parameter is None:
        return torch.zeros(())
    return torch.zeros((), dtype=parameter.dtype, device=parameter.device)


def make_penalty(name: str, weight: float = 1.0, *, base_noise_std: float | None = None) -> Penalty:
    """Build a penalty from the registry :data:`PENALTIES`.

    Raises:
        ValueError: unknown name, or a weight that is negative or not finite.
    """
    if name not in PENALTIES:
        raise ValueError(f"unknown auxiliary penalty {name!r}; expected one of {', '.join(PENALTIES)}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"penalty weight must be a finite number >= 0, got {weight!r}")
    if base_noise_std is not None and not base_noise_std >= 0:
        raise ValueError(f"base_noise_std must be >= 0, got {base_noise_std!r}")
    return Penalty(name, float(weight), base_noise_std)


def default_penalty() -> Penalty:
    """The penalty the measurement supports: :data:`DEFAULT_PENALTY` at :data:`DEFAULT_PENALTY_WEIGHT`."""
    return make_penalty(DEFAULT_PENALTY, DEFAULT_PENALTY_WEIGHT)


__all__ = [
    "DEFAULT_PENALTY",
    "DEFAULT_PENALTY_WEIGHT",
    "PENALTIES",
    "ActivityRecord",
    "Penalty",
    "default_penalty",
    "infer_base_noise_std",
    "make_penalty",
    "margin_saturation",
    "record_activity",
    "weight_noise_ratio",
]
