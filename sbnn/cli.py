"""The ``sbnn`` command line (also ``python -m sbnn``).

Exit codes: 0 ok, 1 verification failed, 2 bad input (a one-line message on stderr, never a traceback),
3 Lava could not run (missing environment, worker crash or timeout).
Every command that produces numbers takes ``--json`` and then prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_DIFFERENT, EXIT_BAD_INPUT, EXIT_LAVA_FAILED = 0, 1, 2, 3


class UserError(Exception):
    """A mistake in what the user asked for or gave us: reported in one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value


def _network_file(export: Path) -> Path:
    path = export / "loihi.h5" if export.is_dir() else export
    if not path.exists():
        raise UserError(f"{path}: no such file (expected an export folder holding loihi.h5, or the file itself)")
    return path


def _load_npy(path: Path) -> np.ndarray:
    """A .npy of numbers, memory-mapped first so that a header declaring more data than the file holds is
    an error rather than an allocation; no pickles."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.ndarray) or mapped.dtype.kind not in "biuf":
            raise ValueError(f"expected an array of numbers, found {getattr(mapped, 'dtype', type(mapped))}")
        return np.array(mapped)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{path}: cannot be read as a numpy array of numbers ({error})")


def _load_inputs(export: Path, network, *, limit: int | None, steps: int, seed: int, density: float) -> tuple[np.ndarray, str]:
    """Input spikes for simulate/verify: ``inputs.npy`` beside loihi.h5 when present, else seeded random spikes."""
    from hw_sim.random_networks import random_input

    folder = export if export.is_dir() else export.parent
    stored = folder / "inputs.npy"
    if stored.exists():
        x = _load_npy(stored)
        if x.ndim != 2 + len(network.input_shape) or tuple(x.shape[2:]) != network.input_shape:
            raise UserError(f"{stored}: shape {x.shape} does not match (batch, T, {network.input_shape})")
        return (x[:limit] if limit else x), str(stored)
    x = random_input(seed, network, limit or 8, steps, density)
    return x, f"random spikes (seed {seed}, density {density})"


def command_verify(args: argparse.Namespace) -> int:
    import hw_sim

    path = _network_file(Path(args.export))
    network = hw_sim.load(path)
    x, source = _load_inputs(Path(args.export), network, limit=args.limit, steps=args.steps, seed=args.seed,
                             density=args.density)
    report = hw_sim.verify(network, x, builder=args.builder, workers=args.workers, timeout=args.timeout)
    if args.json:
        print(json.dumps({**report.to_json(), "network": str(path), "input": source, "builder": args.builder}))
    else:
        print(f"{path}: {source}")
        print(report.summary())
        print(f"time: hw_sim {report.seconds['hw_sim']:.3f} s, lava {report.seconds['lava']:.2f} s")
    return EXIT_OK if report.bit_exact else EXIT_DIFFERENT


def command_simulate(args: argparse.Namespace) -> int:
    """Run an export on one backend: hw_sim, Lava, or the float model from model.nir ("torch" in DESIGN.md:
    float arithmetic, no per-layer delay). With labels.npy beside the inputs, prints the accuracy too."""
    import hw_sim

    path = _network_file(Path(args.export))
    folder = path.parent
    network = hw_sim.load(path)
    x, source = _load_inputs(Path(args.export), network, limit=args.limit, steps=args.steps, seed=args.seed,
                             density=args.density)
    delay = len(network.layers)
    start = time.perf_counter()
    if args.backend == "torch":
        from export.nir_io import read_nir
        if not (folder / "model.nir").exists() or not (folder / "export.json").exists():
            raise UserError(f"{folder}: the float backend needs model.nir and export.json (an sbnn export folder)")
        float_network, _ = read_nir(folder / "model.nir")
        input_scale = json.loads((folder / "export.json").read_text()).get("input_scale", 1.0)
        spikes, voltages = float_network.run(x / input_scale if network.input_message_bits else x)
        readout = voltages[-1][:, :x.shape[1] - delay] if float_network.layers[-1].readout else None
    else:
        if args.backend == "hw_sim":
            result = network.run(x, record_states=True)
        else:
            result = hw_sim.lava.run(network, x, record_states=True, workers=args.workers, timeout=args.timeout)
        spikes = result.spikes
        readout = result.v[-1][:, delay:] if getattr(network.layers[-1], "readout", False) else None
    seconds = time.perf_counter() - start
    labels_path = folder / "labels.npy"
    accuracy = None
    if readout is not None and labels_path.exists() and source == str(folder / "inputs.npy"):
        labels = _load_npy(labels_path)[:len(x)]
        accuracy = float((readout.mean(axis=1).argmax(axis=1) == labels).mean())
    rates = [float(s.mean()) for s in spikes]
    summary = {"backend": args.backend, "samples": int(x.shape[0]), "steps": int(x.shape[1]), "input": source,
               "output_spikes": int(np.asarray(spikes[-1]).sum()), "firing_rates": rates, "seconds": seconds,
               "accuracy": accuracy}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{path}: {x.shape[0]} samples x {x.shape[1]} steps on {args.backend} in {seconds:.3f} s")
        for k, rate in enumerate(rates):
            print(f"  layer {k}: firing rate {rate:.4f}")
        if accuracy is not None:
            print(f"  accuracy {accuracy:.4f} on {x.shape[0]} labelled samples")
    return EXIT_OK


def command_energy(args: argparse.Namespace) -> int:
    import hw_sim
    from hw_sim.energy import PROXIES, energy_report

    path = _network_file(Path(args.export))
    network = hw_sim.load(path)
    x, source = _load_inputs(Path(args.export), network, limit=args.limit, steps=args.steps, seed=args.seed,
                             density=args.density)
    report = energy_report(network, x)
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


def command_import(args: argparse.Namespace) -> int:
    """A NIR graph from another tool -> the same quantiser -> the same export folder."""
    from export.folder import write_export
    from export.nir_io import read_nir

    model = Path(args.model)
    network, notes = read_nir(model, dt=args.dt)
    if args.calibration:
        calibration = _load_npy(Path(args.calibration))
        source = f"{args.calibration}"
    else:
        rng = np.random.default_rng(args.seed)
        calibration = (rng.random((args.samples, args.steps, *network.input_shape)) < args.density).astype(np.uint8)
        source = f"random spikes (seed {args.seed}, density {args.density}, {args.samples}x{args.steps})"
    from .train import default_run_dir

    out = Path(args.out) if args.out else default_run_dir(model) / "export"
    try:
        folder, quantised, report = write_export(network, calibration, out, test_inputs=calibration[:8],
                                                 source={"nir": str(model), "calibration": source})
    except ValueError as error:
        raise UserError(f"{model}: {error}")
    if args.json:
        print(json.dumps({"export": str(folder), "netx_exact": report["netx_exact"], "layers": len(report["layers"]),
                          "warnings": report["warnings"], "notes": notes}))
    else:
        print(f"{model} -> {folder} ({len(report['layers'])} layers, netx-exact: {report['netx_exact']}, dt {report['dt']:g} s)")
        for line in notes + report["warnings"]:
            print(f"  note: {line}")
    return EXIT_OK


def command_export(args: argparse.Namespace) -> int:
    from .pipeline import export_run

    run = Path(args.run)
    try:
        folder, report = export_run(run, weights=args.weights, seed=args.seed, out=args.out)
    except FileNotFoundError as error:
        raise UserError(str(error))
    summary = {"export": str(folder), "weights": args.weights, "seed": args.seed if args.weights == "sample" else None,
               "netx_exact": report["netx_exact"], "warnings": report["warnings"],
               "layers": [{k: layer[k] for k in ("scale", "clipped_fraction", "relative_weight_error",
                                                  "headroom_u", "headroom_v")} for layer in report["layers"]]}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{run} ({args.weights}) -> {folder}: model.nir, loihi.h5 (netx-exact: {report['netx_exact']}), "
              f"model.onnx, model_int.onnx, export.json")
        for k, layer in enumerate(summary["layers"]):
            print(f"  layer {k}: scale {layer['scale']:.4g}, clipped {layer['clipped_fraction']:.2%}, "
                  f"weight error {layer['relative_weight_error']:.2%}")
        for warning in report["warnings"]:
            print(f"  warning: {warning}")
    return EXIT_OK


def command_pipeline(args: argparse.Namespace) -> int:
    from .config import load_config
    from .pipeline import format_summary, run_pipeline

    config = load_config(args.config, args.set)
    from .train import default_run_dir

    run_dir = Path(args.out) if args.out else default_run_dir(args.config)
    summary = run_pipeline(config, run_dir, force=args.force, quiet=args.json,
                           progress=(lambda message: None) if args.json else print)
    if args.json:
        print(json.dumps(summary, default=float))
    else:
        print(format_summary(summary))
    verify = summary.get("verify")
    return EXIT_DIFFERENT if verify is not None and not verify["bit_exact"] else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sbnn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_input_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("export", help="export folder (holding loihi.h5) or a loihi.h5 file")
        command.add_argument("--limit", type=_positive_int, help="number of samples (default: all stored, or 8)")
        command.add_argument("--steps", type=_positive_int, default=50, help="steps of random input (default 50)")
        command.add_argument("--density", type=float, default=0.2, help="random input spike density")
        command.add_argument("--seed", type=int, default=0, help="seed of the random input")
        command.add_argument("--workers", type=_positive_int, default=1, help="parallel Lava processes")
        command.add_argument("--timeout", type=float, default=600.0, help="seconds before Lava is stopped")
        command.add_argument("--json", action="store_true", help="print one JSON object")

    from .diagnostics import add_bias_command
    from .train import add_train_command

    add_train_command(commands)

    exporter = commands.add_parser("export", help="a trained run -> model.nir, loihi.h5, ONNX, export.json")
    exporter.add_argument("run", help="run folder (config.toml, checkpoint.pt)")
    exporter.add_argument("--weights", choices=("mean", "sample"), default="mean",
                          help="posterior mean, or one posterior sample drawn from --seed")
    exporter.add_argument("--seed", type=int, default=0, help="seed of the posterior sample")
    exporter.add_argument("--out", help="export folder (default RUN/export, or RUN/export_sample<seed>)")
    exporter.add_argument("--json", action="store_true", help="print one JSON object")
    exporter.set_defaults(handler=command_export)

    pipeline = commands.add_parser("pipeline", help="train, export, simulate, verify, energy and report")
    pipeline.add_argument("config", help="run configuration (TOML), e.g. examples/quickstart.toml")
    pipeline.add_argument("--out", help="run folder (default runs/<config name>)")
    pipeline.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                          help="override a config value (parsed as TOML); repeatable")
    pipeline.add_argument("--force", action="store_true", help="redo every stage")
    pipeline.add_argument("--json", action="store_true", help="print one JSON object")
    pipeline.set_defaults(handler=command_pipeline)

    add_bias_command(commands)

    verify = commands.add_parser("verify", help="hw_sim vs Lava, spike for spike (and u, v)")
    add_input_options(verify)
    verify.add_argument("--builder", choices=("description", "netx"), default="description",
                        help="build Lava processes from our description, or load loihi.h5 with Intel's netx")
    verify.set_defaults(handler=command_verify)

    energy = commands.add_parser("energy", help="activity counts and energy proxies of an export")
    add_input_options(energy)
    energy.set_defaults(handler=command_energy)

    simulate = commands.add_parser("simulate", help="run an export on one backend")
    add_input_options(simulate)
    simulate.add_argument("--backend", choices=("hw_sim", "lava", "torch"), default="hw_sim")
    simulate.set_defaults(handler=command_simulate)

    importer = commands.add_parser("import", help="NIR graph from another tool -> the same export folder")
    importer.add_argument("model", help="a .nir file")
    importer.add_argument("--dt", type=float, help="time step in seconds, when the graph's metadata has none")
    importer.add_argument("--out", help="export folder (default runs/<model name>/export)")
    importer.add_argument("--calibration", help=".npy of inputs (batch, T, *input_shape) to scale the integers on")
    importer.add_argument("--samples", type=_positive_int, default=32, help="random calibration samples")
    importer.add_argument("--steps", type=_positive_int, default=100, help="random calibration steps")
    importer.add_argument("--density", type=float, default=0.1, help="random calibration spike density")
    importer.add_argument("--seed", type=int, default=0)
    importer.add_argument("--json", action="store_true", help="print one JSON object")
    importer.set_defaults(handler=command_import)

    return parser


def main(argv: list[str] | None = None) -> int:
    from hw_sim.lava import LavaError

    from .train import TrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "pipeline"):
        from .allocator import keep_freed_memory

        keep_freed_memory()
    try:
        return args.handler(args)
    except (UserError, ValueError, OSError) as error:
        # Bad input of every kind (config, data, loihi.h5, NIR, .npy: all ValueError subclasses; missing
        # files) is one line and exit code 2. SBNN_DEBUG=1 shows the traceback instead.
        if os.environ.get("SBNN_DEBUG"):
            raise
        message = " ".join(str(error).split("\n")).strip()
        prefix = "" if message.startswith(f"sbnn {args.command}") else f"sbnn {args.command}: "
        print(f"{prefix}{message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingError as error:
        print(f"sbnn {args.command}: {' '.join(str(error).splitlines())}", file=sys.stderr)
        return EXIT_DIFFERENT
    except LavaError as error:
        print(f"sbnn {args.command}: {error}", file=sys.stderr)
        return EXIT_LAVA_FAILED


if __name__ == "__main__":
    sys.exit(main())
