"""benchmarks/estimator_choice.py: its estimator parsing, the override it trains with, the ranking rule, and
one tiny training run through its helper.  Correctness only, never timing."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sbnn.config import load_config
from sbnn.estimators import DEFAULT_ESTIMATOR, EstimatorConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "estimator_choice.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("estimator_choice", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_default_estimators_parse_and_reach_the_run_config(bench):
    parsed = [bench.parse_estimator(text) for text in bench.DEFAULT_ESTIMATORS]
    assert parsed == [EstimatorConfig("st"), EstimatorConfig("iwst", p=0.5), EstimatorConfig("agr", tau=0.3),
                      DEFAULT_ESTIMATOR]
    for estimator in parsed:
        config = load_config(ROOT / "examples" / "digits_bnn.toml", [bench.estimator_override(estimator)])
        assert config.train.estimator == estimator == config.model.estimator
    assert bench.parse_estimator("gr_mc:tau=1,k=8") == EstimatorConfig("gr_mc", tau=1.0, k=8)


@pytest.mark.parametrize("text", ["agr:tau", "agr:speed=2", "nope", "st:tau=1", "agr:tau=x"])
def test_bad_estimator_texts_are_refused(bench, text):
    with pytest.raises(ValueError, match="estimator"):
        bench.parse_estimator(text)


def test_bad_estimator_on_the_command_line_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, str(SCRIPT), "--estimators", "agr:speed=2"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "agr:speed=2" in done.stderr


def test_ranks_share_ties_and_put_divergence_last(bench):
    assert bench.ranks([0.9, 0.8, 0.9, float("nan")]) == [1.5, 3.0, 1.5, 4.0]


def test_summary_and_winner_follow_the_stated_rule(bench):
    def row(ensemble, seconds):
        return {"mean": ensemble, "noisy": ensemble, "ensemble": ensemble, "ece": 0.1, "train_seconds": seconds,
                "epochs": 2}

    results = {("a", 0, "st"): row(0.8, 2.0), ("a", 0, "agr(tau=1)"): row(0.9, 1.0),
               ("a", 0, "iwst(p=0.5)"): row(0.9, 4.0),
               ("b", 0, "st"): row(0.7, 2.0), ("b", 0, "agr(tau=1)"): row(0.6, 1.0),
               ("b", 0, "iwst(p=0.5)"): row(float("nan"), float("nan"))}
    summary = bench.summarise(results, ["st", "agr(tau=1)", "iwst(p=0.5)"])
    by_label = {entry["label"]: entry for entry in summary}
    assert by_label["st"]["rank"] == 2.0 and by_label["agr(tau=1)"]["rank"] == 1.75
    assert by_label["iwst(p=0.5)"]["diverged"] == 1 and by_label["iwst(p=0.5)"]["rank"] == 2.25
    assert math.isclose(by_label["agr(tau=1)"]["time"], 0.5) and math.isclose(by_label["iwst(p=0.5)"]["time"], 2.0)
    assert bench.winner(summary)["label"] == "agr(tau=1)"
    # within the tie margin the faster one wins
    tied = [{"label": "x", "rank": 1.5, "time": 1.0}, {"label": "y", "rank": 1.52, "time": 0.7}]
    assert bench.winner(tied)["label"] == "y"


def test_one_tiny_run_gives_every_figure(bench):
    row = bench.train_once(ROOT / "examples" / "digits_bnn.toml",
                           ["train.epochs=1", "train.train_subset=200", "train.test_subset=100",
                            "model.hidden=[16]", "train.eval_samples=2", bench.estimator_override(DEFAULT_ESTIMATOR)])
    assert set(row) == {"mean", "noisy", "ensemble", "ece", "train_seconds", "epochs"} and row["epochs"] == 1
    assert all(0.0 <= row[key] <= 1.0 for key in ("mean", "noisy", "ensemble", "ece"))
    assert row["train_seconds"] > 0
