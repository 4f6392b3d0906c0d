"""Where an export (and the results built on it) came from: content hashes, not file times.

A stage of ``sbnn pipeline`` is up to date when what shaped its outputs is unchanged: the checkpoint's
bytes, the settings it used, the data it was calibrated on and the code that computed it. File times say
none of this (a copied run folder has new times and the same content; an edited ``[export]`` section
leaves the checkpoint's time alone), so every export records these hashes in ``export.json`` and the
pipeline compares them (:mod:`sbnn.pipeline`).

The code version is the package version plus a hash of the source files that compute a stage's outputs;
``git describe`` is recorded for the reader when a git checkout is there, never required and never
compared (a commit that touches nothing relevant must not force a re-export).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Source files whose change can change an export folder (model → NIR → quantiser → loihi.h5/ONNX).
EXPORT_SOURCES = ("export/*.py", "hw_sim/__init__.py", "hw_sim/arith.py", "hw_sim/loihi.py", "hw_sim/network.py",
                  "hw_sim/netx_io.py", "sbnn/models.py", "sbnn/layers/*.py", "sbnn/neurons.py",
                  "sbnn/pipeline.py", "sbnn/export_evaluation.py")
# ... the pipeline's results.json (hw_sim, Lava, energy, float accuracies) ...
RESULTS_SOURCES = ("export/*.py", "hw_sim/*.py", "sbnn/models.py", "sbnn/layers/*.py", "sbnn/neurons.py",
                   "sbnn/pipeline.py", "sbnn/evaluate.py", "sbnn/export_evaluation.py")
# ... and report.html.
REPORT_SOURCES = ("sbnn/report.py",)

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (read in chunks by hashlib: checkpoints can be large)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def array_sha256(array: np.ndarray | None) -> str | None:
    """sha256 of an array's float64 values and shape: the same numbers give the same hash whatever dtype
    or memory layout they arrived in (calibration data are converted to float64 by the quantiser too)."""
    if array is None:
        return None
    values = np.asarray(array)
    digest = hashlib.sha256(repr(values.shape).encode())
    # Converted a block of rows at a time, so that hashing a large test set never holds a float64 copy of it.
    if values.ndim == 0:
        values = values.reshape(1)
    row_size = int(np.prod(values.shape[1:], dtype=np.int64))
    rows = max(1, _CHUNK // max(1, row_size))
    for start in range(0, len(values), rows):
        digest.update(np.ascontiguousarray(values[start:start + rows], dtype=np.float64).tobytes())
    return digest.hexdigest()


def _package_version() -> str:
    try:
        return importlib.metadata.version("sbnn")
    except importlib.metadata.PackageNotFoundError:   # run from a checkout without installing
        return "unknown"


def source_sha256(patterns: tuple[str, ...] = EXPORT_SOURCES) -> str:
    """sha256 over the names and bytes of the source files matching ``patterns`` (relative to the project
    root), in sorted order, so that any edit of a file that computes the outputs changes it."""
    digest = hashlib.sha256()
    files = sorted({path for pattern in patterns for path in ROOT.glob(pattern) if path.is_file()})
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_version(patterns: tuple[str, ...] = EXPORT_SOURCES) -> dict:
    """``{"version": package version, "sources_sha256": ...}``: the part of the code version a stage compares."""
    return {"version": _package_version(), "sources_sha256": source_sha256(patterns)}


def git_describe() -> str | None:
    """``git describe --always --dirty`` of the project, for the reader; None without git or a checkout."""
    if not (ROOT / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None
