"""Defaults that work on unseen data: standardisation fitted on the training split and carried into the export,
the "auto" KL weight and epochs, and the start-up warnings about risky settings (docs/method.md#defaults)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sbnn.config import load_config
from sbnn.data import load_dataset
from sbnn.data.preprocessing import SPREAD, Preprocessing, Standardisation
from sbnn.training import load_training_data
from sbnn.training.defaults import (EPOCH_RANGE, KL_SHARE, auto_epochs, auto_kl_weight, initial_kl, resolve_auto,
                                    risk_warnings)


def _unscaled_npz(path: Path, *, n_train: int = 96, n_test: int = 32, seed: int = 0) -> Path:
    """Three linearly separable classes in 6 features of very different scales (one up to about 1,700)."""
    rng = np.random.default_rng(seed)
    scales = np.array([1700.0, 0.1, 5.0, 30.0, 0.01, 2.0])

    def split(n):
        y = rng.integers(0, 3, n)
        x = (rng.normal(0, 1, (n, 6)) + 2.0 * np.eye(3, 6)[y]) * scales + scales
        return x.astype(np.float32), y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def _minimal_config(tmp_path: Path, *extra: str) -> Path:
    data = _unscaled_npz(tmp_path / "unscaled.npz")
    config = tmp_path / "minimal.toml"
    config.write_text(f'[data]\nname = "npz"\npath = "{data}"\n{chr(10).join(extra)}\n\n'
                      f'[model]\nkind = "bnn"\nhidden = [16]\n')
    return config


def test_standardisation_is_fitted_on_the_training_split_only(tmp_path):
    x_train = np.array([[0.0, 100.0], [2.0, 300.0], [4.0, 200.0]])
    scaling, std = Standardisation.fit(x_train, shared=False), x_train.std(axis=0)
    assert np.allclose(scaling.lower, [2.0, 200.0] - SPREAD * std) and np.allclose(scaling.upper, [2.0, 200.0] + SPREAD * std)
    # mean -> the centre of [0, 1]; mean ± SPREAD std -> its ends; beyond clips
    mapped = scaling.apply(np.array([[2.0, 200.0], [2.0 + SPREAD * std[0], 200.0 - SPREAD * std[1]], [1e6, -1e6]]))
    assert np.allclose(mapped, [[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])
    for shared in (True, False):                         # a constant feature lands on the centre
        constant = Standardisation.fit(np.full((4, 1), 7.0), shared=shared)
        assert np.allclose(constant.apply(np.full((1, 1), 7.0)), 0.5)
    signed = Standardisation.fit(x_train, low=-1.0, high=1.0, shared=False)
    assert np.allclose(signed.apply(x_train).mean(axis=0), 0.0, atol=1e-6)

    path = _unscaled_npz(tmp_path / "d.npz")
    dataset = load_dataset("npz", path=path)
    raw = np.load(path)
    fitted = dataset.preprocessing.standardisation      # features of unequal ranges: one map each
    assert not fitted.shared and np.allclose((fitted.lower + fitted.upper) / 2, raw["x_train"].mean(axis=0), rtol=1e-5)
    assert dataset.x_train.min() >= 0 and dataset.x_train.max() <= 1
    assert np.allclose(dataset.x_test, dataset.preprocessing.standardisation.apply(raw["x_test"]))


def test_features_sharing_a_range_are_scaled_together():
    """Pixels 0-255 (a border pixel almost always 0): one map for all keeps 0 at 0 and a rare faint border value
    faint; each pixel on its own would blow that value up to full intensity and shift the background."""
    rng = np.random.default_rng(0)
    pixels = np.where(rng.random((300, 64)) < 0.3, rng.integers(1, 256, (300, 64)), 0).astype(np.float64)
    pixels[:, :8] = 0.0
    pixels[0, 0] = 5.0
    shared = Standardisation.fit(pixels)
    assert shared.shared and np.all(shared.lower == 0.0) and np.all(shared.upper > 250.0)
    mapped = shared.apply(pixels)
    assert np.all(mapped[pixels == 0] == 0.0) and mapped[0, 0] < 0.03 and mapped.max() == 1.0
    per_feature = Standardisation.fit(pixels, shared=False)
    background = per_feature.apply(pixels)[:, 8:][pixels[:, 8:] == 0]
    assert per_feature.apply(pixels)[0, 0] == 1.0 and np.all(background > 0.3)
    table = np.abs(np.random.default_rng(1).normal(0, 1, (50, 3))) * [1700.0, 0.1, 5.0]
    assert not Standardisation.fit(table).shared


def test_auto_leaves_features_in_the_encoders_range_alone():
    digits = load_dataset("digits")                      # features in [0, 1]: the example configs' data
    assert digits.preprocessing.standardisation is None
    assert load_dataset("digits", standardise=True).preprocessing.standardisation is not None
    on_off = load_dataset("digits", encoding="on_off", steps=3, standardise=True)
    assert on_off.preprocessing.standardisation.low == -1.0 and on_off.preprocessing.encoding == "on_off"


def test_the_preprocessing_record_round_trips_and_rejects_nonsense():
    x = np.array([[1.0, 50.0, 3.0]])
    for shared in (True, False):
        scaling = Standardisation.fit(np.arange(12.0).reshape(4, 3) ** 2, shared=shared)
        original = Preprocessing(feature_shape=(3,), standardisation=scaling, encoding="rate", steps=5, seed=3)
        again = Preprocessing.from_record(json.loads(json.dumps(original.to_record())))
        assert again.feature_shape == (3,) and again.standardisation.shared == shared
        assert np.array_equal(again.apply(x), original.apply(x))
    record = original.to_record()
    record["standardise"]["upper"][0] = record["standardise"]["lower"][0]
    with pytest.raises(ValueError, match="preprocessing record"):
        Preprocessing.from_record(record)
    # format 1 (mean, std, spread) still reads: mean ± spread·std onto the range
    old = {**record, "format": 1, "standardise": {"mean": [1.0, 2.0, 3.0], "std": [0.5, 1.0, 2.0], "range": [0.0, 1.0],
                                                 "spread": SPREAD}}
    assert np.allclose(Preprocessing.from_record(old).standardisation.upper, [2.5, 5.0, 9.0])


def test_auto_kl_weight_and_epochs():
    assert math.isclose(auto_kl_weight(1000.0, 100, 3), KL_SHARE * 100 * math.log(3) / 1000.0)
    assert auto_kl_weight(10.0, 60000, 10) == 1.0 and auto_kl_weight(0.0, 10, 3) == 1.0
    assert auto_epochs(3) == EPOCH_RANGE[1] and auto_epochs(10_000) == EPOCH_RANGE[0] and auto_epochs(100) == 30


def test_minimal_config_resolves_auto_and_warns_about_risky_settings(tmp_path):
    config = load_config(_minimal_config(tmp_path))
    assert config.train.kl_weight == "auto" and config.train.epochs == "auto"
    resolved = resolve_auto(config)
    data = load_training_data(config)
    from sbnn.training import build_run_model

    model = build_run_model(config, data)
    assert resolved.train.epochs == EPOCH_RANGE[1]      # 96 examples, 2 steps per epoch
    # the KL term starts at KL_SHARE of ln C
    assert math.isclose(resolved.train.kl_weight * initial_kl(model) / 96, KL_SHARE * math.log(3), rel_tol=1e-6)
    assert risk_warnings(resolved, data, model) == []

    risky = load_config(_minimal_config(tmp_path, "standardise = false"), ["train.kl_weight=1.0"])
    raw_data = load_training_data(risky)
    warnings = risk_warnings(risky, raw_data, build_run_model(risky, raw_data))
    assert len(warnings) == 2
    assert warnings[0].startswith("train.kl_weight = 1: ") and f"set train.kl_weight = {resolved.train.kl_weight:.3g}" in warnings[0]
    assert "data.standardise = true" in warnings[1] and "[0, 1]" in warnings[1]


def test_minimal_config_trains_exports_and_runs_raw_features_on_hardware(tmp_path, capsys):
    """The whole path: training prints the warnings, the run's config.toml holds the resolved values, the
    export records the standardisation, and sbnn simulate on raw features matches the pipeline's inputs.
    In-process (``sbnn.cli.main``): two fresh interpreters importing torch cost more than the rest."""
    from sbnn.cli import main
    from sbnn.training import train

    config = _minimal_config(tmp_path)
    run = tmp_path / "run"
    train(load_config(config, ["train.epochs=1", "train.kl_weight=1.0", "data.standardise=false"]), tmp_path / "risky",
          json_mode=True)
    assert capsys.readouterr().err.count("sbnn train: warning: ") == 2
    train(load_config(config, ["train.epochs=20"]), run, json_mode=True)
    assert "warning" not in capsys.readouterr().err
    saved = load_config(run / "config.toml")
    assert isinstance(saved.train.kl_weight, float) and saved.train.epochs == 20
    assert main(["export", str(run), "--json"]) == 0
    capsys.readouterr()
    report = json.loads((run / "export" / "export.json").read_text())
    raw = np.load(tmp_path / "unscaled.npz")
    recorded = report["preprocessing"]["standardise"]
    assert recorded["rule"] == "per_feature"
    assert np.allclose(np.add(recorded["lower"], recorded["upper"]) / 2, raw["x_train"].mean(axis=0), rtol=1e-5)
    np.save(tmp_path / "x.npy", raw["x_test"])
    np.save(tmp_path / "y.npy", raw["y_test"])
    assert main(["simulate", str(run / "export"), "--backend", "hw_sim", "--inputs", str(tmp_path / "x.npy"),
                 "--labels", str(tmp_path / "y.npy"), "--json"]) == 0
    accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    assert accuracy > 0.6    # chance is about 1/3; unstandardised, the export rounds most features to 0
    from sbnn.export_evaluation import hardware_logits, model_sequences
    from sbnn.training import load_trained_model

    data = load_training_data(saved)
    reference = hardware_logits(run / "export", model_sequences(data.x_test, load_trained_model(run))).argmax(1)
    assert math.isclose(accuracy, float(np.mean(reference == raw["y_test"])))


def test_auto_settings_match_what_a_run_recorded(tmp_path):
    """A config with "auto" kl_weight, epochs and device is the same training as a run folder that recorded
    the values those chose (the pipeline then skips training); an explicit value that differs is not."""
    from sbnn.training.defaults import with_recorded_auto

    path = tmp_path / "run.toml"
    path.write_text('[data]\nname = "randman"\n[model]\nkind = "snn"\n')
    config = load_config(path)
    assert (config.train.kl_weight, config.train.epochs, config.train.device) == ("auto", "auto", "auto")
    recorded = load_config(path, ["train.kl_weight=0.02", "train.epochs=7", 'train.device="cpu"'])
    assert with_recorded_auto(config, recorded).to_dict() == recorded.to_dict()
    explicit = load_config(path, ['train.device="cuda"'])
    assert with_recorded_auto(explicit, recorded).to_dict() != recorded.to_dict()
