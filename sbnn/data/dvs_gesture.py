"""IBM DVS Gesture from IBM's original files, cut per gesture and binned to event frames.

Files in the root folder: ``trials_to_train.txt`` and ``trials_to_test.txt`` (one ``userNN_<lighting>.aedat``
name per line), each trial's ``.aedat`` (AEDAT 3.1) and its ``<trial>_labels.csv`` (header
``class,startTime_usec,endTime_usec``, then one gesture per row, classes 1..11).

AEDAT 3.1: ASCII header lines starting with ``#`` (the first ``#!AER-DAT3.1``, the last ``#!END-HEADER``),
then packets of a 28-byte little-endian header (uint16 eventType, uint16 eventSource, uint32 eventSize,
uint32 eventTSOffset, uint32 eventTSOverflow, uint32 eventCapacity, uint32 eventNumber, uint32 eventValid)
followed by eventCapacity * eventSize bytes. Polarity packets (type 1, size 8) hold pairs
``uint32 data, uint32 timestamp_us`` with x = (data >> 17) & 0x1FFF, y = (data >> 2) & 0x1FFF,
polarity = (data >> 1) & 1; the full time is timestamp | (eventTSOverflow << 31).
"""

from __future__ import annotations

import csv
import os
import struct
from pathlib import Path

import numpy as np

from sbnn.data import DataError, Dataset
from sbnn.data._validation import is_positive_int, require_positive_int

SENSOR_SIZE = 128  # DVS128
NUM_GESTURES = 11
POLARITY_EVENT_TYPE = 1
POLARITY_EVENT_SIZE = 8
PACKET_HEADER = struct.Struct("<HHIIIIII")
HEADER_END = b"#!END-HEADER\r\n"
AEDAT_FORMAT = "an AEDAT 3.1 file (#!AER-DAT3.1 header ending in #!END-HEADER, then 28-byte packet headers and events)"
LABELS_FORMAT = "a CSV with header class,startTime_usec,endTime_usec and one row per gesture (classes 1..11)"
TRIALS_FORMAT = "one .aedat file name per line"
LABELS_HEADER = ("class", "starttime_usec", "endtime_usec")
MAX_TIME_US = 1 << 40   # gesture times beyond this are damage (and would overflow the int64 binning)


