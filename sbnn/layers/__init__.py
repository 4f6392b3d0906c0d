"""Bayesian layers and stochastic neurons of the SBNN (docs/method.md#sbnn).

Every mode-aware module has a ``mode`` (:mod:`sbnn.layers.modes`): ``"mean"`` (posterior-mean weights,
deterministic units: what deploys), ``"noisy"`` (training: local-reparameterisation moments and sampled
units) or ``"sample"`` (one frozen posterior sample, deterministic units).  The parts:

* :mod:`~sbnn.layers.modes`: :class:`Mode`, :class:`ModeAware`, :func:`set_mode`, :class:`Preactivation`;
* :mod:`~sbnn.layers.bayesian`: :class:`BayesLinear`, :class:`BayesConv2d`, :func:`kl_divergence`,
  :func:`freeze_posterior_sample`;
* :mod:`~sbnn.layers.binary`: :class:`NoisyBinaryUnits` and the surrogate :func:`fast_sigmoid_spike`;
* :mod:`~sbnn.layers.cuba`: Loihi's CUBA-LIF as step functions, :func:`loihi_decays`;
* :mod:`~sbnn.layers.fused_lif`: the noisy LIF over a sequence with a hand-written backward;
* :mod:`~sbnn.layers.cuba_modules`: :class:`CubaLif` and :class:`CubaIntegrator` over sequences
  ``(batch, T, *neuron_shape)``.
"""

from sbnn.estimators import DEFAULT_ESTIMATOR
from sbnn.layers.bayesian import (
    WEIGHT_NOISE_MODES,
    BayesConv2d,
    BayesianLayer,
    BayesLinear,
    SequenceDraw,
    bayesian_layers,
    freeze_posterior_sample,
    gaussian_kl,
    kl_divergence,
)
from sbnn.layers.binary import NoisyBinaryUnits, fast_sigmoid_spike, standardised_margin
from sbnn.layers.cuba import (
    CubaParameters,
    CubaState,
    cuba_integrator_step,
    cuba_lif_step,
    cuba_lif_step_noisy,
    loihi_decays,
)
from sbnn.layers.cuba_modules import CubaIntegrator, CubaLif, CubaLifOutput
from sbnn.layers.fused_lif import _FusedNoisyLif  # noqa: F401  (benchmarks/gpu_check.py times it)
from sbnn.layers.modes import Mode, ModeAware, Preactivation, as_mode, set_mode

__all__ = [
    "DEFAULT_ESTIMATOR",
    "BayesConv2d",
    "BayesLinear",
    "BayesianLayer",
    "SequenceDraw",
    "WEIGHT_NOISE_MODES",
    "CubaIntegrator",
    "CubaLif",
    "CubaLifOutput",
    "CubaParameters",
    "CubaState",
    "Mode",
    "ModeAware",
    "NoisyBinaryUnits",
    "Preactivation",
    "as_mode",
    "bayesian_layers",
    "cuba_integrator_step",
    "cuba_lif_step",
    "cuba_lif_step_noisy",
    "fast_sigmoid_spike",
    "freeze_posterior_sample",
    "gaussian_kl",
    "kl_divergence",
    "loihi_decays",
    "set_mode",
    "standardised_margin",
]
