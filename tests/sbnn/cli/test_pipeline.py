"""The main job end to end on a tiny config: train, export (mean + samples), hw_sim, Lava, energy, report."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli
import hw_sim


TINY = """
[data]
name = "randman"
num_classes = 3
num_units = 20
steps = 16
samples_per_class = 100
seed = 1

[model]
kind = "snn"
hidden = [24]
init_gain = 3.0

[train]
epochs = 4
batch_size = 32
lr = 0.02
kl_weight = 0.01
eval_samples = 2
seed = 0

[export]
posterior_samples = 2
calibration_samples = 16

[pipeline]
lava_samples = 2
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    config = folder / "tiny.toml"
    config.write_text(TINY)
    done = run_cli("pipeline", config, "--out", folder / "run", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, config, json.loads(done.stdout)


def test_pipeline_produces_every_stage(finished_run):
    folder, _, summary = finished_run
    run = folder / "run"
    for name in ("config.toml", "checkpoint.pt", "metrics.json", "results.json", "report.html"):
        assert (run / name).is_file(), name
    for export in ("export", "export_sample0", "export_sample1"):
        for name in ("model.nir", "loihi.h5", "model.onnx", "model_int.onnx", "export.json"):
            assert (run / export / name).is_file(), f"{export}/{name}"
    for path in run.rglob("*.json"):   # strict JSON: no NaN or Infinity, which json.loads would accept
        json.loads(path.read_text(), parse_constant=lambda constant: pytest.fail(f"{path} holds {constant}"))
    report = json.loads((run / "export" / "export.json").read_text())
    assert all("saturation" in layer and layer["max_abs_u"] > 0 for layer in report["layers"])
    assert report["accuracy_check"]["scored_on"] == "labels" and report["accuracy_check"]["samples"] == 16
    assert summary["exports"][0]["saturation"]["bias_mantissa"] == 0 and "accuracy_check" in summary["exports"][0]
    assert summary["verify"]["bit_exact"] is True and summary["verify"]["samples"] == 2
    accuracy = summary["accuracy"]
    # Measured with the seeded tiny config: float 0.533, hw_sim 0.517 of 60 (3 classes; the tiny net is weak).
    # The bounds leave a few samples for another machine's float rounding: above chance by a clear margin,
    # and the deployed network within three samples of the float one.
    assert accuracy["hw_mean"] >= 0.45 and accuracy["float_mean"] >= 0.45
    assert abs(accuracy["hw_mean"] - accuracy["float_mean"]) <= 3 / 60 + 1e-9
    assert {"synops_per_inference", "neuron_updates_per_inference", "energy_uj"} <= set(summary["energy"])
    assert summary["report"].endswith("report.html") and not summary["skipped"]
    timings = json.loads((run / "metrics.json").read_text())["pipeline"]["timings"]
    assert set(timings) == {"train", "export", "evaluate", "report"}


def test_second_run_skips_every_stage_and_force_redoes_them(finished_run):
    folder, config, _ = finished_run
    report = folder / "run" / "report.html"
    before = report.stat().st_mtime
    done = run_cli("pipeline", config, "--out", folder / "run", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    skipped = json.loads(done.stdout)["skipped"]
    assert skipped == ["train", "export mean", "export sample0", "export sample1", "evaluate", "report"]
    assert report.stat().st_mtime == before
    # up to date is judged by content, not file times: a touched checkpoint changes nothing
    checkpoint = folder / "run" / "checkpoint.pt"
    os.utime(checkpoint, (time.time() + 5, time.time() + 5))
    done = run_cli("pipeline", config, "--out", folder / "run", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["skipped"] == skipped
    # a changed [export] setting re-exports every export (recorded in export.json), re-evaluates, re-reports
    exports = ("export", "export_sample0", "export_sample1")
    recorded = {name: json.loads((folder / "run" / name / "export.json").read_text())["provenance"]["inputs"]
                for name in exports}
    assert all(inputs["headroom"] == 1.0 and len(inputs["checkpoint_sha256"]) == 64 for inputs in recorded.values())
    done = run_cli("pipeline", config, "--out", folder / "run", "--json", "--set", "export.headroom=1.5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not {"export mean", "export sample0", "export sample1", "evaluate", "report"} & set(json.loads(done.stdout)["skipped"])
    for name in exports:
        inputs = json.loads((folder / "run" / name / "export.json").read_text())["provenance"]["inputs"]
        assert inputs["headroom"] == 1.5 and inputs["checkpoint_sha256"] == recorded[name]["checkpoint_sha256"]
    results = json.loads((folder / "run" / "results.json").read_text())["provenance"]["inputs"]
    assert set(results["exports"]) == {"mean", "sample0", "sample1"}
    # the same setting again: nothing to do
    done = run_cli("pipeline", config, "--out", folder / "run", "--json", "--set", "export.headroom=1.5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["skipped"] == skipped
    # --force redoes every stage
    done = run_cli("pipeline", config, "--out", folder / "run", "--json", "--set", "export.headroom=1.5", "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["skipped"] == []


def test_export_command_and_the_exported_network(finished_run):
    folder, _, _ = finished_run
    run = folder / "run"
    done = run_cli("export", run, "--weights", "sample", "--seed", "7", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["export"] == str(run / "export_sample7") and result["netx_exact"] is True
    network = hw_sim.load(run / "export_sample7" / "loihi.h5")
    inputs = np.load(run / "export_sample7" / "inputs.npy")
    assert inputs.shape[1:] == (16 + len(network.layers), 20)
    done = run_cli("verify", run / "export_sample7", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["bit_exact"] is True
    for backend in ("torch", "hw_sim"):
        done = run_cli("simulate", run / "export_sample7", "--backend", backend, "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout)
        assert result["backend"] == backend and result["samples"] == 2 and 0.0 <= result["accuracy"] <= 1.0
        assert len(result["firing_rates"]) == len(network.layers) and result["firing_rates"][0] > 0
    done = run_cli("export", folder / "nowhere")
    assert done.returncode == 2 and "not a finished run folder" in done.stderr and "Traceback" not in done.stderr


def test_bad_config_is_one_line_exit_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(TINY.replace("epochs = 4", "epochs = -1"))
    done = run_cli("pipeline", config, "--out", tmp_path / "run")
    assert done.returncode == 2 and "epochs" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_two_concurrent_pipelines_on_one_folder_leave_it_consistent(tmp_path):
    """Two `sbnn pipeline` runs started together on one run folder with different networks: one holds the
    folder's writer lock and finishes, the other is refused in one line naming the holder; every export in
    the folder then comes from the final checkpoint and settings, and a rerun finds everything up to date."""
    import tomllib

    from export.provenance import file_sha256

    configs = []
    for width in (24, 12):
        config = tmp_path / f"tiny{width}.toml"
        config.write_text(TINY.replace("hidden = [24]", f"hidden = [{width}]"))
        configs.append(config)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-m", "sbnn", "pipeline", str(config), "--out", str(tmp_path / "run"),
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for config in configs]
    outcomes = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 2], [stderr[-500:] for _, _, stderr in outcomes]
    refused = next(stderr for code, _, stderr in outcomes if code == 2)
    assert len(refused.strip().splitlines()) == 1 and "is writing this folder" in refused
    winner = configs[[code for code, _, _ in outcomes].index(0)]
    run = tmp_path / "run"
    hidden = tomllib.loads((run / "config.toml").read_text())["model"]["hidden"]
    assert hidden == tomllib.loads(winner.read_text())["model"]["hidden"]
    checkpoint = file_sha256(run / "checkpoint.pt")
    exports = [folder for folder in run.iterdir() if folder.name.startswith("export")]
    assert len(exports) == 3   # the mean and two posterior samples
    for folder in exports:
        report = json.loads((folder / "export.json").read_text())
        assert report["provenance"]["inputs"]["checkpoint_sha256"] == checkpoint
        assert hw_sim.load(folder / "loihi.h5").layers[0].shape == (hidden[0],)
    again = run_cli("pipeline", winner, "--out", run, "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["skipped"] == ["train", "export mean", "export sample0", "export sample1",
                                                   "evaluate", "report"]


def test_quantised_float_accuracy_does_not_depend_on_its_batch(finished_run):
    # It runs the test set a batch at a time (a whole conv test set's float64 states need tens of GB).
    from sbnn.export_evaluation import model_sequences, quantised_float_accuracy
    from sbnn.pipeline import load_run
    from export.folder import ExportFolder

    folder, _, summary = finished_run
    config, model, data = load_run(folder / "run")
    x_test, labels = model_sequences(data.x_test, model), data.y_test.numpy()
    export = ExportFolder(folder / "run" / "export")
    whole = quantised_float_accuracy(export, x_test, labels, batch=len(x_test))
    assert whole == summary["accuracy"]["quantised_float"]
    for batch in (1, 7):
        assert quantised_float_accuracy(export, x_test, labels, batch=batch) == whole
