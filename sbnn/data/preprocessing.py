"""How raw static features become a model's inputs: standardisation fitted on the training split, then the
encoder of ``[data] encoding`` (docs/data.md#standardisation).

Analog features of unknown scale (a wine's proline near 1,700 beside ratios near 0.1, a signal's signed
samples, pixels 0-255) are mapped affinely into the encoder's range, fitted on the training split:

* features that share a range (:func:`shares_range`: the largest per-feature peak |x| within
  ``SHARED_SPREAD`` (10) times the median one, as pixels or a waveform's samples) are scaled together: the
  0.1 and 99.9 percentiles (``SHARED_TAIL``) of all their training values land on [low, high], beyond clips,
  so an image's 0 stays at ``low`` and its contrast fills the range;
* otherwise (tables of unequal units) each feature on its own: its mean ± ``SPREAD`` (3) standard deviations
  land on [low, high], beyond clips.

[low, high] = [0, 1] for the encoders that take intensities (none/direct: an analog first layer whose Loihi
payloads are unsigned; ``rate``; ``latency``), [-1, 1] for ``on_off``, which codes the sign on two channel
groups. A constant feature (or constant shared data) maps to the range's centre.

``[data] standardise`` is ``"auto"`` (the default: standardise when the training features lie outside the
encoder's range, so data already in [0, 1] such as digits, MNIST and CIFAR-10 pass unchanged), ``true`` or
``false``. :class:`Preprocessing` is the whole record (standardisation, encoding, steps, seed and the raw
feature shape); the export writes it into ``export.json`` (``preprocessing``) so that ``sbnn simulate EXPORT
--inputs raw.npy`` presents raw features exactly as training did (the rate codes draw each sample's spikes
from the recorded seed and the sample's index in the file, as for the test split: docs/data.md#encoders).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sbnn.data.encoders import ENCODINGS, TEST_STREAM, encode

STANDARDISE_MODES: tuple[str, ...] = ("auto", "true", "false")   # [data] standardise: "auto", true or false
SPREAD = 3.0          # per-feature rule: standard deviations on each side of the mean that fill the range
SHARED_SPREAD = 10.0  # features share a range when the largest peak |x| is at most this times the median one
SHARED_TAIL = 0.001   # shared rule: the training values' SHARED_TAIL and 1 - SHARED_TAIL quantiles fill the range
QUANTILE_VALUES = 10_000_000   # the shared quantiles are taken on at most about this many values (a fixed stride)
RECORD_FORMAT = 2     # the version of Preprocessing.to_record's layout (1: mean/std/spread, still read)


def encoder_range(encoding: str | None) -> tuple[float, float]:
    """The input range an encoding takes without clipping: [-1, 1] for ``on_off``, else [0, 1]."""
    return (-1.0, 1.0) if encoding == "on_off" else (0.0, 1.0)


@dataclass(frozen=True)
class Standardisation:
    """Affine map of each feature's raw interval ``[lower, upper]`` onto the encoder's range ``[low, high]``,
    clipping beyond, fitted on a training split (:meth:`fit`).

    Attributes:
        lower, upper: float64 ``(*feature_shape)``, the raw values (the features' units) that land on ``low``
            and ``high``: the 0.1 and 99.9 percentiles of all training values when ``shared``, else each
            feature's mean ∓ ``SPREAD`` standard deviations (std 1 where a feature is constant).
        low, high: the encoder's range.
        shared: whether one interval serves all features (:func:`shares_range`).
    """

    lower: np.ndarray
    upper: np.ndarray
    low: float = 0.0
    high: float = 1.0
    shared: bool = False

    @classmethod
    def fit(cls, x_train: np.ndarray, *, low: float = 0.0, high: float = 1.0,
            shared: bool | None = None) -> "Standardisation":
        """The map for ``x_train`` ``(N, *feature_shape)``; ``shared`` None: :func:`shares_range` decides."""
        x = np.asarray(x_train, dtype=np.float64)
        shared = shares_range(x) if shared is None else bool(shared)
        if shared:
            values = x.ravel()[::max(1, x.size // QUANTILE_VALUES)]   # every k-th value: at most ~10^7
            smallest, largest = np.quantile(values, [SHARED_TAIL, 1.0 - SHARED_TAIL])
            if low < 0:   # a signed code (on_off): 0 stays 0, so a background does not fire the off channels
                centre, half = np.zeros(x.shape[1:]), np.full(x.shape[1:], max(abs(smallest), abs(largest)))
            else:
                centre = np.full(x.shape[1:], (largest + smallest) / 2)
                half = np.full(x.shape[1:], (largest - smallest) / 2)
        else:
            centre, half = x.mean(axis=0), SPREAD * x.std(axis=0)
        half = np.where(half > 1e-12 * np.maximum(1.0, np.abs(centre)), half, SPREAD)
        return cls(lower=centre - half, upper=centre + half, low=float(low), high=float(high), shared=shared)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw features ``(N, *feature_shape)`` -> float32 values in ``[low, high]``, same shape."""
        unit = (np.asarray(x, dtype=np.float64) - self.lower) / (self.upper - self.lower)
        return np.clip(self.low + unit * (self.high - self.low), self.low, self.high).astype(np.float32)

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready ``standardise`` entry of :meth:`Preprocessing.to_record`."""
        return {"rule": "shared" if self.shared else "per_feature", "lower": self.lower.ravel().tolist(),
                "upper": self.upper.ravel().tolist(), "range": [self.low, self.high]}

    @classmethod
    def from_record(cls, record: Any, shape: tuple[int, ...]) -> "Standardisation":
        """The inverse of :meth:`to_record`; also reads format 1's ``mean``/``std``/``spread``. Raises ValueError,
        KeyError or TypeError on a malformed record."""
        low, high = (float(v) for v in record["range"])
        if "mean" in record:                     # format 1: mean ± spread·std onto the range
            mean = np.asarray(record["mean"], dtype=np.float64).reshape(shape)
            half = float(record["spread"]) * np.asarray(record["std"], dtype=np.float64).reshape(shape)
            lower, upper, shared = mean - half, mean + half, False
        else:
            lower = np.asarray(record["lower"], dtype=np.float64).reshape(shape)
            upper = np.asarray(record["upper"], dtype=np.float64).reshape(shape)
            if record["rule"] not in ("shared", "per_feature"):
                raise ValueError(f"standardise: unknown rule {record['rule']!r}")
            shared = record["rule"] == "shared"
        if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)) and np.all(upper > lower)):
            raise ValueError("standardise: the raw interval is not finite and increasing")
        return cls(lower=lower, upper=upper, low=low, high=high, shared=shared)


def shares_range(x_train: np.ndarray) -> bool:
    """Whether the features of ``x_train`` ``(N, *feature_shape)`` share one range: the largest per-feature
    peak |x| is at most :data:`SHARED_SPREAD` times the median non-zero one (pixels, a waveform's samples)."""
    return feature_spread(x_train) <= SHARED_SPREAD


def features_outside(x_train: np.ndarray, encoding: str | None) -> tuple[float, float] | None:
    """The training features' (min, max) when they leave the encoder's range, else None."""
    low, high = encoder_range(encoding)
    x = np.asarray(x_train)
    smallest, largest = float(x.min()), float(x.max())
    return (smallest, largest) if smallest < low or largest > high else None


def feature_spread(x_train: np.ndarray) -> float:
    """The largest per-feature peak |x| over the median non-zero one (1 when all are 0)."""
    x = np.asarray(x_train)
    peaks = np.abs(x.reshape(len(x), -1)).max(axis=0) if len(x) else np.zeros(1)
    nonzero = peaks[peaks > 0]
    return 1.0 if nonzero.size == 0 else float(nonzero.max() / np.median(nonzero))


def should_standardise(mode: str | bool, x_train: np.ndarray, encoding: str | None) -> bool:
    """Whether ``[data] standardise = mode`` standardises these training features for ``encoding``."""
    if mode in (True, "true"):
        return True
    if mode in (False, "false"):
        return False
    return features_outside(x_train, encoding) is not None


@dataclass(frozen=True)
class Preprocessing:
    """How raw features ``(N, *feature_shape)`` become the model's inputs: :attr:`standardisation` (or none),
    then :attr:`encoding` over :attr:`steps` steps (or none: the model repeats static inputs itself).

    Attributes:
        feature_shape: the raw features' shape per sample.
        standardisation: the fitted map, or None.
        encoding: one of :data:`~sbnn.data.encoders.ENCODINGS`, or None.
        steps: the encoder's time steps (None without an encoding).
        seed: the encoders' seed (the rate codes).
        raw_range, raw_spread: the raw training features' (min, max) and their largest per-feature peak |x|
            over the median one (for the start-up warnings; not part of the record).
    """

    feature_shape: tuple[int, ...]
    standardisation: Standardisation | None = None
    encoding: str | None = None
    steps: int | None = None
    seed: int = 0
    raw_range: tuple[float, float] | None = field(default=None, compare=False)
    raw_spread: float = field(default=1.0, compare=False)

    def apply(self, x: np.ndarray, *, first: int = 0) -> np.ndarray:
        """Raw features -> model inputs: standardised ``(N, *feature_shape)`` float32, or encoded ``(N, steps,
        ...)`` when there is an encoding. The rate codes encode ``x[i]`` as the test split's sample ``first + i``
        (the stream ``(seed, TEST_STREAM, first + i)``, :mod:`sbnn.data.encoders`): the same spikes whatever the
        batches, and for the whole raw test split the very spikes the run was evaluated on."""
        x = np.asarray(x)
        if self.standardisation is not None:
            x = self.standardisation.apply(x)
        if self.encoding is None:
            return x
        return encode(x, self.encoding, self.steps, seed=(self.seed, TEST_STREAM), first=first)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready description (``export.json["preprocessing"]``); :meth:`from_record` reads it back."""
        scaling = self.standardisation
        return {"format": RECORD_FORMAT, "feature_shape": list(self.feature_shape), "encoding": self.encoding or "none",
                "steps": self.steps, "seed": self.seed,
                "standardise": None if scaling is None else scaling.to_record()}

    @classmethod
    def from_record(cls, record: Any) -> "Preprocessing":
        """The inverse of :meth:`to_record`. Raises ValueError naming what is wrong with the record."""
        try:
            shape = tuple(int(n) for n in record["feature_shape"])
            encoding = None if record["encoding"] == "none" else str(record["encoding"])
            steps = None if record["steps"] is None else int(record["steps"])
            scaling = record["standardise"]
            standardisation = None if scaling is None else Standardisation.from_record(scaling, shape)
            if encoding is not None and (encoding not in ENCODINGS or steps is None or steps < 1):
                raise ValueError(f"encoding {encoding!r} with steps {steps}")
            return cls(feature_shape=shape, standardisation=standardisation, encoding=encoding, steps=steps,
                       seed=int(record["seed"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"preprocessing record: {error}") from None


__all__ = ["Preprocessing", "SHARED_SPREAD", "SPREAD", "STANDARDISE_MODES", "Standardisation", "encoder_range",
           "feature_spread", "features_outside", "shares_range", "should_standardise"]
