"""``python -m sbnn.train CONFIG.toml [...]`` (what ``torchrun -m sbnn.train`` starts in every process), and
the names that ``sbnn.train`` has always offered.

The training itself lives in :mod:`sbnn.training` (run folder, checkpoint, processes, data, schedule and the
loop); this module re-exports its public names, so ``from sbnn.train import train, load_checkpoint, ...``
keeps working, and its :func:`main` runs ``sbnn train`` (:mod:`sbnn.cli.train`: same arguments, same exit
codes).
"""

from __future__ import annotations

import sys

from sbnn.training import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    JSON_KEYS,
    METRICS_FILE,
    RUN_FILES,
    RUN_MARKER,
    EpochTotals,
    ProcessGroup,
    RunFolderError,
    TrainingData,
    TrainingError,
    build_run_model,
    check_run_folder,
    default_run_dir,
    epoch_shard,
    kl_weight_at,
    learning_rate_factor,
    load_checkpoint,
    load_trained_model,
    load_training_data,
    remove_stale_temporaries,
    train,
)


def main(argv: list[str] | None = None) -> int:
    """``python -m sbnn.train CONFIG.toml [...]`` (what ``torchrun -m sbnn.train`` starts): the same as ``sbnn
    train``, whose arguments and exit codes are :mod:`sbnn.cli.train`'s."""
    from sbnn.cli.train import main as train_command

    return train_command(argv)


__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "EpochTotals",
    "JSON_KEYS",
    "METRICS_FILE",
    "ProcessGroup",
    "RUN_FILES",
    "RUN_MARKER",
    "RunFolderError",
    "TrainingData",
    "TrainingError",
    "build_run_model",
    "check_run_folder",
    "default_run_dir",
    "epoch_shard",
    "kl_weight_at",
    "learning_rate_factor",
    "load_checkpoint",
    "load_trained_model",
    "load_training_data",
    "main",
    "remove_stale_temporaries",
    "train",
]


if __name__ == "__main__":
    sys.exit(main())
