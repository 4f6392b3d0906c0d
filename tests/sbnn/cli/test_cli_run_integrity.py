"""Whole runs (issue 7 §1 paths, §2 crashes, §3 determinism), each ``sbnn`` command a separate process.

* Determinism: two separate ``sbnn pipeline`` runs of one config and seed on CPU give identical checkpoint
  tensors, loihi.h5 networks, spikes, export.json and results.json numbers (timings aside).
* Paths: a run whose config reaches its data through ``../`` writes nothing outside its run folder (Lava's
  scratch folder in $TMPDIR is removed again), and an export folder that is a symlink to elsewhere is
  replaced, never written through.
* SIGKILL: ``sbnn export`` killed at several points while it replaces an existing export, and
  ``sbnn pipeline`` killed in training, exporting, Lava verification and reporting: every file left is
  complete and valid (it loads) or absent — only hidden staging leftovers (``.NAME.*.new``/``.old``/
  ``.tmp``) may remain, which no reader looks at — no Lava process outlives the kill, and running the
  command again removes those leftovers and completes with results identical to the uninterrupted run.
* Lava failing: a pipeline whose Lava run times out still computes, writes and reports everything else,
  exits 0 with a one-line ``lava_error``, and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import hw_sim
from export.nir_io import read_nir
from export.onnx_export import run_onnx
from sbnn.config import load_config
from conftest import ROOT
from sbnn.train import load_checkpoint
from tiny_configs import TINY_NPZ_PIPELINE

EXPORT_FILES = ("model.nir", "loihi.h5", "model.onnx", "model_int.onnx", "export.json", "inputs.npy", "labels.npy")
HIDDEN_LEFTOVER = re.compile(r"^\..+\.(new|old|tmp\d*)$")
OWN_HIDDEN = {".sbnn.lock", ".sbnn-run"}   # the run folder's writer lock and marker: not leftovers
EXPORT_MARKER = ".sbnn-export"              # an export folder's marker

PIPELINE = ["pipeline", "../configs/tiny.toml", "--out", "run", "--json"]


def make_sandbox(folder: Path) -> Path:
    """sandbox/configs/tiny.toml, sandbox/data/spikes.npz (reached from the config as ../data), sandbox/work
    (the working directory, where the run folder goes) and sandbox/tmp ($TMPDIR)."""
    from sbnn.data import make_randman

    for name in ("configs", "data", "work", "tmp"):
        (folder / name).mkdir(parents=True)
    (folder / "configs" / "tiny.toml").write_text(TINY_NPZ_PIPELINE)
    data = make_randman(num_classes=3, num_units=16, steps=12, samples_per_class=40, intrinsic_dim=1, seed=1)
    np.savez(folder / "data" / "spikes.npz", x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
             y_test=data.y_test)
    return folder


def start(sandbox: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(sandbox / "tmp")}
    return subprocess.Popen([sys.executable, "-m", "sbnn", *args], cwd=sandbox / "work", env=env,
                            stdout=subprocess.DEVNULL, stderr=open(sandbox / "stderr.txt", "w"))


def finish(sandbox: Path, args: list[str]) -> None:
    process = start(sandbox, args)
    assert process.wait(timeout=300) == 0, (sandbox / "stderr.txt").read_text()[-3000:]


def kill_when(sandbox: Path, args: list[str], condition, *, limit: float = 240.0) -> bool:
    """Start the command, SIGKILL it as soon as ``condition()`` holds; False when it finished first."""
    process = start(sandbox, args)
    deadline = time.monotonic() + limit
    while process.poll() is None:
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        assert time.monotonic() < deadline, f"{args} neither reached the kill point nor finished"
        time.sleep(0.002)
    assert process.returncode == 0, (sandbox / "stderr.txt").read_text()[-3000:]
    return False


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in command:
                found.append(f"{entry.name}: {command[:200]}")
    return found


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items()
                if "seconds" not in k and "timings" not in k and k != "pipeline"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


# --------------------------------------------------------------------------------------------------
# Validity of what a run folder holds, and sameness of two run folders

def assert_valid_file(path: Path) -> None:
    """A visible file of a run folder loads with its reader."""
    name = path.name
    if name == "checkpoint.pt":
        load_checkpoint(path)
    elif name == "config.toml":
        load_config(path)
    elif name.endswith(".json"):
        json.loads(path.read_text())
    elif name.endswith(".h5"):
        hw_sim.load(path)
    elif name.endswith(".nir"):
        read_nir(path)
    elif name == "model_int.onnx":
        run_onnx(path, np.load(path.parent / "inputs.npy")[:1, :3])
    elif name.endswith(".onnx"):
        network = hw_sim.load(path.parent / "loihi.h5")
        run_onnx(path, np.zeros((1, 2, *network.input_shape)))
    elif name.endswith(".npy"):
        np.load(path, allow_pickle=False)
    elif name.endswith(".html"):
        assert path.read_text().rstrip().endswith("</html>"), path
    else:
        raise AssertionError(f"unexpected file {path}")


def assert_run_folder_valid(run: Path) -> list[str]:
    """Every visible file is complete and valid; export folders are complete. Returns the hidden leftovers."""
    leftovers = []
    for path in sorted(run.rglob("*")):
        relative = path.relative_to(run)
        if str(relative) in OWN_HIDDEN or (len(relative.parts) == 2 and relative.name == EXPORT_MARKER):
            continue
        if any(part.startswith(".") for part in relative.parts):
            assert HIDDEN_LEFTOVER.match(relative.parts[0]), f"unexpected hidden entry {relative}"
            leftovers.append(relative.parts[0])
            continue
        if path.is_dir():
            assert path.name.startswith("export"), path
            assert sorted(p.name for p in path.iterdir()) == sorted(EXPORT_FILES + (EXPORT_MARKER,)), f"incomplete {path}"
        else:
            assert_valid_file(path)
    return sorted(set(leftovers))


def without_checkpoint_hash(report: dict) -> dict:
    """export.json less the checkpoint's file hash: a checkpoint records its epochs' wall-clock seconds, so
    two identical trainings give checkpoints with identical tensors but different bytes."""
    report = json.loads(json.dumps(report))
    report["provenance"]["inputs"].pop("checkpoint_sha256")
    return report


def assert_same_export(a: Path, b: Path) -> None:
    network = hw_sim.load(a / "loihi.h5")
    assert network == hw_sim.load(b / "loihi.h5")
    assert without_checkpoint_hash(json.loads((a / "export.json").read_text())) == \
        without_checkpoint_hash(json.loads((b / "export.json").read_text()))
    inputs = np.load(a / "inputs.npy")
    assert np.array_equal(inputs, np.load(b / "inputs.npy"))
    ours, theirs = network.run(inputs, record_states=True), hw_sim.load(b / "loihi.h5").run(inputs, record_states=True)
    assert all(np.array_equal(x, y) for x, y in zip(ours.spikes + ours.v, theirs.spikes + theirs.v))
    nir_a, nir_b = read_nir(a / "model.nir")[0], read_nir(b / "model.nir")[0]
    assert all(np.array_equal(x.weight, y.weight) and np.array_equal(x.bias, y.bias)
               for x, y in zip(nir_a.layers, nir_b.layers))
    assert np.array_equal(run_onnx(a / "model_int.onnx", inputs[:, :6]), run_onnx(b / "model_int.onnx", inputs[:, :6]))


def assert_same_run(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "global_step"):
        assert tensors_equal(first[key], second[key]), key
    # the stored config records the data's absolute path (docs/data.md#paths): each sandbox's own
    sandbox_a, sandbox_b = str(a.parents[1].resolve()), str(b.parents[1].resolve())
    assert sandbox_a in first["config"] and first["config"].replace(sandbox_a, sandbox_b) == second["config"]
    assert without_timings(first["history"]) == without_timings(second["history"])
    for name in ("export", "export_sample0"):
        assert_same_export(a / name, b / name)
    # results.json's provenance holds hashes of the checkpoint and of export.json (see without_checkpoint_hash)
    results = [without_timings({k: v for k, v in json.loads((run / "results.json").read_text()).items()
                                if k != "provenance"}) for run in (a, b)]
    assert results[0] == results[1]
    assert results[0]["verify"]["bit_exact"] is True
    metrics = [without_timings(json.loads((run / "metrics.json").read_text())) for run in (a, b)]
    assert metrics[0] == metrics[1]


# --------------------------------------------------------------------------------------------------
# Two uninterrupted runs

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    first = make_sandbox(tmp_path_factory.mktemp("first"))
    second = make_sandbox(tmp_path_factory.mktemp("second"))
    before = snapshot(first)
    processes = [start(first, PIPELINE), start(second, PIPELINE)]   # side by side: independent processes
    for sandbox, process in zip((first, second), processes):
        assert process.wait(timeout=300) == 0, (sandbox / "stderr.txt").read_text()[-3000:]
    return first, second, before, snapshot(first)


def test_same_config_and_seed_give_identical_runs(two_runs):
    first, second, _, _ = two_runs
    assert_same_run(first / "work" / "run", second / "work" / "run")


def test_a_run_writes_only_inside_its_run_folder(two_runs):
    first, _, before, after = two_runs
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    outside = {path for path in changed if not path.startswith("work/run/") and path != "stderr.txt"
               and not re.match(r"tmp/torchinductor_[^/]+/", path)}   # torch's own compile cache in $TMPDIR
    assert outside == set(), outside
    assert not [p for p in (first / "tmp").iterdir() if p.name.startswith("sbnn-lava-")]
    assert sorted(p.name for p in (first / "work").iterdir()) == ["run"]
    assert assert_run_folder_valid(first / "work" / "run") == []


# --------------------------------------------------------------------------------------------------
# SIGKILL

def test_export_killed_while_replacing_an_export(two_runs, tmp_path):
    first = two_runs[0]
    sandbox = tmp_path / "sandbox"
    shutil.copytree(first, sandbox, symlinks=True)
    run, reference = sandbox / "work" / "run", first / "work" / "run"
    export = ["export", "run"]

    def staging(*names: str):
        def condition() -> bool:
            for folder in run.glob(".export.*.new"):
                if not names:
                    return True
                present = {p.name for p in folder.iterdir()} if folder.exists() else set()
                if any(name in present or any(p.startswith(f".{name}.") for p in present) for name in names):
                    return True
            return False
        return condition

    killed, leftovers, seen = [], [], set()
    for condition in (staging(), staging("model.nir"), staging("loihi.h5"), staging("model_int.onnx"),
                      staging("export.json")):
        killed.append(kill_when(sandbox, export, condition))
        previous, leftovers = leftovers, assert_run_folder_valid(run)
        print(f"export killed: {killed[-1]}; hidden leftovers: {leftovers}")
        seen |= set(leftovers)
        assert not set(previous) & set(leftovers), "the next export did not remove the killed one's leftovers"
        assert_same_export(run / "export", reference / "export")   # the old folder, whole, or the new one
    assert sum(killed) >= 3 and seen, (killed, seen)

    # Re-running completes; an export folder that is a symlink to elsewhere is replaced, not written through.
    outside = sandbox / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    shutil.rmtree(run / "export")
    (run / "export").symlink_to(outside, target_is_directory=True)
    finish(sandbox, export)
    assert not (run / "export").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep"
    assert_same_export(run / "export", reference / "export")
    assert assert_run_folder_valid(run) == [], "hidden temporaries of the killed exports remain"


def test_pipeline_killed_at_each_stage_then_rerun(two_runs, tmp_path):
    reference = two_runs[0] / "work" / "run"
    sandbox = make_sandbox(tmp_path / "sandbox")
    run = sandbox / "work" / "run"

    def lava_running() -> bool:
        return bool(processes_mentioning(f"hw_sim.lava_worker {sandbox}"))

    stages = [("training (after epoch 1)", lambda: (run / "checkpoint.pt").exists()),
              ("exporting", lambda: (run / "export").exists()),
              ("Lava verification", lava_running),
              ("reporting", lambda: (run / "results.json").exists())]
    killed = []
    for stage, condition in stages:
        killed.append(kill_when(sandbox, PIPELINE, condition))
        deadline = time.monotonic() + 10
        while processes_mentioning(str(sandbox)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_mentioning(str(sandbox)) == [], f"processes outlived the kill while {stage}"
        assert not [p for p in (sandbox / "tmp").iterdir() if p.name.startswith("sbnn-lava-")], stage
        leftovers = assert_run_folder_valid(run)
        print(f"killed while {stage}: {killed[-1]}; hidden leftovers: {leftovers}")
    assert sum(killed) >= 3 and killed[2], killed   # Lava's processes must have been running at the kill
    # Leftovers of files that the re-run does not write again (training and exports are done) go too.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / f".checkpoint.pt.{gone.pid}-0123abcd.tmp").write_bytes(b"half a checkpoint")
    (run / f".export_sample0.{gone.pid}-0123abcd.new").mkdir()
    (run / f".metrics.json.tmp{gone.pid}").write_text("{")
    finish(sandbox, PIPELINE)
    assert assert_run_folder_valid(run) == [], "hidden temporaries of the killed runs remain"
    assert_same_run(run, reference)

    # Killed between the checkpoint's and metrics.json's writes of the last epoch (too brief a window to hit
    # with a timer, so made by hand): the next run restores metrics.json from the checkpoint.
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["history"] = metrics["history"][:-1]
    (run / "metrics.json").write_text(json.dumps(metrics))
    finish(sandbox, PIPELINE)
    assert_same_run(run, reference)


# --------------------------------------------------------------------------------------------------
# Lava failing

def descendants(pid: int) -> list[str]:
    """Processes below ``pid`` in the process tree (zombies included), as 'pid: parent pid'."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    below, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        below += frontier
    return [f"{child}: {parents[child]}" for child in below]


