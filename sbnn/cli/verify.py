"""``sbnn verify EXPORT``: hw_sim against Lava, spike for spike (and u, v); exit code 1 when they differ."""

from __future__ import annotations

import argparse
import json

from . import EXIT_DIFFERENT, EXIT_OK
from .inputs import add_input_options, network_and_inputs


def add_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    verify = commands.add_parser("verify", help="hw_sim vs Lava, spike for spike (and u, v)")
    add_input_options(verify)
    verify.add_argument("--builder", choices=("description", "netx"), default="description",
                        help="build Lava processes from our description, or load loihi.h5 with Intel's netx")
    verify.set_defaults(handler=command_verify)
    return verify


def command_verify(args: argparse.Namespace) -> int:
    import hw_sim

    path, network, inputs = network_and_inputs(args)
    source = inputs.source
    # --builder netx gives Intel's netx the user's file itself, so a file whose netx fields say something
    # else than hw_sim's reading of it (e.g. its exact-parameter group) is reported, not trusted.
    report = None
    for start, x in inputs.batches(args.batch_size, label="sbnn verify"):
        part = hw_sim.verify(network, x, builder=args.builder, workers=args.workers, timeout=args.timeout,
                             netx_file=path if args.builder == "netx" else None)
        report = part if report is None else _merge_reports(report, part, start)
    if args.json:
        print(json.dumps({**report.to_json(), "network": str(path), "input": source, "builder": args.builder}))
    else:
        print(f"{path}: {source}")
        print(report.summary())
        print(f"time: hw_sim {report.seconds['hw_sim']:.3f} s, lava {report.seconds['lava']:.2f} s")
    return EXIT_OK if report.bit_exact else EXIT_DIFFERENT


def _merge_reports(total, part, offset: int):
    """Two batches' :class:`hw_sim.VerifyReport`s as one: counts summed, the earliest difference kept
    (its sample counted from the start of the whole set)."""
    from dataclasses import replace

    first = total.first_difference
    if first is None and part.first_difference is not None:
        first = replace(part.first_difference, sample=part.first_difference.sample + offset)
    merged = replace(total, samples=total.samples + part.samples,
                     spikes_compared=total.spikes_compared + part.spikes_compared,
                     spike_mismatches=total.spike_mismatches + part.spike_mismatches,
                     states_compared=total.states_compared + part.states_compared,
                     state_mismatches=total.state_mismatches + part.state_mismatches, first_difference=first)
    merged.seconds = {key: total.seconds.get(key, 0.0) + part.seconds.get(key, 0.0)
                      for key in {**total.seconds, **part.seconds}}
    return merged
