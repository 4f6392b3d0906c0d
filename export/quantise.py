"""Quantise a :class:`~export.float_network.FloatNetwork` to an integer :class:`hw_sim.Network`.

Per layer one common scale s maps weights, current and voltage to integers (LOIHI.md §1.6):

    W_int = round(W·s) ∈ [-127, 127]     (8-bit weights; netx reproduces them exactly)
    vth   = round(θ·s)                   (v > vth·64 ⟺ V·s > vth)
    bias  = round(b·s) with exponent 6   (64 bias units are one unit of a_in; netx's fixed exponent)
    du    = round(4096·(1 − α)) − 1,  dv = round(4096·(1 − β))

s is the largest scale that keeps the weights (all but the largest 0.01 %, which clip) in 8 bits, the
threshold in 17 bits and — on calibration
data, run through the float model — the current and voltage inside the 24-bit range. The resulting
network is netx-exact by construction. :func:`quantise` also measures, with hw_sim on the calibration data,
the largest |u| and |v| per layer against the 24-bit limit, and warns where the headroom is under 2×.

Inputs: binary spikes pass as they are. Graded non-negative inputs (rates, analog features) are sent as
integer payloads (``input_message_bits`` = 8): x_int = round(x·input_scale), and the first layer's weight
scale absorbs ``input_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import hw_sim
from hw_sim.arith import STATE_MAX
from hw_sim.network import NEVER_FIRES, ConvLayer, CubaNeurons, DenseLayer, Network

from .float_network import ExportError, FloatLayer, FloatNetwork

WEIGHT_MAX = 127
VTH_MAX = (1 << 17) - 1
BIAS_EXP = 6
BIAS_MANT_MAX = (1 << 15) - 1
INPUT_MESSAGE_BITS = 8
HEADROOM_WARNING = 2.0
WEIGHT_PERCENTILE = 99.99   # the |weight| percentile mapped to ±127: rare outliers clip instead of costing resolution


@dataclass
class QuantisedNetwork:
    """The integer network, how to present inputs to it, and the per-layer quantisation report."""

    network: Network
    input_scale: float                    # x_int = round(x · input_scale) when inputs are graded; 1 for spikes
    layers: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def encode_input(self, x: np.ndarray) -> np.ndarray:
        """Float inputs (batch, T, *input_shape) -> the integer spikes or payloads the hardware receives."""
        x = np.asarray(x, dtype=np.float64)
        if self.network.input_message_bits == 0:
            return (x != 0).astype(np.uint8)
        limit = (1 << self.network.input_message_bits) - 1
        return np.clip(np.rint(x * self.input_scale), 0, limit).astype(np.int64)

    def report(self) -> dict:
        return {"input_scale": self.input_scale, "input_message_bits": self.network.input_message_bits,
                "netx_exact": hw_sim.netx_exact(self.network), "layers": self.layers, "warnings": self.warnings}


def _decay_to_du(alpha: float) -> int:
    return int(np.clip(round(4096 * (1.0 - alpha)) - 1, -1, 4095))


def _decay_to_dv(beta: float) -> int:
    return int(np.clip(round(4096 * (1.0 - beta)), 0, 4096))


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def quantise(network: FloatNetwork, calibration: np.ndarray, *, headroom: float = 1.0) -> QuantisedNetwork:
    """Integer network for ``network``, scaled on ``calibration`` inputs ((batch, T, *input_shape) floats).

    ``headroom`` ≥ 1 divides the largest scale the calibration data allows, trading resolution for
    safety against inputs more intense than the calibration set.
    """
    calibration = np.asarray(calibration, dtype=np.float64)
    if calibration.ndim != 2 + len(network.input_shape) or calibration.shape[2:] != tuple(network.input_shape):
        raise ExportError(f"calibration data must have shape (batch, T, {network.input_shape}), found {calibration.shape}")
    if not np.all(np.isfinite(calibration)):
        raise ExportError("calibration data contains NaN or Inf")
    graded = not _is_binary(calibration)
    if graded and calibration.min() < 0:
        raise ExportError("graded inputs must be non-negative (Loihi payloads are unsigned); use an on/off encoding")
    input_scale = 1.0
    if graded:
        peak = float(calibration.max()) or 1.0
        input_scale = ((1 << INPUT_MESSAGE_BITS) - 1) / peak

    peaks = _float_peaks(network, calibration)
    layers, report, warnings = [], [], []
    previous_shape = tuple(network.input_shape)
    for index, layer in enumerate(network.layers):
        input_factor = input_scale if index == 0 else 1.0
        weights = [layer.weight] + ([layer.recurrent_weight] if layer.recurrent_weight is not None else [])
        largest_weight = max(float(np.percentile(np.abs(w), WEIGHT_PERCENTILE)) if w.size else 0.0
                             for w in weights) * input_factor
        limits = {"weights": WEIGHT_MAX / largest_weight if largest_weight > 0 else np.inf}
        if layer.threshold is not None and layer.threshold > 0:
            limits["threshold"] = VTH_MAX / layer.threshold
        current_peak, voltage_peak = peaks[index]
        if current_peak > 0:
            limits["current"] = STATE_MAX / (64.0 * current_peak)
        if voltage_peak > 0:
            limits["voltage"] = STATE_MAX / (64.0 * voltage_peak)
        scale = min(limits.values()) / headroom
        if not np.isfinite(scale):
            raise ExportError(f"layer {index}: all weights are zero and there is no threshold to scale")
        weight_scale = scale * input_factor   # input payloads are input_scale times larger
        int_weights = [np.clip(np.rint(w * weight_scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64) for w in weights]
        clipped = sum(int((np.abs(np.rint(w * weight_scale)) > WEIGHT_MAX).sum()) for w in weights)
        error = float(np.linalg.norm(int_weights[0] / weight_scale - layer.weight) / (np.linalg.norm(layer.weight) or 1.0))
        bias_mant = np.clip(np.rint(layer.bias * scale), -BIAS_MANT_MAX, BIAS_MANT_MAX).astype(np.int64)
        vth = NEVER_FIRES if layer.threshold is None else int(np.clip(round(layer.threshold * scale), 0, VTH_MAX))
        neurons = CubaNeurons(du=_decay_to_du(layer.alpha), dv=_decay_to_dv(layer.beta), vth=vth,
                              bias_mant=bias_mant, bias_exp=np.full(bias_mant.shape, BIAS_EXP))
        if layer.kind == "conv":
            integer_layer = ConvLayer(weights=int_weights[0], neurons=neurons, input_shape=previous_shape,
                                      stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                                      groups=layer.groups)
        else:
            # Weights in [-127, 127] with exponent 0 and all 8 bits: Lava uses them exactly as given
            # once netx's (or our) weight-bit choice keeps the LSB; MIXED drops it, so pre-shift by one.
            integer_layer = DenseLayer(weights=int_weights[0] * 2, neurons=neurons, weight_exp=-1, num_weight_bits=8,
                                       recurrent_weights=int_weights[1] * 2 if len(int_weights) > 1 else None,
                                       readout=layer.threshold is None)
        layers.append(integer_layer)
        report.append({"layer": index, "kind": layer.kind, "scale": scale, "limited_by": min(limits, key=limits.get),
                       "clipped_fraction": clipped / sum(w.size for w in weights), "relative_weight_error": error,
                       "du": neurons.du, "dv": neurons.dv, "vth": vth,
                       "float_peak_current": current_peak, "float_peak_voltage": voltage_peak})
        previous_shape = integer_layer.shape
    integer_network = Network(input_shape=tuple(network.input_shape), layers=tuple(layers),
                              input_message_bits=INPUT_MESSAGE_BITS if graded else 0)
    result = QuantisedNetwork(network=integer_network, input_scale=input_scale, layers=report, warnings=warnings)
    _measure_headroom(result, calibration)
    return result


def _float_peaks(network: FloatNetwork, x: np.ndarray) -> list[tuple[float, float]]:
    """Per layer the largest |I| and the largest |V| (before reset) of the float model on ``x``."""
    from .float_network import simulate

    peaks: list[tuple[float, float]] = []
    simulate(network, x, record_peaks=peaks)
    return peaks


def _measure_headroom(result: QuantisedNetwork, calibration: np.ndarray) -> None:
    outcome = result.network.run(result.encode_input(calibration), record_states=True)
    for entry, u, v in zip(result.layers, outcome.u, outcome.v):
        max_u, max_v = int(np.abs(u).max(initial=0)), int(np.abs(v).max(initial=0))
        limit = 1 << 23
        entry.update(max_abs_u=max_u, max_abs_v=max_v, state_limit=limit,
                     headroom_u=limit / max_u if max_u else None, headroom_v=limit / max_v if max_v else None)
        for name, peak in (("u", max_u), ("v", max_v)):
            if peak and limit / peak < HEADROOM_WARNING:
                result.warnings.append(f"layer {entry['layer']}: |{name}| reached {peak} on calibration data, "
                                       f"headroom {limit / peak:.2f}x < {HEADROOM_WARNING:g}x of the 24-bit range")
