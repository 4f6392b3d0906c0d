"""``sbnn export`` and ``sbnn pipeline``: from a trained run to verified deployments and a report.

Stages of ``sbnn pipeline CONFIG.toml`` (each skips when its outputs exist and were made from exactly the
inputs it would use now; ``--force`` redoes all):

1. **train** — :func:`sbnn.train.train` into the run folder.
2. **export** — the posterior mean to ``export/`` and K posterior samples to ``export_sample{k}/``
   (sample k is the posterior sample drawn from seed ``export.seed + k``), each via model.nir →
   quantiser → loihi.h5 / ONNX (:func:`export.folder.write_export`).
3. **evaluate** — every export on the whole test set in hw_sim; the posterior mean in Lava on
   ``pipeline.lava_samples`` test samples, verified against hw_sim spike for spike (u and v included);
   energy proxies of every export; float-model accuracies for comparison
   (:func:`sbnn.export_evaluation.evaluate_exports`). Written to ``results.json``.
4. **report** — ``report.html`` (:mod:`sbnn.report`).

What the stages pass on is typed (:mod:`sbnn.results`): ``results.json`` is a
:class:`~sbnn.results.ResultsDocument`, the report renders a :class:`~sbnn.results.ReportDocument`, and
:func:`run_pipeline` returns a :class:`~sbnn.results.PipelineSummary`.

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
input steps the float model sees (:mod:`sbnn.export_evaluation`). Static inputs (features) are repeated
for ``model.static_steps`` steps.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from export.folder_reader import ExportFolder

from .export_evaluation import as_numpy, evaluate_exports, model_sequences, timed
from .export_evaluation import LOGIT_BATCH, export_saturation, hardware_logits  # noqa: F401 (moved, importable here)
from .results import EnergySummary, PipelineSummary, ReportDocument, ResultsDocument


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
    if (tuple(model.input_shape), model.num_classes) != (tuple(data.input_shape), data.num_classes):
        from .training.errors import RunFolderError

        raise RunFolderError(f"{run_dir / 'checkpoint.pt'}: a model of input shape {tuple(model.input_shape)} and "
                             f"{model.num_classes} classes, but {config_path} loads data of input shape "
                             f"{tuple(data.input_shape)} and {data.num_classes} classes (the checkpoint or the "
                             f"config of another run?)")
    return config, model, data


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
    preprocessing = None if data.preprocessing is None else data.preprocessing.to_record()
    if preprocessing is not None:
        provenance["preprocessing_sha256"] = hashlib.sha256(json.dumps(preprocessing).encode()).hexdigest()
    classes = getattr(data, "classes", None)
    if classes is not None:
        provenance["classes"] = list(classes)
    settings = dict(headroom=config.export.headroom, accuracy_margin=config.export.accuracy_margin)
    inputs = export_provenance(calibration=calibration, test_inputs=test_inputs, **settings, **provenance)
    return {"network": network, "calibration": calibration, "calibration_labels": calibration_labels,
            "preprocessing": preprocessing, "classes": classes,
            "test_inputs": test_inputs, "test_labels": test_labels, "provenance": provenance, "settings": settings,
            "inputs": json.loads(json.dumps(inputs)),   # as export.json will hold them
            "source": {"run": str(run_dir), "weights": weights, "seed": seed if weights == "sample" else None,
                       "calibration_samples": calibration_count,
                       "inputs": f"first {preview} test samples, {delay} zero steps appended"}}


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
                                     provenance_notes={"export_config": asdict(config.export)},
                                     preprocessing=plan["preprocessing"], classes=plan.get("classes"),
                                     **plan["settings"])
    return folder, report


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
    from export.provenance import RESULTS_SOURCES, array_sha256, code_version

    exports = {name: ExportFolder(folder).sha256s() for name, folder in folders}
    settings = {"eval_samples": config.train.eval_samples, "eval_seed": config.train.eval_seed,
                "posterior_samples": config.export.posterior_samples, "export_seed": config.export.seed,
                "lava_samples": config.pipeline.lava_samples}
    test_data = {"x_sha256": array_sha256(as_numpy(data.x_test)), "y_sha256": array_sha256(as_numpy(data.y_test))}
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
    """Whether ``run_dir`` holds a finished training of ``config``: checkpoint and metrics there, the recorded
    config the same settings (``"auto"`` ones read as the values the run chose) and every epoch done."""
    from .config import ConfigError, load_config
    from .training.defaults import with_recorded_auto

    metrics = run_dir / "metrics.json"
    if not (run_dir / "checkpoint.pt").exists() or not metrics.exists():
        return False
    try:
        document = json.loads(metrics.read_text())
        recorded = load_config(run_dir / "config.toml")
    except (ValueError, OSError, ConfigError):   # damaged JSON or UTF-8 (ValueErrors): trained again
        return False
    history = document.get("history") if isinstance(document, dict) else None
    if not isinstance(history, list):
        return False
    current = with_recorded_auto(config, recorded)
    return recorded.to_dict() == current.to_dict() and len(history) >= recorded.train.epochs


def _pipeline_exports(config, run_dir: Path) -> list[tuple[str, Path, str, int]]:
    """``(name, folder, weights, seed)`` of every export the pipeline makes: the posterior mean (``mean``),
    then, for an sbnn run, ``export.posterior_samples`` posterior samples (``sample<k>``, drawn from seed
    ``export.seed + k``)."""
    samples = config.export.posterior_samples if config.train.method == "sbnn" else 0
    exports = [("mean", "mean", 0)] + [(f"sample{k}", "sample", config.export.seed + k) for k in range(samples)]
    return [(name, default_export_folder(run_dir, weights, seed), weights, seed) for name, weights, seed in exports]


def _train_stage(config, run_dir: Path, *, force: bool, quiet: bool, progress: Callable[[str], None]) -> list[str]:
    """Train (resuming a checkpoint unless ``force``) unless the run folder holds a finished training of
    this config; returns the skipped stage's name, if any."""
    from .train import train

    if not force and _training_finished(run_dir, config):
        return ["train"]
    _check_exportable_inputs(config)
    progress(f"[1/4] training {config.source} -> {run_dir}")
    resume = not force and (run_dir / "checkpoint.pt").exists()
    train(config, run_dir, resume=resume, overwrite=force, json_mode=quiet)
    return []


