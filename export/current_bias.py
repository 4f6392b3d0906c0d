"""A constant current bias carried exactly onto Loihi (docs/formats.md#nir-read).

A NIR ``Linear``/``Affine`` or ``Conv2d`` bias (snnTorch's ``nn.Linear``/``nn.Conv2d`` bias) is added to the
synaptic current every step, ``I(t) = α·I(t−1) + W·s_in(t) + c``, while a Loihi neuron's bias enters its
voltage. Loihi can add a constant to the current only as synaptic input, so the quantiser builds it from
spikes that arrive every step:

* the input gets ``m₋₁`` always-on channels, 1 at every step the input is presented (at every pixel of a
  (C, H, W) input; :meth:`export.quantise.QuantisedNetwork.encode_input` appends them);
* layer k's current bias is spread over the weights of the ``m_(k−1)`` always-on sources in front of it (the
  input's channels for layer 0, else relays of layer k − 1), as integers summing to round(c·s): over weight
  columns for a dense layer, over one kernel tap of the sources' channels for a conv layer;
* a relay of layer j receives only the ``m_(j−1)`` always-on sources in front of it, with weights whose sum
  exceeds the layer's threshold, and no bias: it fires at every step from the step its layer first sees the
  input, whatever du and dv (v is reset to 0 and u ≥ that sum each step). A dense layer's relays are neurons;
  a conv layer's are output channels, firing at every pixel. A dense layer behind a (C, H, W) relay or
  input shape (after a Flatten) uses the first ``m`` of its flattened always-on neurons.

The conv tap (:func:`always_on_tap`) is the tap nearest the kernel's centre that reads inside the image at
every output pixel (the centre itself when the padding is at most k // 2 · dilation), so that every output
pixel of a channel gets the same integer sum. Loihi delays each layer by one step (docs/loihi.md#timing):
the input channel sent at step t reaches layer 0 at the step that sees input column t, and each relay
passes it on with the same delay as the data, so every layer's bias current starts exactly with its first
input step, as in the float model. Relays are appended after a layer's own neurons or channels, and never
to the last layer (a readout). A current bias that cannot be carried so is folded into the voltage bias
with the same steady state, with a warning naming the cause: behind or on a conv layer with groups > 1 or
without such a tap, or a conv current bias that is not one value per channel.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hw_sim.network import ConvLayer, CubaNeurons, DenseLayer, Layer

from .float_network import ExportError, FloatLayer, FloatNetwork


def _inside_tap(size: int, out: int, kernel: int, stride: int, padding: int, dilation: int) -> int | None:
    """The kernel index nearest the centre that reads an input index in [0, size) at every one of the
    ``out`` output positions of one axis, or None."""
    inside = [tap for tap in range(kernel)
              if dilation * tap - padding >= 0 and (out - 1) * stride + dilation * tap - padding <= size - 1]
    return min(inside, key=lambda tap: (abs(2 * tap - (kernel - 1)), tap)) if inside else None


def always_on_tap(layer: FloatLayer) -> tuple[int, int] | None:
    """The (row, column) kernel tap of conv ``layer`` that reads inside the image at every output pixel,
    nearest the centre; None when there is none or when groups > 1 (appended channels break the groups)."""
    if layer.groups != 1:
        return None
    out_hw = layer.shape[1:]
    taps = tuple(_inside_tap(n, o, k, s, p, d) for n, o, k, s, p, d in zip(
        layer.input_shape[1:], out_hw, layer.weight.shape[2:], layer.stride, layer.padding, layer.dilation))
    return None if None in taps else taps


def _blocker(index: int, layer: FloatLayer) -> str | None:
    """Why always-on sources cannot reach layer ``index``'s neurons (None when they can)."""
    if layer.kind == "dense":
        return None
    if layer.groups != 1:
        return f"layer {index} is a conv with groups = {layer.groups}"
    if always_on_tap(layer) is None:
        return (f"no kernel tap of layer {index} reads inside the image at every output pixel (padding "
                f"{layer.padding} against kernel {layer.weight.shape[2:]}, dilation {layer.dilation})")
    return None


