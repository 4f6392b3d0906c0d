"""Exact-gradient diagnostics of the gradient estimators (docs/method.md#diagnostics, ``sbnn bias``).

A network of noisy binary units small enough to enumerate every joint state (at most
:data:`MAX_ENUMERATED_UNITS` stochastic units) has an exactly computable expected loss

    E[L] = mean_x  sum_{s_1, ..., s_L}  P(s_1 | x) P(s_2 | s_1) ... P(s_L | s_{L-1})  L(s_L, x),

with ``P(s_l | s_{l-1}) = prod_j P1_j^{s_j} P0_j^{1 - s_j}`` and ``P1_j = F(z_j)``, ``z`` the standardised
margins of layer ``l`` given the previous layer's state.  Autograd through these probabilities (float64)
gives the exact gradient ``g = dE[L]/dtheta`` with respect to the Bayesian layers' parameters.

Each estimator (an :class:`sbnn.estimators.EstimatorConfig`) is then run on many sampled forward passes:
the batch is replicated ``replicates`` times per backward pass, and the per-sample variance is recovered
from the spread of these group means (batch means: ``Var(g_hat) = replicates * Var(group mean)``).
Reported per estimator and problem:

``cosine``             cosine similarity between ``E[g_hat]`` (Monte-Carlo mean) and ``g``.
``relative_bias``      ``||E[g_hat] - g|| / ||g||`` as measured (includes Monte-Carlo noise);
``relative_bias_se``   its Monte-Carlo noise floor ``sqrt(tr Cov(g_hat) / samples) / ||g||``: an unbiased
                       estimator measures ``relative_bias`` of about this size;
``relative_bias_debiased``  ``sqrt(max(0, ||mean - g||^2 - tr Cov / samples)) / ||g||``, the bias with
                       the noise floor subtracted.
``variance``           per-sample variance averaged over parameter coordinates, ``tr Cov(g_hat) / D``;
``relative_variance``  ``tr Cov(g_hat) / ||g||^2`` (one sample's squared error relative to the signal).

Entry points: :func:`tiny_problems`, :func:`exact_gradient`, :func:`estimator_gradients`,
:func:`bias_table`, :func:`format_table`, :func:`estimator_from_config`; the command line ``sbnn bias`` is
:mod:`sbnn.cli.bias`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from sbnn.estimators import SETTINGS, EstimatorConfig, log_unit_probabilities
from sbnn.layers import BayesianLayer, BayesLinear, Mode, NoisyBinaryUnits, standardised_margin

MAX_ENUMERATED_UNITS = 16
DEFAULT_SAMPLES = 20_000
DEFAULT_GROUPS = 100

StateLoss = Callable[[Tensor, Tensor], Tensor]
"""``state_loss(states, example_index) -> losses``: states of the last layer ``(N, n_last)`` (0/1, or
relaxed values in [0, 1]) and the index ``(N,)`` of the input example each row belongs to; returns the
loss of each row, ``(N,)``."""


# ----------------------------------------------------------------------------------------------------
# Enumerable problems
# ----------------------------------------------------------------------------------------------------


def all_states(unit_count: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Every binary state of ``unit_count`` units, ``(2**unit_count, unit_count)``, row ``k`` = bits of ``k``."""
    codes = torch.arange(2**unit_count).unsqueeze(-1)
    bits = torch.arange(unit_count)
    return ((codes >> bits) & 1).to(dtype)


def state_probabilities(z: Tensor, states: Tensor, noise: str = "gauss") -> Tensor:
    """Probability of each joint state given independent units' margins.

    Args:
        z: standardised margins ``(N, n)``.
        states: candidate states ``(K, n)`` in {0, 1}.
        noise: the units' noise kind.

    Returns:
        ``(N, K)``: ``prod_j P1_j^{s_j} P0_j^{1 - s_j}``, formed in log space.
    """
    log_p1, log_p0, _ = log_unit_probabilities(z, noise)
    return torch.exp(log_p1 @ states.T + log_p0 @ (1.0 - states).T)


