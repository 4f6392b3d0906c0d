"""The optimiser and the schedules: the learning-rate factor (``train.schedule``) and ``beta_t``, the KL
weight's linear warm-up over ``train.kl_warmup_epochs`` (per step).

The optimisers and the scheduler are :mod:`sbnn.training.optim`'s, bit-identical to ``torch.optim``'s but
without its import of ``torch._dynamo`` (about a second of every command)."""

from __future__ import annotations

import math

from torch import nn

from sbnn.config import TrainConfig

from .optim import SGD, Adam, AdamW, LambdaLR, Optimizer


def make_optimizer(parameters: list[nn.Parameter], train: TrainConfig) -> Optimizer:
    """``train.optimizer`` (adam, adamw or sgd) at ``train.lr``."""
    if train.optimizer == "adam":
        return Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
    return SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def learning_rate_factor(train: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of ``train.lr`` at optimiser step ``step`` (0-based)."""
    if train.schedule == "cosine":
        total = max(1, train.epochs * steps_per_epoch)
        progress = min(step, total) / total
        return train.lr_min_ratio + (1.0 - train.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if train.schedule == "step":
        return train.step_gamma ** ((step // steps_per_epoch) // train.step_epochs)
    return 1.0


def kl_weight_at(train: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """``beta_t``: ``train.kl_weight`` after a linear warm-up over ``kl_warmup_epochs`` (per step)."""
    if train.kl_warmup_epochs == 0:
        return train.kl_weight
    return train.kl_weight * min(1.0, (step + 1) / (train.kl_warmup_epochs * steps_per_epoch))


def make_scheduler(optimizer: Optimizer, train: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """A per-step scheduler of :func:`learning_rate_factor`."""
    # A closure (not a callable object) keeps the schedule out of the scheduler's state_dict: the
    # schedule always follows the current config, the state is only the step count.
    def factor(step: int) -> float:
        return learning_rate_factor(train, step, steps_per_epoch)

    return LambdaLR(optimizer, factor)


__all__ = ["kl_weight_at", "learning_rate_factor", "make_optimizer", "make_scheduler"]
