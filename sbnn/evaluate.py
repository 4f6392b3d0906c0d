"""Test-time predictions of an SBNN and the metrics computed from them (docs/method.md#test-time).

Three ways to predict, each returning class probabilities ``(N, num_classes)`` on the CPU:

* :func:`predict_mean` — posterior-mean weights, deterministic units (what deploys to hardware);
* :func:`predict_noisy` — the posterior predictive with noisy units (mode ``"noisy"``: local
  reparameterisation of the weight posterior plus neuron noise), softmax averaged over ``K`` passes;
* :func:`predict_ensemble` — ``K`` frozen posterior samples (each a deployable network), deterministic
  units, softmax averaged over the samples.

The model passed in is left as it was (mode and weights); every random draw comes from a generator
seeded by the caller.  Metrics: :func:`accuracy`, :func:`expected_calibration_error`,
:func:`reliability_bins`, :func:`predictive_entropy`, :func:`negative_log_likelihood`.
:func:`evaluate_split` runs all three predictions on one split and summarises them, the form
``metrics.json`` stores; a report can call the prediction functions directly for the probabilities.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sbnn.models import SbnnModel

PREDICTIONS: tuple[str, ...] = ("mean", "noisy", "ensemble")
DEFAULT_BINS = 15


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------


def _as_tensor(values: Tensor | np.ndarray) -> Tensor:
    return values if isinstance(values, Tensor) else torch.from_numpy(np.asarray(values))


def accuracy(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Fraction of examples whose highest score (probability or logit) is the label; ``scores (N, C)``."""
    scores, labels = _as_tensor(scores), _as_tensor(labels)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set")
    return float((scores.argmax(dim=1) == labels.to(scores.device)).double().mean())


def predictive_entropy(probabilities: Tensor | np.ndarray) -> Tensor:
    """Entropy of each predictive distribution in nats, ``(N, C) -> (N,)`` (0 log 0 counts as 0)."""
    p = _as_tensor(probabilities).double()
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(dim=1)


def negative_log_likelihood(probabilities: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Mean ``-log p(label)`` in nats (probabilities floored at 1e-12 so a confident miss stays finite)."""
    p, labels = _as_tensor(probabilities).double(), _as_tensor(labels).long()
    picked = p.gather(1, labels.view(-1, 1)).squeeze(1)
    return float(-torch.log(picked.clamp_min(1e-12)).mean())


def reliability_bins(
    probabilities: Tensor | np.ndarray, labels: Tensor | np.ndarray, bins: int = DEFAULT_BINS
) -> dict[str, list[float] | list[int]]:
    """The reliability diagram: examples binned by confidence (the top probability) in ``bins`` equal bins.

    Returns:
        ``edges`` (``bins + 1`` values from 0 to 1), and per bin ``count``, ``confidence`` (mean top
        probability) and ``accuracy`` (fraction correct); an empty bin has confidence and accuracy 0.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    p, labels = _as_tensor(probabilities).double(), _as_tensor(labels).long()
    confidence, predicted = p.max(dim=1)
    correct = (predicted == labels).double()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to bin 0.
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins)
    confidence_sum = torch.bincount(index, weights=confidence, minlength=bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=bins)
    safe_count = count.clamp_min(1).double()
    return {
        "edges": torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64).tolist(),
        "count": count.tolist(),
        "confidence": (confidence_sum / safe_count).tolist(),
        "accuracy": (correct_sum / safe_count).tolist(),
    }


def expected_calibration_error(
    probabilities: Tensor | np.ndarray, labels: Tensor | np.ndarray, bins: int = DEFAULT_BINS
) -> float:
    """ECE: ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over :func:`reliability_bins` (0 = calibrated)."""
    diagram = reliability_bins(probabilities, labels, bins)
    total = sum(diagram["count"])
    if total == 0:
        raise ValueError("calibration error of an empty set")
    return float(sum(
        n / total * abs(acc - conf)
        for n, acc, conf in zip(diagram["count"], diagram["accuracy"], diagram["confidence"])
    ))


def summarise(probabilities: Tensor, labels: Tensor | np.ndarray, bins: int = DEFAULT_BINS) -> dict[str, float]:
    """``accuracy``, ``ece``, ``nll`` and mean predictive ``entropy`` of one set of predictions."""
    return {
        "accuracy": accuracy(probabilities, labels),
        "ece": expected_calibration_error(probabilities, labels, bins),
        "nll": negative_log_likelihood(probabilities, labels),
        "entropy": float(predictive_entropy(probabilities).mean()),
    }


# ----------------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------------


def _model_device(model: SbnnModel) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _in_mode(model: SbnnModel, mode: str) -> Iterator[SbnnModel]:
    previous = model.mode
    model.set_mode(mode)
    try:
        yield model
    finally:
        model.set_mode(previous)


