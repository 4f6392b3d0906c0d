"""End-to-end time of a short ``sbnn train`` of the quickstart, this tree against an earlier revision.

Each run is a fresh process (``python -m sbnn train examples/quickstart.toml --set train.epochs=5``) timed
from start to exit, so imports, data generation, training, evaluation and writing the run folder all
count. The earlier revision (default ``93ce4a5``, the tree when the speed issue was filed) is extracted with
``git archive`` into a temporary folder and run with the same virtual environment; the two trees alternate
``--rounds`` times and the medians and their ratio are printed. Run folders and the extracted tree live in
a temporary folder this script deletes at the end. The total time is printed last.

Usage: .venv/bin/python benchmarks/quickstart_train_time.py [--revision REV] [--rounds N] [--epochs E]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract(revision: str, folder: Path) -> Path:
    """The tree of ``revision`` written into ``folder`` (``git archive``)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def timed_train(tree: Path, out: Path, epochs: int) -> float:
    """Seconds of one ``sbnn train`` of the quickstart from ``tree`` into the new folder ``out``."""
    environment = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, "-m", "sbnn", "train", "examples/quickstart.toml", "--set",
               f"train.epochs={epochs}", "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(command, cwd=tree, env=environment, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", default="93ce4a5", help="the earlier revision (git)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs of each tree")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    began = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="sbnn-train-time-"))
    try:
        trees = {"this tree": ROOT, args.revision: extract(args.revision, scratch / "earlier")}
        times: dict[str, list[float]] = {name: [] for name in trees}
        for round_index in range(args.rounds):
            for name, tree in trees.items():
                seconds = timed_train(tree, scratch / f"run-{len(times[name])}-{name.replace(' ', '_')}", args.epochs)
                times[name].append(seconds)
                print(f"round {round_index + 1}: {name}: {seconds:.1f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nsbnn train examples/quickstart.toml, {args.epochs} epochs, end to end (median of {args.rounds}):")
    for name, seconds in medians.items():
        print(f"  {name}: {seconds:.1f} s")
    print(f"  speed-up of this tree over {args.revision}: {medians[args.revision] / medians['this tree']:.2f}x")
    print(f"\ntotal: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