def _check_exportable_inputs(config) -> None:
    """Refuse, before the training stage, data whose inputs the export stage would refuse (signed graded
    values: :func:`export.quantise.signed_input_problem`), so that no one trains for an hour to learn it."""
    from export.quantise import signed_input_problem

    from .config import ConfigError
    from .train import load_training_data

    data = load_training_data(config)
    problem = signed_input_problem(data.x_train[:config.export.calibration_samples].numpy())   # as _export_plan
    if problem is not None:
        raise ConfigError(f"{config.source}: the pipeline's export could not take this data: {problem}; nothing "
                          f"was trained (sbnn train trains it without exporting)")


def _export_stage(run_dir: Path, loaded, exports: list[tuple[str, Path, str, int]], checkpoint_sha256: str, *,
                  force: bool, progress: Callable[[str], None]) -> list[str]:
    """Write every export whose folder was not made from exactly what it would be made from now; returns
    the names of the skipped ones (``export <name>``)."""
    skipped = []
    for name, folder, weights, seed in exports:
        plan = _export_plan(run_dir, *loaded, weights=weights, seed=seed, checkpoint_sha256=checkpoint_sha256)
        if force or ExportFolder(folder).recorded_inputs() != plan["inputs"]:
            progress(f"[2/4] exporting {name} -> {folder}")
            export_run(run_dir, weights=weights, seed=seed, out=folder, loaded=loaded, written_by="sbnn pipeline",
                       plan=plan)
        else:
            skipped.append(f"export {name}")
    return skipped


def _evaluate_stage(run_dir: Path, loaded, folders: list[tuple[str, Path]], checkpoint_sha256: str, *,
                    force: bool, progress: Callable[[str], None]) -> tuple[ResultsDocument, list[str]]:
    """Evaluate the exports into ``results.json`` unless it was computed from exactly these inputs; returns
    ``results.json`` as written (read back, so that a skipped stage gives the same) and the skipped stage."""
    config, _, data = loaded
    path = run_dir / "results.json"
    inputs = _results_inputs(config, data, folders, checkpoint_sha256)
    skipped = []
    if force or _recorded(path) != inputs:
        progress(f"[3/4] evaluating {len(folders)} exports in hw_sim, the posterior mean in Lava, energy")
        _write_json(path, {**evaluate_exports(run_dir, *loaded, folders), "provenance": {"inputs": inputs}})
    else:
        skipped.append("evaluate")
    return json.loads(path.read_text()), skipped


