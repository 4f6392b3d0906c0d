"""``sbnn export`` and ``sbnn pipeline``: from a trained run to verified deployments and a report.

Stages of ``sbnn pipeline CONFIG.toml`` (each skips when its outputs exist and were made from exactly the
inputs it would use now; ``--force`` redoes all):

1. **train** — :func:`sbnn.train.train` into the run folder.
2. **export** — the posterior mean to ``export/`` and K posterior samples to ``export_sample{k}/``
   (sample k is the posterior sample drawn from seed ``export.seed + k``), each via model.nir →
   quantiser → loihi.h5 / ONNX (:func:`export.folder.write_export`).
3. **evaluate** — every export on the whole test set in hw_sim; the posterior mean in Lava on
   ``pipeline.lava_samples`` test samples, verified against hw_sim spike for spike (u and v included);
   energy proxies of every export; float-model accuracies for comparison. Written to ``results.json``.
4. **report** — ``report.html``.

"Exactly the inputs" is judged by content, never by file times (:mod:`export.provenance`): each
``export.json`` records the sha256 of ``checkpoint.pt``, the export settings (headroom, calibration
samples, dt, weights mode, seed, accuracy margin, stored test samples), the hashes of the calibration and
test inputs and labels, and the code version; ``results.json`` records the hashes of every ``export.json``
and ``loihi.h5`` it summarises, of the checkpoint and the test data, and the evaluation settings;
``report.html`` records the hash of ``results.json``. A stage re-runs when any of these differs, so
changing ``export.headroom`` re-exports, re-evaluates and re-reports, and an unchanged rerun skips all
(after loading the data once to hash the calibration inputs). A copied run folder stays up to date.

A Lava run that fails (missing environment, worker crash, ``pipeline.lava_timeout`` exceeded) does not stop
the pipeline: ``results.json`` and the summary carry its one-line ``lava_error`` (``verify`` and the Lava
accuracies are null), everything else is computed and reported, and the exit code stays 0. Before any
stage writes, the hidden temporaries that a killed run left in the run folder are removed
(:func:`safeio.atomic.remove_stale`).

Timing: Loihi adds one step of delay per layer, so a deployed network runs T + L steps (L zero steps
appended to each input) and its readout is averaged over steps L … T + L − 1, which see exactly the
input steps the float model sees. Static inputs (features) are repeated for ``model.static_steps`` steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

LOGIT_BATCH = 256


# --------------------------------------------------------------------------------------------------
# Exporting a run

def load_run(run_dir: Path):
    from .config import load_config
    from .train import load_trained_model, load_training_data

    config_path = run_dir / "config.toml"
    if not (run_dir / "checkpoint.pt").is_file() or not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished run folder (needs config.toml and checkpoint.pt)")
    config = load_config(config_path)
    model = load_trained_model(run_dir)
    data = load_training_data(config)
    return config, model, data


def model_sequences(x, model) -> np.ndarray:
    from export.from_model import as_sequence

    array = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    return as_sequence(array, model.input_shape, model.config.static_steps).astype(np.float64)


def default_export_folder(run_dir: Path, weights: str, seed: int) -> Path:
    """``RUN/export`` for the posterior mean, ``RUN/export_sample<seed>`` for a posterior sample."""
    return run_dir / ("export" if weights == "mean" else f"export_sample{seed}")


def _export_plan(run_dir: Path, config, model, data, *, weights: str, seed: int,
                 checkpoint_sha256: str | None = None) -> dict:
    """Everything one export of the run is made from, and ``inputs``: what its ``export.json`` records as
    its provenance (:func:`export.folder.export_provenance`), so that the pipeline can tell whether an
    existing export was made from exactly these."""
    from export.folder import export_provenance
    from export.from_model import float_network_from_model
    from export.provenance import array_sha256, file_sha256

    network = float_network_from_model(model, dt=config.export.dt, weights=weights, seed=seed)
    calibration_count = min(config.export.calibration_samples, len(data.x_train))
    calibration = model_sequences(data.x_train[:calibration_count], model)
    calibration_labels = data.y_train[:calibration_count].numpy()
    preview = min(config.pipeline.lava_samples, len(data.x_test))
    from export.quantise import pad_steps

    delay = len(network.layers)
    test_inputs = pad_steps(model_sequences(data.x_test[:preview], model), delay)
    test_labels = data.y_test[:preview].numpy()
    provenance = {"checkpoint_sha256": checkpoint_sha256 or file_sha256(run_dir / "checkpoint.pt"),
                  "weights": weights, "seed": seed if weights == "sample" else None,
                  "calibration_samples": calibration_count, "dt": float(config.export.dt), "test_samples": preview,
                  "calibration_labels_sha256": array_sha256(calibration_labels),
                  "test_labels_sha256": array_sha256(test_labels)}
    settings = dict(headroom=config.export.headroom, accuracy_margin=config.export.accuracy_margin)
    inputs = export_provenance(calibration=calibration, test_inputs=test_inputs, **settings, **provenance)
    return {"network": network, "calibration": calibration, "calibration_labels": calibration_labels,
            "test_inputs": test_inputs, "test_labels": test_labels, "provenance": provenance, "settings": settings,
            "inputs": json.loads(json.dumps(inputs)),   # as export.json will hold them
            "source": {"run": str(run_dir), "weights": weights, "seed": seed if weights == "sample" else None,
                       "calibration_samples": calibration_count,
                       "inputs": f"first {preview} test samples, {delay} zero steps appended"}}


def recorded_export_inputs(folder: Path) -> dict | None:
    """The provenance ``inputs`` an export folder's ``export.json`` records, or None when the folder is
    incomplete, unreadable or of a version that recorded none (then it is out of date)."""
    if not (folder / "loihi.h5").is_file():
        return None
    try:
        report = json.loads((folder / "export.json").read_text())
        inputs = report["provenance"]["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return inputs if isinstance(inputs, dict) else None


def export_run(run_dir: str | os.PathLike, *, weights: str = "mean", seed: int = 0, out: str | os.PathLike | None = None,
               loaded=None, written_by: str = "sbnn export", plan: dict | None = None) -> tuple[Path, dict]:
    """Export a trained run's posterior mean or the posterior sample of ``seed``; returns (folder, report).

    ``written_by`` is recorded in the folder's marker (:func:`export.folder.export_marker`): the pipeline's
    exports say ``sbnn pipeline``, so that ``sbnn export`` by hand does not silently replace them.
    ``export.json`` records the provenance (:func:`_export_plan`); ``plan`` reuses one already made."""
    from dataclasses import asdict

    from export.folder import write_export

    run_dir = Path(run_dir)
    config, model, data = loaded or load_run(run_dir)
    out = Path(out) if out else default_export_folder(run_dir, weights, seed)
    plan = plan or _export_plan(run_dir, config, model, data, weights=weights, seed=seed)
    folder, _, report = write_export(plan["network"], plan["calibration"], out, test_inputs=plan["test_inputs"],
                                     test_labels=plan["test_labels"], calibration_labels=plan["calibration_labels"],
                                     written_by=written_by, source=plan["source"], provenance=plan["provenance"],
                                     provenance_notes={"export_config": asdict(config.export)}, **plan["settings"])
    return folder, report


# --------------------------------------------------------------------------------------------------
# Evaluating exports

def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def hardware_logits(folder: Path, x: np.ndarray, *, batch: int = LOGIT_BATCH, backend: str = "hw_sim",
                    keep: dict | None = None) -> np.ndarray:
    """Logits of an exported network on float inputs ``x`` (N, T, ...) in hw_sim (or Lava): the readout's
    v, averaged over the T steps after the L-step delay, in the float model's units (v / 64 / scale),
    times the model's logit scale."""
    import hw_sim
    from export.quantise import QuantisedNetwork

    network = hw_sim.load(folder / "loihi.h5")
    report = json.loads((folder / "export.json").read_text())
    quantised = QuantisedNetwork(network=network, input_scale=report["input_scale"])
    delay = network.latency
    scale = report["layers"][-1]["scale"] * 64.0 / report.get("logit_scale", 1.0)
    logits = []
    for start in range(0, len(x), batch):
        encoded = quantised.hardware_input(x[start:start + batch])
        if backend == "lava":
            result = hw_sim.lava.run(network, encoded, record_states=True)
        else:
            result = network.run(encoded, record_states=True)
        logits.append(result.v[-1][:, delay:].mean(axis=1) / scale)
        if keep is not None and start == 0:
            keep["result"], keep["encoded"] = result, encoded
    return np.concatenate(logits)


