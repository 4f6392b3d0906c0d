"""A trained :class:`sbnn.models.SbnnModel` → :class:`~export.float_network.FloatNetwork`.

The model's :meth:`describe` lists its deployable layers with the weights of its current mode (the
posterior mean, or one frozen posterior sample); this module only changes representation. The float
network computes what the model computes in its deterministic mode: the readout's membrane at every
step (logits are its average over time times the model's learned ``logit_scale``, kept in the
metadata), without Loihi's one step of delay per layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .float_network import FloatLayer, FloatNetwork

if TYPE_CHECKING:
    import torch

    from sbnn.models import LayerSpec


def float_network_from_model(model, *, dt: float = 1e-3, weights: str = "mean", seed: int = 0) -> FloatNetwork:
    """Describe ``model`` with the posterior mean (``weights="mean"``) or the posterior sample drawn from
    ``seed`` (``weights="sample"``) as a FloatNetwork. The model's mode is restored afterwards."""
    if weights not in ("mean", "sample"):
        raise ValueError(f"weights must be 'mean' or 'sample', found {weights!r}")
    previous = model.mode
    try:
        if weights == "sample":
            model.freeze_sample(seed)
        model.set_mode(weights)
        specs = model.describe()
    finally:
        model.set_mode(previous)
    # A flatten has no float layer: a dense layer after a conv layer reads it flattened (C, H, W) by construction.
    layers = [_float_layer(spec) for spec in specs if spec.kind != "flatten"]
    return FloatNetwork(input_shape=tuple(model.input_shape), layers=tuple(layers), dt=float(dt),
                        metadata={"weights": weights, "seed": seed if weights == "sample" else None,
                                  "logit_scale": float(model.logit_scale.detach())})


def _numpy(tensor: "torch.Tensor | None") -> np.ndarray | None:
    return None if tensor is None else tensor.detach().cpu().double().numpy()


def _float_layer(spec: "LayerSpec") -> FloatLayer:
    """One :class:`sbnn.models.LayerSpec` as a FloatLayer: the same fields under the same names, as numpy."""
    geometry = {}
    if spec.kind == "conv":
        geometry = dict(input_shape=tuple(spec.input_shape), stride=tuple(spec.stride), padding=tuple(spec.padding),
                        dilation=tuple(spec.dilation), groups=int(spec.groups))
    return FloatLayer(kind=spec.kind, weight=_numpy(spec.weight), alpha=float(spec.alpha), beta=float(spec.beta),
                      threshold=None if spec.readout else float(spec.threshold),
                      bias=_numpy(spec.bias) if spec.bias is not None else np.zeros(spec.output_shape),
                      recurrent_weight=_numpy(spec.recurrent_weight), **geometry)


def as_sequence(x: np.ndarray, input_shape: tuple[int, ...], steps: int) -> np.ndarray:
    """Inputs as (batch, T, *input_shape): sequences pass through, static inputs are repeated ``steps`` times."""
    x = np.asarray(x)
    if x.ndim == 1 + len(input_shape):
        return np.repeat(x[:, None], steps, axis=1)
    return x


def readout_logits(voltages: np.ndarray, delay: int = 0) -> np.ndarray:
    """Logits from a readout's membrane trace (batch, T', classes): its time average over the T' − delay
    steps after ``delay`` (Loihi's per-layer delay shifts the trace by one step per layer: pass
    ``network.latency`` for a hw_sim or Lava run). The one readout rule of every deployed form (hw_sim,
    Lava, the float network), times the model's ``logit_scale`` for the model's own logits."""
    return voltages[:, delay:].mean(axis=1)