def carried_layers(network: FloatNetwork, warnings: list[str]) -> tuple[FloatNetwork, list[int]]:
    """(the network with every current bias that cannot be carried exactly folded into the voltage bias,
    the indices of the layers whose current bias is carried)."""
    carried, layers = [], list(network.layers)
    upstream = None   # why always-on sources cannot pass the layers before this one
    for index, layer in enumerate(network.layers):
        nonzero = layer.current_bias is not None and bool(np.any(layer.current_bias != 0))
        blocker = _blocker(index, layer)
        reason = upstream or blocker
        if reason is None and nonzero and layer.kind == "conv" and not _per_channel(layer.current_bias):
            reason = f"layer {index}'s conv current bias differs within a channel"
        if nonzero and reason is None:
            carried.append(index)
        elif layer.current_bias is not None:
            if layer.alpha >= 1.0:
                raise ExportError(f"layer {index}: a current bias without current decay (α = 1) grows without "
                                  f"bound and has no voltage-bias form; it cannot be carried ({reason})")
            folded = layer.bias + layer.current_bias / (1.0 - layer.alpha)
            layers[index] = replace(layer, bias=folded, current_bias=None)
            if nonzero:
                warnings.append(f"layer {index}: its current bias is mapped to the voltage bias with the same "
                                f"steady state (always-on inputs cannot carry it: {reason})")
        upstream = upstream or blocker
    return replace(network, layers=tuple(layers)), carried


def _per_channel(current_bias: np.ndarray) -> bool:
    """Whether a (C, H, W) current bias is one value per channel."""
    return bool(np.all(current_bias == current_bias[:, :1, :1]))


def source_counts(network: FloatNetwork, carried: list[int], scales: list[float], vths: list[int],
                  weight_max: int) -> list[int]:
    """m_j for j = −1 … (last carried layer − 1), as a list indexed j + 1: the always-on sources (neurons in
    front of a dense layer, channels in front of a conv layer) in front of layer j + 1, enough for its bias
    weights to stay within ``weight_max`` and, when layer j + 1 has relays itself, for their summed weights to
    exceed its threshold ``vths[j + 1]``."""
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


def _grown_neurons(neurons: CubaNeurons, relays: int) -> CubaNeurons:
    """``neurons`` with ``relays`` neurons (dense) or channels (conv) appended on the first axis, without bias."""
    shape = (relays, *neurons.shape[1:])
    exponent = neurons.bias_exp.reshape(-1)[0] if neurons.bias_exp.size else 6
    grow = lambda values, fill: np.concatenate([np.broadcast_to(values, neurons.shape),  # noqa: E731
                                                np.full(shape, fill, dtype=np.int64)])
    return CubaNeurons(du=neurons.du, dv=neurons.dv, vth=neurons.vth, bias_mant=grow(neurons.bias_mant, 0),
                       bias_exp=grow(neurons.bias_exp, exponent))


def add_relays(index: int, layer: DenseLayer, current_bias: np.ndarray | None, scale: float,
               sources: int, relays: int, present: int | None = None) -> DenseLayer:
    """Integer dense layer ``index`` (weights pre-shifted ×2, exponent −1, as the quantiser writes them) with
    ``present`` (default ``sources``) always-on columns, the first ``sources`` carrying ``current_bias``
    (float units, times ``scale``), and ``relays`` relay neurons appended, each fed by those sources with
    weights summing above vth."""
    present = sources if present is None else present
    neurons, weights = layer.neurons, np.asarray(layer.weights, dtype=np.int64) // 2
    out = weights.shape[0]
    columns = np.zeros((out + relays, present), dtype=np.int64)
    if current_bias is not None:
        columns[:out, :sources] = _spread(np.rint(np.asarray(current_bias, dtype=np.float64) * scale), sources)
    columns[out:, :sources] = neurons.vth // sources + 1
    rows = np.block([[weights], [np.zeros((relays, weights.shape[1]), dtype=np.int64)]])
    recurrent = None
    if layer.recurrent_weights is not None:
        recurrent = np.zeros((out + relays, out + relays), dtype=np.int64)
        recurrent[:out, :out] = layer.recurrent_weights
    if relays and layer.readout:
        raise ExportError(f"layer {index}: a readout cannot relay a current bias")
    return replace(layer, weights=np.concatenate([rows, columns], axis=1) * 2,
                   neurons=_grown_neurons(neurons, relays), recurrent_weights=recurrent)