class EnumerableProblem:
    """A stack of Bayesian layers and noisy binary units small enough to enumerate, and a loss.

    Args:
        name: short label used in tables.
        description: one line saying what the loss is.
        inputs: input examples ``(B, d)`` (float64 recommended).
        layers: the Bayesian layers, in order, in mode ``"noisy"``; layer ``l`` maps the previous layer's
            units (or ``inputs``) to the pre-activation of ``units[l]``.
        units: one :class:`NoisyBinaryUnits` per layer; only its ``threshold`` and ``base_noise_std`` are
            used (the estimator comes from the configuration being measured).
        state_loss: the loss of the last layer's state, see :data:`StateLoss`.

    The parameters whose gradient is measured are those of ``layers`` (the gradient that passes through
    the stochastic units); anything inside ``state_loss`` is held fixed.
    """

    def __init__(
        self,
        name: str,
        description: str,
        inputs: Tensor,
        layers: Sequence[BayesianLayer],
        units: Sequence[NoisyBinaryUnits],
        state_loss: StateLoss,
    ) -> None:
        if len(layers) != len(units) or not layers:
            raise ValueError(f"problem {name!r}: needs one NoisyBinaryUnits per layer, got "
                             f"{len(layers)} layers and {len(units)} units")
        if inputs.dim() != 2:
            raise ValueError(f"problem {name!r}: inputs must be (batch, features), got {tuple(inputs.shape)}")
        for layer in layers:
            if not isinstance(layer, BayesLinear):
                raise ValueError(f"problem {name!r}: layers must be BayesLinear, got {type(layer).__name__}")
            if layer.mode is not Mode.NOISY:
                raise ValueError(f"problem {name!r}: layers must be in mode 'noisy', found {layer.mode.value!r}")
        self.unit_counts = [layer.out_features for layer in layers]
        if sum(self.unit_counts) > MAX_ENUMERATED_UNITS:
            raise ValueError(f"problem {name!r}: {sum(self.unit_counts)} stochastic units, at most "
                             f"{MAX_ENUMERATED_UNITS} can be enumerated")
        self.name = name
        self.description = description
        self.inputs = inputs
        self.layers = list(layers)
        self.units = list(units)
        self.state_loss = state_loss

    @property
    def parameters(self) -> list[Tensor]:
        """The measured parameters, in a fixed order (the layers' parameters that require grad)."""
        return [p for layer in self.layers for p in layer.parameters() if p.requires_grad]

    @property
    def parameter_names(self) -> list[str]:
        """Names of :attr:`parameters`, e.g. ``layer0.weight_mu``, in the same order."""
        return [
            f"layer{index}.{name}"
            for index, layer in enumerate(self.layers)
            for name, p in layer.named_parameters()
            if p.requires_grad
        ]

    def margins(self, layer_index: int, layer_input: Tensor) -> Tensor:
        """Standardised margins ``z`` of layer ``layer_index`` for its input ``(N, in)``: ``(N, out)``."""
        unit = self.units[layer_index]
        pre = self.layers[layer_index](layer_input)
        return standardised_margin(pre, unit.threshold, unit.base_noise_std)

    def expected_loss(self, noise: str = "gauss") -> Tensor:
        """Exact ``E[L]`` (scalar), averaged over the input examples, differentiable in the parameters."""
        inputs = self.inputs
        states = all_states(self.unit_counts[0], dtype=inputs.dtype)
        reach = state_probabilities(self.margins(0, inputs), states, noise)  # (B, K_1)
        for layer_index in range(1, len(self.layers)):
            next_states = all_states(self.unit_counts[layer_index], dtype=inputs.dtype)
            transition = state_probabilities(self.margins(layer_index, states), next_states, noise)
            reach = reach @ transition  # (B, K_l)
            states = next_states
        batch, state_count = reach.shape
        example_index = torch.arange(batch).repeat_interleave(state_count)
        losses = self.state_loss(states.repeat(batch, 1), example_index).reshape(batch, state_count)
        return (reach * losses).sum(-1).mean()

    def sampled_loss(
        self, estimator: EstimatorConfig, replicates: int, generator: torch.Generator
    ) -> Tensor:
        """Mean loss of one forward pass over ``replicates`` copies of the batch (scalar).

        Its gradient is the estimator's gradient averaged over ``replicates`` independent samples.
        """
        batch = self.inputs.shape[0]
        activity = self.inputs.repeat(replicates, 1)
        example_index = torch.arange(batch).repeat(replicates)
        for layer_index in range(len(self.layers)):
            activity = estimator.sample(self.margins(layer_index, activity), generator=generator)
        return self.state_loss(activity, example_index).mean()

    def mean_firing_probability(self, noise: str = "gauss") -> float:
        """Mean ``P1`` of the first layer's units over the input examples (the later layers' depend on
        the sampled state)."""
        with torch.no_grad():
            log_p1, _, _ = log_unit_probabilities(self.margins(0, self.inputs), noise)
            return float(log_p1.exp().mean())