def test_pipeline_whose_lava_run_times_out_reports_everything_else(two_runs, tmp_path):
    """The real Lava worker, given a timeout it cannot meet (``pipeline.lava_timeout``): the pipeline exits 0,
    results.json and the report hold every other number and a one-line ``lava_error``, and no process is
    left."""
    first = two_runs[0]
    sandbox = tmp_path / "sandbox"
    shutil.copytree(first, sandbox, symlinks=True)
    run, reference = sandbox / "work" / "run", first / "work" / "run"
    for name in ("results.json", "report.html"):   # trained and exported already: evaluate and report again
        (run / name).unlink()
    done = subprocess.run([sys.executable, "-m", "sbnn", *PIPELINE, "--set", "pipeline.lava_timeout=0.5"],
                          cwd=sandbox / "work", capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(sandbox / "tmp")})
    assert done.returncode == 0, done.stderr[-3000:]
    message = "the Lava worker did not finish within 0.5 s and was stopped"
    summary = json.loads(done.stdout)
    assert summary["lava_error"] == message and summary["verify"] is None
    assert summary["skipped"] == ["export mean", "export sample0"]

    results = json.loads((run / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert results["lava_error"] == message and results["verify"] is None
    assert results["accuracy"]["lava_subset"] is None and results["accuracy"]["hw_subset"] is None
    for key in ("float_mean", "float_noisy", "float_ensemble", "quantised_float", "hw_mean", "hw_ensemble"):
        assert isinstance(results["accuracy"][key], float) and results["accuracy"][key] == expected["accuracy"][key], key
    assert results["energy"] == expected["energy"] and results["exports"] == expected["exports"]
    assert summary["energy"]["energy_uj"] == expected["energy"]["mean"]["energy_uj"]
    report = (run / "report.html").read_text()
    assert report.rstrip().endswith("</html>") and message in report
    assert assert_run_folder_valid(run) == []

    time.sleep(0.5)   # the supervisor is gone once its group is killed; let /proc catch up
    assert descendants(os.getpid()) == []
    assert processes_mentioning(str(sandbox)) == []
    assert not [p for p in (sandbox / "tmp").iterdir() if p.name.startswith("sbnn-lava-")]
