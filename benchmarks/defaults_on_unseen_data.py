"""Minimal configs on data sets the examples were not tuned on: SBNN, the surrogate baseline, a linear model
and the deployed network, side by side in one run.

Each data set is written as an ``.npz`` and trained from a config that holds only ``[data] name/path`` and
``[model] kind/hidden`` (every other key at its default), once with ``train.method = "sbnn"`` and once with
``"surrogate"``. For each run the table shows the float model's test accuracy (posterior mean), the
deployed network's (the posterior mean exported and run bit-exactly in hw_sim on the *raw* test features,
encoded by the export's own record, as ``sbnn simulate EXPORT --inputs raw.npy`` does) and, per data set,
logistic regression (scikit-learn, features standardised on the training split) and chance.

The data sets (all seeded):

* ``wine``: scikit-learn's wine, 13 features up to about 1,700, 3 classes, 142 train / 36 test;
* ``breast_cancer``: scikit-learn's, 30 features up to about 4,000, 2 classes, 455 / 114;
* ``signals``: 4,000 synthetic waveforms of 64 samples, 6 classes (two sine bands, up and down chirps,
  square and sawtooth waves) with random phase, amplitude, offset and noise, 3,200 / 800;
* ``mnist_raw``: 3,000 / 1,000 MNIST images flattened, pixels 0-255 as float (unscaled).

Usage: .venv/bin/python benchmarks/defaults_on_unseen_data.py [--datasets wine signals ...]
[--set section.key=value ...] [--kind bnn] [--hidden 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

DATASETS = ("wine", "breast_cancer", "signals", "mnist_raw")


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A seeded stratified train/test split as the npz arrays."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return {"x_train": x_train.astype(np.float32), "y_train": y_train.astype(np.int64),
            "x_test": x_test.astype(np.float32), "y_test": y_test.astype(np.int64)}


def make_signals(count: int = 4000, length: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` noisy waveforms ``(count, length)`` of 6 classes with random phase, amplitude and offset."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, length, endpoint=False)
    y = rng.integers(0, 6, count)
    phase = rng.uniform(0, 2 * np.pi, (count, 1))
    amplitude = rng.uniform(0.5, 2.0, (count, 1))
    cycles = np.where(np.isin(y, (1,)), rng.uniform(6, 9, count), rng.uniform(2, 4, count))[:, None]
    sine = np.sin(2 * np.pi * cycles * t + phase)
    chirp_up = np.sin(2 * np.pi * (1 + 4 * t) * t * cycles / 2 + phase)
    chirp_down = np.sin(2 * np.pi * (5 - 4 * t) * t * cycles / 2 + phase)
    square = np.sign(sine)
    sawtooth = 2 * ((cycles * t + phase / (2 * np.pi)) % 1.0) - 1
    waves = np.select([y[:, None] <= 1, y[:, None] == 2, y[:, None] == 3, y[:, None] == 4],
                      [sine, chirp_up, chirp_down, square], sawtooth)
    x = amplitude * waves + rng.uniform(-1, 1, (count, 1)) + rng.normal(0, 0.5, (count, length))
    return x.astype(np.float32), y.astype(np.int64)


def write_dataset(name: str, folder: Path, seed: int = 0) -> Path:
    """The data set ``name`` as ``folder/name.npz``."""
    if name in ("wine", "breast_cancer"):
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        arrays = _split(bunch.data, bunch.target, 0.2, seed)
    elif name == "signals":
        arrays = _split(*make_signals(seed=seed), 0.2, seed)
    elif name == "mnist_raw":
        from sbnn.data import load_dataset

        mnist = load_dataset("mnist")
        rng = np.random.default_rng(seed)
        train, test = rng.permutation(len(mnist.x_train))[:3000], rng.permutation(len(mnist.x_test))[:1000]
        arrays = {"x_train": np.rint(mnist.x_train[train].reshape(3000, -1) * 256).astype(np.float32),
                  "y_train": mnist.y_train[train], "x_test": np.rint(mnist.x_test[test].reshape(1000, -1) * 256)
                  .astype(np.float32), "y_test": mnist.y_test[test]}
    else:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def linear_baseline(path: Path) -> float:
    """Test accuracy of logistic regression on the training split's standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    arrays = np.load(path)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(arrays["x_train"], arrays["y_train"])
    return float(model.score(arrays["x_test"], arrays["y_test"]))


