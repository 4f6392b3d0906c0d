"""The ``sbnn`` command line (also ``python -m sbnn``).

Exit codes:

* 0 ok;
* 1 verification (or training) failed;
* 2 bad input, in one line on stderr, never a traceback: the project's own input errors (config, data,
  checkpoint, ``loihi.h5``, NIR, ONNX, ``.npy``, an ``--out`` that is not ours to replace, a run folder
  another ``sbnn`` process is writing) and operating-system errors about the user's paths (no such file,
  permission denied, disk full, read-only file system); what was there before is left as it was;
* 3 Lava could not run (missing environment, worker crash or timeout);
* 4 a bug: any other exception. One line says so and names the file holding the traceback (in the run
  folder when the command has one, else in the temporary folder); ``SBNN_DEBUG=1`` shows the traceback
  instead. Telling these apart from bad input keeps a user from hunting for a mistake they did not make.

Every command that writes takes the writer lock of its run folder (:func:`hw_sim.atomic.folder_lock`) and
never replaces what it did not write (:func:`export.folder.check_replaceable`, and ``--out`` may not be, hold
or lie inside the run being read). Every command that produces numbers takes ``--json`` and then prints one
JSON object on stdout.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_DIFFERENT, EXIT_BAD_INPUT, EXIT_LAVA_FAILED, EXIT_BUG = 0, 1, 2, 3, 4

# OSErrors about the user's paths and disks (exit code 2); any other OSError is unexpected (exit code 4).
USER_PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY,
                              errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                              errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV, errno.EBUSY, errno.ETXTBSY})


class UserError(ValueError):
    """A mistake in what the user asked for or gave us: reported in one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 2,34,34, found {text!r}")
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, found {text!r}")
    return shape


def _load_network(path: Path, args: argparse.Namespace):
    """``hw_sim.load`` of the user's file; what netx ignores in it is printed as one warning line each."""
    import warnings

    import hw_sim

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", hw_sim.LoihiFileWarning)
        network = hw_sim.load(path, input_shape=getattr(args, "input_shape", None))
    for warning in caught:
        if issubclass(warning.category, hw_sim.LoihiFileWarning):
            print(f"sbnn {args.command}: warning: {warning.message}", file=sys.stderr)
    return network


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
    network = _load_network(path, args)
    x, source = _load_inputs(Path(args.export), network, limit=args.limit, steps=args.steps, seed=args.seed,
                             density=args.density)
    # --builder netx gives Intel's netx the user's file itself, so a file whose netx fields say something
    # else than hw_sim's reading of it (e.g. its exact-parameter group) is reported, not trusted.
    report = hw_sim.verify(network, x, builder=args.builder, workers=args.workers, timeout=args.timeout,
                           netx_file=path if args.builder == "netx" else None)
    if args.json:
        print(json.dumps({**report.to_json(), "network": str(path), "input": source, "builder": args.builder}))
    else:
        print(f"{path}: {source}")
        print(report.summary())
        print(f"time: hw_sim {report.seconds['hw_sim']:.3f} s, lava {report.seconds['lava']:.2f} s")
    return EXIT_OK if report.bit_exact else EXIT_DIFFERENT


def command_simulate(args: argparse.Namespace) -> int:
    """Run an export on one backend: hw_sim, Lava, or the float model from model.nir (backend "torch":
    float arithmetic, no per-layer delay). With labels.npy beside the inputs, prints the accuracy too."""
    import hw_sim

    path = _network_file(Path(args.export))
    folder = path.parent
    network = _load_network(path, args)
    x, source = _load_inputs(Path(args.export), network, limit=args.limit, steps=args.steps, seed=args.seed,
                             density=args.density)
    delay = network.latency   # steps before the last layer can respond: one per layer, plus delays
    if x.shape[1] <= delay:
        raise UserError(f"{source}: {x.shape[1]} steps are too few for this network, whose last layer first "
                        f"responds at step {delay + 1} (one step per layer plus its delays)")
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
    network = _load_network(path, args)
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


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _refuse_out(out: Path, *, run: Path | None = None, reads: tuple[Path, ...] = ()) -> None:
    """Refuse (:class:`UserError`, before anything is touched) an ``--out`` that would replace what the
    command reads: the run folder itself, a folder holding it (``.``, ``..``, ``~``), anything inside it but
    a new or exported ``RUN/<name>`` folder (``RUN/checkpoint.pt``, ``RUN/export/x``), or an input file
    (``reads``) or a folder holding one. Symlinks are compared by what they point to."""
    target = _real(out)
    if run is not None:
        root = _real(run)
        if target == root:
            raise UserError(f"{out}: is the run folder being exported; nothing was changed (choose another --out)")
        if root.is_relative_to(target):
            raise UserError(f"{out}: holds the run folder {run} being exported; nothing was changed "
                            f"(choose another --out)")
        if target.is_relative_to(root) and (target.parent != root or target.name in _RUN_NAMES):
            raise UserError(f"{out}: lies inside the run folder {run} and is not one of its export folders; "
                            f"nothing was changed (choose another --out)")
    for path in reads:
        if _real(path).is_relative_to(target):
            raise UserError(f"{out}: {'is' if _real(path) == target else 'holds'} the input file {path}; "
                            f"nothing was changed (choose another --out)")


