"""Encoders from static features ``(N, *F)`` to inputs over time ``(N, T, *F')``.

- ``rate``: Bernoulli spikes, P(spike at each step) = clip(gain * x, 0, 1). uint8.
- ``on_off``: rate code of signed features on two channel groups, ON for x > 0 and OFF for x < 0;
  the first feature axis doubles (``(N, F)`` -> ``(N, T, 2F)``, ON channels first). uint8.
- ``latency``: exactly one spike per feature, at step round((1 - clip(x, 0, 1)) * (T - 1)), so larger
  values fire earlier (x = 1 at step 0, x = 0 at the last step). uint8.
- ``direct``: the analog feature repeated at every step, for an analog first layer. float32.
"""

from __future__ import annotations

import numpy as np

from sbnn.data._validation import require_positive_int

ENCODINGS = ("rate", "on_off", "latency", "direct")

# Random numbers are drawn for this many samples at a time, to bound the float32 scratch memory.
_SAMPLES_PER_CHUNK = 1024


def _generator(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check(features: np.ndarray, steps: int) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim < 2:
        raise ValueError(f"features must have shape (N, F, ...), got {features.shape}")
    require_positive_int("steps", steps)
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or Inf")
    return features.astype(np.float32, copy=False)


def rate_encode(
    features: np.ndarray, steps: int, *, seed: int | np.random.Generator = 0, gain: float = 1.0
) -> np.ndarray:
    """Bernoulli rate code.

    Args:
        features: ``(N, *F)`` values; firing probability per step is ``clip(gain * x, 0, 1)``.
        steps: number of time steps T.
        seed: an int seed or a Generator to draw from (then it advances).
        gain: scales features to probabilities.

    Returns:
        uint8 spikes ``(N, T, *F)``; the mean over T estimates the clipped probability.
    """
    features = _check(features, steps)
    rng = _generator(seed)
    probability = np.clip(features * np.float32(gain), 0.0, 1.0)
    spikes = np.empty((features.shape[0], steps, *features.shape[1:]), dtype=np.uint8)
    for start in range(0, features.shape[0], _SAMPLES_PER_CHUNK):
        chunk = probability[start : start + _SAMPLES_PER_CHUNK]
        uniform = rng.random((chunk.shape[0], steps, *chunk.shape[1:]), dtype=np.float32)
        spikes[start : start + _SAMPLES_PER_CHUNK] = uniform < chunk[:, None]
    return spikes


def on_off_encode(
    features: np.ndarray, steps: int, *, seed: int | np.random.Generator = 0, gain: float = 1.0
) -> np.ndarray:
    """Rate code of signed features on separate ON (x > 0) and OFF (x < 0) channels.

    Args:
        features: ``(N, F, ...)`` signed values; ON probability ``clip(gain * x, 0, 1)``, OFF probability
            ``clip(-gain * x, 0, 1)``.
        steps: number of time steps T.
        seed: an int seed or a Generator.
        gain: scales features to probabilities.

    Returns:
        uint8 spikes ``(N, T, 2F, ...)``: channels ``[0, F)`` are ON, ``[F, 2F)`` OFF for the same features.
    """
    features = _check(features, steps)
    signed = np.concatenate([features, -features], axis=1)
    return rate_encode(signed, steps, seed=seed, gain=gain)


def latency_encode(features: np.ndarray, steps: int) -> np.ndarray:
    """Time-to-first-spike code: one spike per feature, earlier for larger values.

    Args:
        features: ``(N, *F)`` values, clipped to [0, 1].
        steps: number of time steps T.

    Returns:
        uint8 spikes ``(N, T, *F)`` with exactly one spike per feature, at step
        ``round((1 - x) * (T - 1))``.
    """
    features = _check(features, steps)
    spike_step = np.rint((1.0 - np.clip(features, 0.0, 1.0)) * (steps - 1)).astype(np.int64)
    spikes = np.zeros((features.shape[0], steps, *features.shape[1:]), dtype=np.uint8)
    np.put_along_axis(spikes, spike_step[:, None], 1, axis=1)
    return spikes


def direct_encode(features: np.ndarray, steps: int) -> np.ndarray:
    """Analog input: the feature value repeated at every step, float32 ``(N, T, *F)``."""
    features = _check(features, steps)
    return np.repeat(features[:, None], steps, axis=1)


def encode(features: np.ndarray, encoding: str, steps: int, *, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Apply the encoder named ``encoding`` (one of :data:`ENCODINGS`); ``seed`` is used by the rate codes."""
    if encoding == "rate":
        return rate_encode(features, steps, seed=seed)
    if encoding == "on_off":
        return on_off_encode(features, steps, seed=seed)
    if encoding == "latency":
        return latency_encode(features, steps)
    if encoding == "direct":
        return direct_encode(features, steps)
    raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
