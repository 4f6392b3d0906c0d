"""SBNN models: binary MLP, spiking MLP, strided convolutional SNN and a normalisation-free residual net.

Build one with :func:`build_model` from a :class:`ModelConfig`; every builder returns an
:class:`SbnnModel`, whose interface is the same for all kinds:

* ``forward(x, *, generator=None)`` -> logits ``(batch, num_classes)``;
* ``kl()`` -> the KL divergence of the weight posterior from the prior (nats, scalar);
* ``set_mode("mean" | "noisy" | "sample")`` and ``freeze_sample(seed)`` (see :mod:`sbnn.layers`);
* ``describe()`` -> one :class:`LayerSpec` per deployable layer, what a NIR / Loihi converter needs.

Kinds (``ModelConfig.kind``):

``"bnn"``       binary MLP: Bayesian dense layers, each followed by noisy binary units (stateless), and a
                readout.  Input of any shape, flattened.
``"snn"``       spiking MLP (e.g. SHD, 700 input channels): Bayesian dense layers into CUBA-LIF neurons
                (optionally recurrent), and a readout.
``"conv_snn"``  convolutional SNN for event frames (e.g. DVS Gesture, ``(2, 128, 128)``): Bayesian convs with
                *strides* (no pooling layers: netx cannot export them) into CUBA-LIF neurons, flatten,
                optional dense CUBA-LIF layers, a readout.
``"resnet"``    residual conv net for images (e.g. CIFAR-10, ``(3, 32, 32)``) with binary or CUBA-LIF
                neurons and *no normalisation layers* (see :class:`ResidualBlock` for the scaling that
                lets 20+ layers train).  Not exportable: Loihi/netx has no residual adds.

``ModelConfig.neuron`` puts another registered neuron model (:mod:`sbnn.neurons`) in the hidden layers of
any kind.

Every model ends in the same readout: a Bayesian dense layer into a non-spiking CUBA integrator; the
logits are the integrator's membrane voltage averaged over the time steps (docs/method.md#readout).

Time.  Inputs are either sequences ``(batch, T, *input_shape)`` (spikes or counts, time second) or static
``(batch, *input_shape)`` (features, images).  A static input is presented unchanged for
``config.static_steps`` steps: the first layer's synaptic input is computed once and repeated, while
every neuron draws fresh noise at every step.  For stateless binary units this makes the logits an
average over ``static_steps`` noisy passes.  The torch model has no per-layer delay; on Loihi each
layer adds one step of delay, which an exporter must account for (run ``T + number of layers`` steps).

Loihi correspondence.  Synaptic biases are used only in front of binary units, which are CUBA neurons
without memory (``alpha = beta = 0``), so there a synaptic bias and a voltage bias are the same thing.
Spiking layers and the readout have no synaptic bias; their bias is the neuron's per-neuron voltage bias.
The first layer takes real-valued input (``binary_input=False``: its variance uses ``x^2``); all later
layers take 0/1 spikes.  A first layer fed 0/1 data (spike datasets, rate- or latency-coded images) finds
out at run time and computes as the later layers do, gathering weights where the input is sparse
(:meth:`sbnn.layers.BayesianLayer.forward`); ``input_binary`` of :meth:`SbnnModel.describe` stays the
declared ``False``.

The surrogate-gradient baseline (``ModelConfig.surrogate=True``) has the same architecture with
deterministic neurons: posterior-mean weights, no noise, no KL, and the fast-sigmoid surrogate
gradient (:func:`sbnn.layers.fast_sigmoid_spike`) through the hard thresholds.  It is a point estimate,
so its modes all compute the same function and ``freeze_sample`` does nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from sbnn.config_checks import (
    FieldError,
    boolean,
    check_value,
    checked,
    choice,
    estimator_value,
    integer,
    number,
    optional,
    positive_integers,
    validate_fields,
)
from sbnn.estimators import EstimatorConfig
from sbnn.layers import (
    DEFAULT_ESTIMATOR,
    BayesConv2d,
    BayesianLayer,
    BayesLinear,
    CubaIntegrator,
    CubaLif,
    Mode,
    NoisyBinaryUnits,
    WEIGHT_NOISE_MODES,
    Preactivation,
    as_mode,
    bayesian_layers,
    freeze_posterior_sample,
    kl_divergence,
    set_mode,
)
from sbnn.neurons import NeuronOptions, neuron_model, neuron_names

ModelKind = Literal["bnn", "snn", "conv_snn", "resnet"]
NeuronKind = Literal["cuba_lif", "binary", "integrator"]

MODEL_KINDS: tuple[str, ...] = ("bnn", "snn", "conv_snn", "resnet")
RESNET_NEURONS: tuple[str, ...] = ("binary", "cuba_lif")
RESIDUAL_EXPORT_ERROR = "residual adds cannot be exported to Loihi/netx"


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and neuron settings of an SBNN model (validated on construction).

    Lists may be given as lists (as TOML provides them); they are stored as tuples.  ``estimator`` may
    be an :class:`~sbnn.estimators.EstimatorConfig` or a dict of its fields.  Every invalid value raises
    :class:`~sbnn.config_checks.FieldError` (a ``ValueError``) whose ``key`` is the field; each field's
    check is declared with it.

    Attributes:
        kind: ``"bnn"``, ``"snn"``, ``"conv_snn"`` or ``"resnet"`` (see the module docstring).
        hidden: ``bnn``/``snn``: widths of the hidden layers; ``conv_snn``: output channels of the
            conv layers; ``resnet``: channels of the stages (the stem has ``hidden[0]``).
        estimator: gradient estimator of the noisy neurons (spiking kinds need ``noise="gauss"``).
        base_noise_std: ``s0 > 0``, the base noise of every noisy neuron (voltage / pre-activation units).
        threshold: ``theta > 0`` of the CUBA-LIF neurons (voltage units).
        binary_threshold: ``theta`` of the binary units (pre-activation units); 0 makes a unit fire with
            probability 1/2 at initialisation, since the weights start zero-mean.
        current_decay, voltage_decay: ``alpha``, ``beta`` in [0, 1] of the CUBA-LIF layers.  Defaults
            are exact on Loihi: ``alpha = 0.5`` is ``du = 2047``, ``beta = 0.875`` is ``dv = 512``.
        readout_current_decay, readout_voltage_decay: ``alpha``, ``beta`` of the integrator readout;
            the defaults (0, 0) make the logits the time-averaged synaptic input (rate decoding,
            whose scale does not grow with ``T``).
        recurrent: recurrent weights in the dense CUBA-LIF layers (``snn``, and the dense layers of
            ``conv_snn``).
        prior_std: prior standard deviation of every weight; ``None``: ``1/sqrt(fan_in)`` per layer.
        init_gain: initial posterior means are ``N(0, (init_gain / sqrt(fan_in))^2)``.
        init_sigma_ratio: initial posterior standard deviation is ``init_sigma_ratio / sqrt(fan_in)``
            (0.3 of the default prior std).  Larger values put more units near threshold but add weight
            noise that shrinks the backward signal per layer: on a 20-layer binary resnet the spread of
            per-layer gradient norms at initialisation was about 26 at 0.5, 11 at 0.3, 7 at 0.2.
        static_steps: ``T`` for static inputs ``(batch, *input_shape)``, presented unchanged each step.
        conv_kernels, conv_strides: per conv layer of ``conv_snn`` (one value applies to all layers);
            padding is ``kernel // 2``.  Strides do the downsampling (no pooling layers).
        dense_hidden: widths of the dense CUBA-LIF layers after the flatten of ``conv_snn``.
        resnet_blocks: residual blocks per stage; the net has ``2 * resnet_blocks * len(hidden) + 2``
            weight layers (stem, two convs per block, readout), e.g. 3 blocks x 3 stages = 20.
        resnet_neuron: ``"binary"`` or ``"cuba_lif"`` neurons in the residual net (unless ``neuron`` is set).
        residual_scale: scale of each residual branch; ``None``: ``1/sqrt(total blocks)``.
        learn_residual_scale: make each block's branch scale a learned parameter (SkipInit style).  Off
            by default: every branch injects sampling noise, and early in training the optimiser shrinks
            uninformative branches, which then stop receiving gradient (per-layer gradient norms spread
            by up to ~1000x where a fixed scale stayed below ~70 in the same runs).
        surrogate: build the surrogate-gradient baseline (deterministic neurons, posterior mean only,
            no KL, fast-sigmoid surrogate gradient).
        surrogate_slope: steepness of the fast-sigmoid surrogate, in 1/(voltage units).
        neuron: the hidden layers' neuron model, a name registered in :mod:`sbnn.neurons`; ``None``: the
            kind's own (see :attr:`hidden_neuron`).
        weight_noise: how training and the noisy evaluation sample the weight posterior: ``"per_step"``
            (local reparameterisation, weights redrawn at every step) or ``"per_sequence"`` (one draw per
            example held for the whole sequence, as each deployed posterior sample is); see
            docs/method.md#weight-noise.
    """

    kind: ModelKind = checked(choice(MODEL_KINDS), default="snn")
    hidden: tuple[int, ...] = checked(positive_integers(), default=(128,))
    estimator: EstimatorConfig = checked(estimator_value(method_defaults=False), default=DEFAULT_ESTIMATOR)
    base_noise_std: float = checked(number(above=0.0), default=0.1)
    threshold: float = checked(number(above=0.0), default=1.0)
    binary_threshold: float = checked(number(), default=0.0)
    current_decay: float = checked(number(at_least=0.0, at_most=1.0), default=0.5)
    voltage_decay: float = checked(number(at_least=0.0, at_most=1.0), default=0.875)
    readout_current_decay: float = checked(number(at_least=0.0, at_most=1.0), default=0.0)
    readout_voltage_decay: float = checked(number(at_least=0.0, at_most=1.0), default=0.0)
    recurrent: bool = checked(boolean, default=False)
    prior_std: float | None = checked(optional(number(above=0.0)), default=None)
    init_gain: float = checked(number(above=0.0), default=1.0)
    init_sigma_ratio: float = checked(number(above=0.0), default=0.3)
    static_steps: int = checked(integer(at_least=1), default=1)
    conv_kernels: tuple[int, ...] = checked(positive_integers(), default=(3,))
    conv_strides: tuple[int, ...] = checked(positive_integers(), default=(2,))
    dense_hidden: tuple[int, ...] = checked(positive_integers(allow_empty=True), default=(128,))
    resnet_blocks: int = checked(integer(at_least=1), default=3)
    resnet_neuron: Literal["binary", "cuba_lif"] = checked(choice(RESNET_NEURONS), default="binary")
    residual_scale: float | None = checked(optional(number(above=0.0)), default=None)
    learn_residual_scale: bool = checked(boolean, default=False)
    surrogate: bool = checked(boolean, default=False)
    surrogate_slope: float = checked(number(above=0.0), default=10.0)
    neuron: str | None = checked(optional(choice(neuron_names)), default=None)
    weight_noise: Literal["per_step", "per_sequence"] = checked(choice(WEIGHT_NOISE_MODES), default="per_step")

    def __post_init__(self) -> None:
        validate_fields(self)
        self._check_kind_specific()

    def _check_kind_specific(self) -> None:
        if self.kind == "conv_snn":
            for name in ("conv_kernels", "conv_strides"):
                if len(getattr(self, name)) not in (1, len(self.hidden)):
                    raise FieldError(name, f"must have one entry or one per conv layer ({len(self.hidden)}), "
                                           f"got {getattr(self, name)}")
        if self.recurrent and self.kind not in ("snn", "conv_snn"):
            raise FieldError("recurrent", f"only the dense spiking layers of 'snn' and 'conv_snn' can be "
                                          f"recurrent, not kind {self.kind!r}")
        if self.recurrent and self.kind == "conv_snn" and not self.dense_hidden:
            raise FieldError("recurrent", "kind 'conv_snn' has no dense spiking layer (dense_hidden is empty)")
        if self.recurrent and not self.spiking:
            raise FieldError("recurrent", f"neuron model {self.hidden_neuron!r} is memoryless: it has no "
                                          f"recurrent weights")
        if self.spiking and not self.surrogate and self.estimator.noise != "gauss":
            raise FieldError("estimator", "the spiking neurons' membrane noise is Gaussian, use noise='gauss'")

    @property
    def hidden_neuron(self) -> str:
        """The registered neuron model of the hidden layers: ``neuron`` if set, else ``"binary"`` for kind
        ``bnn`` and a binary ``resnet``, ``"cuba_lif"`` for the others."""
        if self.neuron is not None:
            return self.neuron
        binary = self.kind == "bnn" or (self.kind == "resnet" and self.resnet_neuron == "binary")
        return "binary" if binary else "cuba_lif"

    @property
    def spiking(self) -> bool:
        """Whether the hidden neurons keep state over time (CUBA-LIF; else memoryless binary units)."""
        return neuron_model(self.hidden_neuron).spiking

    @property
    def resnet_depth(self) -> int:
        """Weight layers on the main path of the residual net: stem, two per block, readout."""
        return 2 * self.resnet_blocks * len(self.hidden) + 2

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples, the estimator as a dict), e.g. to save in a run folder."""
        result: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, EstimatorConfig):
                value = {f.name: getattr(value, f.name) for f in fields(value)}
            elif isinstance(value, tuple):
                value = list(value)
            result[field.name] = value
        return result


# ----------------------------------------------------------------------------------------------------
# Export description
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One deployable layer, as :meth:`SbnnModel.describe` reports it (all tensors detached, on the CPU).

    Attributes:
        name: the layer's module path in the model (e.g. ``"layers.1"``); a flatten has its own name.
        kind: ``"dense"`` (dense synapses), ``"conv"`` (2-D conv synapses) or ``"flatten"`` (no weights:
            the next dense layer reads the ``(C, H, W)`` output in C-major order, netx's flatten).
        input_shape, output_shape: per example and time step, ``(N,)`` or ``(C, H, W)``.
        weight: the weights to deploy: the posterior mean in modes ``"mean"`` and ``"noisy"``, the frozen
            sample in mode ``"sample"``; ``(out, in)`` or ``(out, in/groups, kh, kw)``.
        input_binary: whether the layer's input is 0/1 spikes (``False`` for a real-valued first layer).
        stride, padding, dilation, groups: conv geometry (``None`` for other kinds).
        neuron: ``"cuba_lif"``, ``"binary"`` (a CUBA neuron without memory: ``alpha = beta = 0``,
            fires when ``V > threshold``) or ``"integrator"`` (non-spiking readout, :attr:`readout`);
            ``None`` for flatten.
        alpha, beta: current and voltage decay per step, in [0, 1].
        threshold: fires when ``V > threshold`` (voltage units); ``None`` for the readout.
        bias: per-neuron voltage bias, shaped ``output_shape`` (float), added every step.
        recurrent_weight: ``(N, N)`` weights from the layer's own previous-step spikes, or ``None``.

    Dynamics per step (no delay in the float model): ``I = alpha I + W s_in (+ W_rec s_prev)``,
    ``V = beta V + I + bias``, ``s = 1[V > threshold]``, ``V <- 0`` where ``s`` (binary and cuba_lif).
    The names are :class:`export.float_network.FloatLayer`'s, so export copies the fields across.
    """

    name: str
    kind: Literal["dense", "conv", "flatten"]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weight: Tensor | None = None
    input_binary: bool = True
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    dilation: tuple[int, int] | None = None
    groups: int | None = None
    neuron: NeuronKind | None = None
    alpha: float | None = None
    beta: float | None = None
    threshold: float | None = None
    bias: Tensor | None = None
    recurrent_weight: Tensor | None = None

    @property
    def readout(self) -> bool:
        """Whether this is the non-spiking readout (neuron ``"integrator"``), as ``FloatLayer.readout``."""
        return self.neuron == "integrator"

    @property
    def current_decay(self) -> float | None:
        """The old name of :attr:`alpha` (read-only, kept for code written against it)."""
        return self.alpha

    @property
    def voltage_decay(self) -> float | None:
        """The old name of :attr:`beta` (read-only, kept for code written against it)."""
        return self.beta


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _export_tensor(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu", copy=True)


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------


def _repeat_over_time(pre: Preactivation, steps: int) -> Preactivation:
    """``(batch, *shape)`` moments -> ``(batch, steps, *shape)`` views (the same input every step)."""

    def repeat(tensor: Tensor | None) -> Tensor | None:
        if tensor is None:
            return None
        return tensor.unsqueeze(1).expand(tensor.shape[0], steps, *tensor.shape[1:])

    return Preactivation(repeat(pre.mean), repeat(pre.variance))


class SynapticLayer(nn.Module):
    """A Bayesian synapse (dense or conv) into a group of neurons: one deployable Loihi layer.

    Args:
        synapse: :class:`BayesLinear` or :class:`BayesConv2d`.
        neurons: :class:`NoisyBinaryUnits`, :class:`CubaLif` or :class:`CubaIntegrator`.
        neuron_kind: ``"binary"``, ``"cuba_lif"`` or ``"integrator"`` (for :meth:`describe`).
        input_shape: per-step input shape the layer receives (before an optional flatten).
        output_shape: per-step neuron shape.
        flatten_input: flatten ``(C, H, W)`` inputs before a dense synapse.

    Forward: ``(batch, T, *input_shape)`` -> ``(batch, T, *output_shape)`` (spikes, or the integrator's
    membrane voltage); with ``repeat_steps`` the input is static, ``(batch, *input_shape)``.
    """

    def __init__(
        self,
        synapse: BayesianLayer,
        neurons: nn.Module,
        *,
        neuron_kind: NeuronKind,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        flatten_input: bool = False,
    ) -> None:
        super().__init__()
        self.synapse = synapse
        self.neurons = neurons
        self.neuron_kind = neuron_kind
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.flatten_input = flatten_input

    def preactivation(self, x: Tensor, *, repeat_steps: int | None = None,
                      generator: torch.Generator | None = None) -> Preactivation:
        """Synaptic input ``(batch, T, *output_shape)`` (moments, or a per-sequence weight draw's values from
        ``generator``); a static ``x`` is repeated over time."""
        single_step = repeat_steps == 1 if repeat_steps is not None else x.shape[1] == 1
        if self.flatten_input:
            x = x.flatten(1 if repeat_steps is not None else 2)
        pre = self.synapse(x, generator=generator, single_step=single_step)
        return pre if repeat_steps is None else _repeat_over_time(pre, repeat_steps)

    def forward(
        self, x: Tensor, *, generator: torch.Generator | None = None, repeat_steps: int | None = None
    ) -> Tensor:
        pre = self.preactivation(x, repeat_steps=repeat_steps, generator=generator)
        return self.neurons(pre, generator=generator)

    def describe(self, name: str) -> list[LayerSpec]:
        """The layer's :class:`LayerSpec` (preceded by a flatten spec if it flattens its input)."""
        specs = []
        synapse_input_shape = self.input_shape
        if self.flatten_input:
            synapse_input_shape = (math.prod(self.input_shape),)
            specs.append(LayerSpec(f"{name}.flatten", "flatten", self.input_shape, synapse_input_shape))
        synapse = self.synapse
        geometry: dict[str, Any] = {}
        if isinstance(synapse, BayesConv2d):
            kind = "conv"
            geometry = dict(
                stride=_pair(synapse.stride), padding=_pair(synapse.padding),
                dilation=_pair(synapse.dilation), groups=int(synapse.groups),
            )
        else:
            kind = "dense"
        specs.append(LayerSpec(
            name=name, kind=kind, input_shape=synapse_input_shape, output_shape=self.output_shape,
            weight=_export_tensor(synapse.effective_weight()), input_binary=synapse.binary_input,
            **geometry, **self._neuron_fields(),
        ))
        return specs

    def _voltage_bias(self) -> Tensor:
        """Per-neuron voltage bias, ``output_shape``.  A synaptic bias only precedes memoryless binary
        units, where it is the same as a voltage bias."""
        bias = torch.zeros(self.output_shape, dtype=self.synapse.weight_mu.dtype,
                           device=self.synapse.weight_mu.device)
        synaptic_bias = self.synapse.effective_bias()
        if synaptic_bias is not None:
            if self.neuron_kind != "binary":
                raise RuntimeError(
                    f"a synaptic bias in front of {self.neuron_kind} neurons has no Loihi form"
                )
            bias = bias + synaptic_bias.reshape((-1,) + (1,) * (len(self.output_shape) - 1))
        neuron_bias = getattr(self.neurons, "bias", None)
        if neuron_bias is not None:
            bias = bias + neuron_bias
        return _export_tensor(bias)

    def _neuron_fields(self) -> dict[str, Any]:
        neurons = self.neurons
        fields_: dict[str, Any] = {"neuron": self.neuron_kind, "bias": self._voltage_bias()}
        if isinstance(neurons, NoisyBinaryUnits):
            fields_.update(alpha=0.0, beta=0.0, threshold=neurons.threshold)
        elif isinstance(neurons, CubaLif):
            fields_.update(alpha=neurons.params.current_decay, beta=neurons.params.voltage_decay,
                           threshold=neurons.params.threshold)
            if neurons.recurrent is not None:
                fields_["recurrent_weight"] = _export_tensor(neurons.recurrent.effective_weight())
        elif isinstance(neurons, CubaIntegrator):
            fields_.update(alpha=neurons.params.current_decay, beta=neurons.params.voltage_decay, threshold=None)
        else:  # pragma: no cover - the builders only create the three kinds above
            raise TypeError(f"unknown neuron module {type(neurons).__name__}")
        return fields_


def _scaled_sum(shortcut: Preactivation, branch: Preactivation, scale: Tensor) -> Preactivation:
    """``shortcut + scale * branch`` for independent Gaussian moments: ``V = V_s + scale^2 V_b``."""
    mean = shortcut.mean + scale * branch.mean
    if shortcut.variance is None and branch.variance is None:
        return Preactivation(mean, None)
    variance = shortcut.variance if shortcut.variance is not None else 0.0
    if branch.variance is not None:
        variance = variance + scale * scale * branch.variance
    return Preactivation(mean, variance)


class ResidualBlock(nn.Module):
    """Pre-activation residual block without normalisation, on a real-valued residual stream.

    The stream ``h`` is a synaptic input (its local-reparameterisation moments, ``(batch, T, C, H, W)``),
    never a spike train; every neuron reads it and every conv reads spikes::

        s = neurons_in(h)
        h' = shortcut(s) + scale * conv_out(neurons_mid(conv_in(s)))      (shortcut(s) = h if identity)

    Why it trains at depth without normalisation: the branches' weights are independent, so the stream's
    variance after ``L`` blocks is ``Var(h_0) + scale^2 * sum_l Var(branch_l)``.  With each branch of
    variance ``O(1)`` (fan-in-scaled weights on 0/1 inputs) and ``scale = 1/sqrt(L)`` (the default), it
    stays within ``Var(h_0) + O(1)`` however deep the net; by the same argument the Jacobian of the
    stream, a product of ``(I + scale J_l)`` factors, keeps the backward signal of every block within a
    bounded factor of the last one (the Fixup / SkipInit argument, De & Smith 2020, with a non-zero
    initial scale so every branch receives gradient from the first step).  ``scale`` is fixed by default
    (see ``ModelConfig.learn_residual_scale``).

    Args:
        neurons_in, neurons_mid: binary units or CUBA-LIF layers.
        conv_in: the branch's first conv (carries the block's stride); conv_out: its second.
        shortcut: a strided 1x1 conv of ``s`` where shape changes, else ``None`` (identity on ``h``).
        scale: initial branch scale; learn_scale: whether it is a parameter.
    """

    def __init__(
        self,
        neurons_in: nn.Module,
        conv_in: BayesConv2d,
        neurons_mid: nn.Module,
        conv_out: BayesConv2d,
        shortcut: BayesConv2d | None,
        *,
        scale: float,
        learn_scale: bool,
    ) -> None:
        super().__init__()
        self.neurons_in = neurons_in
        self.conv_in = conv_in
        self.neurons_mid = neurons_mid
        self.conv_out = conv_out
        self.shortcut = shortcut
        scale_tensor = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(scale_tensor)
        else:
            self.register_buffer("scale", scale_tensor)

    def forward(self, stream: Preactivation, generator: torch.Generator | None = None) -> Preactivation:
        spikes = self.neurons_in(stream, generator=generator)
        shortcut = stream if self.shortcut is None else self.shortcut(spikes, generator=generator)
        middle = self.neurons_mid(self.conv_in(spikes, generator=generator), generator=generator)
        branch = self.conv_out(middle, generator=generator)
        return _scaled_sum(shortcut, branch, self.scale.to(branch.mean.dtype))


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------


class SbnnModel(nn.Module):
    """Base of every SBNN model (build one with :func:`build_model`).

    Attributes:
        config: the :class:`ModelConfig` it was built from.
        input_shape: per-step input shape, e.g. ``(700,)`` or ``(2, 128, 128)``.
        num_classes: number of logits.
    """

    def __init__(self, config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self._mode = Mode.MEAN if config.surrogate else Mode.NOISY
        # A learned temperature: the readout's time-averaged voltage stays small (rate decoding), which
        # left predictions badly under-confident (ECE ≈ 0.6 at 95 % accuracy on the quickstart). The scale
        # multiplies the logits only; argmax, and so every deployed network's decision, is unchanged.
        self.log_logit_scale = nn.Parameter(torch.zeros(()))

    # --- forward ------------------------------------------------------------------------------------

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Logits ``(batch, num_classes)``: the readout's membrane voltage averaged over time.

        Args:
            x: a sequence ``(batch, T, *input_shape)`` (spikes or counts) or a static input
                ``(batch, *input_shape)``, presented for ``config.static_steps`` steps; any real dtype.
            generator: random source of the neuron and weight noise (mode ``"noisy"``), on ``x``'s device.
        """
        return self.readout_trace(x, generator=generator).mean(1) * self.logit_scale

    @property
    def logit_scale(self) -> Tensor:
        """The learned factor from the readout's time-averaged voltage to the logits (scalar, > 0)."""
        return self.log_logit_scale.exp()

    def readout_trace(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The readout's membrane voltage at every step, ``(batch, T, num_classes)`` (see :meth:`forward`)."""
        x, repeat_steps = self._prepare_input(x)
        return self._run(x, repeat_steps=repeat_steps, generator=generator)

    def _prepare_input(self, x: Tensor) -> tuple[Tensor, int | None]:
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a tensor input, got {type(x).__name__}")
        static_dims = 1 + len(self.input_shape)
        if x.dim() == static_dims and tuple(x.shape[1:]) == self.input_shape:
            repeat_steps = self.config.static_steps
        elif x.dim() == static_dims + 1 and tuple(x.shape[2:]) == self.input_shape and x.shape[1] > 0:
            repeat_steps = None
        else:
            raise ValueError(
                f"expected input (batch, *{self.input_shape}) or (batch, T, *{self.input_shape}), "
                f"got {tuple(x.shape)}"
            )
        dtype = next(self.parameters()).dtype
        return x.to(dtype), repeat_steps

    def _run(self, x: Tensor, *, repeat_steps: int | None, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    # --- posterior ----------------------------------------------------------------------------------

    @property
    def is_surrogate(self) -> bool:
        """Whether this is the deterministic surrogate-gradient baseline."""
        return self.config.surrogate

    @property
    def mode(self) -> Mode:
        """The mode last set with :meth:`set_mode` (``"noisy"`` after building an SBNN)."""
        return self._mode

    def set_mode(self, mode: Mode | str) -> "SbnnModel":
        """Switch every layer to ``"mean"``, ``"noisy"`` or ``"sample"`` (see :mod:`sbnn.layers`).

        The surrogate baseline accepts every mode but always computes its deterministic function.
        Returns ``self``.
        """
        self._mode = as_mode(mode)
        if not self.is_surrogate:
            set_mode(self, self._mode)
        return self

    def freeze_sample(self, seed: int) -> None:
        """Freeze one posterior sample of every Bayesian layer from ``seed`` (used in mode ``"sample"``).

        The same seed gives the same sample on every device.  No-op for the surrogate baseline (a point
        estimate: its only sample is its weights).
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not self.is_surrogate:
            freeze_posterior_sample(self, seed)

    def kl(self) -> Tensor:
        """``KL(q(W) || p(W))`` summed over every Bayesian layer, in nats (scalar); 0 for the surrogate."""
        if self.is_surrogate:
            return torch.zeros((), device=next(self.parameters()).device)
        return kl_divergence(self)

    # --- export -------------------------------------------------------------------------------------

    def describe(self) -> list[LayerSpec]:
        """The deployable layers in order, with the weights of the current mode (see :class:`LayerSpec`)."""
        raise NotImplementedError


class LayeredModel(SbnnModel):
    """A feed-forward stack of :class:`SynapticLayer` s (kinds ``bnn``, ``snn``, ``conv_snn``)."""

    def __init__(self, config: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
                 layers: Sequence[SynapticLayer]) -> None:
        super().__init__(config, input_shape, num_classes)
        self.layers = nn.ModuleList(layers)

    def _run(self, x: Tensor, *, repeat_steps: int | None, generator: torch.Generator | None) -> Tensor:
        hidden = self.layers[0](x, generator=generator, repeat_steps=repeat_steps)
        for layer in self.layers[1:]:
            hidden = layer(hidden, generator=generator)
        return hidden

    def describe(self) -> list[LayerSpec]:
        specs: list[LayerSpec] = []
        for index, layer in enumerate(self.layers):
            specs.extend(layer.describe(f"layers.{index}"))
        return specs


class ResidualModel(SbnnModel):
    """Normalisation-free residual conv net (kind ``resnet``): stem, :class:`ResidualBlock` s, neurons on the
    final stream, global average pooling of their spikes, readout."""

    def __init__(self, config: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *,
                 stem: BayesConv2d, blocks: Sequence[ResidualBlock], final_neurons: nn.Module,
                 readout: SynapticLayer) -> None:
        super().__init__(config, input_shape, num_classes)
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.final_neurons = final_neurons
        self.readout = readout

    def _run(self, x: Tensor, *, repeat_steps: int | None, generator: torch.Generator | None) -> Tensor:
        stream = self.stem(x, generator=generator, single_step=(repeat_steps or x.shape[1]) == 1)
        if repeat_steps is not None:
            stream = _repeat_over_time(stream, repeat_steps)
        for block in self.blocks:
            stream = block(stream, generator=generator)
        spikes = self.final_neurons(stream, generator=generator)
        pooled = spikes.mean(dim=(-2, -1))  # (batch, T, C): firing fraction per channel
        return self.readout(pooled, generator=generator)

    def weight_layers(self) -> list[tuple[str, BayesianLayer]]:
        """``(name, layer)`` of every Bayesian layer, stem first, readout last (shortcuts included)."""
        return [(name, module) for name, module in self.named_modules() if isinstance(module, BayesianLayer)]

    def describe(self) -> list[LayerSpec]:
        raise NotImplementedError(RESIDUAL_EXPORT_ERROR)


# ----------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------


def _conv_output_shape(shape: tuple[int, int, int], channels: int, kernel: int, stride: int,
                       padding: int) -> tuple[int, int, int]:
    height, width = (
        (size + 2 * padding - (kernel - 1) - 1) // stride + 1 for size in shape[1:]
    )
    return channels, height, width


class _LayerFactory:
    """Creates layers from a config, drawing every initial weight from one seeded CPU generator."""

    def __init__(self, config: ModelConfig, seed: int) -> None:
        self.config = config
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.mode = Mode.MEAN if config.surrogate else Mode.NOISY
        self.surrogate_slope = config.surrogate_slope if config.surrogate else None

    def _posterior_kwargs(self, fan_in: int) -> dict[str, Any]:
        return {
            "prior_std": self.config.prior_std,
            "init_mu_std": self.config.init_gain / math.sqrt(fan_in),
            "init_sigma": self.config.init_sigma_ratio / math.sqrt(fan_in),
            "mode": self.mode,
            "generator": self.generator,
            "weight_noise": self.config.weight_noise,
        }

    def dense(self, in_features: int, out_features: int, *, bias: bool, binary_input: bool) -> BayesLinear:
        return BayesLinear(in_features, out_features, bias=bias, binary_input=binary_input,
                           **self._posterior_kwargs(in_features))

    def conv(self, in_channels: int, out_channels: int, kernel: int, stride: int, *, bias: bool,
             binary_input: bool) -> BayesConv2d:
        return BayesConv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=bias,
                           binary_input=binary_input, **self._posterior_kwargs(in_channels * kernel * kernel))

    @property
    def synaptic_bias(self) -> bool:
        """Whether the hidden layers' synapses carry a bias: only in front of memoryless binary units (spiking
        neurons carry a voltage bias of their own)."""
        return not self.config.spiking

    @property
    def neuron_kind(self) -> NeuronKind:
        """The CUBA neuron the hidden neurons deploy as, for :meth:`SynapticLayer.describe`."""
        return "cuba_lif" if self.config.spiking else "binary"

    def hidden_neurons(self, shape: tuple[int, ...], *, recurrent: bool = False) -> nn.Module:
        """One layer of the config's hidden neuron model (:attr:`ModelConfig.hidden_neuron`) of neuron shape
        ``(n,)`` or ``(C, H, W)``, with recurrent weights (drawn now) if ``recurrent``."""
        recurrent_kwargs = self._posterior_kwargs(math.prod(shape)) if recurrent else None
        options = NeuronOptions(self.mode, self.surrogate_slope, recurrent_kwargs)
        return neuron_model(self.config.hidden_neuron).build(tuple(shape), self.config, options)

    def readout(self, in_features: int, num_classes: int, *, binary_input: bool = True,
                flatten_shape: tuple[int, ...] | None = None) -> SynapticLayer:
        config = self.config
        synapse = self.dense(in_features, num_classes, bias=False, binary_input=binary_input)
        integrator = CubaIntegrator(num_classes, current_decay=config.readout_current_decay,
                                    voltage_decay=config.readout_voltage_decay, mode=self.mode)
        return SynapticLayer(
            synapse, integrator, neuron_kind="integrator",
            input_shape=flatten_shape if flatten_shape is not None else (in_features,),
            output_shape=(num_classes,), flatten_input=flatten_shape is not None,
        )


def _check_build_arguments(input_shape: Sequence[int], num_classes: int, seed: int) -> tuple[int, ...]:
    shape = check_value("input_shape", positive_integers(), input_shape)
    check_value("num_classes", integer(at_least=1), num_classes)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return shape


def _build_mlp(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
               factory: _LayerFactory) -> LayeredModel:
    """``bnn``: dense + binary units; ``snn``: dense + CUBA-LIF (optionally recurrent); then the readout."""
    layers: list[SynapticLayer] = []
    previous_shape = input_shape
    for index, width in enumerate(config.hidden):
        first = index == 0
        in_features = math.prod(previous_shape)
        synapse = factory.dense(in_features, width, bias=factory.synaptic_bias, binary_input=not first)
        neurons = factory.hidden_neurons((width,), recurrent=config.recurrent)
        layers.append(SynapticLayer(synapse, neurons, neuron_kind=factory.neuron_kind, input_shape=previous_shape,
                                    output_shape=(width,), flatten_input=len(previous_shape) > 1))
        previous_shape = (width,)
    layers.append(factory.readout(config.hidden[-1], num_classes))
    return LayeredModel(config, input_shape, num_classes, layers)


def _build_conv_snn(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
                    factory: _LayerFactory) -> LayeredModel:
    """Strided convs + CUBA-LIF, flatten, dense CUBA-LIF layers, readout (exportable to netx)."""
    if len(input_shape) != 3:
        raise ValueError(f"kind 'conv_snn' needs an input shape (C, H, W), got {input_shape}")
    count = len(config.hidden)
    kernels = config.conv_kernels * count if len(config.conv_kernels) == 1 else config.conv_kernels
    strides = config.conv_strides * count if len(config.conv_strides) == 1 else config.conv_strides
    layers: list[SynapticLayer] = []
    shape = input_shape
    for index, (channels, kernel, stride) in enumerate(zip(config.hidden, kernels, strides)):
        output_shape = _conv_output_shape(shape, channels, kernel, stride, kernel // 2)
        synapse = factory.conv(shape[0], channels, kernel, stride, bias=factory.synaptic_bias,
                               binary_input=index > 0)
        layers.append(SynapticLayer(synapse, factory.hidden_neurons(output_shape), neuron_kind=factory.neuron_kind,
                                    input_shape=shape, output_shape=output_shape))
        shape = output_shape
    for width in config.dense_hidden:
        synapse = factory.dense(math.prod(shape), width, bias=factory.synaptic_bias, binary_input=True)
        layers.append(SynapticLayer(synapse, factory.hidden_neurons((width,), recurrent=config.recurrent),
                                    neuron_kind=factory.neuron_kind, input_shape=shape, output_shape=(width,),
                                    flatten_input=len(shape) > 1))
        shape = (width,)
    layers.append(factory.readout(math.prod(shape), num_classes,
                                  flatten_shape=shape if len(shape) > 1 else None))
    return LayeredModel(config, input_shape, num_classes, layers)


def _build_resnet(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
                  factory: _LayerFactory) -> ResidualModel:
    """Stem conv, ``len(hidden)`` stages of ``resnet_blocks`` blocks (stride 2 from the second stage on),
    neurons, global average pooling of their spikes, readout."""
    if len(input_shape) != 3:
        raise ValueError(f"kind 'resnet' needs an input shape (C, H, W), got {input_shape}")
    conv_bias = factory.synaptic_bias
    total_blocks = config.resnet_blocks * len(config.hidden)
    scale = config.residual_scale if config.residual_scale is not None else 1.0 / math.sqrt(total_blocks)
    stem = factory.conv(input_shape[0], config.hidden[0], 3, 1, bias=conv_bias, binary_input=False)
    shape = _conv_output_shape(input_shape, config.hidden[0], 3, 1, 1)
    blocks: list[ResidualBlock] = []
    for stage, channels in enumerate(config.hidden):
        for block_index in range(config.resnet_blocks):
            stride = 2 if stage > 0 and block_index == 0 else 1
            output_shape = _conv_output_shape(shape, channels, 3, stride, 1)
            shortcut = None
            if stride != 1 or shape[0] != channels:
                shortcut = factory.conv(shape[0], channels, 1, stride, bias=conv_bias, binary_input=True)
            neurons_in = factory.hidden_neurons(shape)
            conv_in = factory.conv(shape[0], channels, 3, stride, bias=conv_bias, binary_input=True)
            neurons_mid = factory.hidden_neurons(output_shape)
            conv_out = factory.conv(channels, channels, 3, 1, bias=conv_bias, binary_input=True)
            blocks.append(ResidualBlock(neurons_in, conv_in, neurons_mid, conv_out, shortcut, scale=scale,
                                        learn_scale=config.learn_residual_scale))
            shape = output_shape
    final_neurons = factory.hidden_neurons(shape)
    readout = factory.readout(shape[0], num_classes, binary_input=False)
    return ResidualModel(config, input_shape, num_classes, stem=stem, blocks=blocks,
                         final_neurons=final_neurons, readout=readout)


def build_model(config: ModelConfig, input_shape: Sequence[int], num_classes: int, *, seed: int) -> SbnnModel:
    """Build the model ``config`` describes, deterministically for ``seed``.

    Args:
        config: architecture and neuron settings.
        input_shape: per-step input shape (``Dataset.input_shape``), e.g. ``(64,)``, ``(700,)``,
            ``(2, 128, 128)`` or ``(3, 32, 32)``.
        num_classes: number of classes (logits).
        seed: seeds the initial weights (one CPU generator, so the same seed gives the same model).

    Returns:
        An :class:`SbnnModel` on the CPU in float32, in mode ``"noisy"`` (the surrogate baseline:
        ``"mean"``).
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    shape = _check_build_arguments(input_shape, num_classes, seed)
    factory = _LayerFactory(config, seed)
    if config.kind in ("bnn", "snn"):
        model: SbnnModel = _build_mlp(config, shape, num_classes, factory)
    elif config.kind == "conv_snn":
        model = _build_conv_snn(config, shape, num_classes, factory)
    else:
        model = _build_resnet(config, shape, num_classes, factory)
    if config.surrogate:
        # A point estimate: the posterior scales are unused, so they are frozen rather than left without
        # gradient.
        for layer in bayesian_layers(model):
            for parameter in (layer.weight_rho, layer.bias_rho):
                if parameter is not None:
                    parameter.requires_grad_(False)
    return model


__all__ = [
    "MODEL_KINDS",
    "RESIDUAL_EXPORT_ERROR",
    "RESNET_NEURONS",
    "LayerSpec",
    "LayeredModel",
    "ModelConfig",
    "ResidualBlock",
    "ResidualModel",
    "SbnnModel",
    "SynapticLayer",
    "build_model",
]