_RUN_NAMES = frozenset({"config.toml", "checkpoint.pt", "metrics.json", "results.json", "report.html",
                        ".sbnn.lock", ".sbnn-run"})


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
    from export.folder import OutputRefused, check_replaceable, export_marker
    from hw_sim.atomic import folder_lock

    from .train import default_run_dir

    # The default folder is named after the model file; one that holds another file's import (two tools'
    # model.nir), a pipeline's export or a hand export is replaced only when asked (--force or --out).
    out = Path(args.out) if args.out else default_run_dir(model) / "export"
    origin = str(_real(model))
    _refuse_out(out, reads=(model,) + ((Path(args.calibration),) if args.calibration else ()))
    check_replaceable(out)
    marker = export_marker(out)
    if args.out is None and not args.force and marker is not None and (
            marker.get("written_by") != "sbnn import" or (marker.get("source") or {}).get("model") != origin):
        written = (marker.get("source") or {}).get("model") or marker.get("written_by")
        raise UserError(f"{out}: holds the export of {written}, not of {origin}; nothing was changed "
                        f"(give --out to write elsewhere, or --force to replace it)")
    from export.provenance import file_sha256

    # What shaped this export, recorded in export.json: the graph file's bytes and how it was calibrated.
    provenance = {"nir_sha256": file_sha256(model), "dt": args.dt,
                  "calibration_source": ({"file_sha256": file_sha256(Path(args.calibration))} if args.calibration else
                                  {"seed": args.seed, "density": args.density, "samples": args.samples,
                                   "steps": args.steps})}
    with folder_lock(out.parent, "sbnn import"):
        try:
            folder, quantised, report = write_export(network, calibration, out, test_inputs=calibration[:8],
                                                     source={"nir": str(model), "model": origin, "calibration": source},
                                                     written_by="sbnn import", provenance=provenance)
        except OutputRefused:
            raise
        except ValueError as error:   # what the quantiser cannot map in this graph
            raise UserError(f"{model}: {error}")
    if args.json:
        print(json.dumps({"export": str(folder), "netx_exact": report["netx_exact"], "layers": len(report["layers"]),
                          "saturation_total": report["saturation_total"], "accuracy_check": report["accuracy_check"],
                          "warnings": report["warnings"], "notes": notes}, allow_nan=False))
    else:
        print(f"{model} -> {folder} ({len(report['layers'])} layers, netx-exact: {report['netx_exact']}, dt {report['dt']:g} s)")
        for line in notes:
            print(f"  note: {line}")
        for warning in report["warnings"]:
            print(f"  warning: {warning}")
    return EXIT_OK


def command_export(args: argparse.Namespace) -> int:
    from export.folder import check_replaceable, export_marker
    from hw_sim.atomic import folder_lock

    from .pipeline import default_export_folder, export_run

    run = Path(args.run)
    if not run.is_dir():
        raise UserError(f"{run}: not a finished run folder (needs config.toml and checkpoint.pt)")
    out = Path(args.out) if args.out else default_export_folder(run, args.weights, args.seed)
    _refuse_out(out, run=run)
    check_replaceable(out)
    marker = export_marker(out)
    if (args.out is None and not args.force and args.weights == "sample" and marker is not None
            and marker.get("written_by") != "sbnn export"):
        raise UserError(f"{out}: holds the export written by {marker.get('written_by')}; nothing was changed "
                        f"(pass --force to replace it, or --out to write elsewhere)")
    with folder_lock(run, "sbnn export"):
        try:
            folder, report = export_run(run, weights=args.weights, seed=args.seed, out=out)
        except FileNotFoundError as error:
            if error.errno is not None:   # an OSError of a path: main() reports it
                raise
            raise UserError(str(error))
    summary = {"export": str(folder), "weights": args.weights, "seed": args.seed if args.weights == "sample" else None,
               "netx_exact": report["netx_exact"], "warnings": report["warnings"],
               "saturation_total": report["saturation_total"], "accuracy_check": report["accuracy_check"],
               "layers": [{k: layer[k] for k in ("scale", "clipped_fraction", "relative_weight_error",
                                                  "headroom_u", "headroom_v", "saturation")}
                          for layer in report["layers"]]}
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        print(f"{run} ({args.weights}) -> {folder}: model.nir, loihi.h5 (netx-exact: {report['netx_exact']}), "
              f"model.onnx, model_int.onnx, export.json")
        for k, layer in enumerate(summary["layers"]):
            print(f"  layer {k}: scale {layer['scale']:.4g}, clipped {layer['clipped_fraction']:.2%}, "
                  f"weight error {layer['relative_weight_error']:.2%}")
        check = report["accuracy_check"]
        print(f"  calibration data ({check['samples']} samples, scored on {check['scored_on']}): hardware "
              f"{check['hardware_accuracy']:.2%}, float {check['float_accuracy']:.2%}")
        for warning in report["warnings"]:
            print(f"  warning: {warning}")
    return EXIT_OK


