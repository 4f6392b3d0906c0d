"""Weight noise per step or per sequence: calibration of the deployed hardware ensemble, side by side in one run
(docs/method.md#weight-noise).

For each data set x ``model.weight_noise`` (``per_step``, ``per_sequence``) x ``train.kl_weight`` x seed, a
``train.method = "sbnn"`` run is trained with :func:`sbnn.train.train` in a temporary folder, and three
predictions on the test set are scored with accuracy (%), NLL (nats) and expected calibration error (ECE, 15
bins, :func:`sbnn.evaluate.summarise`):

* ``mean``: the float posterior mean, deterministic units (``metrics.json``, last epoch);
* ``noisy``: the float model with noisy units, K passes averaged (``metrics.json``, last epoch);
* ``hw``: the K-sample HARDWARE ensemble: K posterior samples (seeds ``export.seed + k``) exported to Loihi
  fixed point exactly as ``sbnn pipeline`` exports them (:func:`sbnn.pipeline.export_run`), each run
  bit-exactly in hw_sim on the whole test set (:func:`sbnn.export_evaluation.hardware_logits`), softmax
  averaged over the K members.

K is each config's ``train.eval_samples`` (``--samples`` overrides it) for both the noisy passes and the
ensemble (``export.posterior_samples`` is set to it). The pipeline itself is not run: its other stages (the
posterior-mean export, Lava, energy, report and a second float evaluation) cost about a minute per MNIST run
and measure nothing compared here; the hardware ensemble is the pipeline's, member for member
(tests/sbnn/test_posterior_calibration_benchmark.py checks it against ``results.json``).

Data sets (all offline; ``--quick`` shortens each, see :data:`DATASETS`):

* ``quickstart``: examples/quickstart.toml (Randman spike times, spiking MLP, T = 50): a held weight draw
  and per-step draws differ most here;
* ``mnist``: examples/mnist_snn.toml (rate-coded MNIST, T = 20, 784-512-10 spiking MLP) on a fixed subset
  (``train.train_subset`` / ``test_subset``, seeded by ``data.seed``), 2 epochs;
* ``digits``: examples/digits_bnn.toml (binary units, ``static_steps = 1``): the two settings are the same
  distribution there (the layer uses the moments for one-step sequences), a control.

Every run also sets ``train.train_eval_subset`` and ``train.epoch_eval_subset`` to 200: they only size the
training-split metrics and the per-epoch progress line, which are not compared here. Nothing else differs
from the example configs but the settings named above. The KL weights default to ``auto`` (the default,
docs/method.md#defaults), 0.01 and 1.0; the resolved beta is shown beside ``auto``.

The table shows every run; a run whose loss became NaN or infinite shows ``diverged``. Then, per data set,
the choice rule: average each setting (weight_noise, kl_weight) over the seeds; among the settings whose
hardware-ensemble accuracy is within 0.5 points of the best setting's, the one with the lowest
hardware-ensemble ECE. Reliability diagrams of the hardware ensemble (per step and per sequence side by
side, one PNG per data set, KL weight and seed) and every row as JSON go to ``--out``.

Usage: .venv/bin/python benchmarks/posterior_calibration.py [--quick] [--datasets quickstart mnist digits]
[--kl-weights auto 0.01 1.0] [--seeds 0] [--samples K] [--out runs/posterior_calibration]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHT_NOISE = ("per_step", "per_sequence")
DEFAULT_KL_WEIGHTS = ("auto", "0.01", "1.0")
ACCURACY_TOLERANCE = 0.005   # hardware-ensemble accuracy within this of the best is a candidate (0.5 points)
PREDICTIONS = ("mean", "noisy", "hw")
EVALUATION_OVERRIDES = ("train.train_eval_subset=200", "train.epoch_eval_subset=200")


@dataclass(frozen=True)
class Dataset:
    """An example config and the overrides of the full and of the ``--quick`` benchmark."""

    config: str
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


DATASETS = {
    "quickstart": Dataset("examples/quickstart.toml", quick=("train.epochs=2",)),
    "mnist": Dataset("examples/mnist_snn.toml",
                     ("train.train_subset=4000", "train.test_subset=1000", "train.epochs=2"),
                     ("train.train_subset=1000", "train.test_subset=500", "train.epochs=1")),
    "digits": Dataset("examples/digits_bnn.toml", quick=("train.epochs=5",)),
}


@dataclass
class RunResult:
    """One trained run: its settings, the three predictions' ``accuracy``/``nll``/``ece``/``entropy`` (None
    when it diverged), the resolved KL weight ``beta``, the training seconds (optimiser steps only) and the
    seconds of the whole measurement. ``probabilities`` ``(N, C)`` and ``labels`` ``(N,)`` are the hardware
    ensemble's, for the reliability diagram (not written to JSON)."""

    dataset: str
    weight_noise: str
    kl_weight: str
    seed: int
    samples: int
    beta: float | None = None
    scores: dict[str, dict[str, float]] | None = None
    train_seconds: float = math.nan
    seconds: float = math.nan
    error: str | None = None
    probabilities: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    def record(self) -> dict:
        """The row as JSON-ready values (no arrays)."""
        return {key: value for key, value in asdict(self).items() if key not in ("probabilities", "labels")}


