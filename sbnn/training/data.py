"""The training data (the configured data set with its subsets) and the model built for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sbnn.config import ConfigError, RunConfig
from sbnn.data import DataError, Dataset, load_dataset
from sbnn.models import SbnnModel, build_model


@dataclass
class TrainingData:
    """The splits as CPU tensors (inputs keep the loader's dtype; the model casts them)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    train_eval_indices: Tensor
    num_classes: int
    input_shape: tuple[int, ...]


def _subset(size: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``limit`` out of ``size`` (None: keep everything)."""
    if limit is None or limit >= size:
        return None
    return np.sort(np.random.default_rng(seed).permutation(size)[:limit])


def load_training_data(config: RunConfig) -> TrainingData:
    """Load the configured data set and apply ``train_subset``/``test_subset``/``train_eval_subset``.

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
    return TrainingData(
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)).long(),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test)).long(),
        train_eval_indices=torch.from_numpy(eval_indices).long(),
        num_classes=int(dataset.num_classes),
        input_shape=tuple(int(s) for s in dataset.input_shape),
    )


def build_run_model(config: RunConfig, data: TrainingData) -> SbnnModel:
    """The configured model for the data's input shape and classes, initialised from ``train.seed``."""
    try:
        return build_model(config.model, data.input_shape, data.num_classes, seed=config.train.seed)
    except ValueError as error:
        raise ConfigError(f"{config.source}: model: {error} (input shape {data.input_shape})") from None
    except (MemoryError, RuntimeError) as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        if isinstance(error, RuntimeError) and "allocate" not in reason:
            raise
        raise ConfigError(f"{config.source}: model: its parameters do not fit in memory ({reason[:200]}; "
                          f"input shape {data.input_shape})") from None


__all__ = ["TrainingData", "build_run_model", "load_training_data"]
