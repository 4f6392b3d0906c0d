"""Evaluating a run's exported networks: what ``results.json`` holds (:func:`evaluate_exports`).

Every export runs on the whole test set in hw_sim (accuracy, energy proxies); the posterior mean also in
Lava on ``pipeline.lava_samples`` test samples, verified against hw_sim spike for spike (u and v
included), in float arithmetic with its quantised parameters, and for the firing rates and the raster.
The float model's accuracies are computed beside them for comparison, and the calibration and entropy
of the hardware ensemble (the posterior samples' probabilities averaged; the posterior mean's when the
run has no samples).

Timing: Loihi adds one step of delay per layer, so a deployed network runs T + L steps (L =
``network.latency`` zero steps appended to each input, :meth:`export.quantise.QuantisedNetwork.hardware_input`)
and its readout is averaged over steps L … T + L − 1 (:func:`export.from_model.readout_logits`), which
see exactly the input steps the float model sees.

Command-line code (it reads export folders through :class:`export.folder_reader.ExportFolder`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

import hw_sim
from export.folder_reader import ExportFolder
from export.from_model import as_sequence, readout_logits

from .evaluate import (accuracy, expected_calibration_error, predict_ensemble, predict_mean, predict_noisy,
                       predictive_entropy, reliability_bins)
from .results import AccuracyTable, CalibrationSummary, EntropySummary, ExportSummary, ResultsDocument

LOGIT_BATCH = 256       # test samples simulated at a time by default
ENERGY_SAMPLES = 128    # test samples whose activity the energy proxies count
RASTER_SAMPLES = 256    # test samples of the firing rates (the raster shows the first)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the ``with`` block takes as ``timings[name]``."""
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def as_numpy(values) -> np.ndarray:
    """A tensor's (on the CPU) or an array-like's values as a numpy array."""
    return values.numpy() if hasattr(values, "numpy") else np.asarray(values)


def model_sequences(x, model) -> np.ndarray:
    """A model's inputs ``x`` (a tensor or array) as float64 sequences ``(N, T, *input_shape)``: static
    features are repeated for ``model.config.static_steps`` steps."""
    return as_sequence(as_numpy(x), model.input_shape, model.config.static_steps).astype(np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, C)`` from logits ``(N, C)``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _opened(folder: ExportFolder | str | Path) -> ExportFolder:
    return folder if isinstance(folder, ExportFolder) else ExportFolder(folder)


def hardware_logits(folder: ExportFolder | str | Path, x: np.ndarray, *, batch: int = LOGIT_BATCH,
                    backend: str = "hw_sim", keep: dict | None = None) -> np.ndarray:
    """Logits ``(N, classes)`` of an exported network on float inputs ``x`` ``(N, T, ...)`` in hw_sim (or
    Lava): the readout's v averaged over the T steps after the network's latency, in the float model's
    units (v / 64 / scale), times the model's logit scale (:attr:`ExportFolder.readout_scale`).
    ``keep`` (a dict) receives the first batch's ``result`` and ``encoded`` inputs."""
    folder = _opened(folder)
    network, quantised = folder.network, folder.quantised
    logits = []
    for start in range(0, len(x), batch):
        encoded = quantised.hardware_input(x[start:start + batch])
        if backend == "lava":
            result = hw_sim.lava.run(network, encoded, record_states=True)
        else:
            result = network.run(encoded, record_states=True)
        logits.append(readout_logits(result.v[-1], network.latency) / folder.readout_scale)
        if keep is not None and start == 0:
            keep["result"], keep["encoded"] = result, encoded
    return np.concatenate(logits)


def firing_rates_and_raster(folder: ExportFolder | str | Path, x: np.ndarray,
                            limit: int = RASTER_SAMPLES) -> tuple[list[float], list]:
    """hw_sim on the first ``limit`` inputs of ``x`` ``(N, T, ...)``: each layer's firing rate (spikes per
    neuron per step) and each layer's spikes of the first sample, ``(T + latency, neurons)`` of 0/1."""
    folder = _opened(folder)
    result = folder.network.run(folder.quantised.hardware_input(x[:limit]))
    rates = [float(s.mean()) for s in result.spikes]
    raster = [s[0].reshape(s.shape[1], -1).astype(np.uint8).tolist() for s in result.spikes]
    return rates, raster