# ----------------------------------------------------------------------------------------------------
# Built-in tiny problems
# ----------------------------------------------------------------------------------------------------


def _random_binary(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return (torch.rand(shape, generator=generator, dtype=torch.float64) < 0.5).to(torch.float64)


def _bayes_layer(in_features: int, out_features: int, generator: torch.Generator) -> BayesLinear:
    layer = BayesLinear(in_features, out_features, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        # A nonzero bias so that its gradient is measured too.
        layer.bias.copy_(0.3 * torch.randn(out_features, generator=generator, dtype=torch.float64))
    return layer


def _units(threshold: float = 0.0, base_noise_std: float = 0.1) -> NoisyBinaryUnits:
    return NoisyBinaryUnits(threshold=threshold, base_noise_std=base_noise_std)


def linear_problem(seed: int = 0, *, units: int = 8, features: int = 5, examples: int = 4) -> EnumerableProblem:
    """One layer of ``units`` noisy binary units, loss ``L = c . b`` (linear in the units)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = _random_binary((examples, features), generator)
    layer = _bayes_layer(features, units, generator)
    weights = torch.randn(units, generator=generator, dtype=torch.float64)

    def loss(states: Tensor, example_index: Tensor) -> Tensor:
        return states @ weights

    return EnumerableProblem("linear", "L = c.b", inputs, [layer], [_units()], loss)


def quadratic_problem(
    seed: int = 0, *, units: int = 8, features: int = 5, examples: int = 4, threshold: float = 0.0,
    name: str = "quadratic",
) -> EnumerableProblem:
    """One layer of noisy binary units, loss ``L = c . b + b^T A b`` (quadratic in the units).

    ``threshold`` (in pre-activation units) shifts every margin down: a large one makes units fire rarely.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = _random_binary((examples, features), generator)
    layer = _bayes_layer(features, units, generator)
    linear_weights = torch.randn(units, generator=generator, dtype=torch.float64)
    coupling = torch.randn(units, units, generator=generator, dtype=torch.float64)
    coupling = (coupling + coupling.T) / 2.0

    def loss(states: Tensor, example_index: Tensor) -> Tensor:
        return states @ linear_weights + ((states @ coupling) * states).sum(-1)

    description = "L = c.b + b'Ab" + (f", threshold {threshold:g} (rare firing)" if threshold else "")
    return EnumerableProblem(name, description, inputs, [layer], [_units(threshold)], loss)


def network_problem(
    seed: int = 0, *, features: int = 5, hidden: tuple[int, int] = (6, 4), classes: int = 3, examples: int = 4
) -> EnumerableProblem:
    """Two layers of noisy binary units and a fixed linear readout, loss cross-entropy of the readout."""
    generator = torch.Generator().manual_seed(seed)
    inputs = _random_binary((examples, features), generator)
    first = _bayes_layer(features, hidden[0], generator)
    second = _bayes_layer(hidden[0], hidden[1], generator)
    readout = 2.0 * torch.randn(classes, hidden[1], generator=generator, dtype=torch.float64)
    labels = torch.randint(classes, (examples,), generator=generator)

    def loss(states: Tensor, example_index: Tensor) -> Tensor:
        log_probabilities = torch.log_softmax(states @ readout.T, dim=-1)
        return -log_probabilities.gather(-1, labels[example_index].unsqueeze(-1)).squeeze(-1)

    return EnumerableProblem(
        "network", f"{features}-{hidden[0]}-{hidden[1]} binary net, cross-entropy of a fixed readout",
        inputs, [first, second], [_units(), _units()], loss,
    )


def tiny_problems(seed: int = 0) -> list[EnumerableProblem]:
    """The built-in problems of ``sbnn bias --tiny``: linear, quadratic, quadratic with rarely-firing
    units, and a two-layer network with a cross-entropy loss."""
    return [
        linear_problem(seed),
        quadratic_problem(seed),
        quadratic_problem(seed, threshold=1.5, name="quadratic_rare"),
        network_problem(seed),
    ]


# ----------------------------------------------------------------------------------------------------
# Exact and estimated gradients
# ----------------------------------------------------------------------------------------------------


def _flat(gradients: Sequence[Tensor | None], parameters: Sequence[Tensor]) -> Tensor:
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gradients, parameters)
    ])


