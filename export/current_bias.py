"""A constant current bias carried exactly onto Loihi (docs/formats.md#nir-read).

A NIR ``Linear``/``Affine`` bias (snnTorch's ``nn.Linear`` bias) is added to the synaptic current every step,
``I(t) = α·I(t−1) + W·s_in(t) + c``, while a Loihi neuron's bias enters its voltage. Loihi can add a constant
to the current only as synaptic input, so the quantiser builds it from spikes that arrive every step:

* the input gets ``m₋₁`` always-on channels, 1 at every step the input is presented
  (:meth:`export.quantise.QuantisedNetwork.encode_input` appends them);
* layer k's current bias is spread over the weight columns of the ``m_(k−1)`` always-on sources in front of it
  (the input's channels for layer 0, else relay neurons of layer k − 1), as integers summing to round(c·s);
* a relay neuron of layer j receives only the ``m_(j−1)`` always-on sources in front of it, with weights whose
  sum exceeds the layer's threshold, and no bias: it fires at every step from the step its layer first
  sees the input, whatever du and dv (v is reset to 0 and u ≥ that sum each step).

Loihi delays each layer by one step (docs/loihi.md#timing): the input channel sent at step t reaches layer 0
at the step that sees input column t, and each relay passes it on with the same delay as the data, so every
layer's bias current starts exactly with its first input step, as in the float model. Relays are appended
after a layer's own neurons; they need dense layers all the way from the input, a 1-D input and a layer
after them (never the readout). A current bias that cannot be carried so (behind a conv layer or on a
(C, H, W) input) is folded into the voltage bias with the same steady state, with a warning.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hw_sim.network import CubaNeurons, DenseLayer

from .float_network import ExportError, FloatNetwork


def carried_layers(network: FloatNetwork, warnings: list[str]) -> tuple[FloatNetwork, list[int]]:
    """(the network with every current bias that cannot be carried exactly folded into the voltage bias,
    the indices of the layers whose current bias is carried)."""
    carried, layers = [], list(network.layers)
    reachable = len(network.input_shape) == 1
    for index, layer in enumerate(network.layers):
        if layer.current_bias is not None and np.any(layer.current_bias != 0) and reachable:
            carried.append(index)
        elif layer.current_bias is not None:
            if layer.alpha >= 1.0:
                raise ExportError(f"layer {index}: a current bias without current decay (α = 1) grows without "
                                  f"bound and has no voltage-bias form; it cannot be carried behind a conv layer")
            folded = layer.bias + layer.current_bias / (1.0 - layer.alpha)
            layers[index] = replace(layer, bias=folded, current_bias=None)
            if np.any(layer.current_bias != 0):
                warnings.append(f"layer {index}: its current bias is mapped to the voltage bias with the same "
                                f"steady state (always-on inputs cannot reach it through a conv layer or a "
                                f"(C, H, W) input)")
        reachable = reachable and layer.kind == "dense"
    return replace(network, layers=tuple(layers)), carried


def source_counts(network: FloatNetwork, carried: list[int], scales: list[float], vths: list[int],
                  weight_max: int) -> list[int]:
    """m_j for j = −1 … (last carried layer − 1), as a list indexed j + 1: the always-on sources in front
    of layer j + 1, enough for its bias columns to stay within ``weight_max`` and, when layer j + 1 has
    relays itself, for their summed weights to exceed its threshold ``vths[j + 1]``."""
    if not carried:
        return []
    last = max(carried)
    counts = []
    for target in range(last + 1):
        count = 1
        if target in carried:
            largest = float(np.abs(network.layers[target].current_bias).max()) * scales[target]
            count = max(count, int(np.ceil(round(largest) / weight_max)))
        if target < last:
            count = max(count, vths[target] // weight_max + 1)
        counts.append(count)
    return counts


def _spread(total: np.ndarray, count: int) -> np.ndarray:
    """Integer columns (len(total), count) whose rows sum to ``total``, as even as integers allow."""
    quotient, remainder = np.divmod(total.astype(np.int64), count)
    return quotient[:, None] + (np.arange(count)[None, :] < remainder[:, None])


def add_relays(index: int, layer: DenseLayer, current_bias: np.ndarray | None, scale: float,
               sources: int, relays: int) -> DenseLayer:
    """Integer dense layer ``index`` (weights pre-shifted ×2, exponent −1, as the quantiser writes them) with
    ``sources`` always-on columns carrying ``current_bias`` (float units, times ``scale``) and ``relays``
    relay neurons appended, each fed by all the sources with weights summing above vth."""
    neurons, weights = layer.neurons, np.asarray(layer.weights, dtype=np.int64) // 2
    out = weights.shape[0]
    bias_columns = np.zeros((out, sources), dtype=np.int64)
    if current_bias is not None:
        bias_columns = _spread(np.rint(np.asarray(current_bias, dtype=np.float64) * scale), sources)
    relay_weight = neurons.vth // sources + 1
    rows = np.block([[weights, bias_columns],
                     [np.zeros((relays, weights.shape[1]), dtype=np.int64),
                      np.full((relays, sources), relay_weight, dtype=np.int64)]])
    recurrent = None
    if layer.recurrent_weights is not None:
        recurrent = np.zeros((out + relays, out + relays), dtype=np.int64)
        recurrent[:out, :out] = layer.recurrent_weights
    pad = lambda values, fill: np.concatenate([np.asarray(values), np.full(relays, fill)])  # noqa: E731
    grown = CubaNeurons(du=neurons.du, dv=neurons.dv, vth=neurons.vth, bias_mant=pad(neurons.bias_mant, 0),
                        bias_exp=pad(neurons.bias_exp, neurons.bias_exp.reshape(-1)[0] if out else 6))
    if relays and layer.readout:
        raise ExportError(f"layer {index}: a readout cannot relay a current bias")
    return replace(layer, weights=rows * 2, neurons=grown, recurrent_weights=recurrent)
