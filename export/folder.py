"""The export folder: everything a deployment needs, written whole or not at all.

    model.nir        the float network (NIR, dt in metadata) — the hub every deployment goes through
    loihi.h5         the quantised integer network (lava-dl netx layout; hw_sim.load reads it)
    model.onnx       one float time step with explicit state
    model_int.onnx   one integer Loihi time step, bit-exact with hw_sim
    export.json      quantisation report: per layer scale, what was clipped or clamped, weight error, |u|/|v|
                     headroom, the hardware-vs-float accuracy check, warnings, and the provenance (hashes of
                     the checkpoint and calibration data, settings, code version)
                     and ``preprocessing``: how raw features become the model's inputs (the scaling
                     into the encoder's range fitted on the training split, the encoding; docs/data.md#standardisation)
                     and ``classes``: each class's name, for data whose labels were text (docs/formats.md#export-json)
    inputs.npy       (optional) the integer test inputs the hardware receives, for verify/simulate
    labels.npy       (optional) their labels
    .sbnn-export     the marker: which command wrote the folder (and from what), and the files it wrote

The marker is what makes a folder replaceable: :func:`write_export` replaces an existing folder only when
it is an export folder this tool wrote and holds nothing else (:func:`export_folder_writer`), so ``--out``
pointing at a user's folder, a run folder or a file is refused before anything is touched.

The quantiser reads the NIR file back (``nir.read``, type-checked) and quantises what it finds, so a
trained model and a graph imported from another tool take exactly the same path.
:class:`~export.folder_reader.ExportFolder` reads a folder back: every command that runs, evaluates or
replaces an export opens it through that class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

import hw_sim
from safeio.atomic import atomic_folder

from .float_network import FloatNetwork
# The reader and the folder's layout, importable from here beside the writer.
from .folder_reader import FILES, MARKER, OPTIONAL_FILES, ExportFolder, export_marker  # noqa: F401
from .nir_io import read_nir, write_nir
from .onnx_export import export_float_onnx, export_integer_onnx
from .provenance import EXPORT_SOURCES, array_sha256, code_version, git_describe
from .quantise import ACCURACY_MARGIN, QuantisedNetwork, quantise

MARKER_FORMAT = 1


class OutputRefused(ValueError):
    """``--out`` names something that is not ours to replace; nothing was touched (one line, exit code 2)."""


def check_replaceable(path: str | os.PathLike) -> None:
    """Raise :class:`OutputRefused` unless writing an export folder at ``path`` loses nothing of the user's:
    ``path`` does not exist, is a symlink (the link is replaced, its target never touched), or is an
    export folder this tool wrote (:func:`export_marker`)."""
    path = Path(path)
    if not os.path.lexists(path) or path.is_symlink() or export_marker(path) is not None:
        return
    if not path.is_dir():
        raise OutputRefused(f"{path}: exists and is a file, not an export folder; nothing was changed "
                            f"(choose another --out)")
    try:
        names = sorted(entry.name for entry in os.scandir(path))
    except OSError as error:
        raise OutputRefused(f"{path}: exists and cannot be listed ({error.strerror}); nothing was changed") from None
    ours = set(FILES + OPTIONAL_FILES) | {MARKER}
    foreign = [name for name in names if name not in ours]
    if foreign and len(foreign) < len(names):   # an export folder the user has put something of theirs into
        shown = ", ".join(foreign[:3]) + (f", … ({len(foreign)} entries)" if len(foreign) > 3 else "")
        raise OutputRefused(f"{path}: holds files sbnn did not write ({shown}); nothing was changed "
                            f"(choose another --out, or move them away)")
    shown = ", ".join(names[:3]) + (f", … ({len(names)} entries)" if len(names) > 3 else "")
    raise OutputRefused(f"{path}: exists and is not an export folder written by sbnn (it holds {shown or 'nothing'}); "
                        f"nothing was changed (choose another --out, or remove it yourself)")


def export_provenance(*, calibration: np.ndarray, test_inputs: np.ndarray | None = None,
                      headroom: float = 1.0, accuracy_margin: float = ACCURACY_MARGIN, **inputs) -> dict:
    """What shaped an export, as recorded in ``export.json["provenance"]["inputs"]``: the hashes of the
    calibration and stored test inputs, the quantiser's settings, the code version, and the caller's
    ``inputs`` (the checkpoint's hash, weights mode, seed, ...). Two exports with equal ``inputs`` are the
    same export, which is how ``sbnn pipeline`` decides that one is up to date (:mod:`export.provenance`)."""
    return {**inputs, "headroom": float(headroom), "accuracy_margin": float(accuracy_margin),
            "calibration_shape": list(np.shape(calibration)), "calibration_sha256": array_sha256(calibration),
            "test_inputs_sha256": array_sha256(test_inputs), "code": code_version(EXPORT_SOURCES)}


def write_export(network: FloatNetwork, calibration: np.ndarray, out_dir: str | os.PathLike, *,
                 test_inputs: np.ndarray | None = None, test_labels: np.ndarray | None = None,
                 source: dict | None = None, headroom: float = 1.0,
                 written_by: str = "sbnn export", calibration_labels: np.ndarray | None = None,
                 accuracy_margin: float = ACCURACY_MARGIN, provenance: dict | None = None,
                 provenance_notes: dict | None = None,
                 preprocessing: dict | None = None,
                 classes: list[str] | tuple[str, ...] | None = None) -> tuple[Path, QuantisedNetwork, dict]:
    """Export ``network`` to ``out_dir`` (replacing it whole). Returns (folder, quantised network, report).

    An existing ``out_dir`` is replaced only when :func:`check_replaceable` allows it (else
    :class:`OutputRefused`, before anything is written). ``written_by`` goes into the marker, so that a
    later command can tell the pipeline's exports from those made by hand. ``provenance`` (the caller's
    part of :func:`export_provenance`, e.g. the checkpoint's hash) and ``provenance_notes`` (recorded for
    the reader, never compared: the whole ``[export]`` section, ``git describe``) go into ``export.json``.
    ``preprocessing`` (how raw features become the float inputs: ``sbnn.data.preprocessing.Preprocessing.to_record``)
    is recorded as ``export.json["preprocessing"]`` for ``sbnn simulate --inputs raw.npy``; ``classes`` (the
    name of each class, in class order, for text labels) as ``export.json["classes"]``.
    ``export.json`` is strict JSON: a NaN or infinity anywhere is an :class:`ExportError`, nothing written."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    inputs = export_provenance(calibration=calibration, test_inputs=test_inputs, headroom=headroom,
                               accuracy_margin=accuracy_margin, **(provenance or {}))
    with atomic_folder(out_dir) as staging:
        write_nir(network, staging / "model.nir")
        from_file, notes = read_nir(staging / "model.nir")
        quantised = quantise(from_file, calibration, headroom=headroom, labels=calibration_labels,
                             accuracy_margin=accuracy_margin)
        if test_inputs is not None:
            clipping = quantised.input_clipping(test_inputs)
            if clipping["clipped"]:
                quantised.warnings.append(f"inputs.npy: {clipping['clipped']} of {clipping['nonzero']} non-zero "
                                          f"inputs lie above the calibration data's largest input and are "
                                          f"clipped to the largest payload")
        hw_sim.save(quantised.network, staging / "loihi.h5")
        export_float_onnx(from_file, staging / "model.onnx")
        export_integer_onnx(quantised.network, staging / "model_int.onnx")
        if test_inputs is not None:
            np.save(staging / "inputs.npy", quantised.encode_input(test_inputs))
        if test_labels is not None:
            np.save(staging / "labels.npy", np.asarray(test_labels, dtype=np.int64))
        report = {"source": source or {}, "dt": from_file.dt, "notes": notes,
                  "logit_scale": float(network.metadata.get("logit_scale", 1.0)), **quantised.report(),
                  **({"preprocessing": preprocessing} if preprocessing is not None else {}),
                  **({"classes": [str(name) for name in classes]} if classes is not None else {}),
                  "files": list(FILES) + (["inputs.npy"] if test_inputs is not None else [])
                  + (["labels.npy"] if test_labels is not None else []),
                  "provenance": {"inputs": inputs, "notes": {**(provenance_notes or {}), "git": git_describe()}}}
        (staging / "export.json").write_text(strict_json(report, indent=2))
        marker = {"format": MARKER_FORMAT, "written_by": written_by, "source": source or {},
                  "files": report["files"]}
        (staging / MARKER).write_text(strict_json(marker, indent=1))
        check_replaceable(out_dir)   # again: a user may have created the folder while we were exporting
    return out_dir, quantised, report


def strict_json(document, **options) -> str:
    """``document`` as strict JSON (``allow_nan=False``): a NaN or infinity is an :class:`ExportError`
    naming the field, so that no file sbnn writes holds a bare ``NaN`` that strict parsers refuse."""
    from .quantise import _check_finite

    _check_finite(document, "export.json")
    return json.dumps(document, allow_nan=False, default=_json_default, **options)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
