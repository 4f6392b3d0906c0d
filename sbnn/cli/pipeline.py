"""``sbnn pipeline CONFIG.toml``: train, export, simulate, verify, energy and report, each stage redone only
when what it would use changed; exit code 1 when Lava and hw_sim differ."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import EXIT_DIFFERENT, EXIT_OK
from .inputs import _path


def add_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    pipeline = commands.add_parser("pipeline", help="train, export, simulate, verify, energy and report")
    pipeline.add_argument("config", help="run configuration (TOML), e.g. examples/quickstart.toml")
    pipeline.add_argument("--out", type=_path, help="run folder (default runs/<config name>)")
    pipeline.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                          help="override a config value (parsed as TOML); repeatable")
    pipeline.add_argument("--force", action="store_true", help="redo every stage")
    pipeline.add_argument("--json", action="store_true", help="print one JSON object")
    pipeline.set_defaults(handler=command_pipeline)
    return pipeline


def command_pipeline(args: argparse.Namespace) -> int:
    from safeio.atomic import folder_lock

    from ..config import load_config
    from ..pipeline import format_summary, run_pipeline
    from ..train import check_run_folder, default_run_dir

    config = load_config(args.config, args.set)
    run_dir = Path(args.out) if args.out else default_run_dir(args.config)
    check_run_folder(run_dir)
    with folder_lock(run_dir, "sbnn pipeline"):
        summary = run_pipeline(config, run_dir, force=args.force, quiet=args.json,
                               progress=(lambda message: None) if args.json else print)
    if args.json:
        from ..pipeline import finite_for_json

        print(json.dumps(finite_for_json(summary), allow_nan=False))
    else:
        print(format_summary(summary))
    verify = summary.get("verify")
    return EXIT_DIFFERENT if verify is not None and not verify["bit_exact"] else EXIT_OK
