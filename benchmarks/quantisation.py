"""Accuracy on hardware: float posterior mean vs the quantised network in hw_sim, on the example runs.

For each config (digits binary SBNN, Randman spiking SBNN): train (seeded), export the posterior mean
(model.nir → quantiser → loihi.h5), then on the whole test set compare the float model's predictions with
hw_sim's (Loihi arithmetic and timing). Prints both accuracies, the drop, and the fraction of test samples
with the same prediction. Targets (issue 5): drop ≤ 0.5 points, same prediction on ≥ 99 %.

Usage: .venv/bin/python benchmarks/quantisation.py [--configs ...] [--runs DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sbnn.config import load_config
from sbnn.evaluate import predict_mean
from sbnn.pipeline import export_run, hardware_logits, load_run, model_sequences
from sbnn.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["examples/digits_bnn.toml", "examples/quickstart.toml"])
    parser.add_argument("--runs", default="runs/benchmark-quantisation", help="where the runs are kept (reused)")
    args = parser.parse_args()
    print(f"{'config':<14} {'test':>5} {'float acc':>9} {'hw_sim acc':>10} {'drop (pts)':>10} {'same prediction':>15}")
    for config_path in args.configs:
        config = load_config(config_path)
        run_dir = Path(args.runs) / Path(config_path).stem
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
        print(f"{Path(config_path).stem:<14} {len(labels):>5} {float_accuracy:>9.4f} {hw_accuracy:>10.4f} "
              f"{100 * (float_accuracy - hw_accuracy):>10.2f} {same:>15.2%}")


if __name__ == "__main__":
    main()
