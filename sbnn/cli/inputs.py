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

    from export.folder_reader import ExportFolder


class UserError(ValueError):
    """A mistake in what the user asked for or gave us: reported in one line, exit code 2."""


def _number_type(parse: type, accept, what: str):
    """An argparse ``type``: ``parse(text)`` (int or float) when ``accept(value)``, else argparse's one-line
    error "expected WHAT, found TEXT" (so NaN, refused by every comparison, is refused too)."""
    def checked(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, found {text}")
        return value

    return checked


_positive_int = _number_type(int, lambda value: value >= 1, "a positive integer")
_non_negative_int = _number_type(int, lambda value: value >= 0, "a non-negative integer")   # seeds (numpy's)
_fraction = _number_type(float, lambda value: 0.0 <= value <= 1.0, "a number in [0, 1]")      # spike densities
_positive_seconds = _number_type(float, lambda value: 0.0 < value < float("inf"), "a positive number of seconds")


def _path(text: str) -> str:
    """A file or folder named on the command line: an empty one (``--out "$UNSET"``) is refused rather than
    read as "not given", which would write to, or read, the default silently."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, found an empty string")
    return text


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
    command.add_argument("--inputs", type=_path, metavar="X.npy",
                         help="inputs: raw features (N, *input_shape), encoded by the export's own encoder "
                              "(export.json), or encoded spikes/payloads (N, T, *input_shape) "
                              "(default: inputs.npy beside the file, else seeded random spikes)")
    command.add_argument("--labels", type=_path, metavar="Y.npy",
                         help="labels (N,) integers of --inputs, for the accuracy")
    command.add_argument("--limit", type=_positive_int,
                         help="exactly this many samples, the first ones (default: all; 8 random ones); "
                              "more than the inputs hold is an error")
    command.add_argument("--batch-size", type=_positive_int, default=256,
                         help="samples simulated at a time, bounding memory (default 256; results do not "
                              "depend on it)")
    command.add_argument("--steps", type=_positive_int, default=50, help="steps of random input (default 50)")
    command.add_argument("--density", type=_fraction, default=0.2, help="random input spike density")
    command.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the random input")
    command.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                         help="input shape of a netx file without an input layer that starts with a conv "
                              "layer (C,H,W, or netx's W,H,C), as netx needs it too")
    command.add_argument("--workers", type=_positive_int,
                         help="parallel Lava processes (default: 1 for back-to-back samples, else one per core)")
    command.add_argument("--timeout", type=_positive_seconds, default=600.0, help="seconds before Lava is stopped")
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


def _export_folder(export: Path) -> ExportFolder:
    """The export folder ``export`` names, or the one holding the netx file it names; the file must exist."""
    from export.folder_reader import ExportFolder

    folder = ExportFolder.holding(export)
    if not folder.network_file.exists():
        raise UserError(f"{folder.network_file}: no such file (expected an export folder holding loihi.h5, or the "
                        f"file itself)")
    return folder


def _open_npy(path: Path) -> np.ndarray:
    """A .npy of numbers, memory-mapped (read batch by batch, so that a large set needs little memory);
    a header declaring more data than the file holds is an error rather than an allocation; no pickles."""
    import numpy as np

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.ndarray) or mapped.dtype.kind not in "biuf":
            raise ValueError(f"expected an array of numbers, found {getattr(mapped, 'dtype', type(mapped))}")
        return mapped
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{path}: cannot be read as a numpy array of numbers ({error})")


def _load_npy(path: Path) -> np.ndarray:
    """A .npy of numbers, read whole (see :func:`_open_npy`)."""
    import numpy as np

    return np.array(_open_npy(path))


class InputSet:
    """The samples a command runs: encoded batch by batch (:meth:`batches`), with their labels if known.

    ``x`` holds either encoded spikes/payloads ``(N, T, *input_shape)`` or raw features ``(N, *input_shape)``
    (then ``encoder`` is the export's record, :meth:`export.folder_reader.ExportFolder.encoder`, and each
    batch goes through the recorded preprocessing, standardisation and the data encoder as in training
    (:class:`sbnn.data.preprocessing.Preprocessing`), then is encoded as
    :func:`sbnn.export_evaluation.hardware_logits` does: static inputs repeated for ``T`` steps, scaled and
    rounded (or binarised), ``network.latency`` zero steps appended)."""

    def __init__(self, x, source: str, network, *, labels=None, encoder: dict | None = None):
        self.x, self.source, self.network, self.labels, self.encoder = x, source, network, labels, encoder

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def steps(self) -> int:
        return int(self.encoder["steps"] + self.network.latency) if self.encoder else int(self.x.shape[1])

    def encode(self, x, first: int = 0) -> np.ndarray:
        """Samples ``first, first + 1, ...`` of the set, ``x`` (their rows), as hardware inputs; a rate code
        draws sample ``first + i``'s spikes from its own stream, so the result does not depend on the batches."""
        import numpy as np

        if self.encoder is None:
            return _checked_encoded(self.source, np.asarray(x), self.network)
        from export.quantise import QuantisedNetwork

        x = np.asarray(x, dtype=np.float64)
        record = self.encoder.get("preprocessing")
        if record is not None:
            from sbnn.data.preprocessing import Preprocessing

            x = Preprocessing.from_record(record).apply(x, first=first).astype(np.float64)
        if x.ndim == 1 + len(self.network.input_shape):   # static inputs: the model repeats them over T
            x = np.repeat(x[:, None], self.encoder["steps"], axis=1)
        return QuantisedNetwork(network=self.network, input_scale=self.encoder["input_scale"],
                                always_on=self.encoder.get("always_on", 0)).hardware_input(x)

    def batches(self, batch_size: int, *, label: str = "sbnn"):
        """(start, encoded batch) over the whole set; a progress bar on stderr when it is a terminal."""
        starts = range(0, len(self), batch_size)
        bar = None
        if sys.stderr.isatty() and len(starts) > 1:
            from tqdm import tqdm

            bar = tqdm(total=len(self), unit="sample", desc=label, file=sys.stderr, leave=False)
        try:
            for start in starts:
                batch = self.encode(self.x[start:start + batch_size], first=start)
                yield start, batch
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()


def _checked_encoded(source: str, x: np.ndarray, network) -> np.ndarray:
    """Encoded inputs ``x`` (batch, T, *input_shape) as given, when hw_sim and the float model read them alike:
    integers, and 0/1 spikes for a network of binary inputs (hw_sim counts any non-zero value as one spike)."""
    import numpy as np

    if x.dtype.kind == "f" and not (np.isfinite(x).all() and np.array_equal(x, np.round(x))):
        raise UserError(f"{source}: encoded inputs must be integer-valued (spikes or payloads), found fractions, "
                        f"NaN or infinities")
    if network.input_message_bits == 0 and x.size and (x.min() < 0 or x.max() > 1):
        raise UserError(f"{source}: the network takes 0/1 input spikes, found values {x.min():g}..{x.max():g} "
                        f"(event counts: save (x > 0) as spikes)")
    return x


def _shape_error(path, x, network, raw_shape: tuple[int, ...]) -> UserError:
    shape = ", ".join(str(n) for n in network.input_shape)
    raw = ", ".join(str(n) for n in raw_shape)
    return UserError(f"{path}: shape {tuple(x.shape)} fits neither raw features (N, {raw}) nor encoded "
                     f"inputs (N, T, {shape})")


def network_and_inputs(args: argparse.Namespace):
    """What simulate, verify and energy all start from: the netx file named by ``args.export``, hw_sim's
    reading of it, and the inputs the options ask for. Returns ``(path, network, inputs)``."""
    folder = _export_folder(Path(args.export))
    network = _load_network(folder.network_file, args)
    inputs = _load_inputs(folder, network, limit=args.limit, steps=args.steps, seed=args.seed,
                          density=args.density, inputs=args.inputs, labels=args.labels)
    return folder.network_file, network, inputs


def _load_inputs(folder: ExportFolder, network, *, limit: int | None, steps: int, seed: int, density: float,
                 inputs: str | None = None, labels: str | None = None) -> InputSet:
    """The samples of simulate/verify/energy: ``--inputs`` (raw features or encoded inputs, told apart by
    their shape), else ``inputs.npy`` beside loihi.h5 when present, else seeded random spikes. ``--limit``
    takes exactly that many (the first ones); asking for more than a file holds is a :class:`UserError`."""
    from hw_sim.random_networks import random_input

    ndim = len(network.input_shape)
    label_values = None
    if inputs is not None:
        path = Path(inputs)
        x = _open_npy(path)
        encoder = None
        raw_shape = _raw_feature_shape(folder, network)
        if x.ndim == 1 + len(raw_shape) and tuple(x.shape[1:]) == raw_shape:
            encoder = folder.encoder()
            if encoder is None:
                if folder.has("export.json"):
                    folder.report   # a damaged export.json is reported as such (ExportError), not as missing
                why = "its export.json lacks it" if folder.has("export.json") else "no sbnn export.json"
                raise UserError(f"{path}: raw features {tuple(x.shape)}, but {folder.path} records no input encoding "
                                f"({why}); give encoded inputs (N, T, "
                                f"{', '.join(map(str, network.input_shape))}) instead")
            source = f"{path} (raw features, encoded by {folder.file('export.json')})"
        elif x.ndim == 2 + ndim and tuple(x.shape[2:]) == network.input_shape:
            source = str(path)
        elif x.ndim == 2 + ndim and tuple(x.shape[2:]) == _model_input_shape(folder, network):
            encoder = folder.encoder()   # sequences the export's always-on channels complete
            source = f"{path} (input sequences; the export appends its always-on input channels)"
        else:
            raise _shape_error(path, x, network, raw_shape)
        if labels is not None:
            label_values = _load_labels(Path(labels), len(x), network)
    elif folder.file("inputs.npy").exists():
        stored = folder.file("inputs.npy")
        x = _open_npy(stored)
        encoder, source = None, str(stored)
        if x.ndim != 2 + ndim or tuple(x.shape[2:]) != network.input_shape:
            raise UserError(f"{stored}: shape {x.shape} does not match (batch, T, {network.input_shape})")
        stored_labels = Path(labels) if labels is not None else folder.file("labels.npy")
        if stored_labels.exists() or labels is not None:
            label_values = _load_labels(stored_labels, len(x), network, prefix=labels is None)
    else:
        if labels is not None:
            raise UserError(f"--labels {labels}: needs --inputs (the inputs are random spikes)")
        x = random_input(seed, network, limit or 8, steps, density)
        return InputSet(x, f"random spikes (seed {seed}, density {density})", network)
    if limit is not None:
        if limit > len(x):
            raise UserError(f"--limit {limit}: {source.split(' (')[0]} holds only {len(x)} samples; nothing was run "
                            f"(leave --limit out to run all {len(x)})")
        x = x[:limit]
        label_values = None if label_values is None else label_values[:limit]
    return InputSet(x, source, network, labels=label_values, encoder=encoder)


def _model_input_shape(folder: ExportFolder, network) -> tuple[int, ...]:
    """The float model's per-step input shape: the network's, less the always-on input channels the export
    appends for current biases (an imported model's, docs/formats.md#nir-read; none for most exports)."""
    encoder = folder.encoder()
    always_on = 0 if encoder is None else encoder.get("always_on", 0)
    shape = tuple(network.input_shape)
    return (shape[0] - always_on, *shape[1:]) if always_on else shape


def _raw_feature_shape(folder: ExportFolder, network) -> tuple[int, ...]:
    """The shape of one sample of raw features: the recorded preprocessing's (an encoding such as ``on_off`` or
    ``rate`` changes it), else the network's input shape. A record that cannot be read is a :class:`UserError`."""
    encoder = folder.encoder()
    record = None if encoder is None else encoder.get("preprocessing")
    if record is None:
        return _model_input_shape(folder, network)
    from sbnn.data.preprocessing import Preprocessing

    try:
        return Preprocessing.from_record(record).feature_shape
    except ValueError as error:
        raise UserError(f"{folder.file('export.json')}: {error}") from None


def _load_labels(path: Path, count: int, network, *, prefix: bool = False) -> np.ndarray:
    """Labels ``(N,)`` integers for ``count`` samples (``prefix``: at least ``count``, the stored pair), each a
    class the network can predict: 0 .. (its output size) - 1."""
    import numpy as np

    y = _load_npy(path)
    if y.ndim != 1 or y.dtype.kind not in "biu" and not np.all(np.mod(y, 1) == 0):
        raise UserError(f"{path}: labels must be (N,) integers, found shape {y.shape} dtype {y.dtype}")
    if len(y) != count and not (prefix and len(y) >= count):
        raise UserError(f"{path}: {len(y)} labels for {count} samples")
    y = y[:count].astype(np.int64)
    classes = int(np.prod(network.output_shape))
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise UserError(f"{path}: labels must be classes 0..{classes - 1} (the network has {classes} outputs), "
                        f"found {y.min()}..{y.max()}")
    return y


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


# ----------------------------------------------------------------------------------------------------
# Scoring (simulate)
# ----------------------------------------------------------------------------------------------------

READOUT_VOLTAGE = "readout voltage"   # time-averaged readout v from network.latency on, argmax
SPIKE_COUNT = "spike count"           # most output spikes; ties to the earliest first spike


def _predict(readout, spikes) -> tuple[np.ndarray, str]:
    """Predicted classes and the rule used: the readout's mean voltage when the last layer is a readout
    (``readout`` not None), else the last layer's spike count, ties broken by the earliest first spike
    (and then by the lowest class)."""
    import numpy as np

    from export.from_model import readout_logits

    if readout is not None:
        return readout_logits(readout).argmax(axis=1), READOUT_VOLTAGE
    spikes = np.asarray(spikes).reshape(spikes.shape[0], spikes.shape[1], -1) != 0
    steps = spikes.shape[1]
    counts = spikes.sum(axis=1).astype(np.int64)
    first = np.where(spikes.any(axis=1), spikes.argmax(axis=1), steps)
    return (counts * (steps + 1) + (steps - first)).argmax(axis=1), SPIKE_COUNT
