"""The settings chosen from the data (``"auto"``, the defaults of ``train.kl_weight`` and ``train.epochs``) and
the warnings about risky settings printed when training starts (docs/method.md#defaults).

* ``kl_weight = "auto"``: ``beta = min(1, KL_SHARE * N_train * ln(C) / KL_0)``, with ``KL_0`` the KL
  divergence of the freshly initialised posterior from the prior (nats, summed over every weight) and
  ``ln(C)`` the NLL of a uniform guess over ``C`` classes: the KL term ``beta * KL / N_train`` starts at a
  tenth of the NLL, so it regularises without pulling the posterior back to the prior.  Untempered
  (``beta = 1``) only when the data outweigh the parameters that much.
* ``epochs = "auto"``: enough epochs for about ``TARGET_STEPS`` optimiser steps, between ``EPOCH_RANGE``:
  10 epochs of a 60,000-example set, 200 of a 150-example one.

The resolved numbers are written into the run's ``config.toml``, so a run folder always says what it used
and resumes with the same values (they are computed again from the same data and seeds).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

from sbnn.config import RunConfig
from sbnn.models import SbnnModel

from .data import TrainingData, build_run_model, load_training_data

KL_SHARE = 0.1               # the KL term's share of the chance-level NLL at initialisation under "auto"
TARGET_STEPS = 3000          # optimiser steps "auto" epochs aim at
EPOCH_RANGE = (10, 200)      # the fewest and most epochs "auto" chooses
KL_DOMINATES = 1.0           # warn when beta * KL_0 / N_train exceeds this many times ln(C)
SPREAD_WARNING = 100.0       # warn when analog features' peaks differ by more than this factor


def initial_kl(model: SbnnModel) -> float:
    """``KL(q || p)`` of the model as built (nats); 0 for the surrogate baseline."""
    import torch

    with torch.no_grad():
        return float(model.kl())


def auto_kl_weight(kl0: float, n_train: int, num_classes: int) -> float:
    """``min(1, KL_SHARE * n_train * ln(num_classes) / kl0)``; 1 when there is no KL."""
    if kl0 <= 0:
        return 1.0
    return float(min(1.0, KL_SHARE * n_train * math.log(max(num_classes, 2)) / kl0))


def auto_epochs(steps_per_epoch: int) -> int:
    """Epochs for about :data:`TARGET_STEPS` steps, clamped to :data:`EPOCH_RANGE`."""
    low, high = EPOCH_RANGE
    return int(min(high, max(low, math.ceil(TARGET_STEPS / max(1, steps_per_epoch)))))


def resolve_auto(config: RunConfig, *, world_size: int = 1, data: TrainingData | None = None,
                 log: Callable[[str], None] = lambda text: None) -> RunConfig:
    """``config`` with ``"auto"`` ``train.kl_weight`` and ``train.epochs`` replaced by their values for its data
    (loaded unless given); each choice is logged in one line. A config without ``"auto"`` returns unchanged."""
    train = config.train
    if train.kl_weight != "auto" and train.epochs != "auto":
        return config
    data = data or load_training_data(config)
    n_train = len(data.x_train)
    changes = {}
    if train.epochs == "auto":
        steps = math.ceil(math.ceil(n_train / world_size) / max(1, train.batch_size // world_size))
        changes["epochs"] = auto_epochs(steps)
        log(f"train.epochs = auto: {changes['epochs']} ({steps} steps per epoch on {n_train} examples, "
            f"about {TARGET_STEPS} steps in all)")
    if train.kl_weight == "auto":
        kl0 = initial_kl(build_run_model(config, data))
        changes["kl_weight"] = auto_kl_weight(kl0, n_train, data.num_classes)
        log(f"train.kl_weight = auto: {changes['kl_weight']:.4g} (the KL term starts at {KL_SHARE:g} of the "
            f"chance NLL ln {data.num_classes}: initial KL {kl0:.4g} nats, {n_train} training examples)")
    return replace(config, train=replace(train, **changes))


def with_recorded_auto(config: RunConfig, recorded: RunConfig) -> RunConfig:
    """``config`` with its ``"auto"`` ``train.kl_weight``, ``train.epochs`` and ``train.device`` read as the values
    a run of it recorded (``recorded``, the run folder's config.toml): what :func:`resolve_auto` chose for the
    same data, without loading the data again; ``"auto"`` accepts a run on either device."""
    train = config.train
    changes = {key: getattr(recorded.train, key) for key in ("kl_weight", "epochs", "device")
               if getattr(train, key) == "auto"}
    return replace(config, train=replace(train, **changes)) if changes else config


def risk_warnings(config: RunConfig, data: TrainingData, model: SbnnModel) -> list[str]:
    """One line per risky setting for these data, each with the value that would fix it: the KL term
    dominating the loss at initialisation, or static features outside the encoder's range."""
    warnings = []
    kl0, n_train, classes = initial_kl(model), len(data.x_train), data.num_classes
    beta, chance = config.train.kl_weight, math.log(max(classes, 2))
    if isinstance(beta, float) and kl0 > 0 and beta * kl0 / n_train > KL_DOMINATES * chance:
        warnings.append(
            f"train.kl_weight = {beta:g}: the KL term beta*KL/N = {beta * kl0 / n_train:.3g} is "
            f"{beta * kl0 / n_train / chance:.3g}x the chance NLL ln {classes} at initialisation ({n_train} training "
            f"examples), so the posterior collapses to the prior; set train.kl_weight = "
            f"{auto_kl_weight(kl0, n_train, classes):.3g} (or leave it out: auto)")
    preprocessing = data.preprocessing
    if preprocessing is not None and preprocessing.standardisation is None and preprocessing.raw_range is not None:
        warnings += _range_warnings(preprocessing)
    return warnings


def _range_warnings(preprocessing) -> list[str]:
    """Unstandardised static features outside the encoder's range, or (analog input) of very unequal ranges."""
    from sbnn.data.preprocessing import encoder_range

    low, high = encoder_range(preprocessing.encoding)
    smallest, largest = preprocessing.raw_range
    name = preprocessing.encoding or "analog first layer"
    if smallest < low or largest > high:
        return [f"data: the training features span [{smallest:.4g}, {largest:.4g}], outside the {name}'s range "
                f"[{low:g}, {high:g}] (beyond it the encoders clip, and Loihi takes no negative analog input); "
                f"set data.standardise = true (or leave it out: auto)"]
    if preprocessing.encoding is None and preprocessing.raw_spread > SPREAD_WARNING:
        return [f"data: the features' largest values differ by {preprocessing.raw_spread:.3g}x, so the export's "
                f"8-bit input scale rounds the small ones to 0; set data.standardise = true"]
    return []


__all__ = ["EPOCH_RANGE", "KL_SHARE", "TARGET_STEPS", "auto_epochs", "auto_kl_weight", "initial_kl",
           "resolve_auto", "risk_warnings", "with_recorded_auto"]