def _rates_and_raster(folder: Path, x: np.ndarray, limit: int = 256) -> tuple[list[float], list]:
    import hw_sim
    from export.quantise import QuantisedNetwork

    network = hw_sim.load(folder / "loihi.h5")
    report = json.loads((folder / "export.json").read_text())
    quantised = QuantisedNetwork(network=network, input_scale=report["input_scale"])
    encoded = quantised.hardware_input(x[:limit])
    result = network.run(encoded)
    rates = [float(s[:, :, ...].mean()) for s in result.spikes]
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


def evaluate_exports(run_dir: Path, config, model, data, folders: list[tuple[str, Path]]) -> dict:
    """Accuracy, verification, energy and the report's series for the exported networks."""
    import hw_sim
    from hw_sim.energy import energy_report
    from export.quantise import QuantisedNetwork

    from .evaluate import (accuracy, expected_calibration_error, predict_ensemble, predict_mean, predict_noisy,
                           predictive_entropy, reliability_bins)

    timings = {}
    start = time.perf_counter()
    labels = data.y_test.numpy()
    x_test = model_sequences(data.x_test, model)
    samples, seed = config.train.eval_samples, config.train.eval_seed
    float_mean = predict_mean(model, data.x_test).numpy()
    float_noisy = predict_noisy(model, data.x_test, samples=samples, seed=seed).numpy()
    float_ensemble = predict_ensemble(model, data.x_test, samples=max(1, config.export.posterior_samples),
                                      seed=config.export.seed).numpy()
    timings["float_models"] = time.perf_counter() - start

    start = time.perf_counter()
    exports, hw_probabilities = [], []
    for name, folder in folders:
        logits = hardware_logits(folder, x_test, batch=config.pipeline.hw_batch)
        probabilities = _softmax(logits)
        report = json.loads((folder / "export.json").read_text())
        network = hw_sim.load(folder / "loihi.h5")
        quantised = QuantisedNetwork(network=network, input_scale=report["input_scale"])
        energy_inputs = quantised.hardware_input(x_test[:min(len(x_test), 128)])
        energy = energy_report(network, energy_inputs)
        exports.append({"name": name, "dir": str(folder), "accuracy_hw": accuracy(probabilities, labels),
                        "energy_uj": energy["energy_uj"], "synops": energy["synops_per_inference"],
                        "netx_exact": report["netx_exact"], "saturation": export_saturation(report),
                        "accuracy_check": report.get("accuracy_check"), "warnings": report["warnings"],
                        "_energy": energy})
        if name != "mean":
            hw_probabilities.append(probabilities)
    timings["hw_sim"] = time.perf_counter() - start

    mean_folder = dict(folders)["mean"]
    start = time.perf_counter()
    from export.float_network import from_loihi
    network = hw_sim.load(mean_folder / "loihi.h5")
    report = json.loads((mean_folder / "export.json").read_text())
    quantised = QuantisedNetwork(network=network, input_scale=report["input_scale"])
    _, voltages = from_loihi(network).run(quantised.encode_input(x_test))
    quantised_float_accuracy = accuracy(voltages[-1].mean(axis=1), labels)
    timings["quantised_float"] = time.perf_counter() - start

    start = time.perf_counter()
    lava_count = min(config.pipeline.lava_samples, len(x_test))
    verify, lava_accuracy, hw_subset_accuracy, lava_error = None, None, None, None
    if lava_count:
        encoded = quantised.hardware_input(x_test[:lava_count])
        try:
            ours = network.run(encoded, record_states=True)
            theirs = hw_sim.lava.run(network, encoded, record_states=True, workers=config.pipeline.lava_workers,
                                     timeout=config.pipeline.lava_timeout)
            verify = hw_sim.compare(ours, theirs).to_json()
            delay = len(network.layers)
            lava_accuracy = accuracy(theirs.v[-1][:, delay:].mean(axis=1), labels[:lava_count])
            hw_subset_accuracy = accuracy(ours.v[-1][:, delay:].mean(axis=1), labels[:lava_count])
        except hw_sim.lava.LavaError as error:
            lava_error = str(error)
    timings["lava"] = time.perf_counter() - start

    ensemble = np.mean(hw_probabilities, axis=0) if hw_probabilities else _softmax(
        hardware_logits(mean_folder, x_test, batch=config.pipeline.hw_batch))
    entropy = predictive_entropy(ensemble).numpy()
    correct = ensemble.argmax(axis=1) == labels
    diagram = reliability_bins(ensemble, labels)
    edges = np.asarray(diagram["edges"])
    rates, raster = _rates_and_raster(mean_folder, x_test)
    mean_energy = next(e["_energy"] for e in exports if e["name"] == "mean")
    for entry in exports:
        entry.pop("_energy")
    return {
        "accuracy": {"float_mean": accuracy(float_mean, labels), "float_noisy": accuracy(float_noisy, labels),
                     "float_ensemble": accuracy(float_ensemble, labels),
                     "quantised_float": quantised_float_accuracy,
                     "hw_mean": next(e["accuracy_hw"] for e in exports if e["name"] == "mean"),
                     "hw_ensemble": accuracy(ensemble, labels) if hw_probabilities else None,
                     "lava_subset": lava_accuracy, "hw_subset": hw_subset_accuracy, "lava_subset_size": lava_count,
                     "test_samples": int(len(labels))},
        "calibration": {"name": "hardware ensemble" if hw_probabilities else "hardware posterior mean",
                        "bin_centers": ((edges[:-1] + edges[1:]) / 2).tolist(), "bin_accuracy": diagram["accuracy"],
                        "bin_counts": diagram["count"], "ece": expected_calibration_error(ensemble, labels),
                        "float_ensemble_ece": expected_calibration_error(float_ensemble, labels)},
        "entropy": {"correct": entropy[correct].tolist(), "wrong": entropy[~correct].tolist()},
        "verify": verify, "lava_error": lava_error, "exports": exports, "energy": {"mean": mean_energy},
        "firing_rates": rates, "raster": {"sample": 0, "layers": raster}, "evaluation_timings": timings,
    }