def deployed_accuracy(export_folder: Path, x_raw: np.ndarray, y: np.ndarray) -> float:
    """The export in hw_sim on raw features through the export's own record (the ``simulate --inputs`` path)."""
    from export.folder_reader import ExportFolder
    from export.from_model import readout_logits
    from sbnn.cli.inputs import InputSet

    folder = ExportFolder(export_folder)
    inputs = InputSet(x_raw, "raw", folder.network, encoder=folder.encoder())
    predictions = []
    for _, batch in inputs.batches(256):
        result = folder.network.run(batch, record_states=True)
        predictions.append(readout_logits(result.v[-1], folder.network.latency).argmax(axis=1))
    return float(np.mean(np.concatenate(predictions) == y))


def run_one(data_path: Path, method: str, work: Path, kind: str, hidden: int, overrides: list[str]) -> dict:
    """Train the minimal config with ``method``, export its posterior mean, score both; returns the row."""
    from sbnn.config import load_config
    from sbnn.pipeline import export_run
    from sbnn.train import train

    config_file = work / f"{data_path.stem}.toml"
    config_file.write_text(f'[data]\nname = "npz"\npath = "{data_path}"\n\n[model]\nkind = "{kind}"\n'
                           f"hidden = [{hidden}]\n")
    config = load_config(config_file, [f"train.method={method}", *overrides])
    run_dir = work / f"{data_path.stem}_{method}"
    start = time.perf_counter()
    summary = train(config, run_dir, json_mode=True)
    from export.float_network import ExportError

    arrays = np.load(data_path)
    try:
        folder, _ = export_run(run_dir)
        deployed = deployed_accuracy(folder, arrays["x_test"], arrays["y_test"])
    except ExportError as error:   # the export refuses the data: shown as "fails", the reason below the table
        deployed = float("nan")
        print(f"# {data_path.stem} {method}: export refused: {error}")
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return {"float": summary["test_accuracy_mean"], "deployed": deployed, "kl_weight": history[-1]["kl_weight"],
            "epochs": summary["epochs"], "seconds": time.perf_counter() - start}


def _percent(value: float) -> str:
    return "fails" if value != value else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--kind", default="bnn", help="model.kind of the minimal config (default bnn)")
    parser.add_argument("--hidden", type=int, default=128, help="model.hidden = [H] (default 128)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an override for every run (default: none, the defaults are what is measured)")
    args = parser.parse_args()
    import torch

    start = time.perf_counter()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
          f"minimal config: [model] kind = {args.kind!r}, hidden = [{args.hidden}]; overrides: {args.set or 'none'}")
    header = (f"{'data set':<14} {'chance':>6} {'linear':>6} | {'SBNN':>6} {'deployed':>8} | "
              f"{'surrogate':>9} {'deployed':>8} | {'beta':>7} {'seconds':>7}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        for name in args.datasets:
            path = write_dataset(name, work)
            y_test = np.load(path)["y_test"]
            chance = float(np.max(np.bincount(y_test)) / len(y_test))
            rows = {method: run_one(path, method, work, args.kind, args.hidden, args.set)
                    for method in ("sbnn", "surrogate")}
            sbnn, surrogate = rows["sbnn"], rows["surrogate"]
            print(f"{name:<14} {100 * chance:>6.1f} {100 * linear_baseline(path):>6.1f} | "
                  f"{100 * sbnn['float']:>6.1f} {_percent(sbnn['deployed']):>8} | {100 * surrogate['float']:>9.1f} "
                  f"{_percent(surrogate['deployed']):>8} | {sbnn['kl_weight']:>7.3g} "
                  f"{sbnn['seconds'] + surrogate['seconds']:>7.1f}", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
