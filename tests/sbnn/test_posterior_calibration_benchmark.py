"""benchmarks/posterior_calibration.py: its hardware ensemble is the pipeline's (accuracy and ECE as
``results.json`` records them), one tiny run per weight-noise setting through its helpers (row, figure),
the choice rule, and a bad KL weight refused in one line.  Correctness only, never timing."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sbnn.config import load_config
from sbnn.evaluate import accuracy, expected_calibration_error
from sbnn.pipeline import run_pipeline
from tiny_configs import TINY_EXPORTABLE_RUN

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "posterior_calibration.py"
TINY = TINY_EXPORTABLE_RUN.replace("posterior_samples = 1", "posterior_samples = 2")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield importlib.import_module(SCRIPT.stem)
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_hardware_ensemble_is_the_pipelines(bench, tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    config = load_config(tmp_path / "tiny.toml", ["model.weight_noise=per_sequence"])
    run_pipeline(config, tmp_path / "run", quiet=True, progress=lambda _: None)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    probabilities, labels = bench.hardware_ensemble(tmp_path / "run", 2, tmp_path / "bench")
    assert probabilities.shape == (results["accuracy"]["test_samples"], 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-9)
    assert accuracy(probabilities, labels) == results["accuracy"]["hw_ensemble"]
    assert expected_calibration_error(probabilities, labels) == pytest.approx(results["calibration"]["ece"], abs=1e-12)


def test_one_tiny_run_per_setting_gives_rows_and_a_figure(bench, tmp_path, monkeypatch):
    (tmp_path / "tiny.toml").write_text(TINY)
    monkeypatch.setitem(bench.DATASETS, "tiny", bench.Dataset(str(tmp_path / "tiny.toml")))
    rows = [bench.measure("tiny", noise, "0.01", 0, tmp_path, samples=2) for noise in bench.WEIGHT_NOISE]
    for row, noise in zip(rows, bench.WEIGHT_NOISE):
        assert row.error is None and row.weight_noise == noise and row.beta == pytest.approx(0.01)
        assert set(row.scores) == set(bench.PREDICTIONS) and row.samples == 2
        for scores in row.scores.values():
            assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["ece"] <= 1 and scores["nll"] >= 0
        assert "tiny" in bench.format_row(row)
    path = bench.reliability_figure(rows, tmp_path / "tiny.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_choice_takes_the_lowest_ece_within_half_a_point_of_the_best_accuracy(bench):
    def row(noise, kl_weight, seed, hw_accuracy, ece):
        scores = {"hw": {"accuracy": hw_accuracy, "ece": ece}}
        return bench.RunResult("d", noise, kl_weight, seed, 4, scores=scores)

    rows = [row("per_step", "auto", 0, 0.900, 0.05), row("per_step", "auto", 1, 0.900, 0.05),
            row("per_sequence", "auto", 0, 0.897, 0.03), row("per_sequence", "auto", 1, 0.897, 0.01),
            row("per_step", "1.0", 0, 0.880, 0.001), row("per_sequence", "1.0", 0, 0.5, 0.0)]
    assert bench.best_setting(rows) == ("per_sequence", "auto")      # 0.3 points below the best, lower ECE
    assert bench.best_setting(rows, tolerance=0.001) == ("per_step", "auto")
    diverged = bench.RunResult("d", "per_step", "0.01", 0, 4, error="TrainingError: NaN")
    assert bench.best_setting([diverged]) is None
    assert "diverged" in bench.format_row(diverged)


def test_bad_kl_weight_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, str(SCRIPT), "--datasets", "digits", "--kl-weights", "-1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert "kl_weight" in done.stderr and "digits_bnn.toml" in done.stderr
