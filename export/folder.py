"""The export folder: everything a deployment needs, written whole or not at all.

    model.nir        the float network (NIR, dt in metadata) — the hub every deployment goes through
    loihi.h5         the quantised integer network (lava-dl netx layout; hw_sim.load reads it)
    model.onnx       one float time step with explicit state
    model_int.onnx   one integer Loihi time step, bit-exact with hw_sim
    export.json      quantisation report: per layer scale, clipped fraction, weight error, |u|/|v| headroom
    inputs.npy       (optional) the integer test inputs the hardware receives, for verify/simulate
    labels.npy       (optional) their labels

The quantiser reads the NIR file back (``nir.read``, type-checked) and quantises what it finds, so a
trained model and a graph imported from another tool take exactly the same path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

import hw_sim
from hw_sim.atomic import atomic_folder

from .float_network import FloatNetwork
from .nir_io import read_nir, write_nir
from .onnx_export import export_float_onnx, export_integer_onnx
from .quantise import QuantisedNetwork, quantise

FILES = ("model.nir", "loihi.h5", "model.onnx", "model_int.onnx", "export.json")


def write_export(network: FloatNetwork, calibration: np.ndarray, out_dir: str | os.PathLike, *,
                 test_inputs: np.ndarray | None = None, test_labels: np.ndarray | None = None,
                 source: dict | None = None, headroom: float = 1.0) -> tuple[Path, QuantisedNetwork, dict]:
    """Export ``network`` to ``out_dir`` (replacing it whole). Returns (folder, quantised network, report)."""
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as staging:
        write_nir(network, staging / "model.nir")
        from_file, notes = read_nir(staging / "model.nir")
        quantised = quantise(from_file, calibration, headroom=headroom)
        hw_sim.save(quantised.network, staging / "loihi.h5")
        export_float_onnx(from_file, staging / "model.onnx")
        export_integer_onnx(quantised.network, staging / "model_int.onnx")
        if test_inputs is not None:
            np.save(staging / "inputs.npy", quantised.encode_input(test_inputs))
        if test_labels is not None:
            np.save(staging / "labels.npy", np.asarray(test_labels, dtype=np.int64))
        report = {"source": source or {}, "dt": from_file.dt, "notes": notes,
                  "logit_scale": float(network.metadata.get("logit_scale", 1.0)), **quantised.report(),
                  "files": list(FILES) + (["inputs.npy"] if test_inputs is not None else [])
                  + (["labels.npy"] if test_labels is not None else [])}
        (staging / "export.json").write_text(json.dumps(report, indent=2, default=_json_default))
    return out_dir, quantised, report


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