def export_saturation(report: dict) -> dict:
    """What an export.json says the quantiser clipped or clamped, summed over layers per kind (weights,
    bias_mantissa, threshold, du, dv) plus the graded inputs (input_rounded_to_zero, input_clipped)."""
    totals: dict[str, int] = {}
    for layer in report.get("layers", []):
        for kind, count in (layer.get("saturation") or {}).items():
            totals[kind] = totals.get(kind, 0) + int(count)
    inputs = report.get("input_saturation") or {}
    totals["input_rounded_to_zero"] = int(inputs.get("rounded_to_zero", 0))
    totals["input_clipped"] = int(inputs.get("clipped", 0))
    return totals


@dataclass(frozen=True)
class HardwareEvaluation:
    """One export on the test set in hw_sim: its entry of ``results.json``'s ``exports``, its class
    probabilities ``(N, classes)`` and its energy report (:func:`hw_sim.energy.energy_report`)."""

    summary: ExportSummary
    probabilities: np.ndarray
    energy: dict


def evaluate_export(name: str, folder: ExportFolder, x_test: np.ndarray, labels: np.ndarray, *,
                    batch: int = LOGIT_BATCH) -> HardwareEvaluation:
    """Accuracy on the whole test set ``x_test`` ``(N, T, ...)`` and energy on its first
    :data:`ENERGY_SAMPLES` samples, in hw_sim, of the export called ``name``."""
    from hw_sim.energy import energy_report

    probabilities = softmax(hardware_logits(folder, x_test, batch=batch))
    energy = energy_report(folder.network, folder.quantised.hardware_input(x_test[:ENERGY_SAMPLES]))
    report = folder.report
    summary = ExportSummary(name=name, dir=str(folder.path), accuracy_hw=accuracy(probabilities, labels),
                            energy_uj=energy["energy_uj"], synops=energy["synops_per_inference"],
                            netx_exact=report["netx_exact"], saturation=export_saturation(report),
                            accuracy_check=report.get("accuracy_check"), warnings=report["warnings"])
    return HardwareEvaluation(summary, probabilities, energy)


@dataclass(frozen=True)
class FloatPredictions:
    """The float model's class probabilities ``(N, classes)`` on the test set, three ways (:mod:`sbnn.evaluate`)."""

    mean: np.ndarray
    noisy: np.ndarray
    ensemble: np.ndarray


def float_predictions(config, model, data) -> FloatPredictions:
    """The posterior mean, noisy units (``train.eval_samples`` passes from ``train.eval_seed``) and the
    ensemble of the ``export.posterior_samples`` posterior samples the pipeline exports."""
    samples, seed = config.train.eval_samples, config.train.eval_seed
    return FloatPredictions(
        mean=predict_mean(model, data.x_test).numpy(),
        noisy=predict_noisy(model, data.x_test, samples=samples, seed=seed).numpy(),
        ensemble=predict_ensemble(model, data.x_test, samples=max(1, config.export.posterior_samples),
                                  seed=config.export.seed).numpy())


def quantised_float_accuracy(folder: ExportFolder, x_test: np.ndarray, labels: np.ndarray, *,
                             batch: int = LOGIT_BATCH) -> float:
    """Accuracy of an export's integer parameters in float arithmetic without Loihi's delay
    (:func:`export.float_network.from_loihi`): the quantisation error alone.  Runs ``batch`` samples at a
    time: the float64 states of a whole test set of a conv net would not fit in memory."""
    from export.float_network import from_loihi

    network = from_loihi(folder.network)
    logits = []
    for start in range(0, len(x_test), batch):
        _, voltages = network.run(folder.quantised.encode_input(x_test[start:start + batch]))
        logits.append(readout_logits(voltages[-1]))
    return accuracy(np.concatenate(logits), labels)


@dataclass(frozen=True)
class LavaCheck:
    """hw_sim against Lava on the first ``samples`` test samples: ``verify`` (:meth:`hw_sim.VerifyReport.to_json`)
    and both accuracies, or the one-line ``error`` of a Lava that could not run (then those are None)."""

    samples: int
    verify: dict | None = None
    lava_accuracy: float | None = None
    hw_accuracy: float | None = None
    error: str | None = None


