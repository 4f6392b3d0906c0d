"""Run configuration: a TOML file validated on load, overridable from the command line.

A run is described by five sections (only ``[data] name`` is required; every other key has a default)::

    [data]      which data set and how to present it          -> DataConfig
    [model]     architecture and neurons (sbnn.models)         -> ModelConfig
    [train]     method, optimiser, loss, evaluation, hardware  -> TrainConfig
    [export]    posterior -> Loihi integers (a later stage)    -> ExportConfig
    [pipeline]  simulation and verification (a later stage)    -> PipelineConfig

:func:`load_config` reads the file, applies ``--set section.key=value`` overrides (values parsed as TOML
values, so ``--set model.hidden=[64,32]``; a value that is not valid TOML is taken as a string, so
``--set train.method=surrogate`` needs no quotes) and validates everything.  Every problem is a
:class:`ConfigError` whose one-line message starts with the file path and names the key.  A section's
keys are its dataclass's fields, each declared with its check (:mod:`sbnn.config_checks`); the
dataclasses validate themselves on construction and raise a ``FieldError`` that carries the key.
:meth:`RunConfig.to_toml` writes the fully resolved configuration, which loads again to the same
:class:`RunConfig` (a run folder keeps it as ``config.toml``).

Two places for the estimator.  The stable name, which scripts rely on, is ``[train] estimator``; ``[model]
estimator`` (the :class:`~sbnn.models.ModelConfig` field) is accepted too, but not both.  Either way
it is a method name (``"agr"``, ``"iwst"``, ...; the method's default settings, see
:data:`ESTIMATOR_DEFAULTS`) or a table of :class:`~sbnn.estimators.EstimatorConfig` fields.  The
resolved file keeps it under ``[train]``.  ``ModelConfig.surrogate`` is not a ``[model]`` key: it
follows ``[train] method``.

Keys whose default is "unset" (TOML has no null), such as ``model.prior_std`` or ``train.grad_clip``,
are omitted to keep them unset; the resolved file lists them as comments.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from sbnn.aux_loss import DEFAULT_PENALTY, DEFAULT_PENALTY_WEIGHT, PENALTIES
# The data sets, their options (extra [data] keys) and whether they take a path come from sbnn.data's
# registry, so there is no second copy to drift.  The loader validates option values when the data loads.
from sbnn.config_checks import (
    FieldError,
    boolean,
    check_field,
    checked,
    choice,
    estimator_value,
    field_checks,
    integer,
    number,
    optional,
    or_auto,
    path,
    show,
    validate_fields,
)
from sbnn.data import ENCODINGS, dataset_loader, dataset_names
from sbnn.estimators import DEFAULT_ESTIMATOR, EstimatorConfig, estimator_names, get_estimator
from sbnn.models import ModelConfig

SECTIONS: tuple[str, ...] = ("data", "model", "train", "export", "pipeline")
TRAIN_METHODS: tuple[str, ...] = ("sbnn", "surrogate")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
SCHEDULES: tuple[str, ...] = ("cosine", "step", "none")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
EXPORT_WEIGHTS: tuple[str, ...] = ("mean", "sample")



class _EstimatorDefaults(Mapping[str, dict[str, Any]]):
    """Read-only view of the registered estimators' ``config_defaults`` (see :mod:`sbnn.estimators`)."""

    def __getitem__(self, method: str) -> dict[str, Any]:
        if method not in estimator_names():
            raise KeyError(method)
        return get_estimator(method).defaults_for({})

    def __iter__(self):
        return iter(estimator_names())

    def __len__(self) -> int:
        return len(estimator_names())


# What a bare method name means for the estimator (the settings a method cannot do without), e.g.
# ESTIMATOR_DEFAULTS["iwst"] == {"p": 0.5}; each estimator class declares its own.
ESTIMATOR_DEFAULTS: Mapping[str, dict[str, Any]] = _EstimatorDefaults()