# --------------------------------------------------------------------------------------------------
# The pipeline

def finite_for_json(value):
    """NaN and infinities as null (e.g. a metric of a diverged model), so that every JSON file sbnn writes is
    strict JSON; numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {key: finite_for_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_for_json(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _write_json(path: Path, document: dict) -> None:
    from safeio.atomic import atomic_path

    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(finite_for_json(document), indent=1, allow_nan=False))


def _results_inputs(config, data, folders: list[tuple[str, Path]], checkpoint_sha256: str) -> dict:
    """What ``results.json`` is computed from: the exports it summarises (hashes of their ``export.json`` and
    ``loihi.h5``), the checkpoint (float accuracies), the test data, the evaluation settings and the code."""
    from export.provenance import RESULTS_SOURCES, array_sha256, code_version, file_sha256

    exports = {name: {"export_json_sha256": file_sha256(folder / "export.json"),
                      "loihi_h5_sha256": file_sha256(folder / "loihi.h5")} for name, folder in folders}
    settings = {"eval_samples": config.train.eval_samples, "eval_seed": config.train.eval_seed,
                "posterior_samples": config.export.posterior_samples, "export_seed": config.export.seed,
                "lava_samples": config.pipeline.lava_samples}
    numpy = lambda x: x.numpy() if hasattr(x, "numpy") else np.asarray(x)  # noqa: E731
    test_data = {"x_sha256": array_sha256(numpy(data.x_test)), "y_sha256": array_sha256(numpy(data.y_test))}
    inputs = {"checkpoint_sha256": checkpoint_sha256, "exports": exports, "settings": settings,
              "test_data": test_data, "code": code_version(RESULTS_SOURCES)}
    return json.loads(json.dumps(inputs))


def _recorded(path: Path) -> dict | None:
    """``provenance.inputs`` of a results.json, or None when it is missing, unreadable or has none."""
    try:
        inputs = json.loads(path.read_text())["provenance"]["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return inputs if isinstance(inputs, dict) else None


def _remove_stale_temporaries(run_dir: Path, export_names: list[str]) -> None:
    """Remove what a killed run left beside the run folder's files and export folders (hidden temporaries of
    dead processes only, see :func:`safeio.atomic.remove_stale`), before any stage writes."""
    from safeio.atomic import remove_stale

    from .train import remove_stale_temporaries

    remove_stale_temporaries(run_dir)
    for name in ("results.json", "report.html", *export_names):
        remove_stale(run_dir, name)


def _training_finished(run_dir: Path, config) -> bool:
    metrics = run_dir / "metrics.json"
    if not (run_dir / "checkpoint.pt").exists() or not metrics.exists():
        return False
    try:
        history = json.loads(metrics.read_text()).get("history", [])
    except (json.JSONDecodeError, OSError):
        return False
    saved = run_dir / "config.toml"
    return len(history) >= config.train.epochs and saved.exists() and saved.read_text() == config.to_toml()


def run_pipeline(config, run_dir: str | os.PathLike, *, force: bool = False, progress=print,
                 quiet: bool = False) -> dict:
    """Train, export, evaluate (hw_sim, Lava, energy) and report. Returns the summary dict.

    ``quiet`` keeps stdout free for ``--json`` (training prints nothing either)."""
    from .report import recorded_report_inputs, write_report
    from .train import train

    run_dir = Path(run_dir)
    timings: dict[str, float] = {}
    skipped: list[str] = []
    samples = config.export.posterior_samples if config.train.method == "sbnn" else 0
    folders = [("mean", run_dir / "export")] + [(f"sample{k}", run_dir / f"export_sample{config.export.seed + k}")
                                                 for k in range(samples)]
    _remove_stale_temporaries(run_dir, [folder.name for _, folder in folders])

    start = time.perf_counter()
    if force or not _training_finished(run_dir, config):
        progress(f"[1/4] training {config.source} -> {run_dir}")
        resume = not force and (run_dir / "checkpoint.pt").exists()
        train(config, run_dir, resume=resume, overwrite=force, json_mode=quiet)
    else:
        skipped.append("train")
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    from export.provenance import REPORT_SOURCES, code_version, file_sha256

    # Whether a stage is up to date is judged by what its outputs were made from (hashes recorded in
    # export.json, results.json and report.html), not by file times.
    checkpoint_sha256 = file_sha256(run_dir / "checkpoint.pt")
    loaded = load_run(run_dir)   # the calibration inputs have to be made (and hashed) to compare them
    for name, folder in folders:
        weights = "mean" if name == "mean" else "sample"
        seed = config.export.seed + int(name[len("sample"):]) if weights == "sample" else 0
        plan = _export_plan(run_dir, *loaded, weights=weights, seed=seed, checkpoint_sha256=checkpoint_sha256)
        if force or recorded_export_inputs(folder) != plan["inputs"]:
            progress(f"[2/4] exporting {name} -> {folder}")
            export_run(run_dir, weights=weights, seed=seed, out=folder, loaded=loaded, written_by="sbnn pipeline",
                       plan=plan)
        else:
            skipped.append(f"export {name}")
    timings["export"] = time.perf_counter() - start

    start = time.perf_counter()
    results_path = run_dir / "results.json"
    results_inputs = _results_inputs(loaded[0], loaded[2], folders, checkpoint_sha256)
    if force or _recorded(results_path) != results_inputs:
        progress(f"[3/4] evaluating {len(folders)} exports in hw_sim, the posterior mean in Lava, energy")
        results = evaluate_exports(run_dir, *loaded, folders)
        results["provenance"] = {"inputs": results_inputs}
        _write_json(results_path, results)
    else:
        skipped.append("evaluate")
    results = json.loads(results_path.read_text())
    timings["evaluate"] = time.perf_counter() - start

    start = time.perf_counter()
    report_path = run_dir / "report.html"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    document = {**results, "name": Path(config.source).stem, "run_dir": str(run_dir),
                "training": {"history": metrics.get("history", []), "summary": metrics.get("summary", {})}}
    report_inputs = {"results_sha256": file_sha256(results_path), "code": code_version(REPORT_SOURCES)}
    if force or recorded_report_inputs(report_path) != report_inputs:   # metrics.json changes with every run
        progress("[4/4] writing the report")
        document["timings"] = {**timings, **{f"evaluate: {k}": v for k, v in results.get("evaluation_timings", {}).items()}}
        write_report(document, report_path, provenance=report_inputs)
    else:
        skipped.append("report")
    timings["report"] = time.perf_counter() - start

    metrics["pipeline"] = {"timings": timings, "skipped": skipped}
    _write_json(run_dir / "metrics.json", metrics)
    energy = results["energy"]["mean"]
    return {"run_dir": str(run_dir), "report": str(report_path), "skipped": skipped, "timings": timings,
            "train": metrics.get("summary", {}), "accuracy": results["accuracy"], "verify": results["verify"],
            "lava_error": results.get("lava_error"),
            "energy": {"synops_per_inference": energy["synops_per_inference"],
                       "neuron_updates_per_inference": energy["neuron_updates_per_inference"],
                       "energy_uj": energy["energy_uj"]},
            "exports": results["exports"]}


def format_summary(summary: dict) -> str:
    accuracy = summary["accuracy"]
    lines = ["", f"{'model':<46} {'test accuracy':>13}"]
    for key, label in (("float_mean", "float, posterior mean"), ("float_noisy", "float, noisy units (MC)"),
                       ("float_ensemble", "float, K-sample ensemble"), ("quantised_float", "quantised, float arithmetic"),
                       ("hw_mean", "hw_sim, quantised posterior mean"), ("hw_ensemble", "hw_sim, K-sample ensemble"),
                       ("lava_subset", f"Lava, {accuracy.get('lava_subset_size')} samples"),
                       ("hw_subset", "hw_sim, the same samples")):
        value = accuracy.get(key)
        lines.append(f"{label:<46} {('%.4f' % value) if value is not None else '—':>13}")
    verify = summary.get("verify")
    if verify:
        lines.append(f"hw_sim vs Lava: {'bit-exact' if verify['bit_exact'] else 'DIFFERENT'} "
                     f"({verify['spikes_compared']} spikes, {verify['states_compared']} u/v values)")
    elif summary.get("lava_error"):
        lines.append(f"Lava: {summary['lava_error']}")
    for entry in summary.get("exports", []):
        for warning in entry.get("warnings", []):
            lines.append(f"warning: export {entry['name']}: {warning}")
    energy = summary["energy"]["energy_uj"]
    lines.append(f"energy per inference: Loihi {energy['loihi']:.4g} µJ, equivalent ANN (45 nm fp32) "
                 f"{energy['ann_mac_45nm']:.4g} µJ")
    lines.append("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["timings"].items())
                 + (f" (skipped: {', '.join(summary['skipped'])})" if summary["skipped"] else ""))
    lines.append(f"report: {summary['report']}")
    return "\n".join(lines)
