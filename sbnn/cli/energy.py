"""``sbnn energy EXPORT``: activity counts and energy proxies of an export (or netx file) per inference."""

from __future__ import annotations

import argparse
import json

from . import EXIT_OK
from .inputs import add_input_options, network_and_inputs


def add_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    energy = commands.add_parser("energy", help="activity counts and energy proxies of an export")
    add_input_options(energy)
    energy.set_defaults(handler=command_energy)
    return energy


def command_energy(args: argparse.Namespace) -> int:
    from hw_sim.energy import PROXIES, energy_report

    path, network, inputs = network_and_inputs(args)
    source = inputs.source
    parts = [energy_report(network, x) for _, x in inputs.batches(args.batch_size, label="sbnn energy")]
    report = _merge_reports(parts)
    report["input"] = source
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print(f"{path}: {report['samples']} samples x {report['steps']} steps ({source}); per inference:")
    print(f"{'layer':>5} {'kind':>8} {'in spikes':>10} {'synops':>12} {'updates':>10} {'out spikes':>10} {'rate':>7} {'ANN MACs/step':>14}")
    for layer in report["layers"]:
        print(f"{layer['layer']:>5} {layer['kind']:>8} {layer['input_spikes']:>10.1f} {layer['synops']:>12.1f} "
              f"{layer['neuron_updates']:>10.0f} {layer['output_spikes']:>10.1f} {layer['firing_rate']:>7.4f} "
              f"{layer['ann_macs_per_step']:>14}")
    print(f"synops {report['synops_per_inference']:.1f}, neuron updates {report['neuron_updates_per_inference']:.0f}, "
          f"equivalent ANN MACs {report['ann_macs_per_inference']}")
    for name, value in report["energy_uj"].items():
        print(f"  {name:<16} {value:>12.4f} µJ   {PROXIES[name]}")
    return EXIT_OK


def _merge_reports(parts: list[dict]) -> dict:
    """Per-inference energy reports of several batches as one: every per-inference number is the mean
    weighted by the batch sizes (the counts are sums over samples, so this is the whole set's mean);
    what all batches share (shapes, constants, names) is kept as is."""
    weights = [part["samples"] for part in parts]
    total = sum(weights)

    def merge(values: list):
        first = values[0]
        if isinstance(first, dict):
            return {key: merge([value[key] for value in values]) for key in first}
        if isinstance(first, list):
            return [merge([value[k] for value in values]) for k in range(len(first))]
        if isinstance(first, bool) or not isinstance(first, (int, float)) or all(v == first for v in values):
            return first
        return sum(w * v for w, v in zip(weights, values)) / total

    merged = merge(parts)
    merged["samples"] = total
    return merged
