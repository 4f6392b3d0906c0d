"""The training data (the configured data set with its subsets) and the model built for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbnn.config import ConfigError, RunConfig
from sbnn.data import DataError, Dataset, load_dataset
from sbnn.models import SbnnModel, build_model

from .augment import check_shift_input


@dataclass
class TrainingData:
    """The splits as CPU tensors (inputs keep the loader's dtype; the model casts them).

    ``train_eval_indices`` index ``x_train``: the examples the full evaluation scores train accuracy on.
    ``epoch_train_indices`` (a subset of them, indexing ``x_train``) and ``epoch_test_indices`` (indexing
    ``x_test``) are what the cheap per-epoch evaluation scores (``train.epoch_eval_subset``).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    train_eval_indices: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    epoch_train_indices: Tensor | None = None   # None: train_eval_indices
    epoch_test_indices: Tensor | None = None    # None: all of x_test
    preprocessing: Any = None   # how raw features became x (sbnn.data.preprocessing.Preprocessing), or None
    classes: tuple[str, ...] | None = None   # each class's name when the labels were text (Dataset.classes)

    def epoch_eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"train": (x, y), "test": (x, y)}`` of the per-epoch evaluation."""
        train = self.train_eval_indices if self.epoch_train_indices is None else self.epoch_train_indices
        test = self.epoch_test_indices
        return {"train": (self.x_train[train], self.y_train[train]),
                "test": (self.x_test, self.y_test) if test is None else (self.x_test[test], self.y_test[test])}

    def full_eval_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"train": (x, y), "test": (x, y)}`` of the full evaluation: the train evaluation set, all of test."""
        return {"train": (self.x_train[self.train_eval_indices], self.y_train[self.train_eval_indices]),
                "test": (self.x_test, self.y_test)}


EPOCH_EVAL_CAP = 1000   # examples per split of the "auto" per-epoch evaluation, at most ...
EPOCH_EVAL_SHARE = 4    # ... and at most a quarter of the training examples


def epoch_eval_size(setting: int | str | None, n_train: int) -> int | None:
    """Examples per split of the per-epoch evaluation for ``train.epoch_eval_subset = setting`` (None: all).

    ``"auto"``: ``min(EPOCH_EVAL_CAP, ceil(n_train / EPOCH_EVAL_SHARE))``. A posterior-mean pass costs
    about a quarter to a sixth of a training example's noisy forward and backward pass
    (``benchmarks/epoch_evaluation_cost.py``), so two splits of ``n_train / 4`` cost about 8-12 % of the
    epoch, on small and large data alike; 1000 examples keep the per-epoch accuracy within about ±1.5 points.
    """
    if setting == "auto":
        return min(EPOCH_EVAL_CAP, -(-n_train // EPOCH_EVAL_SHARE))
    return setting


def _subset(size: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``limit`` out of ``size`` (None: keep everything)."""
    if limit is None or limit >= size:
        return None
    return np.sort(np.random.default_rng(seed).permutation(size)[:limit])


def load_training_data(config: RunConfig) -> TrainingData:
    """Load the configured data set and apply ``train_subset``/``test_subset``/``train_eval_subset`` (and choose
    the ``epoch_eval_subset`` subsets).

    Raises:
        DataError: files missing or malformed.
        ConfigError: the loader rejects the ``[data]`` settings.
    """
    try:
        dataset: Dataset = load_dataset(config.data.name, **config.data.load_arguments())
    except DataError:
        raise
    except ValueError as error:
        raise ConfigError(f"{config.source}: data: {error}") from None
    x_train, y_train, x_test, y_test = dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    # Distinct seeds per subset, derived from the data seed, so each choice is fixed by the config.
    train_keep = _subset(len(x_train), config.train.train_subset, config.data.seed * 3 + 1)
    if train_keep is not None:
        x_train, y_train = x_train[train_keep], y_train[train_keep]
    test_keep = _subset(len(x_test), config.train.test_subset, config.data.seed * 3 + 2)
    if test_keep is not None:
        x_test, y_test = x_test[test_keep], y_test[test_keep]
    eval_keep = _subset(len(x_train), config.train.train_eval_subset, config.data.seed * 3 + 3)
    eval_indices = np.arange(len(x_train)) if eval_keep is None else eval_keep
    if len(x_train) == 0 or len(x_test) == 0:
        raise ConfigError(f"{config.source}: data: an empty split ({len(x_train)} train, {len(x_test)} test examples)")
    # The per-epoch evaluation's subsets: of the train evaluation set and of the test set.
    per_split = epoch_eval_size(config.train.epoch_eval_subset, len(x_train))
    epoch_train = _subset(len(eval_indices), per_split, config.data.seed * 3 + 4)
    epoch_test = _subset(len(x_test), per_split, config.data.seed * 3 + 5)
    return TrainingData(
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)).long(),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test)).long(),
        train_eval_indices=torch.from_numpy(eval_indices).long(),
        num_classes=int(dataset.num_classes),
        input_shape=tuple(int(s) for s in dataset.input_shape),
        preprocessing=dataset.preprocessing,
        classes=None if dataset.classes is None else tuple(str(name) for name in dataset.classes),
        epoch_train_indices=None if epoch_train is None else torch.from_numpy(eval_indices[epoch_train]).long(),
        epoch_test_indices=None if epoch_test is None else torch.from_numpy(epoch_test).long(),
    )


def build_run_model(config: RunConfig, data: TrainingData) -> SbnnModel:
    """The configured model for the data's input shape and classes, initialised from ``train.seed``."""
    shift_problem = check_shift_input(config.train.augment_shift, data.input_shape)
    if shift_problem is not None:
        raise ConfigError(f"{config.source}: train.augment_shift: {shift_problem}")
    try:
        with torch.device("meta"):   # the size first, nothing allocated (see _memory_problem)
            skeleton = build_model(config.model, data.input_shape, data.num_classes, seed=config.train.seed)
        problem = _memory_problem(sum(p.numel() * p.element_size() for p in skeleton.parameters()))
        if problem is None:
            return build_model(config.model, data.input_shape, data.num_classes, seed=config.train.seed)
    except ValueError as error:
        raise ConfigError(f"{config.source}: model: {error} (input shape {data.input_shape})") from None
    except (MemoryError, RuntimeError) as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        if isinstance(error, RuntimeError) and "allocate" not in reason:
            raise
        raise ConfigError(f"{config.source}: model: its parameters do not fit in memory ({reason[:200]}; "
                          f"input shape {data.input_shape})") from None
    raise ConfigError(f"{config.source}: model: {problem} (input shape {data.input_shape}, model.hidden "
                      f"{list(config.model.hidden)})")


def _memory_problem(parameter_bytes: int) -> str | None:
    """Why a model of ``parameter_bytes`` cannot be trained here: its parameters, gradients and two optimiser
    moments (4 x ``parameter_bytes``) exceed the memory available now (``MemAvailable``); None when they fit or
    /proc/meminfo is absent. Allocating it would not fail (Linux overcommits) but wake the out-of-memory killer
    (exit 137), which may kill other processes too."""
    try:
        with open("/proc/meminfo") as file:
            available = next(int(line.split()[1]) * 1024 for line in file if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    if 4 * parameter_bytes <= available:
        return None
    return (f"{parameter_bytes / 2**30:.3g} GiB of parameters (about {4 * parameter_bytes / 2**30:.3g} GiB to "
            f"train) do not fit in memory ({available / 2**30:.3g} GiB available)")


__all__ = ["EPOCH_EVAL_CAP", "EPOCH_EVAL_SHARE", "TrainingData", "build_run_model", "epoch_eval_size",
           "load_training_data"]
