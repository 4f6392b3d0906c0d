"""``sbnn train CONFIG.toml``: train an SBNN (or the surrogate baseline) into a run folder.

Also ``python -m sbnn.train CONFIG.toml [...]`` (what ``torchrun -m sbnn.train`` starts in every process):
:func:`main` parses the same arguments and runs the same handler; :mod:`sbnn.training` holds the training.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

from . import EXIT_BAD_INPUT, EXIT_DIFFERENT, EXIT_OK
from .inputs import _path


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run configuration (TOML), e.g. examples/quickstart.toml")
    parser.add_argument("--out", type=_path, help="run folder (default runs/<config name>)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, parsed as TOML (e.g. --set train.epochs=2); repeatable")
    start = parser.add_mutually_exclusive_group()   # both at once would silently mean --resume
    start.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    start.add_argument("--overwrite", action="store_true",
                       help="start afresh in a run folder that holds a previous run (deletes its checkpoint)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override train.device")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the results")


def add_train_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` on a subparsers object; its ``handler(args)`` returns the exit code."""
    parser = subparsers.add_parser(
        "train", help="train an SBNN (or the surrogate baseline) from a TOML config",
        description="Train from a TOML run configuration; writes config.toml, checkpoint.pt and metrics.json.",
    )
    add_train_arguments(parser)
    parser.set_defaults(handler=command_train)
    return parser


add_command = add_train_command


def command_train(args: argparse.Namespace) -> int:
    """Handler of ``sbnn train``: returns the exit code (0 ok, 1 training failed, 2 bad input)."""
    from safeio.atomic import FolderLocked, folder_lock

    from ..config import ConfigError, load_config
    from ..data import DataError
    from ..training import (ProcessGroup, RunFolderError, TrainingError, check_run_folder, default_run_dir, json_safe,
                            train)

    overrides = list(args.set)
    if args.device:
        overrides.append(f"train.device={json.dumps(args.device)}")
    try:
        config = load_config(args.config, overrides)
        run_dir = Path(args.out) if args.out else default_run_dir(args.config)
        check_run_folder(run_dir)
        # One writer per run folder; the ranks of one torchrun job are one writer, represented by rank 0.
        with folder_lock(run_dir, "sbnn train") if ProcessGroup.from_environment().is_main else nullcontext():
            summary = train(config, run_dir, resume=args.resume, json_mode=args.json, overwrite=args.overwrite)
    except (ConfigError, DataError, RunFolderError, FolderLocked) as error:
        print(f"sbnn train: {' '.join(str(error).splitlines())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingError as error:
        print(f"sbnn train: {' '.join(str(error).splitlines())}", file=sys.stderr)
        return EXIT_DIFFERENT
    if args.json and ProcessGroup.from_environment().is_main:
        print(json.dumps(json_safe(summary), allow_nan=False), flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m sbnn.train CONFIG.toml [...]``: the same arguments and handler as ``sbnn train``."""
    parser = argparse.ArgumentParser(prog="sbnn train", description="Train from a TOML run configuration.")
    add_train_arguments(parser)
    return command_train(parser.parse_args(argv))