def add_conv_relays(layer: ConvLayer, channel_bias: np.ndarray | None, scale: float, sources: int,
                    relays: int, tap: tuple[int, int]) -> ConvLayer:
    """Integer conv layer with ``sources`` always-on input channels appended, whose kernels are zero but at
    ``tap``, where they carry ``channel_bias`` ((C_out,) float units, times ``scale``), and ``relays`` relay
    channels appended, each fed at ``tap`` by those sources with weights summing above vth."""
    weights = np.asarray(layer.weights, dtype=np.int64)
    out, inputs = weights.shape[:2]
    grown = np.zeros((out + relays, inputs + sources, *weights.shape[2:]), dtype=np.int64)
    grown[:out, :inputs] = weights
    row, column = tap
    if channel_bias is not None:
        grown[:out, inputs:, row, column] = _spread(np.rint(np.asarray(channel_bias, np.float64) * scale), sources)
    grown[out:, inputs:, row, column] = layer.neurons.vth // sources + 1
    return replace(layer, weights=grown, neurons=_grown_neurons(layer.neurons, relays),
                   input_shape=(layer.input_shape[0] + sources, *layer.input_shape[1:]))


def _pixels(shape: tuple[int, ...]) -> int:
    """Neurons per channel of a (C, H, W) shape; 1 for a 1-D one."""
    return int(np.prod(shape[1:])) if len(shape) == 3 else 1


def carry_current_biases(network: FloatNetwork, carried: list[int], layers: list[Layer], scales: list[float],
                         vths: list[int], weight_max: int) -> tuple[list[Layer], int, list[dict]]:
    """The integer ``layers`` with always-on sources and relays carrying the ``carried`` layers' current
    biases exactly, the number of always-on input channels, and per changed layer its report entries
    (``always_on_sources``, ``relay_neurons`` and, for conv, ``relay_channels``)."""
    counts = source_counts(network, carried, scales, vths, weight_max)
    shapes = [tuple(network.input_shape)] + [layer.shape for layer in network.layers]
    # channels (or neurons) appended in front of layer t: a dense layer behind a (C, H, W) shape needs
    # only enough channels to hold its m sources among their pixels
    appended = [int(np.ceil(count / _pixels(shapes[t]))) if network.layers[t].kind == "dense" else count
                for t, count in enumerate(counts)]
    entries = []
    for index, sources in enumerate(counts):
        relays = appended[index + 1] if index + 1 < len(counts) else 0
        layer = network.layers[index]
        current_bias = layer.current_bias if index in carried else None
        if layer.kind == "dense":
            layers[index] = add_relays(index, layers[index], current_bias, scales[index], sources, relays,
                                       present=appended[index] * _pixels(shapes[index]))
            entries.append({"always_on_sources": sources, "relay_neurons": relays})
        else:
            layers[index] = add_conv_relays(layers[index], None if current_bias is None else current_bias[:, 0, 0],
                                            scales[index], sources, relays, always_on_tap(layer))
            entries.append({"always_on_sources": sources, "relay_channels": relays,
                            "relay_neurons": relays * _pixels(layer.shape)})
    return layers, appended[0] if appended else 0, entries