def exact_gradient(problem: EnumerableProblem, noise: str = "gauss") -> tuple[float, Tensor]:
    """Exact expected loss and its gradient.

    Returns:
        ``(E[L], g)`` with ``g`` the flattened gradient ``(D,)`` over :attr:`EnumerableProblem.parameters`.
    """
    parameters = problem.parameters
    loss = problem.expected_loss(noise)
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    return float(loss.detach()), _flat(gradients, parameters).detach()


@dataclass(frozen=True)
class GradientEstimate:
    """Monte-Carlo summary of an estimator's gradient.

    ``mean``: ``E[g_hat]`` estimate ``(D,)``; ``variance``: per-coordinate variance of a single-sample
    gradient ``(D,)``; ``samples``: number of single samples averaged into ``mean``.
    """

    mean: Tensor
    variance: Tensor
    samples: int


def _group_layout(samples: int, groups: int | None) -> tuple[int, int]:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2, got {samples!r}")
    group_count = min(DEFAULT_GROUPS if groups is None else groups, samples)
    if group_count < 2:
        raise ValueError(f"groups must be >= 2, got {groups!r}")
    return group_count, samples // group_count


def estimator_gradients(
    problem: EnumerableProblem,
    config: EstimatorConfig,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    *,
    groups: int | None = None,
) -> GradientEstimate:
    """Mean and per-sample variance of an estimator's gradient over ``samples`` sampled passes.

    The samples are drawn in ``groups`` backward passes (default :data:`DEFAULT_GROUPS`) over
    ``samples // groups`` replicates of the batch each; the variance of one sample is ``replicates``
    times the variance of the group means.  The same ``seed`` gives the same numbers, and (for the
    hard-sample methods, which draw the same unit noise) the same states for every estimator.
    """
    group_count, replicates = _group_layout(samples, groups)
    parameters = problem.parameters
    generator = torch.Generator().manual_seed(seed)
    group_means = []
    for _ in range(group_count):
        loss = problem.sampled_loss(config, replicates, generator)
        gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
        group_means.append(_flat(gradients, parameters).detach())
    means = torch.stack(group_means)
    return GradientEstimate(
        mean=means.mean(0), variance=replicates * means.var(0, correction=1), samples=group_count * replicates
    )


def compare_gradients(exact: Tensor, estimate: GradientEstimate) -> dict[str, float]:
    """Bias and variance numbers of ``estimate`` against the exact gradient ``(D,)`` (see module doc)."""
    exact_norm = float(exact.norm())
    if not exact_norm > 0:
        raise ValueError("the exact gradient is zero: relative bias is undefined for this problem")
    error_squared = float(((estimate.mean - exact) ** 2).sum())
    noise_floor_squared = float(estimate.variance.sum()) / estimate.samples
    mean_norm = float(estimate.mean.norm())
    cosine = float(estimate.mean @ exact) / (mean_norm * exact_norm) if mean_norm > 0 else 0.0
    return {
        "cosine": cosine,
        "relative_bias": math.sqrt(error_squared) / exact_norm,
        "relative_bias_se": math.sqrt(noise_floor_squared) / exact_norm,
        "relative_bias_debiased": math.sqrt(max(error_squared - noise_floor_squared, 0.0)) / exact_norm,
        "variance": float(estimate.variance.mean()),
        "relative_variance": float(estimate.variance.sum()) / exact_norm**2,
    }


# ----------------------------------------------------------------------------------------------------
# Estimator settings and the table
# ----------------------------------------------------------------------------------------------------


def estimator_label(config: EstimatorConfig) -> str:
    """Short label, e.g. ``st``, ``iwst(p=0.5)``, ``agr(tau=0.3)``, ``gr_mc(tau=1,k=32)``."""
    settings = [
        f"{key}={getattr(config, key):g}" for key in ("p", "lam", "tau", "k") if getattr(config, key) is not None
    ]
    if config.noise != "gauss":
        settings.append(f"noise={config.noise}")
    return config.method + (f"({','.join(settings)})" if settings else "")