def command_pipeline(args: argparse.Namespace) -> int:
    from .config import load_config
    from .pipeline import format_summary, run_pipeline

    config = load_config(args.config, args.set)
    from .train import default_run_dir

    from hw_sim.atomic import folder_lock

    from .train import check_run_folder

    run_dir = Path(args.out) if args.out else default_run_dir(args.config)
    check_run_folder(run_dir)
    with folder_lock(run_dir, "sbnn pipeline"):
        summary = run_pipeline(config, run_dir, force=args.force, quiet=args.json,
                               progress=(lambda message: None) if args.json else print)
    if args.json:
        from .pipeline import finite_for_json

        print(json.dumps(finite_for_json(summary), allow_nan=False))
    else:
        print(format_summary(summary))
    verify = summary.get("verify")
    return EXIT_DIFFERENT if verify is not None and not verify["bit_exact"] else EXIT_OK


def command_bias(args: argparse.Namespace) -> int:
    """``sbnn bias``: its argument mistakes are the user's (exit code 2); a ValueError from inside the
    diagnostics is not, so they are checked here as :class:`UserError`."""
    from .diagnostics import handler

    if (args.config is None) == (not args.tiny):
        raise UserError("give either CONFIG.toml or --tiny (exactly one)")
    if args.samples < 2:
        raise UserError(f"--samples must be >= 2, got {args.samples}")
    return handler(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sbnn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_input_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("export", help="export folder (holding loihi.h5) or a loihi.h5 file")
        command.add_argument("--limit", type=_positive_int, help="number of samples (default: all stored, or 8)")
        command.add_argument("--steps", type=_positive_int, default=50, help="steps of random input (default 50)")
        command.add_argument("--density", type=float, default=0.2, help="random input spike density")
        command.add_argument("--seed", type=int, default=0, help="seed of the random input")
        command.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                             help="input shape of a netx file without an input layer that starts with a conv "
                                  "layer (C,H,W, or netx's W,H,C), as netx needs it too")
        command.add_argument("--workers", type=_positive_int,
                             help="parallel Lava processes (default: 1 for back-to-back samples, else one per core)")
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
    exporter.add_argument("--out", help="export folder (default RUN/export, or RUN/export_sample<seed>); an "
                                        "existing one is replaced only when sbnn wrote it")
    exporter.add_argument("--force", action="store_true",
                          help="replace the pipeline's RUN/export_sample<seed> (kept otherwise)")
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

    add_bias_command(commands).set_defaults(handler=command_bias)

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
    importer.add_argument("--out", help="export folder (default runs/<model name>/export); an existing one is "
                                        "replaced only when sbnn wrote it")
    importer.add_argument("--force", action="store_true",
                          help="replace the default folder even when it holds another file's export")
    importer.add_argument("--calibration", help=".npy of inputs (batch, T, *input_shape) to scale the integers on")
    importer.add_argument("--samples", type=_positive_int, default=32, help="random calibration samples")
    importer.add_argument("--steps", type=_positive_int, default=100, help="random calibration steps")
    importer.add_argument("--density", type=float, default=0.1, help="random calibration spike density")
    importer.add_argument("--seed", type=int, default=0)
    importer.add_argument("--json", action="store_true", help="print one JSON object")
    importer.set_defaults(handler=command_import)

    return parser


