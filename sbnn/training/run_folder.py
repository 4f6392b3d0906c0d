"""The run folder: its file names and marker, whether a folder may be used as one, its default name, atomic
writes of its files (and removal of the temporaries a killed run left) and ``metrics.json``'s summary.

A run folder holds ``config.toml`` (the resolved config), ``checkpoint.pt`` and ``metrics.json``, all written
atomically (:mod:`safeio.atomic`: hidden temporary file, then ``os.replace``), and ``.sbnn-run``, the marker
that lets ``--out`` name it again (:func:`check_run_folder` refuses any other non-empty folder).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

from safeio.atomic import LOCK_NAME, atomic_path, remove_stale

from .errors import RunFolderError

CONFIG_FILE = "config.toml"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
RUN_FILES = (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE)
RUN_MARKER = ".sbnn-run"   # written into every run folder: what makes a non-empty folder usable as --out
# What a run folder of an earlier version (no marker) may hold: its files, the pipeline's, export folders,
# the writer lock and hidden temporaries of atomic writes.
_LEGACY_RUN_ENTRY = re.compile(r"config\.toml|checkpoint\.pt|metrics\.json|results\.json|report\.html"
                               r"|export(_sample[0-9]+)?|\.sbnn\.lock|\..+\.(new|old|tmp[0-9]*)")
JSON_KEYS: tuple[str, ...] = (
    "test_accuracy_mean", "test_accuracy_noisy", "test_accuracy_ensemble", "epochs", "seconds", "run_dir",
)


def default_run_dir(source: str | os.PathLike[str]) -> Path:
    """``runs/<file name without suffix>``; a name of only dots (``...toml``) becomes ``runs/run``, never
    ``runs/..``."""
    stem = Path(source).stem.strip(".")
    return Path("runs") / (stem or "run")


def check_run_folder(run_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`RunFolderError` unless ``run_dir`` may be used as a run folder without losing anything.

    Training writes ``config.toml``, ``checkpoint.pt`` and ``metrics.json`` into the folder (and
    ``--overwrite`` deletes the last two), so a folder that is not a run would lose the user's files of those
    names: ``--out .`` in a project holding its own ``config.toml``, ``--out ~``. Usable: a folder that does
    not exist, an empty one (the writer lock aside), one holding :data:`RUN_MARKER` (written into every run
    folder), or a run folder of an earlier version (``config.toml`` with ``checkpoint.pt`` or
    ``metrics.json``, and nothing a run does not write). Anything else, a file included, is refused before
    anything is touched.
    """
    run_dir = Path(run_dir)
    if not os.path.lexists(run_dir):
        return
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: exists and is not a folder; nothing was changed (choose another --out)")
    try:
        names = sorted(entry.name for entry in os.scandir(run_dir))
    except OSError as error:
        raise RunFolderError(f"{run_dir}: cannot be listed ({error.strerror}); nothing was changed") from None
    if RUN_MARKER in names or not [name for name in names if name != LOCK_NAME]:
        return
    if (CONFIG_FILE in names and (CHECKPOINT_FILE in names or METRICS_FILE in names)
            and all(_LEGACY_RUN_ENTRY.fullmatch(name) for name in names)):
        return
    shown = ", ".join(names[:3]) + (f", … ({len(names)} entries)" if len(names) > 3 else "")
    raise RunFolderError(f"{run_dir}: exists and is not an sbnn run folder (it holds {shown}); nothing was changed "
                         f"(choose a new --out)")


def remove_stale_temporaries(run_dir: Path) -> None:
    """Remove the hidden temporaries that a killed run left beside its files (:func:`safeio.atomic.remove_stale`)."""
    for name in RUN_FILES:
        remove_stale(run_dir, name)


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(file)`` into a temporary file beside ``path`` (:func:`safeio.atomic.atomic_path`),
    flushed to disk, then rename it over ``path``."""
    with atomic_path(path) as temporary:
        with open(temporary, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())


def json_safe(value: Any) -> Any:
    """NaN and infinities (e.g. metrics of a diverged model) as null, so the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json(path: Path, document: Any) -> None:
    """``document`` as strict, indented JSON (:func:`json_safe`), written atomically."""
    text = json.dumps(json_safe(document), indent=1, allow_nan=False)
    atomic_write(path, lambda file: file.write(text + "\n"), mode="w")


def run_summary(history: list[dict[str, Any]], run_dir: Path, method: str) -> dict[str, Any]:
    """The summary of a run's epoch records (``metrics.json``'s ``summary``; what :func:`train` returns).

    The accuracies are the last record's; the noisy and ensemble ones are None unless that record holds the
    full evaluation (the last epoch of a finished run always does; an unfinished run's last may not).
    """
    last = history[-1] if history else None
    test = last["test"] if last else {}
    return {
        "test_accuracy_mean": test["mean"]["accuracy"] if last else None,
        "test_accuracy_noisy": test["noisy"]["accuracy"] if "noisy" in test else None,
        "test_accuracy_ensemble": test["ensemble"]["accuracy"] if "ensemble" in test else None,
        "epochs": len(history),
        "seconds": float(sum(record["seconds"] for record in history)),
        "run_dir": str(run_dir),
        "method": method,
    }


def write_metrics(run_dir: Path, history: list[dict[str, Any]], method: str,
                  classes: tuple[str, ...] | None = None) -> None:
    """``metrics.json``: the epoch records, their summary and, for text labels, each class's name in class
    order (``classes``, docs/formats.md#metrics-json)."""
    names = {} if classes is None else {"classes": list(classes)}
    write_json(run_dir / METRICS_FILE, {"history": history, "summary": run_summary(history, run_dir, method), **names})


def write_marker(run_dir: Path) -> None:
    """Write :data:`RUN_MARKER` unless the folder already holds it."""
    if not (run_dir / RUN_MARKER).is_file():
        atomic_write(run_dir / RUN_MARKER, lambda file: file.write('{"format": 1, "written_by": "sbnn train"}\n'),
                     mode="w")


__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "JSON_KEYS",
    "METRICS_FILE",
    "RUN_FILES",
    "RUN_MARKER",
    "atomic_write",
    "check_run_folder",
    "default_run_dir",
    "json_safe",
    "remove_stale_temporaries",
    "run_summary",
    "write_json",
    "write_marker",
    "write_metrics",
]