def _report_stage(config, run_dir: Path, results: ResultsDocument, timings: dict[str, float], *, force: bool,
                  progress: Callable[[str], None]) -> tuple[dict, list[str]]:
    """Write ``report.html`` unless it was made from exactly this ``results.json`` by this code (metrics.json
    changes with every run, so it is not compared); returns metrics.json and the skipped stage."""
    from export.provenance import REPORT_SOURCES, code_version, file_sha256

    from .report import recorded_report_inputs, write_report

    path = run_dir / "report.html"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    inputs = {"results_sha256": file_sha256(run_dir / "results.json"), "code": code_version(REPORT_SOURCES)}
    if not force and recorded_report_inputs(path) == inputs:
        return metrics, ["report"]
    progress("[4/4] writing the report")
    stage_times = {**timings, **{f"evaluate: {k}": v for k, v in results.get("evaluation_timings", {}).items()}}
    document = ReportDocument(**results, name=Path(config.source).stem, run_dir=str(run_dir),
                              training={"history": metrics.get("history", []), "summary": metrics.get("summary", {})},
                              timings=stage_times)
    write_report(document, path, provenance=inputs)
    return metrics, []


def run_pipeline(config, run_dir: str | os.PathLike, *, force: bool = False,
                 progress: Callable[[str], None] = print, quiet: bool = False) -> PipelineSummary:
    """Train, export, evaluate (hw_sim, Lava, energy) and report. Returns the summary.

    ``quiet`` keeps stdout free for ``--json`` (training prints nothing either)."""
    from export.provenance import file_sha256

    run_dir = Path(run_dir)
    timings: dict[str, float] = {}
    skipped: list[str] = []
    exports = _pipeline_exports(config, run_dir)
    folders = [(name, folder) for name, folder, _, _ in exports]
    _remove_stale_temporaries(run_dir, [folder.name for _, folder in folders])
    with timed(timings, "train"):
        skipped += _train_stage(config, run_dir, force=force, quiet=quiet, progress=progress)
    with timed(timings, "export"):
        # Whether a stage is up to date is judged by what its outputs were made from (hashes recorded in
        # export.json, results.json and report.html), not by file times.
        checkpoint_sha256 = file_sha256(run_dir / "checkpoint.pt")
        loaded = load_run(run_dir)   # the calibration inputs have to be made (and hashed) to compare them
        skipped += _export_stage(run_dir, loaded, exports, checkpoint_sha256, force=force, progress=progress)
    with timed(timings, "evaluate"):
        results, evaluate_skipped = _evaluate_stage(run_dir, loaded, folders, checkpoint_sha256, force=force,
                                                    progress=progress)
    skipped += evaluate_skipped
    with timed(timings, "report"):
        metrics, report_skipped = _report_stage(config, run_dir, results, timings, force=force, progress=progress)
    skipped += report_skipped
    metrics["pipeline"] = {"timings": timings, "skipped": skipped}
    _write_json(run_dir / "metrics.json", metrics)
    return _summary(run_dir, results, metrics, timings, skipped)


def _summary(run_dir: Path, results: ResultsDocument, metrics: dict, timings: dict[str, float],
             skipped: list[str]) -> PipelineSummary:
    energy = results["energy"]["mean"]
    return PipelineSummary(
        run_dir=str(run_dir), report=str(run_dir / "report.html"), skipped=skipped, timings=timings,
        train=metrics.get("summary", {}), accuracy=results["accuracy"], verify=results["verify"],
        lava_error=results.get("lava_error"),
        energy=EnergySummary(synops_per_inference=energy["synops_per_inference"],
                             neuron_updates_per_inference=energy["neuron_updates_per_inference"],
                             energy_uj=energy["energy_uj"]),
        exports=results["exports"])


def format_summary(summary: PipelineSummary) -> str:
    """The summary as the lines ``sbnn pipeline`` prints: accuracies, verification, warnings, energy, times."""
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