def _is_input_error(error: BaseException) -> bool:
    """Whether ``error`` is about what the user gave or asked for (exit code 2), not a bug (exit code 4).

    Only the project's own error classes count, plus OSErrors about paths and disks: a bare ``ValueError``
    or ``KeyError`` from deep inside is a bug, and saying "bad input" would send the user hunting for a
    mistake they did not make."""
    from export.float_network import ExportError
    from export.folder import OutputRefused
    from export.nir_io import NIRImportError
    from export.onnx_export import ONNXFileError
    from hw_sim.atomic import FolderLocked
    from hw_sim.netx_io import LoihiFileError
    from hw_sim.network import NetworkError

    from .config import ConfigError
    from .data import DataError
    from .train import RunFolderError

    own = (UserError, ConfigError, DataError, RunFolderError, NIRImportError, ONNXFileError, LoihiFileError,
           NetworkError, OutputRefused, FolderLocked, ExportError)
    if isinstance(error, own):
        return True
    # FileNotFoundError without an errno: our own "no such run/temporary" messages, which name the path.
    return isinstance(error, FileNotFoundError) or (isinstance(error, OSError) and error.errno in USER_PATH_ERRNOS)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _writing(args: argparse.Namespace) -> str | None:
    """The folder a command writes, for messages (None for read-only commands)."""
    from .train import default_run_dir

    if args.command in ("train", "pipeline"):
        return str(args.out or default_run_dir(args.config))
    if args.command == "export":
        return str(args.out or Path(args.run) / ("export" if args.weights == "mean" else f"export_sample{args.seed}"))
    if args.command == "import":
        return str(args.out or default_run_dir(args.model) / "export")
    return None


def _input_error_message(args: argparse.Namespace, error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        message = f"{where}{error.strerror}" + (f" ({error.filename2})" if error.filename2 else "")
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and _writing(args):
            # Every result is written to a hidden temporary and renamed only when complete.
            message += f" while writing {_writing(args)}; its previous version, if any, is unchanged"
        return message
    return _one_line(error)


def _bug_folder(args: argparse.Namespace) -> Path | None:
    """The run folder of the command, when it is one this tool wrote (its marker present), for the traceback
    file; writing into anything else (an export folder, a legacy run folder) would make it not ours."""
    from .train import RUN_MARKER, default_run_dir

    if args.command in ("train", "pipeline"):
        folder = Path(args.out) if args.out else default_run_dir(args.config)
    elif args.command == "export":
        folder = Path(args.run)
    else:
        return None
    return folder if (folder / RUN_MARKER).is_file() else None


def _save_traceback(args: argparse.Namespace, error: BaseException, argv: list[str]) -> Path | None:
    """Write the traceback (with the command line and versions) to ``sbnn-bug-<time>-<pid>.txt`` in the run
    folder, else in the temporary folder; None when neither can be written."""
    import platform

    text = (f"sbnn {' '.join(argv)}\nworking directory: {os.getcwd()}\npython {platform.python_version()}, "
            f"numpy {np.__version__}, {platform.platform()}\n\n"
            + "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    name = f"sbnn-bug-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    folder = _bug_folder(args)
    for place in ([folder] if folder is not None else []) + [Path(tempfile.gettempdir())]:
        try:
            with open(place / name, "x") as file:
                file.write(text)
            return place / name
        except OSError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    from hw_sim.lava import LavaError

    from .train import TrainingError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "pipeline"):
        from .allocator import keep_freed_memory

        keep_freed_memory()
    debug = bool(os.environ.get("SBNN_DEBUG"))
    try:
        return args.handler(args)
    except TrainingError as error:
        print(f"sbnn {args.command}: {_one_line(error)}", file=sys.stderr)
        return EXIT_DIFFERENT
    except LavaError as error:
        print(f"sbnn {args.command}: {error}", file=sys.stderr)
        return EXIT_LAVA_FAILED
    except Exception as error:
        if _is_input_error(error):
            # Bad input of every kind is one line and exit code 2; SBNN_DEBUG=1 shows the traceback too.
            if debug:
                traceback.print_exc()
            message = _input_error_message(args, error)
            prefix = "" if message.startswith(f"sbnn {args.command}") else f"sbnn {args.command}: "
            print(f"{prefix}{message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if debug:
            traceback.print_exc()
        saved = _save_traceback(args, error, argv)
        reason = _one_line(f"{type(error).__name__}: {error}")[:300]
        where = f"the traceback is in {saved}" if saved else "the traceback could not be saved (set SBNN_DEBUG=1 to see it)"
        print(f"sbnn {args.command}: internal error, a bug in sbnn and not a problem with your input ({reason}); "
              f"{where}; please report it", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