def read_aedat_polarity_events(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the polarity events of an AEDAT 3.1 file; packets of other types are skipped.

    The validity bit (bit 0) is ignored, as in SpikingJelly and tonic.

    Returns:
        ``(x, y, polarity, t)``: int64 arrays ``(E,)``; x and y in 0..127, polarity 0 (OFF) or 1 (ON),
        t in microseconds, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {AEDAT_FORMAT}")
    data = path.read_bytes()
    if not data.startswith(b"#!AER-DAT3"):
        raise DataError(f"{path}: does not start with #!AER-DAT3.1; expected {AEDAT_FORMAT}")
    end = data.find(HEADER_END)
    if end < 0:
        raise DataError(f"{path}: no #!END-HEADER line; expected {AEDAT_FORMAT}")
    offset = end + len(HEADER_END)
    words: list[np.ndarray] = []
    overflows: list[np.ndarray] = []
    while offset < len(data):
        if offset + PACKET_HEADER.size > len(data):
            raise DataError(f"{path}: truncated packet header at byte {offset}; expected {AEDAT_FORMAT}")
        event_type, _source, event_size, _ts_offset, ts_overflow, capacity, number, _valid = PACKET_HEADER.unpack_from(
            data, offset
        )
        payload = offset + PACKET_HEADER.size
        # Python ints cannot overflow, so an absurd capacity is caught here before anything is allocated.
        declared = event_size * capacity
        if payload + declared > len(data):
            raise DataError(
                f"{path}: packet at byte {offset} declares {capacity} events of {event_size} bytes, beyond the "
                f"{len(data)}-byte file; expected {AEDAT_FORMAT}"
            )
        if number > capacity:
            raise DataError(f"{path}: packet at byte {offset} holds {number} events but has room for {capacity}")
        if event_type == POLARITY_EVENT_TYPE:
            if event_size != POLARITY_EVENT_SIZE:
                raise DataError(f"{path}: polarity packet at byte {offset} has event size {event_size}, expected 8")
            words.append(np.frombuffer(data, dtype="<u4", count=2 * number, offset=payload).reshape(-1, 2))
            overflows.append(np.full(number, ts_overflow, dtype=np.int64))
        offset = payload + declared
    if words:
        pairs = np.concatenate(words)
        overflow = np.concatenate(overflows)
    else:
        pairs = np.zeros((0, 2), dtype="<u4")
        overflow = np.zeros(0, dtype=np.int64)
    address = pairs[:, 0].astype(np.int64)
    x = (address >> 17) & 0x1FFF
    y = (address >> 2) & 0x1FFF
    polarity = (address >> 1) & 1
    t = pairs[:, 1].astype(np.int64) | (overflow << 31)
    if x.size and (x.max() >= SENSOR_SIZE or y.max() >= SENSOR_SIZE):
        raise DataError(f"{path}: event address ({int(x.max())}, {int(y.max())}) outside the 128x128 DVS128 sensor")
    return x, y, polarity, t


def read_gesture_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``_labels.csv``; returns int64 ``(G, 3)`` rows of (0-based class, start_us, end_us)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {LABELS_FORMAT}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as error:
        raise DataError(f"{path}: unreadable ({error.__class__.__name__}); expected {LABELS_FORMAT}") from None
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if not rows or tuple(cell.strip().lower() for cell in rows[0]) != LABELS_HEADER:
        raise DataError(f"{path}: first row is not class,startTime_usec,endTime_usec; expected {LABELS_FORMAT}")
    gestures = []
    for line_number, row in enumerate(rows[1:], start=2):
        try:
            label, start, end = (int(cell) for cell in row)
        except ValueError:
            raise DataError(f"{path}: row {line_number} is not three integers: {','.join(row)!r}") from None
        if not 1 <= label <= NUM_GESTURES:
            raise DataError(f"{path}: row {line_number} has class {label}, outside 1..{NUM_GESTURES}")
        if not 0 <= start < end:
            raise DataError(f"{path}: row {line_number} has start {start} not before end {end}")
        if end > MAX_TIME_US:
            raise DataError(f"{path}: row {line_number} has end {end} us, beyond {MAX_TIME_US} us (about 12 days)")
        gestures.append((label - 1, start, end))
    if not gestures:
        raise DataError(f"{path}: no gesture rows; expected {LABELS_FORMAT}")
    return np.array(gestures, dtype=np.int64)


def read_trial_list(path: str | os.PathLike[str]) -> list[str]:
    """Read ``trials_to_train.txt`` / ``trials_to_test.txt``: the ``.aedat`` names, blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {TRIALS_FORMAT}")
    names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [name for name in names if name]
    for name in names:
        if not name.endswith(".aedat") or "/" in name or "\\" in name:
            raise DataError(f"{path}: entry {name!r} is not a .aedat file name; expected {TRIALS_FORMAT}")
    if not names:
        raise DataError(f"{path}: lists no trials; expected {TRIALS_FORMAT}")
    return names


def bin_events_to_frames(
    x: np.ndarray,
    y: np.ndarray,
    polarity: np.ndarray,
    t: np.ndarray,
    *,
    steps: int,
    duration_us: int,
    downsample: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Bin events with times ``t`` in ``[0, duration_us)`` into frames ``(steps, 2, 128/d, 128/d)``.

    Event (x, y, p, t) adds one at ``[floor(t * steps / duration_us), p, y // d, x // d]``; events
    outside ``[0, duration_us)`` are dropped. With a uint8 ``out`` frames are binary (0/1); with float32
    they count events.
    """
    size = SENSOR_SIZE // downsample
    if out is None:
        out = np.zeros((steps, 2, size, size), dtype=np.float32)
    kept = (t >= 0) & (t < duration_us)
    step = (t[kept] * steps) // duration_us
    flat = ((step * 2 + polarity[kept]) * size + y[kept] // downsample) * size + x[kept] // downsample
    frames = out.reshape(-1)
    if out.dtype == np.uint8:
        frames[flat] = 1
    else:
        frames += np.bincount(flat, minlength=frames.size).astype(out.dtype)
    return out


def load_dvs_gesture(
    root: str | os.PathLike[str],
    *,
    steps: int = 20,
    downsample: int = 1,
    duration_us: int | None = None,
    binary: bool = True,
) -> Dataset:
    """DVS Gesture from IBM's original files in ``root``, one sample per labelled gesture.

    Args:
        root: the unpacked ``DvsGesture`` folder (trials lists, ``.aedat`` files, ``_labels.csv`` files).
        steps: number of frames T per gesture.
        downsample: spatial pooling factor d (a divisor of 128); frames are ``128/d x 128/d``.
        duration_us: None splits each gesture's ``[start, end)`` into ``steps`` equal bins; an integer uses
            bins of ``duration_us / steps`` from the gesture start and drops later events.
        binary: uint8 0/1 frames, or float32 event counts.

    Returns:
        A Dataset with frames ``(N, steps, 2, 128/d, 128/d)`` (channel 0 OFF, 1 ON; then y, x) and 11
        classes; samples follow the trial lists' order and the gestures' order within each trial.
    """
    require_positive_int("dvs_gesture: steps", steps)
    if not is_positive_int(downsample) or SENSOR_SIZE % downsample:
        raise ValueError(f"dvs_gesture: downsample must be a positive divisor of {SENSOR_SIZE}, got {downsample!r}")
    if duration_us is not None:
        require_positive_int("dvs_gesture: duration_us", duration_us)
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dvs_gesture: {root} is not a folder; expected IBM's DvsGesture folder with trials_to_train.txt"
        )
    size = SENSOR_SIZE // downsample
    splits = {
        split: _read_split(root, split, steps=steps, downsample=downsample, duration_us=duration_us, binary=binary)
        for split in ("train", "test")
    }
    return Dataset.from_splits(
        "dvs_gesture", splits, num_classes=NUM_GESTURES, input_shape=(2, size, size), steps=steps
    )


def _read_split(
    root: Path, split: str, *, steps: int, downsample: int, duration_us: int | None, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The gestures of the trials listed in ``root/trials_to_{split}.txt``, binned as :func:`load_dvs_gesture`
    describes: frames ``(N, steps, 2, 128/d, 128/d)`` and int64 labels ``(N,)``."""
    size = SENSOR_SIZE // downsample
    trials = read_trial_list(root / f"trials_to_{split}.txt")
    # Read every labels file first so the frames array is allocated once at its final size.
    gestures = [read_gesture_labels(root / (name[: -len(".aedat")] + "_labels.csv")) for name in trials]
    count = sum(len(rows) for rows in gestures)
    frames = np.zeros((count, steps, 2, size, size), dtype=np.uint8 if binary else np.float32)
    labels = np.empty(count, dtype=np.int64)
    sample = 0
    for name, rows in zip(trials, gestures, strict=True):
        x, y, polarity, t = read_aedat_polarity_events(root / name)
        in_order = bool(np.all(t[1:] >= t[:-1]))
        for label, start, end in rows:
            if in_order:
                first, last = np.searchsorted(t, [start, end], side="left")
                chosen = slice(first, last)
            else:
                chosen = np.flatnonzero((t >= start) & (t < end))
            window = end - start if duration_us is None else duration_us
            bin_events_to_frames(
                x[chosen], y[chosen], polarity[chosen], t[chosen] - start,
                steps=steps, duration_us=int(window), downsample=downsample, out=frames[sample],
            )
            labels[sample] = label
            sample += 1
    return frames, labels