def lava_check(folder: ExportFolder, x_test: np.ndarray, labels: np.ndarray, settings) -> LavaCheck:
    """Run an export in hw_sim and in Lava on the first ``settings.lava_samples`` test samples (in
    ``settings.lava_workers`` processes, stopped after ``settings.lava_timeout`` s) and compare them."""
    count = min(settings.lava_samples, len(x_test))
    if not count:
        return LavaCheck(count)
    network = folder.network
    encoded = folder.quantised.hardware_input(x_test[:count])
    ours = network.run(encoded, record_states=True)
    try:
        theirs = hw_sim.lava.run(network, encoded, record_states=True, workers=settings.lava_workers,
                                 timeout=settings.lava_timeout)
    except hw_sim.lava.LavaError as error:
        return LavaCheck(count, error=str(error))
    return LavaCheck(count, verify=hw_sim.compare(ours, theirs).to_json(),
                     lava_accuracy=accuracy(readout_logits(theirs.v[-1], network.latency), labels[:count]),
                     hw_accuracy=accuracy(readout_logits(ours.v[-1], network.latency), labels[:count]))


def calibration_summary(probabilities: np.ndarray, labels: np.ndarray, float_ensemble: np.ndarray,
                        name: str) -> CalibrationSummary:
    """The reliability diagram and ECE of ``probabilities`` ``(N, classes)``, beside the float ensemble's ECE."""
    diagram = reliability_bins(probabilities, labels)
    edges = np.asarray(diagram["edges"])
    return CalibrationSummary(name=name, bin_centers=((edges[:-1] + edges[1:]) / 2).tolist(),
                              bin_accuracy=diagram["accuracy"], bin_counts=diagram["count"],
                              ece=expected_calibration_error(probabilities, labels),
                              float_ensemble_ece=expected_calibration_error(float_ensemble, labels))


def entropy_summary(probabilities: np.ndarray, labels: np.ndarray) -> EntropySummary:
    """Predictive entropy of ``probabilities`` ``(N, classes)`` on the correctly and the wrongly classified samples."""
    entropy = predictive_entropy(probabilities).numpy()
    correct = probabilities.argmax(axis=1) == labels
    return EntropySummary(correct=entropy[correct].tolist(), wrong=entropy[~correct].tolist())


def _accuracy_table(floats: FloatPredictions, labels: np.ndarray, *, quantised_float: float, hw_mean: float,
                    hw_ensemble: np.ndarray | None, lava: LavaCheck) -> AccuracyTable:
    return AccuracyTable(float_mean=accuracy(floats.mean, labels), float_noisy=accuracy(floats.noisy, labels),
                         float_ensemble=accuracy(floats.ensemble, labels), quantised_float=quantised_float,
                         hw_mean=hw_mean, hw_ensemble=None if hw_ensemble is None else accuracy(hw_ensemble, labels),
                         lava_subset=lava.lava_accuracy, hw_subset=lava.hw_accuracy, lava_subset_size=lava.samples,
                         test_samples=int(len(labels)))


def evaluate_exports(run_dir: Path, config, model, data, folders: list[tuple[str, Path]]) -> ResultsDocument:
    """Accuracy, verification, energy and the report's series for the exported networks ``folders``
    (``(name, folder)``, the posterior mean called ``"mean"``) of the run ``model`` was loaded from."""
    timings: dict[str, float] = {}
    labels = data.y_test.numpy()
    x_test = model_sequences(data.x_test, model)
    with timed(timings, "float_models"):
        floats = float_predictions(config, model, data)
    opened = {name: ExportFolder(folder) for name, folder in folders}
    with timed(timings, "hw_sim"):
        hardware = {name: evaluate_export(name, folder, x_test, labels, batch=config.pipeline.hw_batch)
                    for name, folder in opened.items()}
    mean = opened["mean"]
    with timed(timings, "quantised_float"):
        quantised_float = quantised_float_accuracy(mean, x_test, labels, batch=config.pipeline.hw_batch)
    with timed(timings, "lava"):
        lava = lava_check(mean, x_test, labels, config.pipeline)
    samples = [run.probabilities for name, run in hardware.items() if name != "mean"]
    ensemble = np.mean(samples, axis=0) if samples else hardware["mean"].probabilities
    rates, raster = firing_rates_and_raster(mean, x_test)
    return ResultsDocument(
        accuracy=_accuracy_table(floats, labels, quantised_float=quantised_float,
                                 hw_mean=hardware["mean"].summary["accuracy_hw"],
                                 hw_ensemble=ensemble if samples else None, lava=lava),
        calibration=calibration_summary(ensemble, labels, floats.ensemble,
                                        "hardware ensemble" if samples else "hardware posterior mean"),
        entropy=entropy_summary(ensemble, labels), verify=lava.verify, lava_error=lava.error,
        exports=[run.summary for run in hardware.values()], energy={"mean": hardware["mean"].energy},
        firing_rates=rates, raster={"sample": 0, "layers": raster}, evaluation_timings=timings)
