"""A float, discrete-time CUBA network: the common form between a trained model, NIR and Loihi integers.

Per layer and step t (no synaptic delay; ``s_in`` is the previous layer's output at the same step)::

    I(t) = α·I(t-1) + W·s_in(t) [+ W_rec·s(t-1)] [+ c]
    V(t) = β·V(t-1) + I(t) + bias
    s(t) = V(t) > θ,  V(t) ← 0 where s(t)        (readout layers never spike; V is their output)

Units: weights, I, V, bias and θ share one arbitrary unit per layer. A quantised Loihi layer is the same
equations with α = (4095 − du)/4096, β = (4096 − dv)/4096, W the effective integer weights, θ = vth and
bias = bias_mant·2^bias_exp / 64, so :func:`from_loihi` gives "the float model of the quantised network":
the same integer parameters in float arithmetic without Loihi's per-layer delay, which separates
quantisation error from arithmetic and timing effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class ExportError(ValueError):
    """The network cannot be exported as asked: a layer beyond what Loihi or an ONNX step computes exactly,
    or calibration data the quantiser cannot use; or an export folder whose ``export.json`` cannot be read back.
    A property of the user's model, data or files, not a bug, so the command line reports it in one line with
    exit code 2."""


@dataclass(frozen=True, eq=False)
class FloatLayer:
    """One dense or conv synapse and its CUBA neurons (or a non-spiking readout).

    ``weight``: (out, in) for dense (``in`` = flattened previous layer, C, H, W order), (C_out, C_in/groups,
    kH, kW) for conv (torch cross-correlation). ``bias`` is layer-shaped, added to V every step.
    ``current_bias`` (None when there is none) is layer-shaped, added to I every step (a NIR
    ``Linear``/``Affine`` or ``Conv2d`` bias); the quantiser carries it exactly with always-on inputs where
    the geometry allows (docs/formats.md#nir-read). ``threshold`` is None for a readout.
    """

    kind: str                                   # "dense" or "conv"
    weight: np.ndarray
    alpha: float
    beta: float
    threshold: float | None
    bias: np.ndarray
    recurrent_weight: np.ndarray | None = None
    input_shape: tuple[int, ...] = ()           # conv only: (C, H, W)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    current_bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("dense", "conv"):
            raise ValueError(f"layer kind must be 'dense' or 'conv', found {self.kind!r}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], found {value}")
        if self.kind == "dense" and self.weight.ndim != 2:
            raise ValueError(f"dense weight must be (out, in), found shape {self.weight.shape}")
        if self.kind == "conv" and (self.weight.ndim != 4 or len(self.input_shape) != 3):
            raise ValueError("conv needs a (C_out, C_in, kH, kW) weight and a (C, H, W) input shape")
        if self.bias.shape != self.shape:
            raise ValueError(f"bias shape {self.bias.shape} does not match layer shape {self.shape}")
        if self.current_bias is not None and self.current_bias.shape != self.shape:
            raise ValueError(f"a current bias needs the layer's shape {self.shape}, found {self.current_bias.shape}")

    @property
    def readout(self) -> bool:
        return self.threshold is None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.kind == "dense":
            return (self.weight.shape[0],)
        from hw_sim.network import conv_output_hw
        h, w = conv_output_hw(self.input_shape[1:], self.weight.shape[2:], self.stride, self.padding, self.dilation)
        return (self.weight.shape[0], h, w)


@dataclass(frozen=True, eq=False)
class FloatNetwork:
    """``input_shape`` ((N,) or (C, H, W)), then layers in order; ``dt`` in seconds (for NIR time constants)."""

    input_shape: tuple[int, ...]
    layers: tuple[FloatLayer, ...]
    dt: float = 1e-3
    metadata: dict = field(default_factory=dict)

    def run(self, x: np.ndarray, *, record_voltage: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Simulate in float64. ``x``: (batch, T, *input_shape) -> (spikes per layer, V per layer if asked),
        each (batch, T, *shape). A readout layer's spikes are all zero; its V is the output."""
        return simulate(self, x, record_voltage=record_voltage)


def _synaptic_input(layer: FloatLayer, rows: np.ndarray) -> np.ndarray:
    if layer.kind == "conv":
        import torch
        import torch.nn.functional as F
        with torch.no_grad():
            return F.conv2d(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64)),
                            torch.from_numpy(np.asarray(layer.weight, dtype=np.float64)), stride=layer.stride,
                            padding=layer.padding, dilation=layer.dilation, groups=layer.groups).numpy()
    return rows.reshape(rows.shape[0], -1).astype(np.float64) @ np.asarray(layer.weight, dtype=np.float64).T


