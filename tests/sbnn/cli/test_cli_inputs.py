"""``sbnn simulate|verify|energy EXPORT --inputs X.npy [--labels Y.npy]`` (issue 13 §4): raw features
through the export's own encoder, encoded spikes, the whole set batched, ``--limit`` meaning exactly that
many, and networks whose last layer spikes scored by spike count. In-process (``sbnn.cli.main``), real files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sbnn.cli import main

DIGITS = """
[data]
name = "digits"

[model]
kind = "snn"
hidden = [16]

[train]
epochs = 1
batch_size = 64
eval_samples = 1
threads = 1

[export]
posterior_samples = 1
calibration_samples = 32

[pipeline]
lava_samples = 24
"""


def run_json(capsys, *argv) -> dict:
    assert main([*map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def fails(capsys, *argv) -> str:
    assert main([*map(str, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """A tiny static-feature run exported, its stored (encoded) test inputs, and the raw test features."""
    import tomllib

    from sbnn.config import config_from_dict
    from sbnn.pipeline import export_run, load_run
    from sbnn.train import train

    folder = tmp_path_factory.mktemp("digits")
    (folder / "tiny.toml").write_text(DIGITS)
    train(config_from_dict(tomllib.loads(DIGITS), source=str(folder / "tiny.toml")), folder / "run", json_mode=True)
    loaded = load_run(folder / "run")
    export, _ = export_run(folder / "run", loaded=loaded)
    _, _, data = loaded
    stored = len(np.load(export / "inputs.npy"))
    np.save(folder / "raw.npy", data.x_test[:stored].numpy())
    np.save(folder / "labels.npy", data.y_test[:stored].numpy())
    return export, folder


def test_raw_features_match_the_stored_inputs(digits_export, capsys):
    export, folder = digits_export
    stored = run_json(capsys, "simulate", export)
    raw = run_json(capsys, "simulate", export, "--inputs", folder / "raw.npy", "--labels", folder / "labels.npy")
    assert stored["accuracy"] is not None and stored["samples"] == raw["samples"] == 24
    assert raw["accuracy"] == stored["accuracy"] and raw["steps"] == stored["steps"]
    assert raw["output_spikes"] == stored["output_spikes"] and raw["firing_rates"] == stored["firing_rates"]
    assert raw["readout_rule"] == stored["readout_rule"] == "readout voltage"
    assert "raw features" in raw["input"]


def test_encoded_inputs_and_batching(digits_export, capsys, tmp_path):
    export, folder = digits_export
    np.save(tmp_path / "encoded.npy", np.load(export / "inputs.npy"))
    whole = run_json(capsys, "simulate", export, "--inputs", tmp_path / "encoded.npy", "--labels", folder / "labels.npy")
    batched = run_json(capsys, "simulate", export, "--inputs", tmp_path / "encoded.npy", "--labels",
                       folder / "labels.npy", "--batch-size", "5")
    for key in ("accuracy", "samples", "steps", "output_spikes", "readout_rule"):
        assert whole[key] == batched[key], key
    assert np.allclose(whole["firing_rates"], batched["firing_rates"])
    energy = [run_json(capsys, "energy", export, "--inputs", folder / "raw.npy", *extra)
              for extra in ((), ("--batch-size", "7"))]
    assert energy[0]["samples"] == energy[1]["samples"] == 24
    assert energy[0]["synops_per_inference"] == pytest.approx(energy[1]["synops_per_inference"])
    assert energy[0]["energy_uj"] == pytest.approx(energy[1]["energy_uj"])


def test_limit_means_exactly_n(digits_export, capsys):
    export, folder = digits_export
    assert run_json(capsys, "simulate", export, "--inputs", folder / "raw.npy", "--limit", "3")["samples"] == 3
    err = fails(capsys, "simulate", export, "--limit", "100")
    assert len(err.splitlines()) == 1 and "--limit 100" in err and "only 24 samples" in err
    err = fails(capsys, "energy", export, "--inputs", folder / "raw.npy", "--limit", "25")
    assert len(err.splitlines()) == 1 and "only 24 samples" in err


def test_wrong_shapes_are_one_line(digits_export, capsys, tmp_path):
    export, folder = digits_export
    np.save(tmp_path / "bad.npy", np.zeros((4, 63)))
    err = fails(capsys, "simulate", export, "--inputs", tmp_path / "bad.npy")
    assert len(err.splitlines()) == 1 and "bad.npy" in err
    assert "(N, 64)" in err and "(N, T, 64)" in err
    np.save(tmp_path / "labels2.npy", np.zeros((4, 2), dtype=np.int64))
    err = fails(capsys, "simulate", export, "--inputs", folder / "raw.npy", "--labels", tmp_path / "labels2.npy")
    assert len(err.splitlines()) == 1 and "labels" in err


def test_spiking_last_layer_scored_by_spike_count(capsys, tmp_path):
    import hw_sim
    from hw_sim.random_networks import random_input, write_slayer_style_file

    from sbnn.cli.inputs import _predict

    path = tmp_path / "slayer.net"
    write_slayer_style_file(path, 3, input_size=12, hidden=(16,), outputs=4, density=0.5)
    network = hw_sim.load(path)
    assert not getattr(network.layers[-1], "readout", False)
    x = random_input(1, network, 10, 30, 0.4)
    np.save(tmp_path / "x.npy", x)
    spikes = network.run(x).spikes[-1]
    expected, rule = _predict(None, spikes)
    np.save(tmp_path / "y.npy", expected)
    done = run_json(capsys, "simulate", path, "--inputs", tmp_path / "x.npy", "--labels", tmp_path / "y.npy",
                    "--batch-size", "3")
    assert done["readout_rule"] == rule == "spike count" and done["accuracy"] == 1.0
    assert main(["simulate", str(path), "--inputs", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]) == 0
    assert "readout rule: spike count" in capsys.readouterr().out
    # raw features need an encoder record, which a netx file from lava-dl does not have
    np.save(tmp_path / "raw.npy", np.ones((5, 12)))
    err = fails(capsys, "simulate", path, "--inputs", tmp_path / "raw.npy")
    assert len(err.splitlines()) == 1 and "records no input encoding" in err


def test_spike_count_ties_go_to_the_first_spike():
    from sbnn.cli.inputs import _predict

    spikes = np.zeros((2, 6, 3), dtype=np.uint8)
    spikes[0, [3, 4], 0] = 1; spikes[0, [1, 5], 2] = 1     # equal counts: class 2 fired first
    spikes[1, [0], 0] = 1; spikes[1, [2, 3], 1] = 1        # class 1 has more spikes
    predicted, rule = _predict(None, spikes)
    assert predicted.tolist() == [2, 1] and rule == "spike count"
