"""What the commands share: argument types, the input options of ``simulate``/``verify``/``energy``, reading
the user's network and input files, and the checks on ``--out``.

Only the standard library is imported at module level, so that building the parser (``sbnn --help``)
stays light; numpy, ``hw_sim`` and ``export`` are imported where a command reads or writes something.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


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


def add_input_options(command: argparse.ArgumentParser) -> None:
    """The options of the commands that run an export or netx file: ``simulate``, ``verify``, ``energy``."""
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
    import numpy as np

    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.ndarray) or mapped.dtype.kind not in "biuf":
            raise ValueError(f"expected an array of numbers, found {getattr(mapped, 'dtype', type(mapped))}")
        return np.array(mapped)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{path}: cannot be read as a numpy array of numbers ({error})")


def _load_inputs(export: Path, network, *, limit: int | None, steps: int, seed: int, density: float) -> tuple[np.ndarray, str]:
    """Input spikes for simulate/verify/energy: ``inputs.npy`` beside loihi.h5 when present, else seeded
    random spikes."""
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


# ----------------------------------------------------------------------------------------------------
# --out of the commands that write (export, import)
# ----------------------------------------------------------------------------------------------------


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


_RUN_NAMES = frozenset({"config.toml", "checkpoint.pt", "metrics.json", "results.json", "report.html",
                        ".sbnn.lock", ".sbnn-run"})


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
