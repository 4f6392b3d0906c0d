"""Built-in offline data: scikit-learn's digits and Randman spike-timing data (Zenke & Vogels 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sbnn.data import Dataset
from sbnn.data._validation import require_positive_int

DIGITS_LEVELS = 16.0  # digits pixels are integers 0..16


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 digits as static features.

    Features are float32 ``(N, 64)`` in [0, 1] (pixel / 16), 10 classes. The split is stratified with
    ``random_state=seed``; the defaults give the reference split of 1437 train / 360 test samples.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    bunch = sklearn_load_digits()
    features = (bunch.data / DIGITS_LEVELS).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    return Dataset(
        name="digits",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        input_shape=(features.shape[1],),
    )


def randman_frequency_count(alpha: float, precision: float = 1e-3, max_count: int = 1000) -> int:
    """Number of Fourier components F = min(ceil(precision^(-1/alpha)), max_count); 32 for the defaults."""
    return int(min(math.ceil(precision ** (-1.0 / alpha)), max_count))


def randman_parameters(rng: np.random.Generator, num_units: int, intrinsic_dim: int, alpha: float) -> np.ndarray:
    """Draw one random manifold: uniform(0, 1) parameters ``(num_units, intrinsic_dim, 3, F)``.

    Axis 2 holds the amplitude a, frequency scale b and phase c of each component; a_0 = 0 (no bias).
    """
    params = rng.uniform(size=(num_units, intrinsic_dim, 3, randman_frequency_count(alpha)))
    params[:, :, 0, 0] = 0.0
    return params


def evaluate_randman(params: np.ndarray, points: np.ndarray, alpha: float) -> np.ndarray:
    """Evaluate a manifold at intrinsic points ``(S, d)`` in [0, 1]^d; returns ``(S, num_units)``.

    Unit j is the product over the d intrinsic dimensions of sum_n a_n s_n sin(2 pi (n x b_n + c_n)),
    with spectrum s_n = 1 / (n + 1)^alpha (the numpy reference version).
    """
    num_units, intrinsic_dim, _, num_freqs = params.shape
    order = np.arange(num_freqs)
    spectrum = 1.0 / (order + 1.0) ** alpha
    values = np.ones((points.shape[0], num_units))
    for dim in range(intrinsic_dim):
        amplitude, frequency, phase = params[:, dim, 0], params[:, dim, 1], params[:, dim, 2]  # (U, F)
        angle = 2.0 * np.pi * (order * points[:, dim, None, None] * frequency + phase)  # (S, U, F)
        values *= np.einsum("suf,uf->su", np.sin(angle), amplitude * spectrum)
    return values


def make_randman(
    *,
    num_classes: int = 10,
    num_units: int = 100,
    steps: int = 100,
    intrinsic_dim: int = 2,
    samples_per_class: int = 1000,
    spikes_per_unit: int = 1,
    alpha: float = 2.0,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Randman spike-timing classification data, deterministic for a seed.

    Each class has ``spikes_per_unit`` random smooth manifolds of intrinsic dimension ``intrinsic_dim``
    embedded in ``num_units`` dimensions. A sample is a point x ~ U[0, 1]^d; each manifold's value per
    unit is min-max scaled to [0, 1] over the class's samples and becomes a spike time
    ``floor(value * steps)`` (clipped to ``steps - 1``). So each unit fires ``spikes_per_unit`` spikes per
    sample (fewer in the binary output only if two fall in the same step) and all information is in timing.

    Returns:
        A Dataset with uint8 spikes ``(N, steps, num_units)``; per class, a ``test_fraction`` share of the
        samples goes to the test split; both splits are shuffled.
    """
    shape = _RandmanShape(num_classes, num_units, steps, intrinsic_dim, samples_per_class, spikes_per_unit, alpha)
    test_per_class = shape.test_samples(test_fraction)
    rng = np.random.default_rng(seed)
    spike_steps = shape.draw_spike_steps(rng)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64)[:, None], samples_per_class, axis=1)
    train_order = rng.permutation(num_classes * (samples_per_class - test_per_class))
    test_order = rng.permutation(num_classes * test_per_class)
    train_steps = spike_steps[:, test_per_class:].reshape(-1, spikes_per_unit, num_units)[train_order]
    test_steps = spike_steps[:, :test_per_class].reshape(-1, spikes_per_unit, num_units)[test_order]
    return Dataset(
        name="randman",
        x_train=_spike_trains(train_steps, steps),
        y_train=labels[:, test_per_class:].reshape(-1)[train_order],
        x_test=_spike_trains(test_steps, steps),
        y_test=labels[:, :test_per_class].reshape(-1)[test_order],
        num_classes=num_classes,
        input_shape=(num_units,),
        steps=steps,
    )


@dataclass(frozen=True)
class _RandmanShape:
    """The sizes of a Randman data set, as :func:`make_randman` takes them."""

    num_classes: int
    num_units: int
    steps: int
    intrinsic_dim: int
    samples_per_class: int
    spikes_per_unit: int
    alpha: float

    def test_samples(self, test_fraction: float) -> int:
        """Check the sizes; return the number of test samples per class that ``test_fraction`` gives."""
        for name in ("num_classes", "num_units", "steps", "intrinsic_dim", "samples_per_class", "spikes_per_unit"):
            require_positive_int(f"randman: {name}", getattr(self, name))
        if self.num_classes < 2:
            raise ValueError(f"randman: num_classes must be at least 2, got {self.num_classes}")
        if not self.alpha > 0:
            raise ValueError(f"randman: alpha must be positive, got {self.alpha!r}")
        test_per_class = round(self.samples_per_class * test_fraction)
        if not 0 < test_per_class < self.samples_per_class:
            raise ValueError(
                f"randman: test_fraction={test_fraction!r} of {self.samples_per_class} samples per class leaves "
                "an empty split"
            )
        return test_per_class

    def draw_spike_steps(self, rng: np.random.Generator) -> np.ndarray:
        """Draw every class's manifolds and sample points; return the spike step of every unit and manifold,
        int64 ``(num_classes, samples_per_class, spikes_per_unit, num_units)`` in ``[0, steps)``."""
        steps, alpha = self.steps, self.alpha
        spike_steps = np.empty(
            (self.num_classes, self.samples_per_class, self.spikes_per_unit, self.num_units), dtype=np.int64
        )
        for label in range(self.num_classes):
            manifolds = [
                randman_parameters(rng, self.num_units, self.intrinsic_dim, alpha) for _ in range(self.spikes_per_unit)
            ]
            points = rng.uniform(size=(self.samples_per_class, self.intrinsic_dim))
            for index, params in enumerate(manifolds):
                values = evaluate_randman(params, points, alpha)
                low, high = values.min(axis=0), values.max(axis=0)
                scaled = (values - low) / np.where(high > low, high - low, 1.0)
                spike_steps[label, :, index] = np.minimum((scaled * steps).astype(np.int64), steps - 1)
        return spike_steps


def _spike_trains(step_indices: np.ndarray, steps: int) -> np.ndarray:
    """Spike steps ``(N, spikes_per_unit, num_units)`` as dense uint8 spike trains ``(N, steps, num_units)``."""
    count, _, num_units = step_indices.shape
    spikes = np.zeros((count, steps, num_units), dtype=np.uint8)
    sample_index = np.arange(count)[:, None, None]
    unit_index = np.arange(num_units)[None, None, :]
    spikes[sample_index, step_indices, unit_index] = 1
    return spikes