DEFAULT_CONFIGS: tuple[EstimatorConfig, ...] = (
    EstimatorConfig("st"),
    EstimatorConfig("iwst", p=0.5),
    EstimatorConfig("iwst", lam=0.25),
    EstimatorConfig("iwst", lam=0.5),
    EstimatorConfig("iwst", lam=0.75),
    EstimatorConfig("agr", tau=0.01),
    EstimatorConfig("agr", tau=0.3),
    EstimatorConfig("agr", tau=1.0),
    EstimatorConfig("agr", tau=3.0),
    EstimatorConfig("relaxed", tau=0.5),
    EstimatorConfig("gr_mc", tau=1.0, k=32),
)


def bias_table(
    problems: Sequence[EnumerableProblem],
    configs: Sequence[EstimatorConfig] = DEFAULT_CONFIGS,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    *,
    groups: int | None = None,
) -> list[dict]:
    """One row per (problem, estimator): the :func:`compare_gradients` numbers plus identification.

    Row keys: ``problem``, ``estimator`` (label), ``method``, ``noise``, ``tau``, ``p``, ``lam``, ``k``,
    ``samples``, ``exact_loss``, ``gradient_norm``, ``mean_firing_probability``, ``cosine``,
    ``relative_bias``, ``relative_bias_se``, ``relative_bias_debiased``, ``variance``,
    ``relative_variance``.
    """
    rows = []
    for problem in problems:
        exact_by_noise: dict[str, tuple[float, Tensor]] = {}
        for config in configs:
            if config.noise not in exact_by_noise:
                exact_by_noise[config.noise] = exact_gradient(problem, config.noise)
            exact_loss, exact = exact_by_noise[config.noise]
            estimate = estimator_gradients(problem, config, samples, seed, groups=groups)
            rows.append({
                "problem": problem.name,
                "estimator": estimator_label(config),
                "method": config.method,
                "noise": config.noise,
                **{setting: getattr(config, setting) for setting in SETTINGS},   # tau, p, lam, k
                "samples": estimate.samples,
                "exact_loss": exact_loss,
                "gradient_norm": float(exact.norm()),
                "mean_firing_probability": problem.mean_firing_probability(config.noise),
                **compare_gradients(exact, estimate),
            })
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of :func:`bias_table` rows, one line per row, grouped by problem."""
    header = (f"{'problem':<15} {'estimator':<20} {'cosine':>8} {'rel.bias':>9} {'± MC se':>8} "
              f"{'debiased':>9} {'variance':>10} {'rel.var':>10}")
    lines = [header, "-" * len(header)]
    previous_problem = None
    for row in rows:
        if previous_problem is not None and row["problem"] != previous_problem:
            lines.append("")
        previous_problem = row["problem"]
        lines.append(
            f"{row['problem']:<15} {row['estimator']:<20} {row['cosine']:>8.4f} {row['relative_bias']:>9.4f} "
            f"{row['relative_bias_se']:>8.4f} {row['relative_bias_debiased']:>9.4f} "
            f"{row['variance']:>10.3e} {row['relative_variance']:>10.3e}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Run configurations (what ``sbnn bias CONFIG.toml``, :mod:`sbnn.cli.bias`, measures)
# ----------------------------------------------------------------------------------------------------

def estimator_from_config(path: str | Path) -> EstimatorConfig:
    """The estimator a run configuration trains with (``[train] estimator``, see :mod:`sbnn.config`).

    Raises:
        ValueError: (a :class:`sbnn.config.ConfigError`) the file is missing or invalid; the one-line
            message names the file and the key.
    """
    from sbnn.config import load_config  # the config module imports sbnn.aux_loss; keep imports one-way

    return load_config(path).train.estimator


__all__ = [
    "DEFAULT_CONFIGS",
    "MAX_ENUMERATED_UNITS",
    "EnumerableProblem",
    "GradientEstimate",
    "all_states",
    "bias_table",
    "compare_gradients",
    "estimator_from_config",
    "estimator_gradients",
    "estimator_label",
    "exact_gradient",
    "format_table",
    "linear_problem",
    "network_problem",
    "quadratic_problem",
    "state_probabilities",
    "tiny_problems",
]
