"""The default gradient estimator by measurement: each estimator trained on the same data sets, nets, epochs
and seeds, side by side in one run (docs/method.md#estimators).

Every run is a config trained with ``sbnn.train.train`` in a temporary folder; only ``train.estimator`` and
``train.seed`` differ between the runs of a data set.  The data sets (short trainings, small nets):

* ``quickstart``: examples/quickstart.toml as it is (Randman spike times, 2,400 / 600, spiking MLP ``snn``
  with 128 hidden units, 6 epochs);
* ``digits``: examples/digits_bnn.toml as it is (scikit-learn's 8x8 digits, 1,437 / 360, ``bnn`` 256-256,
  25 epochs);
* ``signals``: the synthetic waveforms of benchmarks/defaults_on_unseen_data.py (its ``write_dataset``),
  3,200 / 800, a minimal config (``[data] name/path``, ``[model] kind = "bnn", hidden = [128]``), 30 epochs;
* ``mnist``: the built-in MNIST through ``train.train_subset``/``test_subset`` (a fixed subset seeded by
  ``data.seed``, the same for every run), 10,000 / 2,000, a minimal ``bnn`` config with 256 hidden, 8 epochs.

Other settings are the configs' own (minimal configs: every default, ``kl_weight = "auto"``).  The full
benchmark takes about 10 minutes on two cores; ``--quick`` (one seed, fewer epochs and examples) about 2.

The estimators (default): ST, IW-ST(p = 1/2), AGR at tau = 0.3 and AGR at tau = 1 (today's
``DEFAULT_ESTIMATOR``, docs/method.md#agr).  ``--estimators`` takes others as ``method`` or
``method:key=value,...`` (e.g. ``agr:tau=3``, ``iwst:lam=0.5``, ``gr_mc:tau=1,k=8``).

For each data set x estimator x seed the table shows the test accuracy (%) of the posterior mean, of the
noisy units (K passes averaged) and of the K-sample ensemble, the ensemble's expected calibration error,
the training seconds (optimiser steps only, without data loading and evaluation) and seconds per epoch.
A run whose loss became NaN or infinite is shown as ``diverged`` and ranks last.

The summary per estimator: mean accuracies and ECE over data sets and seeds, the mean rank on ensemble
accuracy (rank 1 = best of the estimators on the same data set and seed; ties share the mean rank), and
the training time relative to ST (geometric mean over data sets and seeds of the ratio of training
seconds; the first estimator stands in when ST is not run).

The rule that picks the winner: the best (lowest) mean rank on ensemble test accuracy; a tie (within 0.05)
goes to the lower relative training time.  Times are wall clock on a possibly shared machine: compare them
within one run only.

Usage: .venv/bin/python benchmarks/estimator_choice.py [--quick] [--seeds 0 1] [--datasets digits ...]
[--estimators st iwst:p=0.5 agr:tau=0.3 agr:tau=1]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
for _folder in (ROOT, ROOT / "benchmarks"):   # sbnn, and write_dataset's module when imported from elsewhere
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

from defaults_on_unseen_data import write_dataset  # noqa: E402
from sbnn.diagnostics import estimator_label  # noqa: E402
from sbnn.estimators import EstimatorConfig  # noqa: E402

DEFAULT_ESTIMATORS = ("st", "iwst:p=0.5", "agr:tau=0.3", "agr:tau=1")
RANK_TIE = 0.05   # mean ranks closer than this are a tie, broken by training time


@dataclass(frozen=True)
class DataSet:
    """A data set of the benchmark: how to get its config file and the overrides of a full and a quick run.

    Attributes:
        name: the table's label.
        config: ``work folder -> config file`` (writes data and config there when it needs to).
        full, quick: ``section.key=value`` overrides of the full and of the ``--quick`` benchmark.
    """

    name: str
    config: Callable[[Path], Path]
    full: tuple[str, ...]
    quick: tuple[str, ...]


def _minimal_config(work: Path, stem: str, data_lines: str, hidden: int) -> Path:
    """A config of only ``[data]`` ``data_lines`` and ``[model] kind = "bnn", hidden = [hidden]``."""
    path = work / f"{stem}.toml"
    path.write_text(f'[data]\n{data_lines}\n\n[model]\nkind = "bnn"\nhidden = [{hidden}]\n')
    return path


def _signals_config(work: Path) -> Path:
    data_path = write_dataset("signals", work)
    return _minimal_config(work, "signals", f'name = "npz"\npath = "{data_path}"', 128)


DATASETS: tuple[DataSet, ...] = (
    DataSet("quickstart", lambda work: ROOT / "examples" / "quickstart.toml",
            full=(), quick=("train.epochs=3", "data.samples_per_class=150")),
    DataSet("digits", lambda work: ROOT / "examples" / "digits_bnn.toml",
            full=(), quick=("train.epochs=5",)),
    DataSet("signals", _signals_config,
            full=("train.epochs=30",), quick=("train.epochs=8",)),
    DataSet("mnist", lambda work: _minimal_config(work, "mnist", 'name = "mnist"', 256),
            full=("train.epochs=8", "train.train_subset=10000", "train.test_subset=2000"),
            quick=("train.epochs=2", "train.train_subset=4000", "train.test_subset=1000")),
)


def parse_estimator(text: str) -> EstimatorConfig:
    """``method`` or ``method:key=value,...`` (keys ``tau``, ``p``, ``lam``, ``k``, ``noise``) -> the config.

    Raises:
        ValueError: a malformed text, an unknown method or setting, or settings the method refuses.
    """
    method, _, settings_text = text.partition(":")
    try:
        settings: dict[str, object] = {}
        for item in filter(None, settings_text.split(",")):
            key, separator, value = item.partition("=")
            if not separator or key not in ("tau", "p", "lam", "k", "noise"):
                raise ValueError("expected method:key=value,... with keys tau, p, lam, k, noise")
            settings[key] = value if key == "noise" else int(value) if key == "k" else float(value)
        return EstimatorConfig(method.strip(), **settings)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise ValueError(f"estimator {text!r}: {error}") from None


def estimator_override(estimator: EstimatorConfig) -> str:
    """The ``train.estimator={...}`` override (an inline TOML table) that selects ``estimator``."""
    items = [f"{f.name} = {json.dumps(getattr(estimator, f.name))}" for f in fields(estimator)
             if getattr(estimator, f.name) is not None]
    return "train.estimator={" + ", ".join(items) + "}"


def train_once(config_file: Path, overrides: list[str]) -> dict[str, float]:
    """Train ``config_file`` with ``overrides`` in a temporary run folder.

    Returns:
        ``mean``, ``noisy``, ``ensemble`` (test accuracies, fractions), ``ece`` (the ensemble's),
        ``train_seconds`` (optimiser steps of all epochs) and ``epochs``; accuracies and ECE are NaN
        when the loss diverged (``TrainingError``).
    """
    from sbnn.config import load_config
    from sbnn.train import TrainingError, train

    config = load_config(config_file, overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            summary = train(config, run_dir, json_mode=True)
        except TrainingError:
            diverged = float("nan")
            return {"mean": diverged, "noisy": diverged, "ensemble": diverged, "ece": diverged,
                    "train_seconds": diverged, "epochs": config.train.epochs}
        history = json.loads((Path(run_dir) / "metrics.json").read_text())["history"]
    return {"mean": summary["test_accuracy_mean"], "noisy": summary["test_accuracy_noisy"],
            "ensemble": summary["test_accuracy_ensemble"], "ece": history[-1]["test"]["ensemble"]["ece"],
            "train_seconds": sum(record["train_seconds"] for record in history), "epochs": summary["epochs"]}


def format_row(dataset: str, seed: int, label: str, row: dict[str, float]) -> str:
    """One line of the per-run table (accuracies in %)."""
    if math.isnan(row["mean"]):
        return f"{dataset:<11} {seed:>4} {label:<14} {'diverged':>8}"
    return (f"{dataset:<11} {seed:>4} {label:<14} {100 * row['mean']:>6.1f} {100 * row['noisy']:>6.1f} "
            f"{100 * row['ensemble']:>8.1f} {row['ece']:>6.3f} {row['train_seconds']:>8.1f} "
            f"{row['train_seconds'] / row['epochs']:>8.2f}")


def ranks(values: list[float]) -> list[float]:
    """Rank 1 = highest value; ties share their mean rank; NaN ranks after every number."""
    keys = [-math.inf if math.isnan(value) else value for value in values]
    return [1 + sum(other > key for other in keys) + 0.5 * (sum(other == key for other in keys) - 1)
            for key in keys]


def summarise(results: dict[tuple[str, int, str], dict[str, float]], labels: list[str]) -> list[dict]:
    """Per estimator (in ``labels`` order): mean accuracies and ECE, mean rank on ensemble accuracy, and the
    geometric-mean training time relative to ST (or to ``labels[0]``) over the data set x seed cells."""
    cells = sorted({(dataset, seed) for dataset, seed, _ in results})
    reference = "st" if "st" in labels else labels[0]
    rank_of = {}
    for cell in cells:
        for label, rank in zip(labels, ranks([results[(*cell, label)]["ensemble"] for label in labels])):
            rank_of[(*cell, label)] = rank
    summary = []
    for label in labels:
        rows = [results[(*cell, label)] for cell in cells]
        finite = [row for row in rows if not math.isnan(row["mean"])]
        ratios = [results[(*cell, label)]["train_seconds"] / results[(*cell, reference)]["train_seconds"]
                  for cell in cells]
        ratios = [ratio for ratio in ratios if not math.isnan(ratio)]
        summary.append({
            "label": label, "runs": len(rows), "diverged": len(rows) - len(finite),
            **{key: sum(row[key] for row in finite) / max(len(finite), 1) for key in ("mean", "noisy", "ensemble",
                                                                                     "ece")},
            "rank": sum(rank_of[(*cell, label)] for cell in cells) / len(cells),
            "time": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan"),
        })
    return summary


def winner(summary: list[dict]) -> dict:
    """The rule: the lowest mean rank on ensemble accuracy; within ``RANK_TIE`` of it, the fastest."""
    best_rank = min(entry["rank"] for entry in summary)
    tied = [entry for entry in summary if entry["rank"] <= best_rank + RANK_TIE]
    return min(tied, key=lambda entry: (entry["time"], entry["rank"]))


def print_summary(summary: list[dict], reference: str) -> None:
    """The per-estimator summary table and the winner by the rule."""
    print(f"\n{'estimator':<14} {'runs':>4} {'diverged':>8} {'mean':>6} {'noisy':>6} {'ensemble':>8} {'ECE':>6} "
          f"{'rank':>5} {'time vs ' + reference:>14}")
    for entry in summary:
        print(f"{entry['label']:<14} {entry['runs']:>4} {entry['diverged']:>8} {100 * entry['mean']:>6.1f} "
              f"{100 * entry['noisy']:>6.1f} {100 * entry['ensemble']:>8.1f} {entry['ece']:>6.3f} "
              f"{entry['rank']:>5.2f} {entry['time']:>14.2f}")
    best = winner(summary)
    print(f"winner (lowest mean rank on ensemble accuracy, ties within {RANK_TIE} to the faster): "
          f"{best['label']} (mean rank {best['rank']:.2f}, ensemble {100 * best['ensemble']:.1f}%)")


def rotated(estimators: list[EstimatorConfig], seed: int) -> list[EstimatorConfig]:
    """The estimators in the order of a seed's runs: rotated by the seed, so that no estimator always runs
    first (on a shared machine the load drifts)."""
    shift = seed % len(estimators)
    return estimators[shift:] + estimators[:shift]


def run_benchmark(datasets: list[DataSet], estimators: list[EstimatorConfig], seeds: list[int], quick: bool,
                  work: Path) -> dict[tuple[str, int, str], dict[str, float]]:
    """Train every data set x seed x estimator, printing each row as it finishes; returns the rows by
    ``(data set, seed, estimator label)``."""
    print(f"{'data set':<11} {'seed':>4} {'estimator':<14} {'mean':>6} {'noisy':>6} {'ensemble':>8} {'ECE':>6} "
          f"{'train s':>8} {'s/epoch':>8}")
    results = {}
    for dataset in datasets:
        config_file = dataset.config(work)
        for seed in seeds:
            for estimator in rotated(estimators, seed):
                label = estimator_label(estimator)
                overrides = [*(dataset.quick if quick else dataset.full), f"train.seed={seed}",
                             estimator_override(estimator)]
                results[(dataset.name, seed, label)] = train_once(config_file, overrides)
                print(format_row(dataset.name, seed, label, results[(dataset.name, seed, label)]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter trainings and smaller subsets (~2 min)")
    parser.add_argument("--seeds", type=int, nargs="+", help="train.seed values (default 0 1; --quick: 0)")
    names = [dataset.name for dataset in DATASETS]
    parser.add_argument("--datasets", nargs="+", default=names, choices=names)
    parser.add_argument("--estimators", nargs="+", default=list(DEFAULT_ESTIMATORS),
                        help="method or method:key=value,... (default: %(default)s)")
    args = parser.parse_args()
    try:
        estimators = [parse_estimator(text) for text in args.estimators]
    except ValueError as error:
        parser.error(str(error))
    labels = [estimator_label(estimator) for estimator in estimators]
    if len(set(labels)) != len(labels):
        parser.error(f"--estimators: an estimator is given twice ({', '.join(labels)})")
    seeds = args.seeds if args.seeds is not None else [0] if args.quick else [0, 1]
    import torch

    start = time.perf_counter()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads available "
          f"(runs use train.threads); {'quick' if args.quick else 'full'} benchmark, seeds {seeds}")
    with tempfile.TemporaryDirectory() as temporary:
        chosen = [dataset for dataset in DATASETS if dataset.name in args.datasets]
        results = run_benchmark(chosen, estimators, seeds, args.quick, Path(temporary))
    print_summary(summarise(results, labels), "st" if "st" in labels else labels[0])
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
