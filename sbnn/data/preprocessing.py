"""How raw static features become a model's inputs: standardisation fitted on the training split, then the
encoder of ``[data] encoding`` (docs/data.md#standardisation).

Analog features of unknown scale (a wine's proline near 1,700 beside ratios near 0.1, a signal's signed
samples, pixels 0-255) are mapped feature by feature into the encoder's range: the mean and standard
deviation of each feature are measured on the training split, and

    x' = clip(centre + (x - mean) / std * half / SPREAD, low, high)

sends mean ± ``SPREAD`` (3) standard deviations onto [low, high] = [0, 1] (centre 0.5, half-width 0.5) for the
encoders that take intensities (none/direct: an analog first layer whose Loihi payloads are unsigned;
``rate``; ``latency``), or onto [-1, 1] (centre 0) for ``on_off``, which codes the sign on two channel groups.
A feature constant on the training split (std 0) keeps a divisor of 1.

``[data] standardise`` is ``"auto"`` (the default: standardise when the training features lie outside the
encoder's range, so data already in [0, 1] such as digits, MNIST and CIFAR-10 pass unchanged), ``true`` or
``false``. :class:`Preprocessing` is the whole record (standardisation, encoding, steps, seed and the raw
feature shape); the export writes it into ``export.json`` (``preprocessing``) so that ``sbnn simulate EXPORT
--inputs raw.npy`` presents raw features exactly as training did (the rate codes draw fresh spikes from the
recorded seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sbnn.data.encoders import ENCODINGS, encode

STANDARDISE_MODES: tuple[str, ...] = ("auto", "true", "false")   # [data] standardise: "auto", true or false
SPREAD = 3.0          # standard deviations on each side of the mean that fill the encoder's range
RECORD_FORMAT = 1     # the version of Preprocessing.to_record's layout


def encoder_range(encoding: str | None) -> tuple[float, float]:
    """The input range an encoding takes without clipping: [-1, 1] for ``on_off``, else [0, 1]."""
    return (-1.0, 1.0) if encoding == "on_off" else (0.0, 1.0)


@dataclass(frozen=True)
class Standardisation:
    """Per-feature affine map into ``[low, high]``, fitted on a training split (:meth:`fit`).

    Attributes:
        mean, std: float64 ``(*feature_shape)``, the training split's per-feature mean and standard deviation
            (std 1 where a feature is constant).
        low, high: the encoder's range the map fills (``mean ± SPREAD·std`` lands on its ends; beyond clips).
    """

    mean: np.ndarray
    std: np.ndarray
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def fit(cls, x_train: np.ndarray, *, low: float = 0.0, high: float = 1.0) -> "Standardisation":
        """Statistics of ``x_train`` ``(N, *feature_shape)`` along the sample axis."""
        x = np.asarray(x_train, dtype=np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        return cls(mean=mean, std=std, low=float(low), high=float(high))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw features ``(N, *feature_shape)`` -> float32 values in ``[low, high]``, same shape."""
        half, centre = (self.high - self.low) / 2, (self.high + self.low) / 2
        scaled = centre + (np.asarray(x, dtype=np.float64) - self.mean) / self.std * (half / SPREAD)
        return np.clip(scaled, self.low, self.high).astype(np.float32)


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

    def apply(self, x: np.ndarray, *, seed: int | np.random.Generator | None = None) -> np.ndarray:
        """Raw features -> model inputs: standardised ``(N, *feature_shape)`` float32, or encoded ``(N, steps,
        ...)`` when there is an encoding (rate codes drawn from ``seed``, default :attr:`seed`)."""
        x = np.asarray(x)
        if self.standardisation is not None:
            x = self.standardisation.apply(x)
        if self.encoding is None:
            return x
        return encode(x, self.encoding, self.steps, seed=self.seed if seed is None else seed)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready description (``export.json["preprocessing"]``); :meth:`from_record` reads it back."""
        scaling = self.standardisation
        return {"format": RECORD_FORMAT, "feature_shape": list(self.feature_shape), "encoding": self.encoding or "none",
                "steps": self.steps, "seed": self.seed,
                "standardise": None if scaling is None else {
                    "mean": scaling.mean.ravel().tolist(), "std": scaling.std.ravel().tolist(),
                    "range": [scaling.low, scaling.high], "spread": SPREAD}}

    @classmethod
    def from_record(cls, record: Any) -> "Preprocessing":
        """The inverse of :meth:`to_record`. Raises ValueError naming what is wrong with the record."""
        try:
            shape = tuple(int(n) for n in record["feature_shape"])
            encoding = None if record["encoding"] == "none" else str(record["encoding"])
            steps = None if record["steps"] is None else int(record["steps"])
            scaling = record["standardise"]
            standardisation = None
            if scaling is not None:
                low, high = (float(v) for v in scaling["range"])
                mean = np.asarray(scaling["mean"], dtype=np.float64).reshape(shape)
                std = np.asarray(scaling["std"], dtype=np.float64).reshape(shape)
                if float(scaling["spread"]) != SPREAD or not np.all(np.isfinite(mean)) or not np.all(std > 0):
                    raise ValueError("standardise: spread, mean or std out of range")
                standardisation = Standardisation(mean=mean, std=std, low=low, high=high)
            if encoding is not None and (encoding not in ENCODINGS or steps is None or steps < 1):
                raise ValueError(f"encoding {encoding!r} with steps {steps}")
            return cls(feature_shape=shape, standardisation=standardisation, encoding=encoding, steps=steps,
                       seed=int(record["seed"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"preprocessing record: {error}") from None


__all__ = ["Preprocessing", "SPREAD", "STANDARDISE_MODES", "Standardisation", "encoder_range",
           "feature_spread", "features_outside", "should_standardise"]
