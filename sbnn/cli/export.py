"""``sbnn export RUN``: a trained run -> ``model.nir``, ``loihi.h5``, ONNX and ``export.json`` (the posterior
mean, or one posterior sample)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import EXIT_OK
from .inputs import UserError, _non_negative_int, _path, _refuse_out


def add_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    exporter = commands.add_parser("export", help="a trained run -> model.nir, loihi.h5, ONNX, export.json")
    exporter.add_argument("run", help="run folder (config.toml, checkpoint.pt)")
    exporter.add_argument("--weights", choices=("mean", "sample"), default="mean",
                          help="posterior mean, or one posterior sample drawn from --seed")
    exporter.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the posterior sample")
    exporter.add_argument("--out", type=_path,
                          help="export folder (default RUN/export, or RUN/export_sample<seed>); an existing one is "
                               "replaced only when sbnn wrote it")
    exporter.add_argument("--force", action="store_true",
                          help="replace the pipeline's RUN/export_sample<seed> (kept otherwise)")
    exporter.add_argument("--json", action="store_true", help="print one JSON object")
    exporter.set_defaults(handler=command_export)
    return exporter


def command_export(args: argparse.Namespace) -> int:
    from export.folder import ExportFolder, check_replaceable
    from safeio.atomic import folder_lock

    from ..pipeline import default_export_folder, export_run

    # What the export computes with (torch, the model, the exporter) is imported before the run folder's writer
    # lock is taken, so that the lock is held only while the run is read and the export written.
    from export import from_model  # noqa: F401

    from .. import train  # noqa: F401

    run = Path(args.run)
    if not run.is_dir():
        raise UserError(f"{run}: not a finished run folder (needs config.toml and checkpoint.pt)")
    out = Path(args.out) if args.out else default_export_folder(run, args.weights, args.seed)
    _refuse_out(out, run=run)
    check_replaceable(out)
    marker = ExportFolder(out).marker
    if (args.out is None and not args.force and args.weights == "sample" and marker is not None
            and marker.get("written_by") != "sbnn export"):
        raise UserError(f"{out}: holds the export written by {marker.get('written_by')}; nothing was changed "
                        f"(pass --force to replace it, or --out to write elsewhere)")
    with folder_lock(run, "sbnn export"), _other_run_lock(out.parent, run):
        try:
            folder, report = export_run(run, weights=args.weights, seed=args.seed, out=out)
        except FileNotFoundError as error:
            if error.errno is not None:   # an OSError of a path: main() reports it
                raise
            raise UserError(str(error))
        warnings = _unfinished_training(run) + report["warnings"]
    summary = {"export": str(folder), "weights": args.weights, "seed": args.seed if args.weights == "sample" else None,
               "netx_exact": report["netx_exact"], "warnings": warnings,
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
        for warning in warnings:
            print(f"  warning: {warning}")
    return EXIT_OK


def _other_run_lock(folder: Path, run: Path):
    """The writer lock of ``folder``, the folder ``--out`` lies in, when it is another run's folder (its marker
    present): a pipeline writing that run must not have its export replaced halfway (its results and report
    would then describe two networks). A null context otherwise, leaving the user's folders without a lock file."""
    from contextlib import nullcontext

    from safeio.atomic import folder_lock

    from ..train import RUN_MARKER
    from .inputs import _real

    if _real(folder) == _real(run) or not (folder / RUN_MARKER).is_file():
        return nullcontext()
    return folder_lock(folder, "sbnn export")


def _unfinished_training(run: Path) -> list[str]:
    """A warning when ``run``'s checkpoint is not its last epoch (training stopped or still to resume): the
    export is made of the weights as they stand, which a hurried user would otherwise take for the trained ones."""
    from ..config import load_config
    from ..pipeline import _training_finished

    if _training_finished(run, load_config(run / "config.toml")):
        return []
    return [f"{run} has not finished training (its metrics.json records fewer epochs than train.epochs, or is "
            f"missing); exported its latest checkpoint (sbnn train --resume continues the training)"]
