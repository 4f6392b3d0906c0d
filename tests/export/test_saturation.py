"""Saturation is never silent (issue 12 §4): every clip or clamp of the quantiser is counted per layer in
export.json and warned about, u/v headroom is measured on every layer (graded first layers of static
inputs included), an export that loses accuracy on its calibration data is flagged, and no NaN or
infinity reaches a JSON file — checked on real export folders and real ``sbnn import`` processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from export.float_network import ExportError, FloatLayer, FloatNetwork, from_loihi
from export.folder import write_export
from export.nir_io import write_nir
from export.quantise import BIAS_MANT_MAX, quantise

DT = 1e-3
INPUTS = 400
# Elements (spikes) by which a seeded comparison may differ from its measured count on another machine, whose
# float rounding may move a value sitting on a threshold.
ROUNDING_MARGIN = 5


def strict_json(path: Path) -> dict:
    """Parse with a parser that refuses NaN and Infinity (which Python's json module accepts by default)."""
    def refuse(constant: str):
        raise AssertionError(f"{path}: holds {constant}, not valid JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def clipped_bias_network() -> FloatNetwork:
    """A readout of two classes: class 0 has no weights and a bias whose mantissa is 67,000 at the scale
    the weights set (127 per unit), class 1 counts its active inputs. The float model picks class 0 while
    fewer than 527.6 inputs are active; with the bias clipped to 32,767 the hardware picks class 1 above 258."""
    weight = np.zeros((2, INPUTS))
    weight[1] = 1.0
    return FloatNetwork(input_shape=(INPUTS,), dt=DT, layers=(FloatLayer(
        kind="dense", weight=weight, alpha=0.0, beta=0.0, threshold=None, bias=np.array([67_000 / 127, 0.0])),))


def active_inputs(count: int, samples: int = 6, steps: int = 4) -> np.ndarray:
    x = np.zeros((samples, steps, INPUTS))
    x[:, :, :count] = 1.0
    return x


def test_bias_mantissa_67000_is_clipped_counted_warned_and_flagged():
    x = active_inputs(300)
    quantised = quantise(clipped_bias_network(), x, labels=np.zeros(len(x), dtype=np.int64))
    layer = quantised.layers[0]
    assert layer["limited_by"] == "weights" and np.isclose(layer["scale"], 127.0)
    assert quantised.network.layers[0].neurons.bias_mant.tolist() == [BIAS_MANT_MAX, 0]
    assert layer["saturation"] == {"weights": 0, "bias_mantissa": 1, "threshold": 0, "du": 0, "dv": 0}
    assert any("bias mantissa of 1 of 2 neurons clipped to ±32767 (largest 67000)" in w for w in quantised.warnings)
    # the clipped bias changes every prediction: float 100 % against hardware 0 % on the calibration data
    check = quantised.accuracy_check
    assert check["float_accuracy"] == 1.0 and check["hardware_accuracy"] == 0.0 and check["flagged"] is True
    assert any("hardware accuracy on the 6 calibration samples is 0.0% against 100.0%" in w for w in quantised.warnings)
    # where both agree (few active inputs) nothing is flagged, but the clip is still counted and warned about
    calm = quantise(clipped_bias_network(), active_inputs(100), labels=np.zeros(6, dtype=np.int64))
    assert calm.accuracy_check["flagged"] is False and calm.layers[0]["saturation"]["bias_mantissa"] == 1
    assert calm.report()["saturation_total"] == 1 and len(calm.warnings) == 1


def test_negative_threshold_clamped_to_zero_is_counted_and_warned():
    rng = np.random.default_rng(0)
    network = FloatNetwork(input_shape=(24,), dt=DT, layers=(
        FloatLayer(kind="dense", weight=rng.normal(0.0, 0.3, (16, 24)), alpha=0.5, beta=0.5, threshold=-0.2,
                   bias=np.zeros(16)),
        FloatLayer(kind="dense", weight=rng.normal(0.0, 0.3, (3, 16)), alpha=0.5, beta=0.9, threshold=None,
                   bias=np.zeros(3))))
    x = (rng.random((8, 20, 24)) < 0.3).astype(np.float64)
    quantised = quantise(network, x)
    assert quantised.network.layers[0].neurons.vth == 0
    assert quantised.layers[0]["saturation"]["threshold"] == 1 and quantised.layers[1]["saturation"]["threshold"] == 0
    assert any(w.startswith("layer 0: threshold -0.2 (vth -") and "clamped to vth 0" in w for w in quantised.warnings)


def test_graded_first_layer_of_a_static_input_has_its_headroom_measured():
    """A binary net on analog features, one step per sample (a static image): Loihi's one step of delay per
    layer means the input reaches layer 0's u only after the calibration's last step, so a measurement
    without trailing zero steps reads |u| = 0 and never checks that layer's 24 bits."""
    rng = np.random.default_rng(1)
    network = FloatNetwork(input_shape=(64,), dt=DT, layers=(
        FloatLayer(kind="dense", weight=rng.normal(0.0, 1.0, (32, 64)), alpha=0.0, beta=0.0, threshold=0.0,
                   bias=rng.normal(0.0, 0.5, 32)),
        FloatLayer(kind="dense", weight=rng.normal(0.0, 1.0, (10, 32)), alpha=0.0, beta=0.0, threshold=None,
                   bias=np.zeros(10))))
    x = rng.random((16, 1, 64))
    quantised = quantise(network, x)
    assert quantised.network.input_message_bits == 8
    unpadded = quantised.network.run(quantised.encode_input(x), record_states=True)
    assert np.abs(unpadded.u[0]).max() == 0   # what the measurement saw before
    padded = np.concatenate([x, np.zeros((16, 2, 64))], axis=1)
    outcome = quantised.network.run(quantised.encode_input(padded), record_states=True)
    for entry, u, v in zip(quantised.layers, outcome.u, outcome.v):
        assert entry["max_abs_u"] == np.abs(u).max() > 0 and entry["max_abs_v"] == np.abs(v).max()
        assert entry["max_abs_u"] < entry["state_limit"] and entry["headroom_u"] is not None
    # the first layer's states are in the same units as the float model's (payloads are input_scale times x)
    hardware_float = from_loihi(quantised.network).run(quantised.encode_input(x))[0][0]
    # seeded: 1 of 512 spikes differs (measured); the margin is for other machines' float rounding
    assert np.count_nonzero(hardware_float != network.run(x)[0][0]) <= 1 + ROUNDING_MARGIN


def test_graded_first_layer_with_a_threshold_tracks_the_float_model():
    rng = np.random.default_rng(2)
    network = FloatNetwork(input_shape=(24,), dt=DT, layers=(
        FloatLayer(kind="dense", weight=rng.normal(0.08, 0.3, (20, 24)), alpha=0.8, beta=0.9, threshold=1.0,
                   bias=np.zeros(20)),
        FloatLayer(kind="dense", weight=rng.normal(0.1, 0.3, (6, 20)), alpha=0.75, beta=0.95, threshold=None,
                   bias=np.zeros(6))))
    x = rng.random((8, 40, 24)) * 0.5
    quantised = quantise(network, x)
    # The first layer's weights absorb 1/input_scale: its threshold keeps its resolution and its rate the
    # float model's (with the weights scaled by input_scale instead, vth was 0 and the rate 0.83 for 0.72).
    assert quantised.network.layers[0].neurons.vth > 1000
    hardware_float = from_loihi(quantised.network).run(quantised.encode_input(x))[0][0]
    float_spikes = network.run(x)[0][0]
    assert abs(hardware_float.mean() - float_spikes.mean()) < 0.02
    # seeded: 253 of 6400 spikes differ (measured, 3.95 %); the margin is for other machines' float rounding
    assert np.count_nonzero(hardware_float != float_spikes) <= 253 + ROUNDING_MARGIN


def test_calibration_outlier_is_an_error_and_never_a_nan(tmp_path):
    network = clipped_bias_network()
    x = np.random.default_rng(3).random((4, 5, INPUTS))
    folder, _, _ = write_export(network, x, tmp_path / "export")
    before = (folder / "export.json").read_bytes()
    strict_json(folder / "export.json")
    outlier = x.copy()
    outlier[0, 0, 0] = 1e300
    with pytest.raises(ExportError, match=r"calibration data: .* non-zero calibration inputs .* reach the hardware "
                                          r"as 0: the largest input, 1e\+300.*remove or clip the outlier"):
        write_export(network, outlier, tmp_path / "export")
    assert (folder / "export.json").read_bytes() == before   # the previous export is kept
    # a milder outlier that zeroes a few inputs is exported, with a warning and valid JSON
    mild = x.copy()
    mild[0, 0, 0] = 40.0
    _, quantised, report = write_export(network, mild, tmp_path / "export")
    assert report["input_saturation"]["rounded_to_zero"] > 0 and report["saturation_total"] > 0
    assert any(w.startswith("input: ") and "reach the hardware as 0" in w for w in report["warnings"])
    assert strict_json(folder / "export.json")["input_saturation"] == report["input_saturation"]


def test_sbnn_import_warns_records_and_refuses_outliers(tmp_path):
    """Real processes: the warnings are printed and recorded, export.json is strict JSON with the
    provenance of the graph file, and an outlier in --calibration is one line with exit code 2."""
    write_nir(clipped_bias_network(), tmp_path / "model.nir")
    np.save(tmp_path / "calibration.npy", active_inputs(300))
    outlier = np.random.default_rng(4).random((4, 5, INPUTS))
    outlier[1, 2, 3] = 1e300
    np.save(tmp_path / "outlier.npy", outlier)
    done = run_cli("import", tmp_path / "model.nir", "--calibration", tmp_path / "calibration.npy",
                "--out", tmp_path / "export")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: layer 0: the bias mantissa of 1 of 2 neurons clipped to ±32767" in done.stdout
    assert "warning: hardware accuracy on the 6 calibration samples" in done.stdout
    report = strict_json(tmp_path / "export" / "export.json")
    assert report["layers"][0]["saturation"]["bias_mantissa"] == 1 and report["accuracy_check"]["flagged"] is True
    assert report["accuracy_check"]["scored_on"] == "float predictions"
    inputs = report["provenance"]["inputs"]
    assert len(inputs["nir_sha256"]) == 64 and len(inputs["calibration_sha256"]) == 64
    assert len(inputs["calibration_source"]["file_sha256"]) == 64 and len(inputs["code"]["sources_sha256"]) == 64
    before = {path.name: path.read_bytes() for path in (tmp_path / "export").iterdir()}
    done = run_cli("import", tmp_path / "model.nir", "--calibration", tmp_path / "outlier.npy", "--out", tmp_path / "export")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "1e+300" in done.stderr and "remove or clip the outlier" in done.stderr
    assert {path.name: path.read_bytes() for path in (tmp_path / "export").iterdir()} == before


def test_report_shows_saturation_accuracy_check_and_warnings():
    from sbnn.report import render

    check = {"samples": 6, "scored_on": "labels", "float_accuracy": 1.0, "hardware_accuracy": 0.0, "agreement": 0.0,
             "drop": 1.0, "margin": 0.05, "flagged": True}
    result = {"name": "tiny", "exports": [{"name": "mean", "accuracy_hw": 0.5, "netx_exact": True,
                                           "saturation": {"weights": 0, "bias_mantissa": 1, "threshold": 0},
                                           "accuracy_check": check,
                                           "warnings": ["layer 0: the bias mantissa of 1 of 2 neurons clipped"]}]}
    page = render(result, provenance={"results_sha256": "ab" * 32})
    assert "1 bias mantissa" in page and "0.0% vs 100.0% (6 samples) FLAGGED" in page
    assert "mean: layer 0: the bias mantissa of 1 of 2 neurons clipped" in page


def test_report_records_what_it_was_made_from(tmp_path):
    from sbnn.report import recorded_report_inputs, write_report

    inputs = {"results_sha256": "ab" * 32, "code": {"version": "0.1.0", "sources_sha256": "cd" * 32}}
    path = write_report({"name": "tiny"}, tmp_path / "report.html", provenance=inputs)
    assert recorded_report_inputs(path) == inputs
    assert recorded_report_inputs(write_report({"name": "tiny"}, tmp_path / "old.html")) is None


def test_weight_outliers_beyond_the_percentile_are_counted_and_warned():
    rng = np.random.default_rng(5)
    weight = rng.normal(0.0, 0.1, (10, 2000))
    weight[3, 7] = 10.0   # one weight far beyond the 99.99th percentile that sets the scale
    network = FloatNetwork(input_shape=(2000,), dt=DT, layers=(
        FloatLayer(kind="dense", weight=weight, alpha=0.5, beta=0.5, threshold=None, bias=np.zeros(10)),))
    quantised = quantise(network, (rng.random((4, 6, 2000)) < 0.05).astype(np.float64))
    clipped = quantised.layers[0]["saturation"]["weights"]
    assert clipped >= 1 and quantised.layers[0]["clipped_fraction"] == clipped / weight.size
    assert quantised.network.layers[0].weights[3, 7] == 2 * 127
    assert any(w.startswith(f"layer 0: {clipped} of 20000 weights clipped to ±127") for w in quantised.warnings)


def test_headroom_divides_the_state_limits_not_the_weight_limit():
    # A readout with weights 1 on 300 active inputs: weights limit the scale to 127, and its state peaks
    # (|I| = |V| = 300 per step) leave 2^23 / (64 * 127 * 300) = 3.4x of headroom.
    x = active_inputs(300)
    network = clipped_bias_network()
    network = FloatNetwork(input_shape=network.input_shape, dt=DT, layers=(FloatLayer(
        kind="dense", weight=network.layers[0].weight, alpha=0.0, beta=0.0, threshold=None, bias=np.zeros(2)),))
    for headroom in (1.0, 3.0):   # within the layer's own headroom: the weight limit stays
        layer = quantise(network, x, headroom=headroom).layers[0]
        assert layer["limited_by"] == "weights" and np.isclose(layer["scale"], 127.0)
    layer = quantise(network, x, headroom=8.0).layers[0]   # beyond it: the state sets the scale
    state_limit = ((1 << 23) - 1) / (64 * 300 * 8.0)
    assert layer["limited_by"] in ("current", "voltage") and np.isclose(layer["scale"], state_limit)
    assert layer["headroom_v"] > 0.95 * 8.0   # measured in hw_sim: 8x up to the rounding of the weights
