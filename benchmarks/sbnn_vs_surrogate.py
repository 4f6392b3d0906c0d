"""SBNN against the surrogate-gradient baseline: same architecture, data, epochs and seed, side by side.

For each example config and seed, trains once with ``train.method = "sbnn"`` and once with
``"surrogate"`` (deterministic neurons, fast-sigmoid surrogate gradient, no KL) and prints test accuracy
(posterior mean; for SBNN also the noisy-unit average and the K-sample ensemble), expected calibration
error and training time.

Usage: .venv/bin/python benchmarks/sbnn_vs_surrogate.py [--configs examples/quickstart.toml ...] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sbnn.config import load_config
from sbnn.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["examples/quickstart.toml", "examples/digits_bnn.toml"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    print(f"{'config':<22} {'seed':>4} {'method':>9} {'mean':>7} {'noisy':>7} {'ensemble':>8} {'ECE':>6} {'seconds':>8}")
    for config_path in args.configs:
        for seed in args.seeds:
            accuracy = {}
            for method in ("sbnn", "surrogate"):
                config = load_config(config_path, [f"train.method={method}", f"train.seed={seed}"])
                with tempfile.TemporaryDirectory() as run_dir:
                    summary = train(config, run_dir, json_mode=True)
                    history = json.loads((Path(run_dir) / "metrics.json").read_text())["history"]
                ece = history[-1]["test"]["mean"]["ece"]
                accuracy[method] = summary["test_accuracy_mean"]
                print(f"{Path(config_path).stem:<22} {seed:>4} {method:>9} {summary['test_accuracy_mean']:>7.4f} "
                      f"{summary['test_accuracy_noisy']:>7.4f} {summary['test_accuracy_ensemble']:>8.4f} "
                      f"{ece:>6.3f} {summary['seconds']:>8.1f}")
            print(f"{'':<22} {'':>4} {'SBNN - surrogate (posterior mean):':>40} "
                  f"{100 * (accuracy['sbnn'] - accuracy['surrogate']):+.2f} points")


if __name__ == "__main__":
    main()
