"""``sbnn import MODEL.nir``: a NIR graph from another tool (snnTorch, norse, ...) -> the same quantiser ->
the same export folder. (The module is named ``import_`` because ``import`` is a Python keyword.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import EXIT_OK
from .inputs import (UserError, _fraction, _load_npy, _non_negative_int, _path, _positive_int, _real,
                     _refuse_out)


def add_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    importer = commands.add_parser("import", help="NIR graph from another tool -> the same export folder")
    importer.add_argument("model", help="a .nir file")
    importer.add_argument("--dt", type=float, help="time step in seconds, when the graph neither stores nor implies "
                                                   "one (docs/formats.md#nir-peers); a contradicting one is refused")
    importer.add_argument("--out", type=_path,
                          help="export folder (default runs/<model name>/export); an existing one is replaced only "
                               "when sbnn wrote it")
    importer.add_argument("--force", action="store_true",
                          help="replace the default folder even when it holds another file's export")
    importer.add_argument("--calibration", type=_path,
                          help=".npy of inputs (batch, T, *input_shape) to scale the integers on")
    importer.add_argument("--samples", type=_positive_int, default=32, help="random calibration samples")
    importer.add_argument("--steps", type=_positive_int, default=100, help="random calibration steps")
    importer.add_argument("--density", type=_fraction, default=0.1, help="random calibration spike density")
    importer.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the random calibration")
    importer.add_argument("--json", action="store_true", help="print one JSON object")
    importer.set_defaults(handler=command_import)
    return importer


def command_import(args: argparse.Namespace) -> int:
    """A NIR graph from another tool -> the same quantiser -> the same export folder."""
    import numpy as np

    from export.folder import ExportFolder, OutputRefused, check_replaceable, write_export
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
    from safeio.atomic import folder_lock

    from ..train import default_run_dir

    # The default folder is named after the model file; one that holds another file's import (two tools'
    # model.nir), a pipeline's export or a hand export is replaced only when asked (--force or --out).
    out = Path(args.out) if args.out else default_run_dir(model) / "export"
    origin = str(_real(model))
    _refuse_out(out, reads=(model,) + ((Path(args.calibration),) if args.calibration else ()))
    check_replaceable(out)
    marker = ExportFolder(out).marker
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
    _check_calibration(args.calibration, calibration, tuple(network.input_shape))   # once --out is checked
    with folder_lock(out.parent, "sbnn import", leave_no_file=True):
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


def _check_calibration(path: str | None, x, input_shape: tuple[int, ...]) -> None:
    """``--calibration`` (``path``; None: random spikes, nothing to check): inputs ``(batch, T, *input_shape)``,
    batch and T at least 1, finite; else a :class:`UserError` naming the file (the quantiser's own message would
    name the model). Checked after ``--out``, as the quantiser's checks were, so a refused ``--out`` says so first."""
    import numpy as np

    if path is None:
        return

    shape = ", ".join(map(str, input_shape))
    if x.ndim != 2 + len(input_shape) or tuple(x.shape[2:]) != input_shape or 0 in x.shape[:2]:
        raise UserError(f"{path}: calibration inputs must have shape (batch, T, {shape}) with batch and T at "
                        f"least 1, found {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise UserError(f"{path}: calibration inputs hold NaN or infinities")
