"""Reading an export folder back (:class:`ExportFolder`), beside its writer :mod:`export.folder`.

The folder's layout (:data:`FILES`, :data:`OPTIONAL_FILES`, the :data:`MARKER`) is described in
:mod:`export.folder`. This module imports no torch, so that the commands that only run an export
(``sbnn simulate``, ``verify``, ``energy``) start light; :mod:`export.folder` re-exports its names.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import hw_sim

from .float_network import ExportError, FloatNetwork
from .nir_io import read_nir
from .provenance import file_sha256
from .quantise import QuantisedNetwork

FILES = ("model.nir", "loihi.h5", "model.onnx", "model_int.onnx", "export.json")
OPTIONAL_FILES = ("inputs.npy", "labels.npy")
MARKER = ".sbnn-export"


class ExportFolder:
    """An export folder opened for reading (the files :func:`export.folder.write_export` writes, listed there).

    ``network_file`` is ``loihi.h5`` in the folder unless a netx file is named (:meth:`holding`), e.g. one
    written by lava-dl: a folder that holds no sbnn export reads as far as its files go (:meth:`encoder`
    and :meth:`recorded_inputs` are None). ``export.json`` and ``loihi.h5`` are read once, when first
    asked for; a missing or unreadable file raises the error of reading it (``OSError``,
    ``ValueError``, :class:`hw_sim.LoihiFileError`).
    """

    def __init__(self, path: str | os.PathLike, *, network_file: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.network_file = Path(network_file) if network_file is not None else self.path / "loihi.h5"

    @classmethod
    def holding(cls, path: str | os.PathLike) -> "ExportFolder":
        """The folder ``path`` names, or the folder holding the netx file ``path`` names (that file its network)."""
        path = Path(path)
        return cls(path) if path.is_dir() else cls(path.parent, network_file=path)

    def __repr__(self) -> str:
        return f"ExportFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """The path of one of the folder's files (``model.nir``, ``export.json``, ``inputs.npy``, ...)."""
        return self.path / name

    def has(self, *names: str) -> bool:
        """Whether every file named exists in the folder."""
        return all(self.file(name).exists() for name in names)

    @cached_property
    def report(self) -> dict:
        """``export.json``: the quantisation report and the provenance. One that is not a JSON object (truncated,
        edited by hand) is an :class:`ExportError` naming it."""
        path = self.file("export.json")
        try:
            report = json.loads(path.read_text())
        except ValueError as error:   # JSON and UTF-8 decoding errors
            raise ExportError(f"{path}: not readable as JSON ({error})") from None
        if not isinstance(report, dict):
            raise ExportError(f"{path}: expected a JSON object, found {type(report).__name__}")
        return report

    @cached_property
    def network(self) -> hw_sim.Network:
        """hw_sim's reading of the network file."""
        return hw_sim.load(self.network_file)

    @cached_property
    def quantised(self) -> QuantisedNetwork:
        """The network with ``export.json``'s input encoding (:meth:`QuantisedNetwork.hardware_input`)."""
        return QuantisedNetwork(network=self.network, input_scale=self.report["input_scale"],
                                always_on=int(self.report.get("always_on_inputs", 0)))

    def float_network(self) -> FloatNetwork:
        """The float network of ``model.nir``."""
        return read_nir(self.file("model.nir"))[0]

    @property
    def readout_scale(self) -> float:
        """Readout voltage units per logit: the integer v of the last layer divided by this is the float
        model's logit (the last layer's weight scale, times 64 for v's fixed point, over the model's
        ``logit_scale``)."""
        report = self.report
        return report["layers"][-1]["scale"] * 64.0 / report.get("logit_scale", 1.0)

    @property
    def marker(self) -> dict | None:
        """The folder's marker when it is an export folder this tool wrote, else None (:func:`export_marker`)."""
        return export_marker(self.path)

    def recorded_inputs(self) -> dict | None:
        """The provenance ``inputs`` ``export.json`` records, or None when the folder is incomplete, unreadable
        or of a version that recorded none (then it is out of date)."""
        if not self.network_file.is_file():
            return None
        try:
            inputs = self.report["provenance"]["inputs"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return inputs if isinstance(inputs, dict) else None

    def encoder(self) -> dict | None:
        """How the export presents features to the hardware: ``input_scale``, ``input_message_bits``, the
        steps ``T`` its float model sees (the calibration inputs' second axis: static features are repeated
        for ``T`` steps) and ``preprocessing``, how raw features became the float model's inputs (the record of
        ``sbnn.data.preprocessing.Preprocessing``; None for exports that record none). None when ``export.json``
        holds no such record (e.g. a netx file of lava-dl). ``always_on``: the input channels the export appends,
        1 at every presented step (current biases, docs/formats.md#nir-read)."""
        try:
            report = self.report
            steps = int(report["provenance"]["inputs"]["calibration_shape"][1])
            return {"input_scale": float(report["input_scale"]),
                    "input_message_bits": int(report["input_message_bits"]), "steps": steps,
                    "preprocessing": report.get("preprocessing"),
                    "always_on": int(report.get("always_on_inputs", 0))}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None

    def classes(self) -> list[str] | None:
        """The name of each class in class order (``export.json["classes"]``, recorded for text labels), or None
        when the folder records none or the record is not a list of strings."""
        try:
            names = self.report.get("classes")
        except (OSError, ValueError, AttributeError):
            return None
        return names if isinstance(names, list) and all(isinstance(name, str) for name in names) else None

    def sha256s(self) -> dict[str, str]:
        """The hashes of ``export.json`` and ``loihi.h5``, which ``results.json`` records for each export."""
        return {"export_json_sha256": file_sha256(self.file("export.json")),
                "loihi_h5_sha256": file_sha256(self.network_file)}


def _read_json(path: Path) -> dict | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def export_marker(path: str | os.PathLike) -> dict | None:
    """The marker of an export folder this tool wrote (``{"written_by": ..., "source": ..., "files": ...}``),
    or None when ``path`` is not such a folder.

    An export folder is ours when it is a real folder (not a symlink) holding nothing but the files its
    marker lists and the marker itself. Folders written before the marker existed count when their
    ``export.json`` (with its ``source``, ``layers`` and ``files`` entries) lists every file they hold;
    their marker reads ``{"written_by": "an earlier version"}``. A folder into which the user put anything
    else (notes, results of their own) is not ours any more, so it is never replaced.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None
    try:
        present = {entry.name for entry in os.scandir(path)}
    except OSError:
        return None
    marker = _read_json(path / MARKER) if MARKER in present else None
    if marker is not None and isinstance(marker.get("files"), list):
        listed = {str(name) for name in marker["files"]}
        return marker if present <= listed | {MARKER} else None
    if MARKER in present:
        return None
    report = _read_json(path / "export.json") if "export.json" in present else None
    if report is None or not {"source", "layers", "files"} <= set(report) or not isinstance(report["files"], list):
        return None
    listed = {str(name) for name in report["files"]}
    if not present <= listed or not listed <= set(FILES + OPTIONAL_FILES):
        return None
    return {"written_by": "an earlier version", "source": report["source"], "files": sorted(listed)}
