"""Accuracy on hardware: float posterior mean vs the quantised network in hw_sim, on the example runs.

For each config (digits binary SBNN, Randman spiking SBNN): train (seeded), export the posterior mean
(model.nir → quantiser → loihi.h5), then on the whole test set compare the float model's predictions with
hw_sim's (Loihi arithmetic and timing). Prints both accuracies, the drop, and the fraction of test samples
with the same prediction. Targets (issue 5): drop ≤ 0.5 points, same prediction on ≥ 99 %.

With several ``--seeds`` (training seeds) it also prints the mean drop per config: on a 360-digit test set
one digit is 0.28 points, so a single seed's drop moves in steps of that size.

Usage: .venv/bin/python benchmarks/quantisation.py [--configs ...] [--runs DIR] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from sbnn.config import load_config
from sbnn.evaluate import predict_mean
from sbnn.pipeline import export_run, hardware_logits, load_run, model_sequences
from sbnn.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["examples/digits_bnn.toml", "examples/quickstart.toml"])
    parser.add_argument("--runs", default="runs/benchmark-quantisation", help="where the runs are kept (reused)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (train.seed)")
    args = parser.parse_args()
    print(f"{'config':<14} {'seed':>4} {'test':>5} {'float acc':>9} {'hw_sim acc':>10} {'drop (pts)':>10} "
          f"{'same prediction':>15}")
    for config_path in args.configs:
        drops, agreements = [], []
        for seed in args.seeds:
            config = load_config(config_path, [f"train.seed={seed}"])
            suffix = "" if seed == 0 else f"-seed{seed}"
            run_dir = Path(args.runs) / f"{Path(config_path).stem}{suffix}"
            if not (run_dir / "checkpoint.pt").exists():
                train(config, run_dir, json_mode=True)
            loaded = load_run(run_dir)
            _, model, data = loaded
            folder, _ = export_run(run_dir, loaded=loaded)
            labels = data.y_test.numpy()
            float_predictions = predict_mean(model, data.x_test).numpy().argmax(axis=1)
            hw_predictions = hardware_logits(folder, model_sequences(data.x_test, model)).argmax(axis=1)
            float_accuracy = float((float_predictions == labels).mean())
            hw_accuracy = float((hw_predictions == labels).mean())
            same = float((float_predictions == hw_predictions).mean())
            drops.append(100 * (float_accuracy - hw_accuracy))
            agreements.append(same)
            print(f"{Path(config_path).stem:<14} {seed:>4} {len(labels):>5} {float_accuracy:>9.4f} "
                  f"{hw_accuracy:>10.4f} {drops[-1]:>10.2f} {same:>15.2%}")
        if len(args.seeds) > 1:
            print(f"{Path(config_path).stem:<14} mean over {len(args.seeds)} seeds: drop {statistics.mean(drops):.2f} "
                  f"points, same prediction {statistics.mean(agreements):.2%}")

if __name__ == "__main__":
    main()
