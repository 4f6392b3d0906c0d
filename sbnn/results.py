"""The documents ``sbnn pipeline`` passes from stage to stage, typed: ``results.json`` (what
:func:`sbnn.export_evaluation.evaluate_exports` computes), the page ``report.html`` renders
(:func:`sbnn.report.render`) and the summary the command prints (:func:`sbnn.pipeline.run_pipeline`).

They are JSON documents, written and read back as they are, so they are :class:`~typing.TypedDict` classes:
plain dicts at run time (the key order of each class is the order of the file), checked by a type
checker. Accuracies are fractions of the test set in [0, 1]; energies are µJ per inference; entropies
are in nats; times are seconds.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class AccuracyTable(TypedDict):
    """Test accuracy of every form of the model (None where not computed: no posterior samples, Lava failed)."""

    float_mean: float              # float model, posterior mean, deterministic units
    float_noisy: float             # float model, noisy units (MC average of train.eval_samples passes)
    float_ensemble: float          # float model, export.posterior_samples frozen samples
    quantised_float: float         # the quantised posterior mean in float arithmetic, no per-layer delay
    hw_mean: float                 # the quantised posterior mean on hw_sim
    hw_ensemble: float | None      # the quantised posterior samples on hw_sim, probabilities averaged
    lava_subset: float | None      # the posterior mean in Lava on the first lava_subset_size test samples
    hw_subset: float | None        # hw_sim on the same samples
    lava_subset_size: int
    test_samples: int


class CalibrationSummary(TypedDict):
    """The reliability diagram of the hardware ensemble (:func:`sbnn.evaluate.reliability_bins`)."""

    name: str                      # "hardware ensemble", or "hardware posterior mean" without samples
    bin_centers: list[float]       # confidence at the middle of each bin
    bin_accuracy: list[float]
    bin_counts: list[int]
    ece: float
    float_ensemble_ece: float


class EntropySummary(TypedDict):
    """Predictive entropy (nats) of the hardware ensemble on each correctly and wrongly classified test sample."""

    correct: list[float]
    wrong: list[float]


class ExportSummary(TypedDict):
    """One exported network on the test set in hw_sim, and what its ``export.json`` reports."""

    name: str                      # "mean" or "sample<k>"
    dir: str
    accuracy_hw: float
    energy_uj: dict[str, float]    # per proxy (hw_sim.energy.PROXIES)
    synops: float                  # synaptic operations per inference
    netx_exact: bool
    saturation: dict[str, int]     # what the quantiser clipped or clamped, per kind
    accuracy_check: dict | None    # hardware vs float accuracy on the calibration data
    warnings: list[str]


class Raster(TypedDict):
    """Spikes of one test sample per layer, each ``(T, neurons)`` of 0/1."""

    sample: int
    layers: list[list[list[int]]]


class ResultsDocument(TypedDict):
    """``results.json``."""

    accuracy: AccuracyTable
    calibration: CalibrationSummary
    entropy: EntropySummary
    verify: dict | None            # hw_sim.VerifyReport.to_json() of hw_sim vs Lava; None when Lava did not run
    lava_error: str | None         # why Lava did not run
    exports: list[ExportSummary]
    energy: dict[str, dict]        # {"mean": hw_sim.energy.energy_report of the posterior mean}
    firing_rates: list[float]      # spikes per neuron per step, per layer (posterior mean, hw_sim)
    raster: Raster
    evaluation_timings: dict[str, float]
    provenance: NotRequired[dict]  # {"inputs": what the results were computed from}


class TrainingRecord(TypedDict):
    """``metrics.json``'s training history and summary."""

    history: list[dict]
    summary: dict


class ReportDocument(ResultsDocument):
    """What ``report.html`` renders: ``results.json`` plus the run's name, folder, training and stage times.
    Every section is optional to :func:`sbnn.report.render`, which leaves out what is missing."""

    name: str
    run_dir: str
    training: TrainingRecord
    timings: NotRequired[dict[str, float]]


class EnergySummary(TypedDict):
    """The posterior mean export's activity and energy proxies per inference."""

    synops_per_inference: float
    neuron_updates_per_inference: float
    energy_uj: dict[str, float]


class PipelineSummary(TypedDict):
    """What :func:`sbnn.pipeline.run_pipeline` returns (``sbnn pipeline --json`` prints it)."""

    run_dir: str
    report: str
    skipped: list[str]             # the stages found up to date
    timings: dict[str, float]      # per stage
    train: dict                    # metrics.json's summary
    accuracy: AccuracyTable
    verify: dict | None
    lava_error: str | None
    energy: EnergySummary
    exports: list[ExportSummary]
