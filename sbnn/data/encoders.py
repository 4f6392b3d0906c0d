"""Encoders from static features ``(N, *F)`` to inputs over time ``(N, T, *F')``.

- ``rate``: Bernoulli spikes, P(spike at each step) = clip(gain * x, 0, 1). uint8.
- ``on_off``: rate code of signed features on two channel groups, ON for x > 0 and OFF for x < 0;
  the first feature axis doubles (``(N, F)`` -> ``(N, T, 2F)``, ON channels first). uint8.
- ``latency``: exactly one spike per feature, at step round((1 - clip(x, 0, 1)) * (T - 1)), so larger
  values fire earlier (x = 1 at step 0, x = 0 at the last step). uint8.
- ``direct``: the analog feature repeated at every step, for an analog first layer. float32.

The rate codes draw each sample's spikes from a stream of its own when ``seed`` is a key (an int or a
tuple of ints): sample ``i`` of the call draws from ``numpy.random.default_rng((*key, first + i))``, so a
sample's spikes depend only on the key and its index in the whole set, never on how the set was cut into
batches (``first`` is the batch's offset). The data sets encode their training split under the key
``(seed, TRAIN_STREAM)`` and their test split under ``(seed, TEST_STREAM)``; ``sbnn simulate --inputs
raw.npy`` encodes the file's samples like the test split (docs/data.md#encoders). A Generator passed as
``seed`` is drawn from in order instead (then the spikes do depend on what was drawn before).
"""

from __future__ import annotations

import numpy as np

from sbnn.data._validation import require_positive_int

ENCODINGS = ("rate", "on_off", "latency", "direct")

TRAIN_STREAM, TEST_STREAM = 0, 1   # the second word of the per-sample keys of the two splits

# Random numbers are drawn for this many samples at a time (Generator seeds), to bound the float32 scratch memory.
_SAMPLES_PER_CHUNK = 1024

Seed = int | tuple[int, ...] | np.random.Generator


def _key(seed: int | tuple[int, ...]) -> tuple[int, ...]:
    key = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
    if not key or not all(isinstance(word, (int, np.integer)) and word >= 0 for word in key):
        raise ValueError(f"seed must be a non-negative int, a tuple of them or a Generator, got {seed!r}")
    return tuple(int(word) for word in key)


def _uniform_chunks(count: int, shape: tuple[int, ...], seed: Seed, first: int):
    """(start, uniform float32 ``(n, *shape)``) over ``count`` samples: per-sample streams of a key, or
    consecutive draws of a Generator, in chunks of at most :data:`_SAMPLES_PER_CHUNK` samples."""
    if isinstance(seed, np.random.Generator):
        for start in range(0, count, _SAMPLES_PER_CHUNK):
            yield start, seed.random((min(_SAMPLES_PER_CHUNK, count - start), *shape), dtype=np.float32)
        return
    key = _key(seed)
    for start in range(0, count, _SAMPLES_PER_CHUNK):
        uniform = np.empty((min(_SAMPLES_PER_CHUNK, count - start), *shape), dtype=np.float32)
        for offset, row in enumerate(uniform):   # filled in place: no scratch beyond the chunk
            np.random.default_rng((*key, first + start + offset)).random(dtype=np.float32, out=row)
        yield start, uniform


def _check(features: np.ndarray, steps: int) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim < 2:
        raise ValueError(f"features must have shape (N, F, ...), got {features.shape}")
    require_positive_int("steps", steps)
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or Inf")
    return features.astype(np.float32, copy=False)


def rate_encode(features: np.ndarray, steps: int, *, seed: Seed = 0, gain: float = 1.0, first: int = 0) -> np.ndarray:
    """Bernoulli rate code.

    Args:
        features: ``(N, *F)`` values; firing probability per step is ``clip(gain * x, 0, 1)``.
        steps: number of time steps T.
        seed: a key (int or tuple of non-negative ints: sample ``i`` draws from the stream ``(*key, first + i)``,
            see the module docstring) or a Generator to draw from in order (then it advances).
        gain: scales features to probabilities.
        first: the index of ``features[0]`` in the whole set (a key's streams only).

    Returns:
        uint8 spikes ``(N, T, *F)``; the mean over T estimates the clipped probability.
    """
    features = _check(features, steps)
    probability = np.clip(features * np.float32(gain), 0.0, 1.0)
    spikes = np.empty((features.shape[0], steps, *features.shape[1:]), dtype=np.uint8)
    for start, uniform in _uniform_chunks(features.shape[0], (steps, *features.shape[1:]), seed, first):
        spikes[start : start + len(uniform)] = uniform < probability[start : start + len(uniform), None]
    return spikes


def on_off_encode(features: np.ndarray, steps: int, *, seed: Seed = 0, gain: float = 1.0, first: int = 0) -> np.ndarray:
    """Rate code of signed features on separate ON (x > 0) and OFF (x < 0) channels.

    Args:
        features: ``(N, F, ...)`` signed values; ON probability ``clip(gain * x, 0, 1)``, OFF probability
            ``clip(-gain * x, 0, 1)``.
        steps: number of time steps T.
        seed, first: as for :func:`rate_encode`.
        gain: scales features to probabilities.

    Returns:
        uint8 spikes ``(N, T, 2F, ...)``: channels ``[0, F)`` are ON, ``[F, 2F)`` OFF for the same features.
    """
    features = _check(features, steps)
    signed = np.concatenate([features, -features], axis=1)
    return rate_encode(signed, steps, seed=seed, gain=gain, first=first)


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


def encode(features: np.ndarray, encoding: str, steps: int, *, seed: Seed = 0, first: int = 0) -> np.ndarray:
    """Apply the encoder named ``encoding`` (one of :data:`ENCODINGS`); ``seed`` and ``first`` are used by the
    rate codes (:func:`rate_encode`)."""
    if encoding == "rate":
        return rate_encode(features, steps, seed=seed, first=first)
    if encoding == "on_off":
        return on_off_encode(features, steps, seed=seed, first=first)
    if encoding == "latency":
        return latency_encode(features, steps)
    if encoding == "direct":
        return direct_encode(features, steps)
    raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
