"""Cost of evaluation per epoch against training, with the default ``[train]`` and ``[model]`` settings.

The data set is one the examples were not tuned on: a synthetic signal set written to a temporary ``.npz``
(``--train`` + ``--test`` examples, default 4,000 + 1,000; 16 channels, 50 time steps, 4 classes; each
class a sum of two sinusoids of class-specific frequencies with random phases, amplitude jitter and
Gaussian noise, seeded). ``sbnn train`` runs with nothing else set, so after every epoch it evaluates the
posterior mean on the ``train.epoch_eval_subset`` subsets and after the last the full Bayesian evaluation
(noisy ×K, ensemble ×K, calibration), all timed by the training loop itself (``metrics.json``'s
``train_seconds`` and ``eval_seconds``). Printed per epoch: training and evaluation seconds and the
evaluation's share of the epoch; then the final full evaluation, what the earlier scheme (the full
evaluation after every epoch) would cost per epoch measured on the same model, and the total wall time.
Target (issue 13): per-epoch evaluation ≤ 20 % of the epoch.

Usage: .venv/bin/python benchmarks/epoch_evaluation_cost.py [--train N] [--test N] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sbnn.config import load_config
from sbnn.training import METRICS_FILE, train

CHANNELS, STEPS, CLASSES = 16, 50, 4


def make_signals(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` signals ``(count, STEPS, CHANNELS)`` float32 and their labels ``(count,)``."""
    labels = rng.integers(0, CLASSES, count)
    t = np.arange(STEPS)[None, :, None]
    channel = np.arange(CHANNELS)[None, None, :]
    base = 0.05 + 0.03 * labels[:, None, None]        # cycles per step, per class
    phase = rng.uniform(0, 2 * np.pi, (count, 1, CHANNELS))
    amplitude = rng.uniform(0.6, 1.4, (count, 1, CHANNELS))
    signal = amplitude * (np.sin(2 * np.pi * base * t + phase)
                          + 0.5 * np.sin(2 * np.pi * (base * 2.3 + 0.01 * channel) * t + 2 * phase))
    signal += rng.normal(0.0, 0.8, signal.shape)
    return signal.astype(np.float32), labels.astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=4000, help="training examples")
    parser.add_argument("--test", type=int, default=1000, help="test examples")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the default)")
    args = parser.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        x_train, y_train = make_signals(args.train, rng)
        x_test, y_test = make_signals(args.test, rng)
        data_path = Path(folder) / "signals.npz"
        np.savez(data_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        config_path = Path(folder) / "signals.toml"
        config_path.write_text(f'[data]\nname = "npz"\npath = "{data_path}"\n')
        overrides = [] if args.epochs is None else [f"train.epochs={args.epochs}"]
        config = load_config(config_path, overrides)
        run_dir = Path(folder) / "run"
        summary = train(config, run_dir, json_mode=True)
        history = json.loads((run_dir / METRICS_FILE).read_text())["history"]
    wall = time.perf_counter() - started
    report(history, config.train, summary, wall, args)


def report(history: list[dict], train_config, summary: dict, wall: float, args: argparse.Namespace) -> None:
    print(f"synthetic signals: {args.train} train / {args.test} test, T={STEPS}, {CHANNELS} channels, "
          f"{CLASSES} classes; defaults: epochs {train_config.epochs} ({len(history)} run), "
          f"batch {train_config.batch_size}, "
          f"eval_samples K={train_config.eval_samples}, epoch_eval_subset {train_config.epoch_eval_subset}, "
          f"train_eval_subset {train_config.train_eval_subset}, full_eval_every {train_config.full_eval_every}")
    print("epoch  evaluation                    train s   eval s   eval share")
    for record in history:
        evaluation = record["evaluation"]
        kind = f"{evaluation['kind']} ({evaluation['train_examples']}+{evaluation['test_examples']} examples)"
        share = record["eval_seconds"] / record["seconds"]
        print(f"{record['epoch']:5d}  {kind:28s} {record['train_seconds']:8.2f} {record['eval_seconds']:8.2f}"
              f"   {100 * share:6.1f} %")
    cheap = [record for record in history if record["evaluation"]["kind"] == "mean"]
    full = [record for record in history if record["evaluation"]["kind"] == "full"]
    train_mean = float(np.mean([record["train_seconds"] for record in history]))
    if cheap:
        eval_mean = float(np.mean([record["eval_seconds"] for record in cheap]))
        print(f"per-epoch (mean-only) evaluation: {eval_mean:.3f} s against {train_mean:.2f} s training = "
              f"{100 * eval_mean / (eval_mean + train_mean):.1f} % of the epoch (target ≤ 20 %)")
    if full:
        full_seconds = full[-1]["eval_seconds"]
        print(f"final full evaluation: {full_seconds:.2f} s; the earlier scheme (full evaluation every epoch) "
              f"would spend {100 * full_seconds / (full_seconds + train_mean):.1f} % of each epoch evaluating")
    total_train = sum(record["train_seconds"] for record in history)
    total_eval = sum(record["eval_seconds"] for record in history)
    print(f"run: {total_train:.1f} s training + {total_eval:.1f} s evaluating; test accuracy mean "
          f"{summary['test_accuracy_mean']:.3f}, noisy {summary['test_accuracy_noisy']:.3f}, ensemble "
          f"{summary['test_accuracy_ensemble']:.3f}; benchmark wall time {wall:.1f} s")


if __name__ == "__main__":
    main()
