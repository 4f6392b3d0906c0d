"""Tests of sbnn.train and sbnn.evaluate: the run folder, resume after SIGKILL, NaN/Inf stops, determinism,
the surrogate baseline, two-process training with torchrun, the command line and the metric functions."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from safeio.atomic import LOCK_NAME
from sbnn.config import load_config
from sbnn.evaluate import (
    accuracy,
    evaluate_split,
    expected_calibration_error,
    predict_ensemble,
    predict_mean,
    predict_noisy,
    predictive_entropy,
    reliability_bins,
)
from sbnn.models import ModelConfig, build_model
from sbnn.train import main
from sbnn.training import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    JSON_KEYS,
    METRICS_FILE,
    RUN_MARKER,
    TrainingError,
    kl_weight_at,
    learning_rate_factor,
    load_checkpoint,
    load_trained_model,
    train,
)


# Small enough for a fraction of a second per epoch, big enough that the network learns something.
TINY = """
[data]
name = "randman"
num_classes = 3
num_units = 16
steps = 16
samples_per_class = 60
intrinsic_dim = 1

[model]
kind = "snn"
hidden = [24]
init_gain = 3.0

[train]
epochs = 2
batch_size = 8
lr = 0.02
kl_weight = 0.01
kl_warmup_epochs = 1
eval_samples = 2
train_eval_subset = 60
threads = 1
seed = 3
"""

TIMING_KEYS = {"seconds", "train_seconds", "eval_seconds"}


def _config_file(tmp_path: Path, text: str = TINY, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _without_timing(value):
    if isinstance(value, dict):
        return {key: _without_timing(item) for key, item in value.items() if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timing(item) for item in value]
    return value


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / CHECKPOINT_FILE)["model"]


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    return environment


# ----------------------------------------------------------------------------------------------------
# The run folder and the command line
# ----------------------------------------------------------------------------------------------------


def test_json_output_and_run_folder(tmp_path, capsys):
    config_path = _config_file(tmp_path)
    run_dir = tmp_path / "run"
    assert main([str(config_path), "--out", str(run_dir), "--json"]) == 0
    output = capsys.readouterr().out.strip().splitlines()
    assert len(output) == 1
    summary = json.loads(output[0])
    assert set(JSON_KEYS) <= set(summary)
    assert summary["epochs"] == 2 and summary["run_dir"] == str(run_dir) and summary["seconds"] > 0
    for key in ("test_accuracy_mean", "test_accuracy_noisy", "test_accuracy_ensemble"):
        assert 0.0 <= summary[key] <= 1.0

    # the run marker and the (released) writer lock are sbnn's own bookkeeping
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE,
                                                                 RUN_MARKER, LOCK_NAME])
    assert load_config(run_dir / CONFIG_FILE).to_dict() == load_config(config_path).to_dict()

    checkpoint = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["epoch"] == 2 and set(checkpoint["rng"]) >= {"torch", "numpy", "python", "data"}
    assert {"model", "optimizer", "scheduler", "history", "global_step"} <= set(checkpoint)

    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    assert [record["epoch"] for record in metrics["history"]] == [1, 2]
    record = metrics["history"][-1]
    assert set(record["loss"]) >= {"nll", "kl", "aux"}
    for split in ("train", "test"):
        for prediction in ("mean", "noisy", "ensemble"):
            assert set(record[split][prediction]) >= {"accuracy", "ece"}
    assert record["seconds"] > 0 and "batch_accuracy" in record["train"]
    assert record["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")   # train.device = "auto"
    assert metrics["summary"]["test_accuracy_mean"] == summary["test_accuracy_mean"]



def test_command_line_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    config_path = _config_file(tmp_path)
    assert main([str(config_path), "--out", str(tmp_path / "a"), "--set", "train.epoch=2"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"sbnn train: {config_path}: train.epoch: ") and error.count("\n") == 1

    shd = _config_file(tmp_path, "[data]\nname = 'shd'\npath = 'nowhere/shd'\n", "shd.toml")
    assert main([str(shd), "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sbnn train: ") and "nowhere" in error and error.count("\n") == 1

    if not torch.cuda.is_available():
        assert main([str(config_path), "--out", str(tmp_path / "c"), "--device", "cuda"]) == 2
        assert "train.device: cuda" in capsys.readouterr().err

    run_dir = tmp_path / "d"
    assert main([str(config_path), "--out", str(run_dir), "--set", "train.epochs=1", "--json"]) == 0
    capsys.readouterr()
    assert main([str(config_path), "--out", str(run_dir)]) == 2  # a checkpoint is there: refuse to overwrite
    assert "--resume" in capsys.readouterr().err
    assert main([str(config_path), "--out", str(run_dir), "--resume", "--set", "train.lr=0.5"]) == 2
    assert "train.lr" in capsys.readouterr().err  # a different config cannot resume this run
    assert main([str(config_path), "--out", str(run_dir), "--overwrite", "--set", "train.lr=0.5", "--json"]) == 0
    capsys.readouterr()
    assert "lr = 0.5" in (run_dir / CONFIG_FILE).read_text()
    assert len(json.loads((run_dir / METRICS_FILE).read_text())["history"]) == 2


def test_default_run_folder_is_runs_slash_config_stem(tmp_path, monkeypatch, capsys):
    config_path = _config_file(tmp_path, name="named.toml")
    monkeypatch.chdir(tmp_path)
    assert main([str(config_path), "--set", "train.epochs=1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(Path("runs") / "named")
    assert (tmp_path / "runs" / "named" / CHECKPOINT_FILE).exists()


# ----------------------------------------------------------------------------------------------------
# Determinism, resume, failures
# ----------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_metrics_and_weights(tmp_path):
    config = load_config(_config_file(tmp_path))
    train(config, tmp_path / "first", json_mode=True)
    train(config, tmp_path / "second", json_mode=True)
    first = json.loads((tmp_path / "first" / METRICS_FILE).read_text())["history"]
    second = json.loads((tmp_path / "second" / METRICS_FILE).read_text())["history"]
    assert _without_timing(first) == _without_timing(second)
    _assert_same_weights(_weights(tmp_path / "first"), _weights(tmp_path / "second"))

    other = load_config(_config_file(tmp_path), ["train.seed=4"])
    train(other, tmp_path / "other", json_mode=True)
    assert not torch.equal(_weights(tmp_path / "other")["layers.0.synapse.weight_mu"],
                           _weights(tmp_path / "first")["layers.0.synapse.weight_mu"])


def test_resume_after_sigkill_reaches_the_same_weights(tmp_path, capsys):
    epochs = 8
    config_path = _config_file(tmp_path)
    overrides = [f"train.epochs={epochs}"]

    reference = tmp_path / "uninterrupted"
    train(load_config(config_path, overrides), reference, json_mode=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "sbnn.train", str(config_path), "--out", str(interrupted), "--json",
         "--set", overrides[0]],
        cwd=ROOT, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    checkpoint_path = interrupted / CHECKPOINT_FILE
    deadline = time.monotonic() + 120
    while not checkpoint_path.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(checkpoint_path)["epoch"]
    assert 1 <= killed_at < epochs, "the run finished before it could be killed"

    assert main([str(config_path), "--out", str(interrupted), "--resume", "--json", "--set", overrides[0]]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == epochs
    # the killed process's hidden temporaries are gone too
    assert sorted(p.name for p in interrupted.iterdir()) == sorted([CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE,
                                                                     RUN_MARKER, LOCK_NAME])
    _assert_same_weights(_weights(interrupted), _weights(reference))
    resumed = load_checkpoint(checkpoint_path)
    expected = load_checkpoint(reference / CHECKPOINT_FILE)
    assert resumed["global_step"] == expected["global_step"]
    assert _without_timing(resumed["history"]) == _without_timing(expected["history"])
    for name, state in expected["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][name]["exp_avg"], state["exp_avg"])


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    config = load_config(_config_file(tmp_path), ["train.epochs=1"])
    first = train(config, tmp_path / "run", json_mode=True)
    weights = _weights(tmp_path / "run")
    again = train(config, tmp_path / "run", resume=True, json_mode=True)
    assert again == first
    _assert_same_weights(_weights(tmp_path / "run"), weights)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # One step per epoch with a learning rate of 1e30: the first step is finite, after it the weights
    # are about 1e30, and the second epoch's KL (mu^2 / 2 sigma_p^2) overflows.
    config_path = _config_file(tmp_path)
    run_dir = tmp_path / "run"
    arguments = [str(config_path), "--out", str(run_dir), "--set", "train.lr=1e30", "--set", "train.batch_size=512",
                 "--set", "train.schedule=none", "--set", "train.kl_warmup_epochs=0", "--set", "train.epochs=3"]
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert error.startswith("sbnn train: the loss became ") and error.count("\n") == 1
    assert "epoch 2" in error and "last good checkpoint" in error

    checkpoint = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 1
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["model"].values())
    metrics = json.loads((run_dir / METRICS_FILE).read_text())  # strict JSON even with diverged metrics
    assert len(metrics["history"]) == 1

    with pytest.raises(TrainingError, match="became"):
        train(load_config(config_path, arguments[4::2]), run_dir, resume=True, json_mode=True)
    assert load_checkpoint(run_dir / CHECKPOINT_FILE)["epoch"] == 1


def test_surrogate_baseline_trains_with_zero_kl(tmp_path):
    config = load_config(_config_file(tmp_path), ["train.method=surrogate"])
    summary = train(config, tmp_path / "run", json_mode=True)
    assert summary["method"] == "surrogate"
    history = json.loads((tmp_path / "run" / METRICS_FILE).read_text())["history"]
    for record in history:
        assert record["loss"]["kl"] == 0.0 and record["loss"]["kl_term"] == 0.0
    last = history[-1]["test"]   # the full evaluation: the last epoch's
    assert last["mean"] == last["noisy"] == last["ensemble"]
    assert summary["test_accuracy_mean"] == summary["test_accuracy_noisy"] == summary["test_accuracy_ensemble"]
    weights = _weights(tmp_path / "run")
    initial = build_model(config.model, (16,), 3, seed=config.train.seed).state_dict()
    # Only the posterior means train; the (unused) posterior scales stay as initialised.
    assert torch.equal(weights["layers.0.synapse.weight_rho"], initial["layers.0.synapse.weight_rho"])
    assert not torch.equal(weights["layers.0.synapse.weight_mu"], initial["layers.0.synapse.weight_mu"])


def test_auxiliary_penalty_and_gradient_clipping_run(tmp_path):
    config = load_config(_config_file(tmp_path), [
        "train.epochs=1", "train.aux_penalty=weight_noise_ratio", "train.aux_weight=0.1", "train.grad_clip=1.0",
        "train.optimizer=sgd", "train.schedule=step", "train.step_epochs=1",
    ])
    train(config, tmp_path / "run", json_mode=True)
    record = json.loads((tmp_path / "run" / METRICS_FILE).read_text())["history"][0]
    assert record["loss"]["aux"] > 0


def test_two_process_torchrun_completes(tmp_path):
    config_path = _config_file(tmp_path)
    run_dir = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         "-m", "sbnn.train", str(config_path), "--out", str(run_dir), "--json"],
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 prints
    summary = json.loads(lines[0])
    assert summary["epochs"] == 2 and set(JSON_KEYS) <= set(summary)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert checkpoint["world_size"] == 2 and checkpoint["epoch"] == 2
    # Each of the two processes took half of every global batch of 8: 180 * 0.8 / 8 = 18 steps an epoch.
    assert checkpoint["global_step"] == 2 * 18


# ----------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------


def test_learning_rate_schedules_and_kl_warmup(tmp_path):
    config = load_config(_config_file(tmp_path), ["train.epochs=4", "train.kl_warmup_epochs=2"])
    train_config = config.train
    assert learning_rate_factor(train_config, 0, 10) == 1.0
    assert math.isclose(learning_rate_factor(train_config, 20, 10), 0.5)
    assert math.isclose(learning_rate_factor(train_config, 40, 10), 0.0, abs_tol=1e-12)
    stepped = load_config(_config_file(tmp_path), ["train.schedule=step", "train.step_epochs=2",
                                                   "train.step_gamma=0.5"]).train
    assert [learning_rate_factor(stepped, step, 10) for step in (0, 19, 20, 40)] == [1.0, 1.0, 0.5, 0.25]
    assert math.isclose(kl_weight_at(train_config, 9, 10), 0.01 * 0.5)
    assert kl_weight_at(train_config, 19, 10) == 0.01 == kl_weight_at(train_config, 100, 10)


# ----------------------------------------------------------------------------------------------------
# Evaluation functions
# ----------------------------------------------------------------------------------------------------


def test_calibration_metrics_on_known_values():
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    assert accuracy(probabilities, labels) == 0.75
    diagram = reliability_bins(probabilities, labels, bins=4)
    assert diagram["count"] == [0, 1, 2, 1] and len(diagram["edges"]) == 5
    assert diagram["accuracy"] == [0.0, 1.0, 0.5, 1.0]
    assert math.isclose(diagram["confidence"][2], 0.675)
    # |1 - 0.5| / 4 + 2 |0.5 - 0.675| / 4 + |1 - 0.9| / 4
    assert math.isclose(expected_calibration_error(probabilities, labels, bins=4), (0.5 + 0.35 + 0.1) / 4)
    entropy = predictive_entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert entropy[0] == 0.0 and math.isclose(float(entropy[1]), math.log(2))


def test_predictions_leave_the_model_unchanged_and_are_seeded():
    model = build_model(ModelConfig(kind="snn", hidden=(8,), init_gain=3.0), (6,), 3, seed=0)
    x = (torch.rand(10, 5, 6, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    labels = torch.arange(10) % 3
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    mean = predict_mean(model, x, batch_size=4)
    noisy = predict_noisy(model, x, samples=3, seed=5, batch_size=4)
    ensemble = predict_ensemble(model, x, samples=3, seed=5, batch_size=3)
    assert model.mode.value == "noisy"
    _assert_same_weights(model.state_dict(), before)
    for probabilities in (mean, noisy, ensemble):
        assert probabilities.shape == (10, 3)
        assert torch.allclose(probabilities.sum(1), torch.ones(10))
    assert torch.equal(noisy, predict_noisy(model, x, samples=3, seed=5, batch_size=4))
    assert torch.equal(ensemble, predict_ensemble(model, x, samples=3, seed=5, batch_size=3))
    summary = evaluate_split(model, x, labels, samples=2, seed=0)
    assert set(summary) == {"mean", "noisy", "ensemble"}
    assert set(summary["mean"]) == {"accuracy", "ece", "nll", "entropy"}


def test_trained_model_reloads_with_its_predictions(tmp_path):
    config = load_config(_config_file(tmp_path), ["train.epochs=1"])
    train(config, tmp_path / "run", json_mode=True)
    model = load_trained_model(tmp_path / "run")
    _assert_same_weights(model.state_dict(), _weights(tmp_path / "run"))
    x = (torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    assert predict_mean(model, x).shape == (4, 3)


# ----------------------------------------------------------------------------------------------------
# Evaluation scheduling: the posterior mean on a subset per epoch, the full evaluation at the end and
# every train.full_eval_every epochs
# ----------------------------------------------------------------------------------------------------


def _kinds(run_dir: Path) -> list[str]:
    return [record["evaluation"]["kind"] for record in json.loads((run_dir / METRICS_FILE).read_text())["history"]]


def test_epochs_hold_only_the_mean_evaluation_and_the_last_the_full_one(tmp_path):
    config = load_config(_config_file(tmp_path), ["train.epochs=3", "train.epoch_eval_subset=20"])
    summary = train(config, tmp_path / "run", json_mode=True)
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    first, second, last = metrics["history"]
    for record in (first, second):
        assert record["evaluation"] == {"kind": "mean", "train_examples": 20, "test_examples": 20}
        assert set(record["test"]) == {"mean"} and set(record["train"]) == {"batch_accuracy", "mean"}
        assert set(record["test"]["mean"]) == {"accuracy", "ece", "nll", "entropy"}
        assert 0 < record["eval_seconds"] < record["seconds"]
    # TINY: 180 examples, 144 train (60 of them evaluated: train_eval_subset) and 36 test
    assert last["evaluation"] == {"kind": "full", "train_examples": 60, "test_examples": 36}
    for split in ("train", "test"):
        assert set(last[split]) - {"batch_accuracy"} == {"mean", "noisy", "ensemble"}
    assert metrics["summary"]["test_accuracy_noisy"] == last["test"]["noisy"]["accuracy"] == summary[
        "test_accuracy_noisy"]
    # the subsets are fixed: the same seed scores the same examples (first epoch: same weights, same numbers)
    again = train(config, tmp_path / "again", json_mode=True)
    assert _without_timing(json.loads((tmp_path / "again" / METRICS_FILE).read_text())["history"]) \
        == _without_timing(metrics["history"]) and again["test_accuracy_mean"] == summary["test_accuracy_mean"]


def test_full_evaluation_every_n_epochs_and_on_resume_with_a_new_n(tmp_path):
    constant = "train.schedule='none'"   # the run resumed to a longer one follows the same schedule
    config = load_config(_config_file(tmp_path), [constant, "train.epochs=5", "train.full_eval_every=2"])
    train(config, tmp_path / "run", json_mode=True)
    assert _kinds(tmp_path / "run") == ["mean", "full", "mean", "full", "full"]
    # full_eval_every does not change the weights, so a run may resume with another one
    short = load_config(_config_file(tmp_path), [constant, "train.epochs=2"])
    train(short, tmp_path / "resumed", json_mode=True)
    assert _kinds(tmp_path / "resumed") == ["mean", "full"]
    # epoch_eval_subset = "auto": a quarter of the 144 training examples per split (of 60 train-evaluated, 36 test)
    first = json.loads((tmp_path / "resumed" / METRICS_FILE).read_text())["history"][0]
    assert first["evaluation"] == {"kind": "mean", "train_examples": 36, "test_examples": 36}
    longer = load_config(_config_file(tmp_path), [constant, "train.epochs=5", "train.full_eval_every=3"])
    train(longer, tmp_path / "resumed", resume=True, json_mode=True)
    assert _kinds(tmp_path / "resumed") == ["mean", "full", "full", "mean", "full"]
    _assert_same_weights(_weights(tmp_path / "resumed"), _weights(tmp_path / "run"))


def test_progress_and_epoch_lines_say_what_is_evaluated(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)   # the progress bar shows on a terminal only
    config = load_config(_config_file(tmp_path), ["train.epoch_eval_subset=30"])
    train(config, tmp_path / "run")
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("epoch 1/2: loss ") and "test mean " in lines[0] and "noisy" not in lines[0]
    assert lines[0].endswith(" s") and "| training " in lines[0] and "evaluating (mean, 60 examples) " in lines[0]
    assert lines[1] == "epoch 2/2: full evaluation (noisy ×2, ensemble ×2) on 60 train and 36 test examples"
    assert " noisy " in lines[2] and " ensemble " in lines[2] and "full evaluation (noisy ×2, ensemble ×2) " in lines[2]
    for text in ("epoch 1/2 training", "epoch 1/2 evaluating (mean, 60 examples)",
                 "epoch 2/2 full evaluation (noisy ×2, ensemble ×2)"):
        assert text in captured.err


def test_automatic_per_epoch_evaluation_size():
    from sbnn.training.data import epoch_eval_size

    assert epoch_eval_size("auto", 144) == 36 and epoch_eval_size("auto", 4001) == 1000
    assert epoch_eval_size("auto", 1) == 1 and epoch_eval_size(None, 10) is None and epoch_eval_size(7, 10) == 7

    from sbnn.config import ConfigError

    for bad in ("epoch_eval_subset='many'", "epoch_eval_subset=0", "full_eval_every=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(ROOT / "examples" / "quickstart.toml", [f"train.{bad}"])


def test_a_summary_of_an_unfinished_run_has_no_noisy_or_ensemble_accuracy(tmp_path):
    from sbnn.training.run_folder import run_summary

    mean_only = {"test": {"mean": {"accuracy": 0.5}}, "seconds": 1.0}
    summary = run_summary([mean_only], tmp_path, "sbnn")
    assert summary["test_accuracy_mean"] == 0.5
    assert summary["test_accuracy_noisy"] is None and summary["test_accuracy_ensemble"] is None


def test_mean_only_evaluation_equals_the_full_evaluations_mean():
    model = build_model(ModelConfig(kind="snn", hidden=(8,), init_gain=3.0), (6,), 3, seed=0)
    x = (torch.rand(12, 5, 6, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    labels = torch.arange(12) % 3
    full = evaluate_split(model, x, labels, samples=2, seed=0)
    mean = evaluate_split(model, x, labels, samples=2, seed=0, predictions=("mean",))
    assert mean == {"mean": full["mean"]}
    assert evaluate_split(model, x, labels, samples=2, seed=0, predictions=("ensemble", "noisy")) == {
        "noisy": full["noisy"], "ensemble": full["ensemble"]}
    with pytest.raises(ValueError, match="predictions must be"):
        evaluate_split(model, x, labels, samples=2, seed=0, predictions=("median",))


def test_metrics_json_fields_are_documented(tmp_path):
    config = load_config(_config_file(tmp_path), ["train.epochs=1"])
    train(config, tmp_path / "run", json_mode=True)
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    text = (ROOT / "docs" / "formats.md").read_text()
    section = text[text.index('<a id="metrics-json"></a>'):]
    record = metrics["history"][0]
    names = [*metrics, *metrics["summary"], *record, *record["loss"], *record["evaluation"], *record["train"],
             *record["test"], *record["test"]["mean"]]
    missing = sorted({name for name in names if f"`{name}`" not in section})
    assert not missing, f"docs/formats.md#metrics-json does not name {missing}"


def test_epoch_totals_pack_sum_and_reduce_by_name():
    """EpochTotals packs its seven sums in field order into one float64 tensor (what the processes
    all-reduce), sums of packed steps unpack to the field-wise sums, and the records divide as documented:
    the NLL per example, the rest per step."""
    from sbnn.training import EpochTotals, ProcessGroup

    def step(nll, correct, count, kl, kl_term, aux, loss):
        return EpochTotals(*(torch.tensor(float(v)) for v in (nll, correct, count, kl, kl_term, aux, loss)))

    running = EpochTotals.packed_zeros(torch.device("cpu"))
    running += step(6.0, 3, 4, 10.0, 0.5, 0.25, 7.0).to_tensor()
    running += step(2.0, 1, 4, 30.0, 1.5, 0.75, 5.0).to_tensor()
    assert running.dtype == torch.float64 and running.tolist() == [8.0, 4.0, 8.0, 40.0, 2.0, 1.0, 12.0]
    totals = EpochTotals.reduce(running, ProcessGroup(rank=0, world_size=1, local_rank=0))
    assert totals.batch_accuracy == 0.5
    assert totals.loss_record(step_count=2) == {"nll": 1.0, "kl": 20.0, "kl_term": 1.0, "aux": 0.5, "total": 6.0}