def run_config(dataset: str, weight_noise: str, kl_weight: str, seed: int, *, quick: bool,
               samples: int | None):
    """The validated :class:`sbnn.config.RunConfig` of one run (K = ``samples`` or the config's eval_samples)."""
    from sbnn.config import load_config

    spec = DATASETS[dataset]
    overrides = [*(spec.quick if quick else spec.overrides), *EVALUATION_OVERRIDES, "train.method=sbnn",
                 f"model.weight_noise={weight_noise}", f"train.kl_weight={kl_weight}", f"train.seed={seed}"]
    if samples is not None:
        overrides.append(f"train.eval_samples={samples}")
    config = load_config(ROOT / spec.config, overrides)
    return load_config(ROOT / spec.config, [*overrides, f"export.posterior_samples={config.train.eval_samples}"])


def hardware_ensemble(run_dir: Path, samples: int, export_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Export the trained run's posterior samples ``export.seed + k``, k < ``samples``, into
    ``export_root/sample<k>`` as the pipeline does, run each in hw_sim on the whole test set and average the
    softmax; returns the ensemble's probabilities ``(N, C)`` and the test labels ``(N,)``."""
    from sbnn.export_evaluation import hardware_logits, model_sequences, softmax
    from sbnn.pipeline import export_run, load_run

    loaded = load_run(run_dir)
    config, model, data = loaded
    x_test = model_sequences(data.x_test, model)
    members = []
    for k in range(samples):
        folder, _ = export_run(run_dir, weights="sample", seed=config.export.seed + k, loaded=loaded,
                               out=export_root / f"sample{k}")
        members.append(softmax(hardware_logits(folder, x_test, batch=config.pipeline.hw_batch)))
    return np.mean(members, axis=0), data.y_test.numpy()


def measure(dataset: str, weight_noise: str, kl_weight: str, seed: int, work: Path, *, quick: bool = False,
            samples: int | None = None) -> RunResult:
    """Train one run in ``work`` and score its posterior mean, noisy units and hardware ensemble."""
    from export.float_network import ExportError
    from sbnn.evaluate import summarise
    from sbnn.train import train
    from sbnn.training.errors import TrainingError

    config = run_config(dataset, weight_noise, kl_weight, seed, quick=quick, samples=samples)
    result = RunResult(dataset, weight_noise, kl_weight, seed, config.train.eval_samples)
    run_dir = work / f"{dataset}_{weight_noise}_kl{kl_weight}_seed{seed}"
    start = time.perf_counter()
    try:
        train(config, run_dir, json_mode=True)
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        result.beta, result.train_seconds = history[-1]["kl_weight"], sum(h["train_seconds"] for h in history)
        test = history[-1]["test"]
        result.probabilities, result.labels = hardware_ensemble(run_dir, result.samples, run_dir / "benchmark")
        result.scores = {"mean": test["mean"], "noisy": test["noisy"],
                         "hw": summarise(result.probabilities, result.labels)}
    except (TrainingError, ExportError) as error:
        result.error = f"{type(error).__name__}: {error}".splitlines()[0]
    result.seconds = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------------------
# Choice, table and figures

def setting_means(rows: list[RunResult]) -> dict[tuple[str, str], dict[str, float]]:
    """Hardware-ensemble ``accuracy`` and ``ece`` per (weight_noise, kl_weight), averaged over the seeds;
    a setting with a diverged seed is left out."""
    grouped: dict[tuple[str, str], list[RunResult]] = {}
    for row in rows:
        grouped.setdefault((row.weight_noise, row.kl_weight), []).append(row)
    return {setting: {metric: float(np.mean([row.scores["hw"][metric] for row in group]))
                      for metric in ("accuracy", "ece")}
            for setting, group in grouped.items() if all(row.scores for row in group)}


def best_setting(rows: list[RunResult], tolerance: float = ACCURACY_TOLERANCE) -> tuple[str, str] | None:
    """The (weight_noise, kl_weight) with the lowest mean hardware-ensemble ECE among those whose mean
    hardware-ensemble accuracy is within ``tolerance`` (a fraction) of the best; None if every run diverged."""
    means = setting_means(rows)
    if not means:
        return None
    best_accuracy = max(value["accuracy"] for value in means.values())
    candidates = [setting for setting, value in means.items() if value["accuracy"] >= best_accuracy - tolerance]
    return min(candidates, key=lambda setting: means[setting]["ece"])


def _kl_label(row: RunResult) -> str:
    if row.kl_weight == "auto" and row.beta is not None:
        return f"auto={row.beta:.2g}"
    return row.kl_weight


def format_row(row: RunResult) -> str:
    """One table line: settings, then accuracy (%), NLL and ECE of mean, noisy and hw, training seconds."""
    head = f"{row.dataset:<11} {row.weight_noise:<12} {_kl_label(row):<12} {row.seed:>4}"
    if row.scores is None:
        return f"{head}  diverged: {row.error}"
    cells = "".join(f" | {100 * row.scores[p]['accuracy']:>5.1f} {row.scores[p]['nll']:>6.3f} "
                    f"{row.scores[p]['ece']:>6.3f}" for p in PREDICTIONS)
    return f"{head}{cells} | {row.train_seconds:>7.1f}"


def table_header() -> str:
    """The two header lines of the table and a rule."""
    groups = "".join(f" | {name:^19}" for name in ("float mean", "float noisy (K)", "hw ensemble (K)"))
    first = f"{'':<11} {'':<12} {'':<12} {'':>4}{groups} |"
    second = f"{'data set':<11} {'weight_noise':<12} {'kl_weight':<12} {'seed':>4}" + \
        " | {:>5} {:>6} {:>6}".format("acc%", "NLL", "ECE") * 3 + f" | {'train s':>7}"
    return "\n".join([first, second, "-" * len(second)])


def reliability_figure(rows: list[RunResult], path: Path) -> Path:
    """The hardware ensembles' reliability diagrams of ``rows`` side by side (accuracy and mean confidence
    per non-empty confidence bin, the diagonal, the ECE), written to ``path`` as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sbnn.evaluate import reliability_bins

    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        diagram = reliability_bins(row.probabilities, row.labels)
        edges, counts = np.asarray(diagram["edges"]), np.asarray(diagram["count"])
        centers, filled = (edges[:-1] + edges[1:]) / 2, counts > 0
        ax.bar(centers[filled], np.asarray(diagram["accuracy"])[filled], width=edges[1] - edges[0],
               edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot(centers[filled], np.asarray(diagram["confidence"])[filled], "o", color="C3", ms=4,
                label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray")
        ax.set_xlim(0, 1); ax.set_ylim(0, 1); ax.set_xlabel("confidence")
        ax.set_title(f"{row.weight_noise}: acc {100 * row.scores['hw']['accuracy']:.1f}%, "
                     f"ECE {row.scores['hw']['ece']:.3f}", fontsize=10)
    axes[0][0].set_ylabel("accuracy"); axes[0][0].legend(fontsize=8, loc="upper left")
    first = rows[0]
    fig.suptitle(f"{first.dataset}, kl_weight {_kl_label(first)}, seed {first.seed}: "
                 f"hw_sim ensemble of K = {first.samples} posterior samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_choices(rows: list[RunResult], datasets: list[str]) -> None:
    """Per data set, the choice rule's setting, and per KL weight the hw ECE of per_sequence minus per_step."""
    print(f"\nchoice per data set: lowest hw-ensemble ECE among settings with hw-ensemble accuracy within "
          f"{100 * ACCURACY_TOLERANCE:.1f} points of the best (means over seeds)")
    for dataset in datasets:
        mine = [row for row in rows if row.dataset == dataset]
        choice = best_setting(mine)
        means = setting_means(mine)
        if choice is None:
            print(f"  {dataset:<11} every run diverged")
            continue
        value = means[choice]
        print(f"  {dataset:<11} weight_noise = {choice[0]}, kl_weight = {choice[1]} "
              f"(hw acc {100 * value['accuracy']:.1f}%, ECE {value['ece']:.3f})")
        for kl_weight in dict.fromkeys(row.kl_weight for row in mine):
            pair = [means.get((noise, kl_weight)) for noise in WEIGHT_NOISE]
            if None not in pair:
                step, sequence = pair
                print(f"      kl_weight {kl_weight:<5}: hw ECE per_sequence - per_step "
                      f"{sequence['ece'] - step['ece']:+.3f}, "
                      f"accuracy {100 * (sequence['accuracy'] - step['accuracy']):+.1f} points")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--kl-weights", nargs="+", default=None,
                        help=f"train.kl_weight values (default {' '.join(DEFAULT_KL_WEIGHTS)}; --quick: auto)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="train.seed values (default 0)")
    parser.add_argument("--samples", type=int, default=None, help="K (default: each config's train.eval_samples)")
    parser.add_argument("--quick", action="store_true", help="short trainings, kl_weight auto only (2-3 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "posterior_calibration",
                        help="folder of the reliability diagrams and rows.json")
    args = parser.parse_args(argv)
    kl_weights = args.kl_weights or (["auto"] if args.quick else list(DEFAULT_KL_WEIGHTS))
    from sbnn.config import ConfigError

    try:   # every setting checked before anything trains
        for dataset in args.datasets:
            for kl_weight in kl_weights:
                run_config(dataset, WEIGHT_NOISE[0], kl_weight, args.seeds[0], quick=args.quick, samples=args.samples)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    return run_benchmark(args.datasets, kl_weights, args.seeds, quick=args.quick, samples=args.samples, out=args.out)


def run_benchmark(datasets: list[str], kl_weights: list[str], seeds: list[int], *, quick: bool,
                  samples: int | None, out: Path) -> int:
    """Train and score every run, printing each row as it finishes; then the choices, figures and total time."""
    import torch

    start = time.perf_counter()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}; "
          f"{'quick' if quick else 'full'} settings; K = {samples or 'eval_samples of each config'}")
    print(table_header())
    rows: list[RunResult] = []
    figures: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="posterior_calibration_") as temporary:
        for dataset in datasets:
            for kl_weight in kl_weights:
                for seed in seeds:
                    pair = []
                    for noise in WEIGHT_NOISE:
                        pair.append(measure(dataset, noise, kl_weight, seed, Path(temporary), quick=quick,
                                            samples=samples))
                        print(format_row(pair[-1]), flush=True)
                    rows += pair
                    drawn = [row for row in pair if row.scores is not None]
                    if drawn:
                        figures.append(reliability_figure(drawn, out / f"{dataset}_kl{kl_weight}_seed{seed}.png"))
    print_choices(rows, datasets)
    from sbnn.pipeline import finite_for_json

    (out / "rows.json").write_text(json.dumps(finite_for_json([row.record() for row in rows]), indent=1))
    print("\nreliability diagrams (hw ensemble, per_step | per_sequence):")
    for path in figures:
        print(f"  {path}")
    print(f"rows: {out / 'rows.json'}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