# ModelConfig fields that are not [model] keys (see the module docstring).
_MODEL_FIELDS_NOT_KEYS = ("surrogate", "estimator")


class ConfigError(ValueError):
    """An invalid configuration; the one-line message starts with the config file's path."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


# ----------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: the data set (see :func:`sbnn.data.load_dataset`).

    Attributes:
        name: one of ``digits``, ``randman``, ``shd``, ``dvs_gesture``, ``cifar10``, ``npz``.
        path: folder of the original files, or the user's file or folder (``.npz``, ``.npy`` folder,
            ``.csv``); unset for built-in data.  ``root`` is accepted as another name for it.
            :func:`load_config` makes a relative path absolute from the config file's folder (from the
            current folder for ``--set``); a config built from a dict keeps it as given, and the loader
            takes it from the current folder (docs/data.md#paths).
        steps: time steps ``T``; unset: the loader's default.
        encoding: ``none``, ``rate``, ``on_off``, ``latency`` or ``direct`` for static features.
        seed: seeds the data (digits split, Randman generation, rate encoders).
        standardise: static features: ``"auto"`` (default) scales them on the training split into the
            encoder's range (together when they share a range, else per feature) when the training features lie outside it ([0, 1]; [-1, 1] for
            ``on_off``), ``true`` always, ``false`` never (docs/data.md#standardisation).  The export records it.
        options: loader-specific options (e.g. randman ``num_units``), given as further ``[data]`` keys.
    """

    name: str = checked(choice(dataset_names))
    path: str | None = checked(optional(path), default=None)
    steps: int | None = checked(optional(integer(at_least=1)), default=None)
    encoding: str = checked(choice(("none",) + tuple(ENCODINGS)), default="none")
    seed: int = checked(integer(at_least=0), default=0)
    standardise: bool | str = checked(or_auto(boolean), default="auto")
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_fields(self)

    def load_arguments(self) -> dict[str, Any]:
        """Keyword arguments of :func:`sbnn.data.load_dataset` (besides the name)."""
        return {
            "path": self.path,
            "steps": self.steps,
            "encoding": None if self.encoding == "none" else self.encoding,
            "seed": self.seed,
            "standardise": self.standardise,
            **self.options,
        }


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: method, optimisation, loss terms, evaluation and hardware.

    Attributes:
        method: ``sbnn`` (noisy neurons, ELBO) or ``surrogate`` (the same architecture with
            deterministic neurons and a fast-sigmoid surrogate gradient, no KL).
        estimator: gradient estimator of the noisy neurons (method ``sbnn``).
        epochs, batch_size, lr, seed: the usual; ``batch_size`` is the global batch (split over processes).
            ``epochs = "auto"`` (the default) gives about 3,000 optimiser steps, 10 to 200 epochs
            (docs/method.md#defaults); ``lr`` defaults to 0.005.
        optimizer: ``adam``, ``adamw`` or ``sgd``; weight_decay, momentum (sgd) go with it.
        schedule: ``cosine`` (per step, to ``lr * lr_min_ratio``), ``step`` (``lr *= step_gamma`` every
            ``step_epochs`` epochs) or ``none``.
        kl_weight: ``beta`` of the loss ``NLL + beta * KL / N_train + aux``; ``"auto"`` (the default) makes the
            KL term a tenth of the chance-level NLL at initialisation, ``min(1, 0.1 N ln C / KL_0)``
            (docs/method.md#defaults).  Training resolves both ``"auto"`` values and writes the numbers into
            the run's ``config.toml``.
        kl_warmup_epochs: ``beta`` ramps linearly from 0 over this many epochs (per step); 0: no warm-up.
        aux_penalty, aux_weight: the bias-minimising auxiliary penalty (:mod:`sbnn.aux_loss`).
        grad_clip: maximum global gradient norm; unset: no clipping.
        augment_shift: image inputs only: move each training image by up to this many pixels in each
            direction (uniform, per example and epoch, zero-filled; :mod:`sbnn.training.augment`); 0: off.
        threads: torch threads per process.
        device: ``cpu``, ``cuda`` or ``auto`` (the default: CUDA when torch sees a GPU, else the CPU; the
            device is recorded in metrics.json and, when it is a GPU, printed at start).
        eval_samples: ``K``, the noisy passes averaged and the posterior samples in the ensemble.
        eval_seed: seeds evaluation: the noisy passes, and the ensemble's sample ``k`` is
            ``freeze_sample(eval_seed + k)``.
        eval_batch_size: batch size of the evaluation passes.
        train_eval_subset: training examples (a fixed seeded subset) on which train accuracy is
            evaluated; unset: all.
        epoch_eval_subset: examples of each split (a fixed seeded subset of the train evaluation set and of
            the test set) on which the posterior-mean network is evaluated after every epoch; ``"auto"``
            (the default): ``min(1000, ceil(N_train / 4))``, about a tenth of the epoch's time; unset: all.
        full_eval_every: the full Bayesian evaluation (mean, noisy and ensemble, on the train evaluation
            set and the whole test set) runs after the last epoch and, when ``N > 0``, after every ``N``-th.
        train_subset, test_subset: use only this many examples (a fixed seeded subset); unset: all.
    """

    method: str = checked(choice(TRAIN_METHODS), default="sbnn")
    estimator: EstimatorConfig = checked(estimator_value(method_defaults=True), default=DEFAULT_ESTIMATOR)
    epochs: int | str = checked(or_auto(integer(at_least=1)), default="auto")
    batch_size: int = checked(integer(at_least=1), default=64)
    lr: float = checked(number(above=0.0), default=5e-3)
    seed: int = checked(integer(at_least=0), default=0)
    optimizer: str = checked(choice(OPTIMIZERS), default="adam")
    weight_decay: float = checked(number(at_least=0.0), default=0.0)
    momentum: float = checked(number(at_least=0.0, at_most=1.0), default=0.9)
    schedule: str = checked(choice(SCHEDULES), default="cosine")
    lr_min_ratio: float = checked(number(at_least=0.0, at_most=1.0), default=0.0)
    step_epochs: int = checked(integer(at_least=1), default=30)
    step_gamma: float = checked(number(above=0.0, at_most=1.0), default=0.1)
    kl_weight: float | str = checked(or_auto(number(at_least=0.0)), default="auto")
    kl_warmup_epochs: int = checked(integer(at_least=0), default=0)
    aux_penalty: str = checked(choice(PENALTIES), default=DEFAULT_PENALTY)
    aux_weight: float = checked(number(at_least=0.0), default=DEFAULT_PENALTY_WEIGHT)
    grad_clip: float | None = checked(optional(number(above=0.0)), default=None)
    augment_shift: int = checked(integer(at_least=0), default=0)
    threads: int = checked(integer(at_least=1), default=1)
    device: str = checked(choice(DEVICES), default="auto")
    eval_samples: int = checked(integer(at_least=1), default=8)
    eval_seed: int = checked(integer(at_least=0), default=0)
    eval_batch_size: int = checked(integer(at_least=1), default=256)
    train_eval_subset: int | None = checked(optional(integer(at_least=1)), default=1000)
    epoch_eval_subset: int | str | None = checked(or_auto(optional(integer(at_least=1))), default="auto")
    full_eval_every: int = checked(integer(at_least=0), default=0)
    train_subset: int | None = checked(optional(integer(at_least=1)), default=None)
    test_subset: int | None = checked(optional(integer(at_least=1)), default=None)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class ExportConfig:
    """``[export]`` (used by the export stage).

    Attributes:
        weights: ``mean`` (the posterior mean) or ``sample`` (posterior samples).
        posterior_samples: how many posterior samples to export with ``weights = "sample"``.
        calibration_samples: inputs used to choose the integer scales.
        headroom: factor on the calibrated range of the states u and v (>= 1 leaves room above what
            calibration saw; the weights' own 8-bit limit is not divided by it).
        dt: seconds per time step, written to the NIR metadata.
        seed: seeds the posterior samples and the calibration subset.
        accuracy_margin: an export whose hardware accuracy on the calibration data falls more than this
            (a fraction: 0.05 = 5 points) below the float model's is flagged with a warning.
    """

    weights: str = checked(choice(EXPORT_WEIGHTS), default="mean")
    posterior_samples: int = checked(integer(at_least=1), default=2)
    calibration_samples: int = checked(integer(at_least=1), default=64)
    headroom: float = checked(number(above=0.0), default=1.0)
    dt: float = checked(number(above=0.0), default=0.001)
    seed: int = checked(integer(at_least=0), default=0)
    accuracy_margin: float = checked(number(at_least=0.0, at_most=1.0), default=0.05)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class PipelineConfig:
    """``[pipeline]`` (used by ``sbnn pipeline``).

    Attributes:
        lava_samples: test samples run through Lava for verification.
        lava_workers: parallel Lava processes.
        hw_batch: batch size of the bit-exact simulator.
        lava_timeout: seconds the Lava run may take before its workers are stopped (like ``sbnn verify
            --timeout``); the pipeline then reports ``lava_error`` and keeps its other results.
    """

    lava_samples: int = checked(integer(at_least=1), default=8)
    lava_workers: int = checked(integer(at_least=1), default=1)
    hw_batch: int = checked(integer(at_least=1), default=256)
    lava_timeout: float = checked(number(above=0.0), default=600.0)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (build one with :func:`load_config`).

    Attributes:
        data, model, train, export, pipeline: the sections.  ``model.surrogate`` follows
            ``train.method`` and ``model.estimator`` is ``train.estimator``.
        source: the file it was loaded from (used in error messages).
    """

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    export: ExportConfig = ExportConfig()
    pipeline: PipelineConfig = PipelineConfig()
    source: str = "<config>"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested values of every key (unset keys as ``None``), sections in :data:`SECTIONS` order.

        Paths are absolute (a relative one, which only a config built from a dict keeps, is taken from the
        current folder, as the loader takes it), so a saved config reads the same data from anywhere."""
        data = {f.name: getattr(self.data, f.name) for f in fields(DataConfig) if f.name != "options"}
        data.update(self.data.options)
        for key in _path_keys(data):
            if key in data:
                data[key] = _absolute_path(data[key], Path())
        model = {k: v for k, v in self.model.to_dict().items() if k not in _MODEL_FIELDS_NOT_KEYS}
        train = {f.name: getattr(self.train, f.name) for f in fields(TrainConfig)}
        train["estimator"] = _estimator_dict(self.train.estimator)
        return {
            "data": data,
            "model": model,
            "train": train,
            "export": {f.name: getattr(self.export, f.name) for f in fields(ExportConfig)},
            "pipeline": {f.name: getattr(self.pipeline, f.name) for f in fields(PipelineConfig)},
        }

    def to_toml(self) -> str:
        """The fully resolved configuration as TOML; :func:`load_config` reads it back to an equal config."""
        lines = [f"# Resolved configuration (loaded from {self.source})."]
        for section, values in self.to_dict().items():
            lines.append("")
            lines.append(f"[{section}]")
            for key, value in values.items():
                if value is None:
                    lines.append(f"# {key} = (unset)")
                else:
                    lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _estimator_dict(estimator: EstimatorConfig) -> dict[str, Any]:
    return {f.name: getattr(estimator, f.name) for f in fields(estimator) if getattr(estimator, f.name) is not None}


# ----------------------------------------------------------------------------------------------------
# Writing TOML values
# ----------------------------------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    escaped = []
    for character in text:
        code = ord(character)
        if character == '"':
            escaped.append('\\"')
        elif character == "\\":
            escaped.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            escaped.append(f"\\u{code:04x}")
        else:
            escaped.append(character)
    return '"' + "".join(escaped) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite number {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


_DATA_KEYS: tuple[str, ...] = tuple(field_checks(DataConfig))
_MODEL_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(ModelConfig) if f.name not in _MODEL_FIELDS_NOT_KEYS
) + ("estimator",)


# ----------------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------------


def _path_keys(data: Any) -> tuple[str, ...]:
    """The ``[data]`` keys holding a file or folder path: ``path``, ``root`` and the named data set's
    ``path_options`` (e.g. mnist's ``file``)."""
    keys: tuple[str, ...] = ("path", "root")
    name = data.get("name") if isinstance(data, Mapping) else None
    if isinstance(name, str) and name in dataset_names():
        keys += dataset_loader(name).path_options
    return keys


def _absolute_path(value: Any, base: Path) -> Any:
    """``value`` as an absolute path: ``~`` expanded, a relative path joined to ``base`` and resolved (symlinks
    and ``..`` as the file system sees them); an absolute path unchanged.  Anything but a usable path string
    is returned as it is, for the field checks to name."""
    if not isinstance(value, str) or not value or "\0" in value:
        return value
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    try:
        return str((base / expanded).resolve())
    except (OSError, RuntimeError):   # a symlink loop, an unreadable folder: keep the plain join
        return os.path.abspath(base / expanded)


def _resolve_paths(raw: dict[str, Any], config_folder: Path, overrides: list[str]) -> dict[str, Any]:
    """``raw`` with the ``[data]`` paths made absolute: those the file gives from ``config_folder``, those
    ``--set`` gives from the current folder."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw
    overridden = set()
    for text in overrides:
        parts, _value = parse_override(text)
        if parts[0] == "data" and len(parts) == 2:
            overridden.add(parts[1])
    data = dict(data)
    for key in _path_keys(data):
        if key in data:
            data[key] = _absolute_path(data[key], Path() if key in overridden else config_folder)
    return {**raw, "data": data}


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def _error(source: str, key: str, reason: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {reason}")


def _field_error(source: str, section: str, error: FieldError) -> ConfigError:
    """``error`` of a field of ``[section]``'s config class; ModelConfig's estimator is ``train.estimator``."""
    if (section, error.key) == ("model", "estimator"):
        section = "train"
    return _error(source, f"{section}.{error.key}", error.reason)


def _elsewhere(section: str, key: str) -> str:
    """A hint naming the other sections that do know ``key`` (a key put under the wrong heading), or ""."""
    keys = {"data": _DATA_KEYS, "model": _MODEL_KEYS, "train": tuple(field_checks(TrainConfig)),
            "export": tuple(field_checks(ExportConfig)), "pipeline": tuple(field_checks(PipelineConfig))}
    owners = [f"{name}.{key}" for name in SECTIONS if name != section and key in keys[name]]
    return f"did you mean {' or '.join(owners)}? " if owners else ""


def _unknown_key(source: str, section: str, key: str, known: tuple[str, ...] | list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {section}.{close[0]}? " if close else _elsewhere(section, key)
    return _error(source, f"{section}.{key}", "unknown key" + (f" ({hint.strip()})" if hint else ""))


def _check_section(source: str, section: str, raw: dict[str, Any], config_class: type) -> dict[str, Any]:
    """``raw``'s values checked as fields of ``config_class``, in the file's order (its first problem is reported)."""
    known = tuple(field_checks(config_class))
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise _unknown_key(source, section, key, known)
        try:
            values[key] = check_field(config_class, key, value)
        except FieldError as error:
            raise _field_error(source, section, error) from None
    return values


def _build_data(source: str, raw: dict[str, Any]) -> DataConfig:
    raw = dict(raw)
    if "root" in raw:
        if "path" in raw:
            raise _error(source, "data.root", "give either data.path or data.root (the same setting), not both")
        raw["path"] = raw.pop("root")
    if "name" not in raw:
        raise _error(source, "data.name", f"missing (one of {', '.join(dataset_names())})")
    name = _check_section(source, "data", {"name": raw["name"]}, DataConfig)["name"]
    loader = dataset_loader(name)
    option_names = loader.options
    options = {}
    for key in [k for k in raw if k not in _DATA_KEYS]:
        value = raw.pop(key)
        if key not in option_names:
            allowed = ", ".join(option_names) or "none"
            close = difflib.get_close_matches(key, list(_DATA_KEYS) + list(option_names), n=1)
            hint = f"did you mean data.{close[0]}? " if close else _elsewhere("data", key)
            raise _error(source, f"data.{key}", f"unknown key ({hint}options of dataset {name!r}: {allowed})")
        if isinstance(value, (dict, list)):
            raise _error(source, f"data.{key}", f"must be a number, string or boolean, got {show(value)}")
        options[key] = value
    values = _check_section(source, "data", raw, DataConfig)
    if not loader.needs_path and "path" in values:
        raise _error(source, "data.path", f"dataset {name!r} is built in and takes no path")
    if loader.needs_path and "path" not in values:
        raise _error(source, "data.path", f"missing: dataset {name!r} needs path = {loader.path_help}")
    return DataConfig(**values, options=options)


def _build_model_and_train(source: str, model_raw: dict[str, Any], train_raw: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    model_raw = dict(model_raw)
    train_raw = dict(train_raw)
    if "surrogate" in model_raw:
        raise _error(source, "model.surrogate", 'not a [model] key: set train.method = "surrogate" for the baseline')
    if "estimator" in model_raw:
        if "estimator" in train_raw:
            raise _error(source, "model.estimator",
                         "given twice: keep train.estimator (the same setting) and remove model.estimator")
        train_raw["estimator"] = model_raw.pop("estimator")
    train = TrainConfig(**_check_section(source, "train", train_raw, TrainConfig))

    for key in model_raw:
        if key not in _MODEL_KEYS:
            raise _unknown_key(source, "model", key, _MODEL_KEYS)
    try:
        model = ModelConfig(**model_raw, surrogate=train.method == "surrogate", estimator=train.estimator)
    except FieldError as error:
        raise _field_error(source, "model", error) from None
    if train.aux_penalty == "margin_saturation" and train.aux_weight > 0 and (model.spiking or model.surrogate):
        raise _error(source, "train.aux_penalty", "margin_saturation needs the margins of noisy binary units; "
                     "spiking neurons and the surrogate baseline record none (use weight_noise_ratio)")
    return model, train


def config_from_dict(raw: Mapping[str, Any], *, source: str = "<config>") -> RunConfig:
    """Validate a parsed TOML document (nested dicts) into a :class:`RunConfig`.

    Raises:
        ConfigError: naming the first bad section or key.
    """
    for section, values in raw.items():
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise _error(source, f"[{section}]", f"unknown section{hint}; sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise _error(source, section, f"must be a table ([{section}]), got {show(values)}")
    if "data" not in raw:
        raise _error(source, "[data]", "missing section (it needs at least name = ...)")
    data = _build_data(source, raw["data"])
    model, train = _build_model_and_train(source, raw.get("model", {}), raw.get("train", {}))
    export = ExportConfig(**_check_section(source, "export", raw.get("export", {}), ExportConfig))
    pipeline = PipelineConfig(**_check_section(source, "pipeline", raw.get("pipeline", {}), PipelineConfig))
    return RunConfig(data=data, model=model, train=train, export=export, pipeline=pipeline, source=source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"section.key=value"`` -> (``["section", "key"]``, value parsed as a TOML value).

    A value that is not valid TOML is taken as a plain string (so ``train.method=surrogate`` works).
    Deeper keys address tables, e.g. ``train.estimator.tau=0.5``.

    Raises:
        ValueError: no ``=`` or no ``section.key`` before it.
    """
    key, separator, value_text = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not separator or len(parts) < 2 or not all(part.strip() for part in parts):
        raise ValueError(f"--set {text!r}: expected section.key=value (e.g. train.epochs=2)")
    value_text = value_text.strip()
    try:
        value = tomllib.loads(f"value = {value_text}")["value"]
    except tomllib.TOMLDecodeError:
        value = value_text
    except RecursionError:   # tomllib recurses once per nesting level of arrays and inline tables
        raise ValueError(f"--set {key}=...: the value nests arrays or tables too deeply") from None
    return [part.strip() for part in parts], value


def apply_overrides(raw: dict[str, Any], overrides: list[str], *, source: str) -> dict[str, Any]:
    """Apply ``--set`` overrides to a parsed document (a new dict is returned; ``raw`` is unchanged)."""
    result = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for text in overrides:
        try:
            parts, value = parse_override(text)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
        section = parts[0]
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{source}: --set {text!r}: unknown section {section!r}{hint}; "
                              f"sections: {', '.join(SECTIONS)}")
        table = result.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: --set {text!r}: {section} is not a table")
        for depth, part in enumerate(parts[1:-1], start=1):
            inner = table.get(part)
            if isinstance(inner, str) and ".".join(parts[:depth + 1]) in ("train.estimator", "model.estimator"):
                inner = {"method": inner}  # an estimator given by name becomes a table to change a setting
            elif inner is None:
                inner = {}
            elif not isinstance(inner, dict):
                raise ConfigError(f"{source}: --set {text!r}: {'.'.join(parts[:depth + 1])} is not a table")
            else:
                inner = dict(inner)
            table[part] = inner
            table = inner
        table[parts[-1]] = value
    return result


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run configuration.

    Args:
        path: the TOML file.
        overrides: ``"section.key=value"`` strings (``--set``), applied in order after the file.

    Returns:
        The validated :class:`RunConfig` (``source`` is ``path``).  Relative ``[data]`` paths (``path``,
        ``root`` and path options such as mnist's ``file``) become absolute: taken from the config file's
        folder, or from the current folder when ``--set`` gave them (docs/data.md#paths).

    Raises:
        ConfigError: the file cannot be read or parsed, or a section, key or value is invalid; the
            one-line message starts with ``path`` and names the key.
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8-sig")   # a leading byte-order mark (Windows editors) is dropped
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file (expected a TOML run configuration)") from None
    except IsADirectoryError:
        hint = (f" (the run it holds was configured by {Path(source) / 'config.toml'})"
                if (Path(source) / "config.toml").is_file() else "")
        raise ConfigError(f"{source}: is a folder, not a TOML run configuration{hint}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: cannot be read ({error})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML ({error})") from None
    except RecursionError:   # tomllib recurses once per nesting level of arrays and inline tables
        raise ConfigError(f"{source}: not valid TOML (arrays or tables nested too deeply)") from None
    overrides = list(overrides or [])
    merged = apply_overrides(raw, overrides, source=source)
    return config_from_dict(_resolve_paths(merged, Path(source).parent, overrides), source=source)


def with_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """``config`` with ``--set``-style overrides applied and validated again."""
    raw = apply_overrides(_without_unset(config.to_dict()), overrides, source=config.source)
    return config_from_dict(raw, source=config.source)


def _without_unset(document: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {section: {k: v for k, v in values.items() if v is not None} for section, values in document.items()}


__all__ = [
    "DEVICES",
    "ESTIMATOR_DEFAULTS",
    "OPTIMIZERS",
    "SCHEDULES",
    "SECTIONS",
    "TRAIN_METHODS",
    "ConfigError",
    "DataConfig",
    "ExportConfig",
    "PipelineConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "with_overrides",
]
