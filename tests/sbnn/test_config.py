"""Tests of sbnn.config: validation errors name the key, --set overrides, the resolved config round-trips,
and the example configs load (and their models build on their data shapes) without the data present."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from sbnn.config import (
    ConfigError,
    ExportConfig,
    PipelineConfig,
    RunConfig,
    TrainConfig,
    load_config,
    parse_override,
)
from sbnn.config_checks import FieldError
from sbnn.estimators import EstimatorConfig
from sbnn.layers import DEFAULT_ESTIMATOR
from sbnn.models import ModelConfig, build_model

EXAMPLES = ROOT / "examples"

TINY = """
[data]
name = "randman"
num_classes = 3
num_units = 12
steps = 10

[model]
kind = "snn"
hidden = [16]

[train]
epochs = 2
"""


def _write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides or [])
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------------
# Errors name the key
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addition", "key", "reason"),
    [
        ("[train]\nepoch = 3\n", "train.epoch", "did you mean train.epochs"),
        ("[model]\nhiden = [3]\n", "model.hiden", "did you mean model.hidden"),
        ("[data]\nnum_unit = 3\n", "data.num_unit", "did you mean data.num_units"),
        ("[export]\nweight = 'mean'\n", "export.weight", "unknown key"),
        ("[pipeline]\nlava_sample = 3\n", "pipeline.lava_sample", "unknown key"),
    ],
)
def test_unknown_keys_are_named_with_a_suggestion(tmp_path, addition, key, reason):
    # Append the key to its section by rewriting the whole document as one table per section.
    section = addition.splitlines()[0]
    text = TINY.replace(section + "\n", addition) if section in TINY else TINY + addition
    message = _error(_write(tmp_path, text))
    assert f": {key}: " in message and reason in message


def test_unknown_section_is_named(tmp_path):
    message = _error(_write(tmp_path, TINY + "[trian]\nepochs = 1\n"))
    assert "[trian]" in message and "did you mean [train]" in message


# Wrong types, then values out of range or not among the choices.
@pytest.mark.parametrize(
    ("override", "key", "reason"),
    [
        ("train.epochs='two'", "train.epochs", "must be an integer"),
        ("train.lr=true", "train.lr", "must be a number"),
        ("model.hidden=16", "model.hidden", "list of positive integers"),
        ("data.steps=1.5", "data.steps", "must be an integer"),
        ("train.estimator=3", "train.estimator", "method name or a table"),
        ("export.dt='fast'", "export.dt", "must be a number"),
        ("train.epochs=0", "train.epochs", ">= 1"),
        ("train.lr=-0.1", "train.lr", "> 0"),
        ("train.method=bayes", "train.method", "one of sbnn, surrogate"),
        ("train.optimizer=lion", "train.optimizer", "adam"),
        ("train.schedule=linear", "train.schedule", "cosine"),
        ("train.device=tpu", "train.device", "auto, cpu, cuda"),
        ("train.aux_penalty=l2", "train.aux_penalty", "weight_noise_ratio"),
        ("data.name=emnist", "data.name", "digits"),
        ("data.encoding=morse", "data.encoding", "rate"),
        ("model.kind=cnn", "model.kind", "bnn"),
        ("model.threshold=0", "model.threshold", "> 0"),
        ("model.threshold=1" + "0" * 400, "model.threshold", "must be finite"),
        ("model.voltage_decay=1.5", "model.voltage_decay", "<= 1"),
        ("train.estimator=zz", "train.estimator", "st, iwst, agr"),
        ("train.estimator.tau=-1", "train.estimator", "tau"),
        ("train.estimator={method='st',noise='logistic'}", "train.estimator", "Gaussian"),
        ("export.weights=median", "export.weights", "mean, sample"),
        ("pipeline.hw_batch=0", "pipeline.hw_batch", ">= 1"),
    ],
)
def test_bad_values_are_named(tmp_path, override, key, reason):
    message = _error(_write(tmp_path, TINY), [override])
    assert f": {key}: " in message and reason in message


@pytest.mark.parametrize(
    ("config_class", "changes", "key"),
    [
        (ModelConfig, {"threshold": 0}, "threshold"),
        (ModelConfig, {"kind": "conv_snn", "hidden": (4, 8), "conv_strides": (2, 2, 2)}, "conv_strides"),
        (TrainConfig, {"epochs": 0}, "epochs"),
        (ExportConfig, {"dt": "fast"}, "dt"),
        (PipelineConfig, {"lava_timeout": -1.0}, "lava_timeout"),
    ],
)
def test_config_classes_raise_errors_that_carry_the_key(config_class, changes, key):
    with pytest.raises(FieldError) as caught:
        config_class(**changes)
    assert caught.value.key == key and str(caught.value) == f"{key}: {caught.value.reason}"


def test_a_model_error_between_keys_names_its_key(tmp_path):
    message = _error(_write(tmp_path, TINY), ["model.kind=bnn", "model.recurrent=true"])
    assert ": model.recurrent: only the dense spiking layers" in message


def test_an_estimator_dict_in_python_is_taken_as_given(tmp_path):
    # A run config's table is completed by the method's defaults; ModelConfig's dict is a whole EstimatorConfig.
    table = load_config(_write(tmp_path, TINY), ["train.estimator={method='agr'}"]).train.estimator
    assert table == EstimatorConfig(method="agr", tau=1.0)
    with pytest.raises(FieldError, match="tau"):
        ModelConfig(estimator={"method": "agr"})
    with pytest.raises(FieldError, match="EstimatorConfig or a dict"):
        ModelConfig(estimator="agr")


def test_bad_overrides_are_one_line_errors(tmp_path):
    path = _write(tmp_path, TINY)
    assert "section.key=value" in _error(path, ["epochs"])
    assert "section.key=value" in _error(path, ["epochs=3"])
    assert "unknown section 'trian'" in _error(path, ["trian.epochs=3"])
    assert ": model.hidden: " in _error(path, ["model.hidden=[64,32"])  # not TOML: taken as a string


def test_data_rules_without_touching_files(tmp_path):
    missing_name = _write(tmp_path, "[model]\nkind = 'snn'\n")
    assert "[data]" in _error(missing_name)
    no_name = _write(tmp_path, "[data]\nseed = 1\n", "no_name.toml")
    assert ": data.name: missing" in _error(no_name)
    path = _write(tmp_path, TINY)
    assert ": data.path: " in _error(path, ["data.path=somewhere"])  # randman is built in
    assert ": data.path: missing" in _error(_write(tmp_path, "[data]\nname = 'shd'\n", "shd.toml"))
    assert ": data.num_classes: unknown key" in _error(path, ["data.name=digits"])  # a randman option, not a digits one
    both = _write(tmp_path, TINY.replace('name = "randman"', 'name = "shd"\npath = "a"\nroot = "b"'), "both.toml")
    assert ": data.root: " in _error(both)


def test_estimator_in_model_or_train_but_not_both(tmp_path):
    path = _write(tmp_path, TINY.replace("hidden = [16]", "hidden = [16]\nestimator = 'st'"))
    assert load_config(path).train.estimator == EstimatorConfig(method="st")
    assert ": model.estimator: given twice" in _error(path, ["train.estimator=agr"])
    assert ": model.surrogate: " in _error(_write(tmp_path, TINY + "", "s.toml"), ["model.surrogate=true"])


def test_missing_and_malformed_files(tmp_path):
    missing = tmp_path / "absent.toml"
    assert "no such file" in _error(missing)
    assert "not valid TOML" in _error(_write(tmp_path, "[data\nname = 1"))


# ----------------------------------------------------------------------------------------------------
# Values, defaults and overrides
# ----------------------------------------------------------------------------------------------------


def test_defaults_and_reserved_sections(tmp_path):
    config = load_config(_write(tmp_path, TINY))
    assert config.train.estimator == DEFAULT_ESTIMATOR and config.model.estimator == DEFAULT_ESTIMATOR
    assert config.train.threads == 1 and config.train.device == "auto" and config.train.method == "sbnn"
    assert config.train.grad_clip is None and config.model.prior_std is None
    assert config.export == ExportConfig(weights="mean", posterior_samples=2, calibration_samples=64,
                                         headroom=1.0, dt=0.001, seed=0)
    assert config.pipeline == PipelineConfig(lava_samples=8, lava_workers=1, hw_batch=256)
    assert config.data.options == {"num_classes": 3, "num_units": 12}
    assert not config.model.surrogate


def test_overrides_are_toml_values(tmp_path):
    config = load_config(_write(tmp_path, TINY), [
        "train.epochs=5", "model.hidden=[64, 32]", "train.method=surrogate", "train.lr=1e-2",
        "train.estimator=iwst", "train.estimator.lam=0.25", "data.seed=7", "export.weights=\"sample\"",
    ])
    assert config.train.epochs == 5 and config.model.hidden == (64, 32)
    assert config.train.method == "surrogate" and config.model.surrogate
    assert config.train.lr == 0.01 and config.data.seed == 7 and config.export.weights == "sample"
    assert config.train.estimator == EstimatorConfig(method="iwst", lam=0.25)
    assert config.model.estimator == config.train.estimator
    assert parse_override("train.estimator.tau = 0.5") == (["train", "estimator", "tau"], 0.5)


def test_estimator_names_take_the_methods_defaults(tmp_path):
    path = _write(tmp_path, TINY)
    assert load_config(path, ["train.estimator=iwst"]).train.estimator == EstimatorConfig(method="iwst", p=0.5)
    assert load_config(path, ["train.estimator=gr_mc"]).train.estimator.k == 8
    table = load_config(path, ["train.estimator={method='agr', tau=0.5}"]).train.estimator
    assert table == EstimatorConfig(method="agr", tau=0.5)


# ----------------------------------------------------------------------------------------------------
# The resolved config
# ----------------------------------------------------------------------------------------------------


def _round_trip(config: RunConfig, tmp_path: Path) -> RunConfig:
    path = tmp_path / "resolved.toml"
    path.write_text(config.to_toml())
    return load_config(path)


@pytest.mark.parametrize("overrides", [
    [],
    ["train.method=surrogate", "train.grad_clip=1.5", "model.prior_std=0.25", "train.estimator.tau=0.3"],
    ["train.estimator={method='iwst', lam=0.5}", "train.train_subset=10", "model.hidden=[8, 8]",
     "train.lr=1e-05", "export.dt=2.5e-4", "data.alpha=1.5"],
])
def test_resolved_config_round_trips(tmp_path, overrides):
    config = load_config(_write(tmp_path, TINY), overrides)
    again = _round_trip(config, tmp_path)
    assert again.to_dict() == config.to_dict()
    assert again.model == config.model and again.train == config.train and again.data == config.data
    text = config.to_toml()
    for section in ("[data]", "[model]", "[train]", "[export]", "[pipeline]"):
        assert section in text
    assert "epochs = 2" in text and "threads = 1" in text


def test_resolved_config_lists_unset_keys_as_comments(tmp_path):
    text = load_config(_write(tmp_path, TINY)).to_toml()
    assert "# grad_clip = (unset)" in text and "# prior_std = (unset)" in text and "# path = (unset)" in text


def test_strings_with_quotes_round_trip(tmp_path):
    path = _write(tmp_path, "[data]\nname = 'npz'\npath = 'placeholder'\n")
    config = load_config(path, ['data.path="/dir with \\"quotes\\"\\\\x.npz"'])   # absolute: kept as given
    assert config.data.path == '/dir with "quotes"\\x.npz'
    assert _round_trip(config, tmp_path).data.path == config.data.path


# ----------------------------------------------------------------------------------------------------
# Examples
# ----------------------------------------------------------------------------------------------------

# Per-step input shape and classes each example's data set has (so the models can be built without files).
EXAMPLE_SHAPES = {
    "quickstart.toml": ((50,), 10),
    "digits_bnn.toml": ((64,), 10),
    "shd.toml": ((700,), 20),
    "dvs_gesture.toml": ((2, 32, 32), 11),
    "cifar10_resnet.toml": ((3, 32, 32), 10),
    "mnist_bnn.toml": ((1, 28, 28), 10),
    "mnist_snn.toml": ((1, 28, 28), 10),
    "mnist_conv_snn.toml": ((1, 28, 28), 10),
}


def test_every_example_is_covered():
    assert sorted(path.name for path in EXAMPLES.glob("*.toml")) == sorted(EXAMPLE_SHAPES)


@pytest.mark.parametrize("name", sorted(EXAMPLE_SHAPES))
def test_examples_load_and_build(name, tmp_path):
    config = load_config(EXAMPLES / name)
    assert _round_trip(config, tmp_path).to_dict() == config.to_dict()
    input_shape, num_classes = EXAMPLE_SHAPES[name]
    model = build_model(config.model, input_shape, num_classes, seed=0)
    assert model.num_classes == num_classes


def test_paper_scale_examples_point_at_local_data():
    assert load_config(EXAMPLES / "shd.toml").data.path == str((EXAMPLES.parent / "data" / "shd").resolve())
    assert load_config(EXAMPLES / "dvs_gesture.toml").data.options["downsample"] == 4
    cifar = load_config(EXAMPLES / "cifar10_resnet.toml")
    assert cifar.model.kind == "resnet" and cifar.model.resnet_depth == 20
    assert load_config(EXAMPLES / "shd.toml", ["data.path=/elsewhere/shd"]).data.path == "/elsewhere/shd"


def test_margin_saturation_needs_noisy_binary_units(tmp_path):
    path = _write(tmp_path, TINY)
    message = _error(path, ["train.aux_penalty=margin_saturation", "train.aux_weight=0.1"])
    assert ": train.aux_penalty: " in message and "weight_noise_ratio" in message
    binary = load_config(path, ["model.kind=bnn", "train.aux_penalty=margin_saturation", "train.aux_weight=0.1"])
    assert binary.train.aux_penalty == "margin_saturation"
