"""The two errors of training: :class:`RunFolderError` (bad input, exit code 2) and :class:`TrainingError`
(training stopped, exit code 1). ``sbnn.cli`` sorts errors by the module that defines their class: this one."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training could not go on (e.g. a NaN or infinite loss); the last good checkpoint is kept."""


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (a finished or different run in it, unreadable checkpoint)."""


__all__ = ["RunFolderError", "TrainingError"]