def simulate(network: FloatNetwork, x: np.ndarray, *, record_voltage: bool = False,
             record_peaks: list | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """See :meth:`FloatNetwork.run`; ``record_peaks``, if given, receives per layer (max |I|, max |V| before reset)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 + len(network.input_shape) or tuple(x.shape[2:]) != tuple(network.input_shape):
        raise ValueError(f"input must have shape (batch, T, {network.input_shape}), found {x.shape}")
    batch, steps = x.shape[:2]
    spikes_out, voltages_out = [], []
    layer_input = x
    for layer in network.layers:
        synaptic = _synaptic_input(layer, layer_input.reshape(batch * steps, *layer_input.shape[2:]))
        synaptic = synaptic.reshape(batch, steps, *layer.shape)
        current = np.zeros((batch, *layer.shape))
        voltage = np.zeros_like(current)
        spikes = np.zeros((batch, steps, *layer.shape))
        voltages = np.zeros_like(spikes) if record_voltage or layer.readout else None
        fired = np.zeros_like(current)
        peak_current = peak_voltage = 0.0
        recurrent = np.asarray(layer.recurrent_weight, dtype=np.float64) if layer.recurrent_weight is not None else None
        for t in range(steps):
            drive = synaptic[:, t]
            if recurrent is not None:
                drive = drive + fired @ recurrent.T
            current = layer.alpha * current + drive
            if layer.current_bias is not None:
                current = current + layer.current_bias
            voltage = layer.beta * voltage + current + layer.bias
            if record_peaks is not None:
                peak_current = max(peak_current, float(np.abs(current).max(initial=0.0)))
                peak_voltage = max(peak_voltage, float(np.abs(voltage).max(initial=0.0)))
            if layer.readout:
                fired = np.zeros_like(voltage)
            else:
                fired = (voltage > layer.threshold).astype(np.float64)
                voltage = np.where(fired > 0, 0.0, voltage)
            spikes[:, t] = fired
            if voltages is not None:
                voltages[:, t] = voltage
        if record_peaks is not None:
            record_peaks.append((peak_current, peak_voltage))
        spikes_out.append(spikes)
        voltages_out.append(voltages if voltages is not None else np.empty(0))
        layer_input = spikes
    return spikes_out, voltages_out


def from_loihi(network) -> FloatNetwork:
    """The float model of a quantised :class:`hw_sim.Network`: same integers, float arithmetic, no delay.

    Units are a_in units (u/64 and v/64). Exact for dense synapses whose weight exponent shift is
    linear (the float model cannot represent the floor of a negative exponent on the summed input).
    """
    from hw_sim.arith import STATE_SHIFT, du_to_alpha, dv_to_beta, prepare_dense_weights
    from hw_sim.network import ConvLayer, DenseLayer

    layers = []
    for layer in network.layers:
        neurons = layer.neurons
        common = dict(alpha=du_to_alpha(neurons.du), beta=dv_to_beta(neurons.dv),
                      threshold=None if isinstance(layer, DenseLayer) and layer.readout else float(neurons.vth),
                      bias=neurons.bias.astype(np.float64) / (1 << STATE_SHIFT))
        if isinstance(layer, ConvLayer):
            layers.append(FloatLayer(kind="conv", weight=layer.weights.astype(np.float64), input_shape=layer.input_shape,
                                     stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                                     groups=layer.groups, **common))
            continue
        scale = 2.0 ** layer.weight_exp

        def effective(weights):
            sign_mode = layer.effective_sign_mode(weights)
            return prepare_dense_weights(weights, sign_mode, layer.num_weight_bits).astype(np.float64) * scale

        layers.append(FloatLayer(kind="dense", weight=effective(layer.weights),
                                 recurrent_weight=None if layer.recurrent_weights is None else effective(layer.recurrent_weights),
                                 **common))
    return FloatNetwork(input_shape=network.input_shape, layers=tuple(layers))
