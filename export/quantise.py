"""Quantise a :class:`~export.float_network.FloatNetwork` to an integer :class:`hw_sim.Network`.

Per layer one common scale s maps weights, current and voltage to integers (docs/loihi.md#arithmetic):

    W_int = round(W·s) ∈ [-127, 127]     (8-bit weights; netx reproduces them exactly)
    vth   = round(θ·s)                   (v > vth·64 ⟺ V·s > vth)
    bias  = round(b·s) with exponent 6   (64 bias units are one unit of a_in; netx's fixed exponent)
    du    = round(4096·(1 − α)) − 1,  dv = round(4096·(1 − β))

s is the largest scale that keeps the weights (all but the largest 0.01 %, which clip) in 8 bits, the
threshold in 17 bits and — on calibration
data, run through the float model — the current and voltage inside the 24-bit range. The resulting
network is netx-exact by construction. :func:`quantise` also measures, with hw_sim on the calibration data
(followed by one zero step per layer, so that every layer sees every input step through Loihi's delays),
the largest |u| and |v| per layer against the 24-bit limit, and warns where the headroom is under 2×.

Saturation is never silent: every value the quantiser clips or clamps to a Lava range — weights, bias
mantissas, thresholds, du/dv, graded inputs — is counted per layer (``saturation``) and each non-zero
count is a warning, because a clipped bias or a threshold clamped to 0 changes what the network computes
(a bias mantissa of 67,000 clipped to 32,767 fires less; a negative threshold clamped to 0 fires less too).
The hardware's predictions on the calibration data are compared with the float model's
(``accuracy_check``): an export that loses more than ``accuracy_margin`` is flagged with a warning. Every
number in the report is finite: calibration data that would make it otherwise is an :class:`ExportError`.

Inputs: binary spikes pass as they are. Graded non-negative inputs (rates, analog features) are sent as
integer payloads (``input_message_bits`` = 8): x_int = round(x·input_scale), and the first layer's weights
are divided by ``input_scale`` so that its u and v are in the same units (s per float unit) as every
other layer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import hw_sim
from hw_sim.arith import STATE_MAX, STATE_SHIFT, alpha_to_du, beta_to_dv
from hw_sim.network import DU_RANGE, DV_RANGE, NEVER_FIRES, ConvLayer, CubaNeurons, DenseLayer, Layer, Network

from .current_bias import carried_layers, carry_current_biases
from .float_network import ExportError, FloatLayer, FloatNetwork

WEIGHT_MAX = 127
VTH_MAX = (1 << 17) - 1
BIAS_EXP = 6
BIAS_MANT_MAX = (1 << 15) - 1
INPUT_MESSAGE_BITS = 8
HEADROOM_WARNING = 2.0
ACCURACY_MARGIN = 0.05      # an export whose hardware accuracy on the calibration data is lower by more is flagged
WEIGHT_PERCENTILE = 99.99   # the |weight| percentile mapped to ±127: rare outliers clip instead of costing resolution


@dataclass
class QuantisedNetwork:
    """The integer network, how to present inputs to it, and the per-layer quantisation report."""

    network: Network
    input_scale: float                    # x_int = round(x · input_scale) when inputs are graded; 1 for spikes
    layers: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    input_saturation: dict = field(default_factory=dict)
    accuracy_check: dict | None = None
    always_on: int = 0                    # input channels appended by encode_input, 1 at every step (current biases)

    def encode_input(self, x: np.ndarray) -> np.ndarray:
        """Float inputs (batch, T, *input_shape) -> the integer spikes or payloads the hardware receives,
        with ``always_on`` channels appended on the channel axis (axis 2: (batch, T, N + always_on) or
        (batch, T, C + always_on, H, W)) when the network carries current biases, 1 at every step and pixel
        (docs/formats.md#nir-read)."""
        x = np.asarray(x, dtype=np.float64)
        if self.network.input_message_bits == 0:
            encoded = (x != 0).astype(np.uint8)
        else:
            limit = (1 << self.network.input_message_bits) - 1
            encoded = np.clip(np.rint(x * self.input_scale), 0, limit).astype(np.int64)
        if not self.always_on:
            return encoded
        ones = np.ones((*encoded.shape[:2], self.always_on, *encoded.shape[3:]), encoded.dtype)
        return np.concatenate([encoded, ones], axis=2)

    def hardware_input(self, x: np.ndarray) -> np.ndarray:
        """:meth:`encode_input` of ``x`` followed by ``network.latency`` zero steps, so that the last layer
        sees every input step (what every evaluation of an export on float inputs runs); always-on channels
        are 1 while the input is presented and 0 in the zero steps."""
        return pad_steps(self.encode_input(x), self.network.latency)

    def input_clipping(self, x: np.ndarray) -> dict:
        """How many of the float inputs ``x`` :meth:`encode_input` changes beyond rounding: non-zero inputs
        that become 0 (below half a payload step) and inputs above the largest payload (clipped to it).
        Binary inputs are never changed."""
        x = np.asarray(x, dtype=np.float64)
        nonzero = int(np.count_nonzero(x))
        if self.network.input_message_bits == 0:
            return {"nonzero": nonzero, "rounded_to_zero": 0, "clipped": 0}
        limit = (1 << self.network.input_message_bits) - 1
        scaled = np.rint(x * self.input_scale)
        return {"nonzero": nonzero, "rounded_to_zero": int(np.count_nonzero((scaled == 0) & (x != 0))),
                "clipped": int(np.count_nonzero(scaled > limit))}

    def report(self) -> dict:
        return {"input_scale": self.input_scale, "input_message_bits": self.network.input_message_bits,
                "always_on_inputs": self.always_on,
                "netx_exact": hw_sim.netx_exact(self.network), "layers": self.layers,
                "input_saturation": self.input_saturation, "accuracy_check": self.accuracy_check,
                "saturation_total": sum(sum(entry.get("saturation", {}).values()) for entry in self.layers)
                + sum(self.input_saturation.get(key, 0) for key in ("rounded_to_zero", "clipped")),
                "warnings": self.warnings}


def _clamp(value: int, low: int, high: int) -> tuple[int, int]:
    """``value`` clamped to [low, high], and 1 when the clamp changed it (else 0)."""
    clamped = int(min(max(value, low), high))
    return clamped, int(clamped != value)


def _decay_to_du(alpha: float) -> tuple[int, int]:
    """Lava's du for the current decay α, and whether it had to be clamped to [-1, 4095]."""
    return _clamp(alpha_to_du(alpha), *DU_RANGE)


def _decay_to_dv(beta: float) -> tuple[int, int]:
    """Lava's dv for the voltage decay β, and whether it had to be clamped to [0, 4096]."""
    return _clamp(beta_to_dv(beta), *DV_RANGE)


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def quantise(network: FloatNetwork, calibration: np.ndarray, *, headroom: float = 1.0,
             labels: np.ndarray | None = None, accuracy_margin: float = ACCURACY_MARGIN) -> QuantisedNetwork:
    """Integer network for ``network``, scaled on ``calibration`` inputs ((batch, T, *input_shape) floats).

    ``headroom`` ≥ 1 multiplies the peak |I| and |V| the calibration data reach when they limit a layer's
    scale (a layer whose weights limit it keeps its scale while its states stay ``headroom`` times below
    the 24-bit range), trading resolution for safety against inputs more intense than the calibration set. ``labels`` (one per calibration sample)
    let :attr:`QuantisedNetwork.accuracy_check` compare accuracies; without them the hardware is scored
    against the float model's own predictions. An export whose hardware accuracy is more than
    ``accuracy_margin`` (a fraction, 0.05 = 5 points) below the float model's is flagged with a warning.
    """
    calibration, graded = _checked_calibration(network, calibration, labels)
    input_scale = 1.0
    warnings: list[str] = []
    if graded:
        peak = float(calibration.max()) or 1.0
        input_scale = ((1 << INPUT_MESSAGE_BITS) - 1) / peak
        _check_input_outliers(calibration, input_scale, peak, warnings)

    network, carried = carried_layers(network, warnings)
    peaks, float_output = _float_run(network, calibration)
    layers, report = [], []
    previous_shape = tuple(network.input_shape)
    for index, layer in enumerate(network.layers):
        # Payloads are input_scale times the float inputs, so the first layer's weights are input_scale
        # times smaller for its u and v to be s times the float model's current and voltage.
        input_factor = 1.0 / input_scale if index == 0 else 1.0
        integer_layer, entry = _quantise_layer(index, layer, peaks[index], input_factor=input_factor,
                                               headroom=headroom, input_shape=previous_shape, warnings=warnings)
        layers.append(integer_layer)
        report.append(entry)
        previous_shape = integer_layer.shape
    layers, always_on = _carry_current_biases(network, carried, layers, report)
    input_shape = tuple(network.input_shape)
    integer_network = Network(input_shape=(input_shape[0] + always_on, *input_shape[1:]),
                              layers=tuple(layers), input_message_bits=INPUT_MESSAGE_BITS if graded else 0)
    result = QuantisedNetwork(network=integer_network, input_scale=input_scale, layers=report, warnings=warnings,
                              always_on=always_on)
    result.input_saturation = result.input_clipping(calibration)
    outcome = _measure_headroom(result, calibration)
    result.accuracy_check = _accuracy_check(network, result, outcome, float_output, labels, accuracy_margin)
    _check_finite(result.report(), "export report")
    return result


def _carry_current_biases(network: FloatNetwork, carried: list[int], layers: list[Layer],
                          report: list[dict]) -> tuple[list[Layer], int]:
    """The integer layers with always-on sources and relays carrying the ``carried`` layers' current
    biases exactly (:mod:`export.current_bias`), and the number of always-on input channels."""
    layers, always_on, entries = carry_current_biases(network, carried, layers, [entry["scale"] for entry in report],
                                                      [entry["vth"] for entry in report], WEIGHT_MAX)
    for entry, added in zip(report, entries):
        entry.update(added)
    return layers, always_on


def _checked_calibration(network: FloatNetwork, calibration: np.ndarray,
                         labels: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """The calibration inputs as float64 ``(batch, T, *input_shape)``, checked (with their labels), and
    whether they are graded (anything but 0/1 spikes)."""
    calibration = np.asarray(calibration, dtype=np.float64)
    if calibration.ndim != 2 + len(network.input_shape) or calibration.shape[2:] != tuple(network.input_shape):
        raise ExportError(f"calibration data must have shape (batch, T, {network.input_shape}), found {calibration.shape}")
    if not np.all(np.isfinite(calibration)):
        raise ExportError("calibration data contains NaN or Inf")
    if labels is not None and len(labels) != len(calibration):
        raise ExportError(f"calibration labels: {len(labels)} labels for {len(calibration)} calibration samples")
    problem = signed_input_problem(calibration)
    if problem is not None:
        raise ExportError(problem)
    return calibration, not _is_binary(calibration)


def signed_input_problem(x: np.ndarray) -> str | None:
    """Why inputs ``x`` (any shape) cannot drive a Loihi network: graded values below zero (its payloads are
    unsigned); ``None`` when they can (0/1 spikes, or non-negative graded values)."""
    lowest = float(np.min(x)) if np.size(x) else 0.0
    if lowest >= 0 or _is_binary(x):
        return None
    return (f"graded inputs must be non-negative (Loihi's payloads are unsigned), found values down to "
            f"{lowest:g}; static features: [data] encoding = \"on_off\" gives them signed channels; "
            f"sequences: shift or scale them to >= 0 (docs/data.md#encoders)")


def _layer_scale(index: int, layer: FloatLayer, weights: list[np.ndarray], peaks: tuple[float, float],
                 input_factor: float, headroom: float) -> tuple[float, str]:
    """Layer ``index``'s common scale s (integer units per float unit) and the limit that sets it: the
    largest that keeps weights in 8 bits, the threshold in 17 and the float model's peak |I| and |V| on the
    calibration data (``peaks``), times ``headroom``, in the 24-bit state."""
    largest_weight = max(float(np.percentile(np.abs(w), WEIGHT_PERCENTILE)) if w.size else 0.0
                         for w in weights) * input_factor
    limits = {"weights": WEIGHT_MAX / largest_weight if largest_weight > 0 else np.inf}
    if layer.threshold is not None and layer.threshold > 0:
        limits["threshold"] = VTH_MAX / layer.threshold
    current_peak, voltage_peak = peaks
    if not (np.isfinite(current_peak) and np.isfinite(voltage_peak)):
        raise ExportError(f"layer {index}: the float model's current or voltage overflows on the calibration "
                          f"data (|I| {current_peak:.3g}, |V| {voltage_peak:.3g}); check the data for outliers")
    if current_peak > 0:
        limits["current"] = STATE_MAX / ((1 << STATE_SHIFT) * current_peak * headroom)
    if voltage_peak > 0:
        limits["voltage"] = STATE_MAX / ((1 << STATE_SHIFT) * voltage_peak * headroom)
    scale = min(limits.values())
    if not np.isfinite(scale):
        raise ExportError(f"layer {index}: all weights are zero and there is no threshold to scale")
    return scale, min(limits, key=limits.get)


def _quantise_layer(index: int, layer: FloatLayer, peaks: tuple[float, float], *, input_factor: float,
                    headroom: float, input_shape: tuple[int, ...], warnings: list[str]) -> tuple[Layer, dict]:
    """Layer ``index`` as an integer layer on ``input_shape``, and its report entry; saturation warnings are
    appended to ``warnings``. ``input_factor`` divides the weights (1 / input_scale for the first layer)."""
    weights = [layer.weight] + ([layer.recurrent_weight] if layer.recurrent_weight is not None else [])
    scale, limited_by = _layer_scale(index, layer, weights, peaks, input_factor, headroom)
    weight_scale = scale * input_factor
    if not (weight_scale > 0 and np.isfinite(weight_scale)):
        raise ExportError(f"layer {index}: the integer scale underflows ({scale:.3g} per float unit, "
                          f"limited by {limited_by}); check the calibration data for outliers")
    saturation = {"weights": 0, "bias_mantissa": 0, "threshold": 0, "du": 0, "dv": 0}
    scaled_weights = [np.rint(w * weight_scale) for w in weights]
    int_weights = [np.clip(w, -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64) for w in scaled_weights]
    saturation["weights"] = sum(int(np.count_nonzero(np.abs(w) > WEIGHT_MAX)) for w in scaled_weights)
    error = float(np.linalg.norm(int_weights[0] / weight_scale - layer.weight) / (np.linalg.norm(layer.weight) or 1.0))
    scaled_bias = np.rint(layer.bias * scale)
    bias_mant = np.clip(scaled_bias, -BIAS_MANT_MAX, BIAS_MANT_MAX).astype(np.int64)
    saturation["bias_mantissa"] = int(np.count_nonzero(np.abs(scaled_bias) > BIAS_MANT_MAX))
    if layer.readout:
        vth, raw_vth = NEVER_FIRES, None
    else:
        raw_vth = round(layer.threshold * scale)
        vth, saturation["threshold"] = _clamp(raw_vth, 0, VTH_MAX)
    du, saturation["du"] = _decay_to_du(layer.alpha)
    dv, saturation["dv"] = _decay_to_dv(layer.beta)
    _saturation_warnings(index, saturation, warnings, weights=scaled_weights, bias=scaled_bias,
                         raw_vth=raw_vth, vth=vth, threshold=layer.threshold, alpha=layer.alpha, beta=layer.beta)
    neurons = CubaNeurons(du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=np.full(bias_mant.shape, BIAS_EXP))
    if layer.kind == "conv":
        integer_layer = ConvLayer(weights=int_weights[0], neurons=neurons, input_shape=input_shape,
                                  stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                                  groups=layer.groups)
    else:
        # Weights in [-127, 127] with exponent 0 and all 8 bits: Lava uses them exactly as given
        # once netx's (or our) weight-bit choice keeps the LSB; MIXED drops it, so pre-shift by one.
        integer_layer = DenseLayer(weights=int_weights[0] * 2, neurons=neurons, weight_exp=-1, num_weight_bits=8,
                                   recurrent_weights=int_weights[1] * 2 if len(int_weights) > 1 else None,
                                   readout=layer.readout)
    current_peak, voltage_peak = peaks
    return integer_layer, {
        "layer": index, "kind": layer.kind, "scale": scale, "limited_by": limited_by,
        "clipped_fraction": saturation["weights"] / sum(w.size for w in weights),
        "relative_weight_error": error, "saturation": saturation, "du": neurons.du, "dv": neurons.dv, "vth": vth,
        "float_peak_current": current_peak, "float_peak_voltage": voltage_peak}


def _check_input_outliers(calibration: np.ndarray, input_scale: float, peak: float, warnings: list[str]) -> None:
    """Graded inputs become 8-bit payloads scaled to the largest calibration input, so one outlier (1e300
    among values near 1) would send every other input as 0: an error when most non-zero inputs would be
    lost that way, a warning when some are."""
    nonzero = calibration[calibration != 0]
    zeroed = int(np.count_nonzero(np.rint(nonzero * input_scale) == 0))
    if not zeroed:
        return
    median = float(np.median(nonzero))
    message = (f"{zeroed} of {nonzero.size} non-zero calibration inputs ({zeroed / nonzero.size:.2%}) reach the "
               f"hardware as 0: the largest input, {peak:.3g}, sets the 8-bit input scale and is "
               f"{peak / median:.3g} times the median non-zero input ({median:.3g})")
    if 2 * zeroed > nonzero.size:
        raise ExportError(f"calibration data: {message}; remove or clip the outlier")
    warnings.append(f"input: {message}")


def _saturation_warnings(index: int, saturation: dict, warnings: list[str], *, weights: list[np.ndarray],
                         bias: np.ndarray, raw_vth: int | None, vth: int, threshold: float | None,
                         alpha: float, beta: float) -> None:
    """One warning per kind of value clipped or clamped in layer ``index``, saying how far and why it matters."""
    if saturation["weights"]:
        total = sum(w.size for w in weights)
        largest = max(float(np.abs(w).max(initial=0)) for w in weights)
        warnings.append(f"layer {index}: {saturation['weights']} of {total} weights clipped to ±{WEIGHT_MAX} "
                        f"(largest {largest:.0f}; the scale maps the {WEIGHT_PERCENTILE}th percentile of |w| "
                        f"to {WEIGHT_MAX})")
    if saturation["bias_mantissa"]:
        largest = float(np.abs(bias).max())
        warnings.append(f"layer {index}: the bias mantissa of {saturation['bias_mantissa']} of {bias.size} neurons "
                        f"clipped to ±{BIAS_MANT_MAX} (largest {largest:.0f}); those neurons get less bias than "
                        f"the float model")
    if saturation["threshold"]:
        warnings.append(f"layer {index}: threshold {threshold:.4g} (vth {raw_vth}) clamped to vth {vth}, "
                        f"Lava's range being [0, {VTH_MAX}]; the layer fires differently from the float model")
    if saturation["du"]:
        warnings.append(f"layer {index}: current decay {alpha:.6g} gives du outside [-1, 4095], clamped")
    if saturation["dv"]:
        warnings.append(f"layer {index}: voltage decay {beta:.6g} gives dv outside [0, 4096], clamped")


def _float_run(network: FloatNetwork, x: np.ndarray) -> tuple[list[tuple[float, float]], np.ndarray]:
    """Per layer the largest |I| and the largest |V| (before reset) of the float model on ``x``, and the
    float model's output per sample and class: the readout's V averaged over time, or spike counts."""
    from .float_network import simulate

    peaks: list[tuple[float, float]] = []
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported as an error by the caller
        spikes, voltages = simulate(network, x, record_peaks=peaks)
    last = network.layers[-1]
    output = voltages[-1] if last.readout else spikes[-1]
    output = output.reshape(output.shape[0], output.shape[1], -1)
    return peaks, (output.mean(axis=1) if last.readout else output.sum(axis=1))


def pad_steps(x: np.ndarray, steps: int) -> np.ndarray:
    """``x`` (batch, T, ...) followed by ``steps`` zero steps (Loihi's output lags the input by a step per layer)."""
    return np.concatenate([x, np.zeros((x.shape[0], steps, *x.shape[2:]), dtype=x.dtype)], axis=1)


def _measure_headroom(result: QuantisedNetwork, calibration: np.ndarray):
    """Largest |u| and |v| of every layer in hw_sim on the calibration data followed by one zero step per
    layer: Loihi delays each layer by a step, so without them a one-step input (a static image) would never
    reach the first layer's u within the run and its headroom would read as unlimited."""
    outcome = result.network.run(result.hardware_input(calibration), record_states=True)
    for entry, u, v in zip(result.layers, outcome.u, outcome.v):
        max_u, max_v = int(np.abs(u).max(initial=0)), int(np.abs(v).max(initial=0))
        limit = STATE_MAX + 1
        entry.update(max_abs_u=max_u, max_abs_v=max_v, state_limit=limit,
                     headroom_u=limit / max_u if max_u else None, headroom_v=limit / max_v if max_v else None)
        for name, peak in (("u", max_u), ("v", max_v)):
            if peak and limit / peak < HEADROOM_WARNING:
                result.warnings.append(f"layer {entry['layer']}: |{name}| reached {peak} on calibration data, "
                                       f"headroom {limit / peak:.2f}x < {HEADROOM_WARNING:g}x of the 24-bit range")
    return outcome


def _accuracy_check(network: FloatNetwork, result: QuantisedNetwork, outcome, float_output: np.ndarray,
                    labels: np.ndarray | None, margin: float) -> dict:
    """The hardware's predictions on the calibration data against the float model's: the readout's v
    averaged over the steps that see the input (or output spike counts), scored on ``labels`` or, without
    them, on the float model's own predictions. ``flagged`` when the hardware loses more than ``margin``."""
    latency = result.network.latency
    steps = outcome.spikes[-1].shape[1] - latency   # the calibration's own steps
    if network.layers[-1].readout:
        hardware = outcome.v[-1][:, latency:latency + steps].reshape(len(float_output), steps, -1).mean(axis=1)
    else:
        hardware = outcome.spikes[-1][:, latency:latency + steps].reshape(len(float_output), steps, -1).sum(axis=1)
    float_prediction, hardware_prediction = float_output.argmax(axis=1), hardware.argmax(axis=1)
    reference = np.asarray(labels).reshape(-1) if labels is not None else float_prediction
    float_accuracy = float(np.mean(float_prediction == reference)) if len(reference) else 0.0
    hardware_accuracy = float(np.mean(hardware_prediction == reference)) if len(reference) else 0.0
    drop = float_accuracy - hardware_accuracy
    check = {"samples": int(len(reference)), "scored_on": "labels" if labels is not None else "float predictions",
             "float_accuracy": float_accuracy, "hardware_accuracy": hardware_accuracy,
             "agreement": float(np.mean(float_prediction == hardware_prediction)) if len(reference) else 1.0,
             "drop": drop, "margin": float(margin), "flagged": bool(drop > margin)}
    if check["flagged"]:
        result.warnings.append(f"hardware accuracy on the {check['samples']} calibration samples is "
                               f"{hardware_accuracy:.1%} against {float_accuracy:.1%} for the float model "
                               f"({100 * drop:.1f} points lower, margin {100 * margin:g} points)")
    return check


def _check_finite(value, where: str) -> None:
    """Raise :class:`ExportError` naming the field when a number in the report is NaN or infinite: such a
    report would not be valid JSON, and the number would mean nothing."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            _check_finite(item, f"{where}[{position}]")
    elif isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ExportError(f"{where} holds NaN or infinite values: the quantiser cannot represent this network "
                          f"on these calibration data (check them for outliers)")
    elif isinstance(value, (float, np.floating)) and not np.isfinite(value):
        raise ExportError(f"{where} is {value}: the quantiser cannot represent this network on these calibration "
                          f"data (check them for outliers)")
