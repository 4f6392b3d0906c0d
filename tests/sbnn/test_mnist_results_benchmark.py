"""benchmarks/mnist_results.py: one tiny MNIST pipeline run through the script (the row, the goals, the machine
and published blocks), a rerun that finds every stage up to date, and refused input before anything runs.
Correctness only, never timing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "mnist_results.py"
TINY = ["train.train_subset=256", "train.test_subset=64", "train.epochs=1", "train.batch_size=64",
        "train.eval_samples=1", "train.train_eval_subset=64", "export.calibration_samples=16",
        "pipeline.lava_samples=1"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mnist_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arguments(runs_dir: Path, *extra: str) -> list[str]:
    settings = [part for setting in TINY for part in ("--set", setting)]
    return ["--configs", str(ROOT / "examples" / "mnist_bnn.toml"), "--methods", "surrogate", "--runs-dir",
            str(runs_dir), *settings, *extra]


def test_a_run_gives_its_row_and_a_rerun_skips_every_stage(bench, tmp_path, capsys):
    assert bench.main(_arguments(tmp_path)) == 0
    first = capsys.readouterr().out
    row = next(line for line in first.splitlines() if line.startswith("| mnist_bnn | surrogate |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == bench.TABLE_HEADER.count(" | ") + 1
    assert cells[2] == "64" and cells[4] == "—" and cells[6] == "—"   # no posterior samples for a surrogate run
    assert "bit-exact, 1 samples" in cells[8] and cells[-2].endswith("(1)")
    assert "*" not in cells[-1]
    for fragment in ("- mnist_bnn surrogate: hw_sim", "goal binary MLP >= 98.5 %", "machine: ", "torch ",
                     "BinaryNet", "total: "):
        assert fragment in first, fragment
    assert (tmp_path / "mnist_bnn_surrogate" / "report.html").is_file()
    assert bench.main(_arguments(tmp_path)) == 0
    again = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| mnist_bnn |"))
    stages = again.strip("|").split("|")[-1].split("/")
    assert all(stage.strip().endswith("*") for stage in stages), again
    assert again.split("|")[4:9] == row.split("|")[4:9]   # the same accuracies, read back from the run folder


def test_a_folder_that_is_not_a_run_is_refused_before_anything_runs(bench, tmp_path, capsys):
    mine = tmp_path / "mnist_bnn_surrogate"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert bench.main(_arguments(tmp_path)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "mnist_bnn_surrogate" in error and "not an sbnn run folder" in error
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["mnist_bnn_surrogate", "notes.txt"]


def test_a_bad_setting_is_one_line_naming_the_config(bench, tmp_path, capsys):
    assert bench.main(_arguments(tmp_path, "--set", "train.epochs=0")) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "mnist_bnn.toml" in error and "epochs" in error
    assert not any(tmp_path.iterdir())
