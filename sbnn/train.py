"""``python -m sbnn.train CONFIG.toml [...]`` (what ``torchrun -m sbnn.train`` starts in every process), and
the names that ``sbnn.train`` has always offered.

The training itself lives in :mod:`sbnn.training` (run folder, checkpoint, processes, data, schedule and the
loop); this module re-exports its public names, so ``from sbnn.train import train, load_checkpoint, ...``
keeps working, and its :func:`main` runs ``sbnn train`` (:mod:`sbnn.cli.train`: same arguments, same exit
codes).
"""

from __future__ import annotations

import sys

from sbnn.training import *  # noqa: F403 (the names sbnn.train has always offered)
from sbnn.training import __all__ as _training_names


def main(argv: list[str] | None = None) -> int:
    """``python -m sbnn.train CONFIG.toml [...]`` (what ``torchrun -m sbnn.train`` starts): the same as ``sbnn
    train``, whose arguments and exit codes are :mod:`sbnn.cli.train`'s."""
    from sbnn.cli.train import main as train_command

    return train_command(argv)


__all__ = [*_training_names, "main"]


if __name__ == "__main__":
    sys.exit(main())