@torch.no_grad()
def _logits(model: SbnnModel, x: Tensor | np.ndarray, *, batch_size: int,
            generator: torch.Generator | None = None) -> Tensor:
    """Logits ``(N, C)`` (float32, CPU) of the model in its current mode, in batches."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    x = _as_tensor(x)
    device = _model_device(model)
    outputs = [
        model(x[start:start + batch_size].to(device), generator=generator).float().cpu()
        for start in range(0, len(x), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.zeros(0, model.num_classes)


def _check_samples(samples: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")


def predict_mean(model: SbnnModel, x: Tensor | np.ndarray, *, batch_size: int = 256) -> Tensor:
    """Softmax of the posterior-mean network with deterministic units, ``(N, C)`` (CPU, float32).

    Args:
        model: the model (its mode is restored afterwards).
        x: inputs ``(N, T, *input_shape)`` or static ``(N, *input_shape)`` (numpy or torch).
        batch_size: examples per forward pass.
    """
    with _in_mode(model, "mean"):
        return F.softmax(_logits(model, x, batch_size=batch_size), dim=1)


def predict_noisy(model: SbnnModel, x: Tensor | np.ndarray, *, samples: int, seed: int,
                  batch_size: int = 256) -> Tensor:
    """Posterior predictive with noisy units: softmax averaged over ``samples`` noisy passes, ``(N, C)``.

    The passes draw from one generator on the model's device seeded with ``seed``.  The surrogate
    baseline has no noise: this equals :func:`predict_mean` for it.
    """
    _check_samples(samples)
    if model.is_surrogate:
        return predict_mean(model, x, batch_size=batch_size)
    generator = torch.Generator(device=_model_device(model)).manual_seed(int(seed))
    total = None
    with _in_mode(model, "noisy"):
        for _ in range(samples):
            probabilities = F.softmax(_logits(model, x, batch_size=batch_size, generator=generator), dim=1)
            total = probabilities if total is None else total + probabilities
    return total / samples


def predict_ensemble(model: SbnnModel, x: Tensor | np.ndarray, *, samples: int, seed: int,
                     batch_size: int = 256) -> Tensor:
    """Ensemble of ``samples`` frozen posterior samples (sample ``k`` is ``freeze_sample(seed + k)``),
    deterministic units, softmax averaged, ``(N, C)``.  ``model`` itself is not changed (a copy freezes
    the samples).  The surrogate baseline is a point estimate: this equals :func:`predict_mean` for it."""
    _check_samples(samples)
    if model.is_surrogate:
        return predict_mean(model, x, batch_size=batch_size)
    member = copy.deepcopy(model)
    member.set_mode("sample")
    total = None
    for k in range(samples):
        member.freeze_sample(int(seed) + k)
        probabilities = F.softmax(_logits(member, x, batch_size=batch_size), dim=1)
        total = probabilities if total is None else total + probabilities
    return total / samples


def predict_all(model: SbnnModel, x: Tensor | np.ndarray, *, samples: int, seed: int,
                batch_size: int = 256) -> dict[str, Tensor]:
    """``{"mean", "noisy", "ensemble"}`` -> probabilities ``(N, C)``, see the three functions."""
    mean = predict_mean(model, x, batch_size=batch_size)
    if model.is_surrogate:   # a point estimate: one deterministic pass gives all three
        return {"mean": mean, "noisy": mean, "ensemble": mean}
    return {
        "mean": mean,
        "noisy": predict_noisy(model, x, samples=samples, seed=seed, batch_size=batch_size),
        "ensemble": predict_ensemble(model, x, samples=samples, seed=seed, batch_size=batch_size),
    }


def evaluate_split(model: SbnnModel, x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, samples: int,
                   seed: int, batch_size: int = 256, bins: int = DEFAULT_BINS,
                   predictions: Sequence[str] = PREDICTIONS) -> dict[str, dict[str, float]]:
    """The ``predictions`` (all three by default) on one split, each summarised by :func:`summarise`.

    ``predictions = ("mean",)`` is the cheap evaluation training runs every epoch: one deterministic pass,
    no noise drawn (``samples`` and ``seed`` unused).

    Returns:
        ``{"mean": {...}, "noisy": {...}, "ensemble": {...}}`` (the requested ones, in that order) with
        ``accuracy``, ``ece``, ``nll`` and ``entropy`` each.

    Raises:
        ValueError: an unknown prediction name, or none.
    """
    unknown = sorted(set(predictions) - set(PREDICTIONS))
    if unknown or not predictions:
        raise ValueError(f"predictions must be some of {', '.join(PREDICTIONS)}, got {list(predictions)!r}")
    predict = {
        "mean": lambda: predict_mean(model, x, batch_size=batch_size),
        "noisy": lambda: predict_noisy(model, x, samples=samples, seed=seed, batch_size=batch_size),
        "ensemble": lambda: predict_ensemble(model, x, samples=samples, seed=seed, batch_size=batch_size),
    }
    # The surrogate is a point estimate: its noisy and ensemble predictions are its mean one, computed once.
    computed: dict[str, Tensor] = {}
    for name in ("mean",) * model.is_surrogate + tuple(n for n in PREDICTIONS if n in predictions):
        computed[name] = computed["mean"] if model.is_surrogate and "mean" in computed else predict[name]()
    return {name: summarise(computed[name], y, bins) for name in PREDICTIONS if name in predictions}


__all__ = [
    "DEFAULT_BINS",
    "PREDICTIONS",
    "accuracy",
    "evaluate_split",
    "expected_calibration_error",
    "negative_log_likelihood",
    "predict_all",
    "predict_ensemble",
    "predict_mean",
    "predict_noisy",
    "predictive_entropy",
    "reliability_bins",
    "summarise",
]
