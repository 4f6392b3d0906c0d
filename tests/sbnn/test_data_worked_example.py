"""The worked example of docs/data.md#worked-example, run as the page shows it: its script writes the CSV,
its config (copied from the page, two epochs instead of twenty) goes through ``sbnn pipeline`` in a
project folder, and ``sbnn export`` of the run works from another folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT, run_cli

PAGE = ROOT / "docs" / "data.md"


def worked_example() -> dict[str, str]:
    """The page's worked example: its ``python``, ``toml`` and ``bash`` code blocks by language."""
    text = PAGE.read_text()
    start = text.index('<a id="worked-example"></a>')
    section = text[start:text.index("<a id=", start + 1)]
    blocks = dict(re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S))
    assert set(blocks) == {"python", "toml", "bash"}, sorted(blocks)
    return blocks


def test_the_config_is_what_the_page_documents():
    config = tomllib.loads(worked_example()["toml"])
    assert config["data"]["name"] == "csv" and config["data"]["path"] == "../data/breast_cancer.csv"
    commands = worked_example()["bash"]
    assert "python make_csv.py" in commands and "sbnn pipeline configs/cancer.toml" in commands
    assert "sbnn export runs/cancer" in commands


@pytest.mark.lava
def test_the_worked_example_runs_end_to_end(tmp_path):
    blocks = worked_example()
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "make_csv.py").write_text(blocks["python"])
    (project / "configs" / "cancer.toml").write_text(blocks["toml"])
    made = subprocess.run([sys.executable, "make_csv.py"], cwd=project, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    header = (project / "data" / "breast_cancer.csv").read_text().splitlines()[0]
    assert header.startswith("mean radius,") and header.endswith(",diagnosis")

    done = run_cli("pipeline", "configs/cancer.toml", "--set", "train.epochs=2", "--set", "pipeline.lava_samples=1",
                   "--json", cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    accuracy = summary["accuracy"]
    assert accuracy["test_samples"] == 113          # round(0.2 * 212) malignant + round(0.2 * 357) benign
    assert accuracy["float_mean"] > 0.6 and accuracy["hw_mean"] > 0.6, accuracy   # two classes, 63 % benign
    assert summary["verify"]["bit_exact"]

    run = project / "runs" / "cancer"
    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["data"]["path"] == str((project / "data" / "breast_cancer.csv").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exported = run_cli("export", run, "--out", elsewhere / "export", "--json", cwd=elsewhere)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (elsewhere / "export" / "loihi.h5").is_file()
