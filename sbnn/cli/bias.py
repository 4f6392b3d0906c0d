"""``sbnn bias CONFIG.toml | --tiny``: each gradient estimator's bias and variance against the exact gradient
of tiny networks whose every binary state is enumerated (the numerics are :mod:`sbnn.diagnostics`)."""

from __future__ import annotations

import argparse
import json

from . import EXIT_OK
from .inputs import UserError

# The same number as sbnn.diagnostics.DEFAULT_SAMPLES (tests/sbnn/cli/test_cli_startup.py checks it); written here
# so that building the parser imports no torch.
DEFAULT_SAMPLES = 20_000


def add_bias_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sbnn bias CONFIG.toml | --tiny [--samples N] [--seed N] [--json]``; returns its parser.

    The handler is stored as ``handler`` in the parsed namespace (``args.handler(args) -> exit code``).
    """
    parser = subparsers.add_parser(
        "bias", help="estimator bias and variance against exact gradients on enumerable networks",
        description="Compare each gradient estimator's mean and spread with the exact gradient of tiny "
                    "networks whose every binary state is enumerated.",
    )
    parser.add_argument("config", nargs="?",
                        help="run configuration (TOML) whose [train] estimator is measured beside ST and IW-ST(1/2)")
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny problems with the default estimators")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"sampled gradients per estimator and problem (default {DEFAULT_SAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problems and of the samples (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=command_bias)
    return parser


add_command = add_bias_command


def command_bias(args: argparse.Namespace) -> int:
    """Run ``sbnn bias``; prints the table (or JSON) and returns the exit code 0.

    Raises:
        UserError: (a ValueError) neither or both of CONFIG and --tiny, or a sample count below 2: the
            user's mistakes (exit code 2), checked here because a ValueError from inside the diagnostics
            is not one.
        ValueError: (a :class:`sbnn.config.ConfigError`) a missing or invalid CONFIG.
    """
    if (args.config is None) == (not args.tiny):
        raise UserError("give either CONFIG.toml or --tiny (exactly one)")
    if args.samples < 2:
        raise UserError(f"--samples must be >= 2, got {args.samples}")
    from ..diagnostics import DEFAULT_CONFIGS, bias_table, estimator_from_config, format_table, tiny_problems
    from ..estimators import EstimatorConfig

    configs = list(DEFAULT_CONFIGS)
    source = "tiny"
    if args.config is not None:
        configured = estimator_from_config(args.config)
        source = str(args.config)
        # The configured estimator beside the two references it interpolates between.
        configs = [EstimatorConfig("st"), EstimatorConfig("iwst", p=0.5)]
        if configured not in configs:
            configs.append(configured)
    problems = tiny_problems(args.seed)
    rows = bias_table(problems, configs, args.samples, args.seed)
    if args.json:
        print(json.dumps({
            "rows": rows,
            "samples": args.samples,
            "seed": args.seed,
            "source": source,
            "problems": [
                {"name": p.name, "description": p.description, "units": p.unit_counts,
                 "parameters": sum(t.numel() for t in p.parameters)}
                for p in problems
            ],
        }))
    else:
        for problem in problems:
            print(f"{problem.name}: {problem.description}; units {problem.unit_counts}")
        print(f"{args.samples} samples per estimator, seed {args.seed}; "
              f"rel.bias = ||E[g_hat] - g|| / ||g||, '± MC se' its Monte-Carlo noise floor\n")
        print(format_table(rows))
    return EXIT_OK
