"""Raw features of a rate-coded run given to ``sbnn simulate --inputs raw.npy``: the spikes depend only on the
recorded seed and each sample's index (not on ``--batch-size``) and equal those the pipeline's hardware
evaluation used; text-label class names recorded in metrics.json and export.json and printed by simulate
(docs/data.md#encoders, docs/formats.md#export-json). In-process (``sbnn.cli.main``), real files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sbnn.cli import main
from sbnn.data import load_dataset
from sbnn.data.encoders import rate_encode
from sbnn.data.preprocessing import Preprocessing

def _config(path) -> dict:
    """A rate-coded run of two epochs on the CSV table, a 16-neuron hidden layer, 12 stored test samples."""
    return {"data": {"name": "csv", "path": str(path), "encoding": "rate", "steps": 8},
            "model": {"kind": "snn", "hidden": [16]},
            "train": {"epochs": 2, "batch_size": 32, "eval_samples": 1, "threads": 1},
            "export": {"posterior_samples": 1, "calibration_samples": 32}, "pipeline": {"lava_samples": 12}}


def _csv(path, rows: int = 150, seed: int = 0):
    """Two classes, ``benign``/``malignant``, in 5 features of different scales (standardised by "auto")."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    x = (rng.normal(0, 1, (rows, 5)) + 1.5 * y[:, None]) * np.array([900.0, 0.2, 4.0, 30.0, 1.0])
    names = np.array(["benign", "malignant"])[y]
    lines = ["f0,f1,f2,f3,f4,diagnosis"] + [",".join(f"{v:.6g}" for v in row) + f",{name}"
                                            for row, name in zip(x, names)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_json(capsys, *argv) -> dict:
    assert main([*map(str, argv), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    result.pop("seconds")
    return result


@pytest.fixture(scope="module")
def rate_export(tmp_path_factory):
    """A tiny rate-coded run on text labels, exported; the raw test features and labels as .npy files."""
    from sbnn.config import config_from_dict
    from sbnn.pipeline import export_run, load_run
    from sbnn.train import train

    folder = tmp_path_factory.mktemp("rate")
    config = config_from_dict(_config(_csv(folder / "table.csv")), source=str(folder / "run.toml"))
    train(config, folder / "run", json_mode=True)
    loaded = load_run(folder / "run")
    export, _ = export_run(folder / "run", loaded=loaded)
    raw = load_dataset("csv", path=folder / "table.csv", standardise=False)
    np.save(folder / "raw.npy", raw.x_test)
    np.save(folder / "labels.npy", raw.y_test)
    return export, folder, loaded


def test_raw_rate_code_does_not_depend_on_the_batch_size(rate_export, capsys):
    export, folder, _ = rate_export
    inputs = ["simulate", export, "--inputs", folder / "raw.npy", "--labels", folder / "labels.npy"]
    default = run_json(capsys, *inputs)
    assert default["samples"] == len(np.load(folder / "raw.npy")) > 7 and max(default["firing_rates"]) > 0
    for size in (1, 7):
        assert run_json(capsys, *inputs, "--batch-size", size) == default


def test_raw_rate_code_equals_the_pipelines_test_inputs(rate_export, capsys):
    """The raw test split through simulate gives the spikes the run's test split holds: the stored inputs.npy
    (first lava_samples) spike for spike, and the whole split's hardware accuracy as the evaluation computes it."""
    from sbnn.export_evaluation import hardware_logits, model_sequences

    export, folder, (_, model, data) = rate_export
    stored = run_json(capsys, "simulate", export)
    limited = run_json(capsys, "simulate", export, "--inputs", folder / "raw.npy", "--labels", folder / "labels.npy",
                       "--limit", stored["samples"], "--batch-size", 5)
    assert stored["samples"] == 12
    for key in ("output_spikes", "firing_rates", "accuracy", "steps"):
        assert limited[key] == stored[key], key
    whole = run_json(capsys, "simulate", export, "--inputs", folder / "raw.npy", "--labels", folder / "labels.npy")
    reference = hardware_logits(export, model_sequences(data.x_test, model)).argmax(axis=1)
    assert whole["accuracy"] == pytest.approx(float(np.mean(reference == data.y_test.numpy())), abs=1e-12)


def test_rate_code_streams_are_per_sample():
    """Sample i's spikes come from (seed, ..., first + i): any split of a set into pieces gives the same spikes,
    a different seed or index gives others."""
    x = np.random.default_rng(1).random((10, 6)).astype(np.float32)
    whole = rate_encode(x, 20, seed=(3, 1))
    pieces = np.concatenate([rate_encode(x[a:b], 20, seed=(3, 1), first=a) for a, b in ((0, 1), (1, 8), (8, 10))])
    np.testing.assert_array_equal(pieces, whole)
    assert not np.array_equal(rate_encode(x, 20, seed=(4, 1)), whole)
    assert not np.array_equal(rate_encode(x[1:], 20, seed=(3, 1)), whole[1:])   # index 0, not 1
    record = Preprocessing(feature_shape=(6,), encoding="on_off", steps=20, seed=3)
    np.testing.assert_array_equal(record.apply(x[4:], first=4), record.apply(x)[4:])
    with pytest.raises(ValueError, match="non-negative"):
        rate_encode(x, 5, seed=-1)


def test_text_label_names_are_recorded_and_printed(rate_export, capsys):
    export, folder, _ = rate_export
    names = ["benign", "malignant"]
    assert json.loads((folder / "run" / "metrics.json").read_text())["classes"] == names
    assert json.loads((export / "export.json").read_text())["classes"] == names
    result = run_json(capsys, "simulate", export, "--inputs", folder / "raw.npy", "--labels", folder / "labels.npy")
    assert result["classes"] == names and list(result["per_class_accuracy"]) == names
    y = np.load(folder / "labels.npy")
    shares = result["per_class_accuracy"]
    # the per-class shares, weighted by the class sizes, give the accuracy
    assert result["accuracy"] == pytest.approx(sum(shares[n] * np.mean(y == k) for k, n in enumerate(names)))
    assert main(["simulate", str(export), "--inputs", str(folder / "raw.npy"), "--labels",
                 str(folder / "labels.npy")]) == 0
    assert "class malignant: accuracy" in capsys.readouterr().out


def test_integer_labels_record_no_names(tmp_path):
    from export.folder_reader import ExportFolder

    (tmp_path / "export.json").write_text(json.dumps({"classes": [0, 1]}))
    assert ExportFolder(tmp_path).classes() is None    # not a list of names: ignored
    (tmp_path / "export.json").write_text(json.dumps({"input_scale": 1.0}))
    assert ExportFolder(tmp_path).classes() is None
