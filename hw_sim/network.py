"""The network description: one frozen, integer Loihi network that every implementation consumes.

A :class:`Network` is an input shape followed by neuron layers in order. Each layer is a synapse
(dense, optionally with recurrent weights, or conv) feeding a group of Lava CUBA neurons
(:class:`CubaNeurons`). A *readout* is a dense layer whose neurons are netx's non-spiking integrator.
Shapes follow torch/slayer order: dense layers are ``(N,)``, conv layers ``(C, H, W)``. A dense layer
that follows a conv layer reads the conv output flattened in (C, H, W) order (netx's ``flatten``).

Arithmetic (docs/loihi.md), per layer and step t, with ``s_in`` the previous layer's spikes::

    a(t)   = shift(Σ W_q · s_in(t - 1), weight_exp)      # dense; conv: wrap24(conv(s_in(t - 1), W))
    a(t)   = Σ_d shift(Σ_{delay = d} W_q · s_in(t - 1 - d), weight_exp)   # dense with synaptic delays
    u(t)   = wrap24(trunc(u(t-1) · (4095 - du) / 4096) + (a(t) << 6))
    v(t)   = clip(trunc(v(t-1) · (4096 - dv) / 4096) + u(t) + bias_mant·2^bias_exp, ±(2^23 - 1))
    s(t)   = v(t) > vth << 6;   v(t) ← 0 where s(t)

All fields are plain integers or integer numpy arrays; validation happens on construction, so a
``Network`` that exists is one Lava accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from .arith import STATE_MAX, SignMode, effective_bias, infer_sign_mode

# Ranges that Lava's CPU models accept (docs/loihi.md; bias_mant is stored as int16 by the LIF model).
DU_RANGE = (-1, 4095)            # du = -1 is netx's "no current decay" integrator (iDecay = 0)
DV_RANGE = (0, 4096)
VTH_RANGE = (-(1 << 31), (1 << 31) - 1)   # Lava's LIF holds vth in int32 and does not enforce its 17 bits
                                          # (slayer's Affine readout writes 2^18 - 1; any vth >= 2^17 never fires)
BIAS_MANT_RANGE = (-(1 << 15), (1 << 15) - 1)
BIAS_EXP_RANGE = (-16, 16)
WEIGHT_EXP_RANGE = (-8, 8)
WEIGHT_BITS_RANGE = (1, 9)         # 9 keeps all bits of mixed weights (netx picks it for odd |w| > 127);
                                   # Lava turns 9 bits of single-signed weights into all zeros
MAX_DELAY = 62                     # netx builds Lava's DelayDense with max_delay 62 and clamps larger delays
DENSE_WEIGHT_RANGE = (-(1 << 15), (1 << 15) - 1)   # clipped to 8 bits by Lava; kept sane here
CONV_WEIGHT_RANGE = (-(1 << 15), (1 << 15) - 1)    # used as given by Lava's Conv
READOUT_NEURON = dict(du=-1, dv=4096, vth=1 << 17)  # netx's dense layer without a neuron group
NEVER_FIRES = 1 << 17           # v ≤ 2^23 - 1 < 2^17 << 6: a threshold no voltage can exceed


class NetworkError(ValueError):
    """An invalid network description; the message names the layer and the field."""


def _check_int_array(name: str, value: np.ndarray | int, low: int, high: int) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise NetworkError(f"{name} must be integer-valued")
    array = array.astype(np.int64)
    if array.size and (array.min() < low or array.max() > high):
        raise NetworkError(f"{name} must lie in [{low}, {high}], found [{array.min()}, {array.max()}]")
    return array


def _check_int(name: str, value: int, low: int, high: int) -> int:
    array = _check_int_array(name, value, low, high)
    if array.ndim != 0:
        raise NetworkError(f"{name} must be a scalar, found shape {array.shape}")
    return int(array)


def _frozen_array(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.int64, copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class CubaNeurons:
    """Parameters of one group of Lava bit-accurate LIF (CUBA) neurons.

    ``du``, ``dv`` (decays in 1/4096; current factor (4095 - du)/4096, voltage factor (4096 - dv)/4096)
    and ``vth`` (threshold mantissa, compared as v > vth·64) are per layer, as in Lava; ``bias_mant``
    and ``bias_exp`` are per neuron, shaped like the layer. The bias added to v each step is
    ``bias_mant << bias_exp`` (``>>`` for negative exponents) and is *not* shifted by 6.
    """

    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray
    bias_exp: np.ndarray

    @classmethod
    def create(cls, shape: tuple[int, ...], *, du: int, dv: int, vth: int,
               bias_mant: np.ndarray | int = 0, bias_exp: np.ndarray | int = 0) -> "CubaNeurons":
        """Neurons for a layer of ``shape``; scalar biases are broadcast to every neuron."""
        return cls(du=du, dv=dv, vth=vth,
                   bias_mant=np.broadcast_to(np.asarray(bias_mant, dtype=np.int64), shape),
                   bias_exp=np.broadcast_to(np.asarray(bias_exp, dtype=np.int64), shape))

    @classmethod
    def integrator(cls, shape: tuple[int, ...], bias_mant: np.ndarray | int = 0) -> "CubaNeurons":
        """netx's readout neuron: no current decay, v = u + bias, a threshold v can never exceed."""
        return cls.create(shape, **READOUT_NEURON, bias_mant=bias_mant, bias_exp=6)

    def __post_init__(self) -> None:
        object.__setattr__(self, "du", _check_int("du", self.du, *DU_RANGE))
        object.__setattr__(self, "dv", _check_int("dv", self.dv, *DV_RANGE))
        object.__setattr__(self, "vth", _check_int("vth", self.vth, *VTH_RANGE))
        mant = _check_int_array("bias_mant", self.bias_mant, *BIAS_MANT_RANGE)
        exp = _check_int_array("bias_exp", self.bias_exp, *BIAS_EXP_RANGE)
        if mant.shape != exp.shape:
            raise NetworkError(f"bias_mant shape {mant.shape} differs from bias_exp shape {exp.shape}")
        bias = effective_bias(mant, exp)
        if bias.size and np.abs(bias).max() > STATE_MAX:
            raise NetworkError(f"bias_mant·2^bias_exp must stay within ±{STATE_MAX}, found {np.abs(bias).max()}")
        object.__setattr__(self, "bias_mant", _frozen_array(mant))
        object.__setattr__(self, "bias_exp", _frozen_array(exp))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.bias_mant.shape)

    @property
    def bias(self) -> np.ndarray:
        """Effective per-neuron bias added to v each step (int64, layer shape)."""
        return effective_bias(self.bias_mant, self.bias_exp)

    @property
    def is_integrator(self) -> bool:
        """netx's readout neuron exactly (the file needs no neuron group)."""
        return (self.du, self.dv, self.vth) == tuple(READOUT_NEURON.values())

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CubaNeurons) and (self.du, self.dv, self.vth) == (other.du, other.dv, other.vth)
                and np.array_equal(self.bias_mant, other.bias_mant) and np.array_equal(self.bias_exp, other.bias_exp))


@dataclass(frozen=True, eq=False)
class DenseLayer:
    """A Lava bit-accurate Dense synapse (and optional recurrent Dense) feeding CUBA neurons.

    ``weights`` is (out, in) with ``in`` the previous layer's size (flattened in C, H, W order).
    Lava clips them to 8 bits per ``sign_mode`` and truncates them to ``num_weight_bits``;
    the synaptic sum is shifted by ``weight_exp``. ``recurrent_weights`` (out, out), if given, is a second
    Dense from this layer's spikes back to its own neurons with the same exponent, bits and sign mode
    (its sign mode inferred separately when INFERRED, as netx does). ``delays`` (out, in) and
    ``recurrent_delays`` (out, out), integers in [0, MAX_DELAY] steps, make the synapse Lava's DelayDense:
    a spike crossing a connection of delay d arrives d steps after the usual one-step synaptic delay, and the
    weight exponent's shift (floor) applies to each delay group's sum separately. ``readout`` marks a non-spiking
    output layer whose membrane v is the result: its threshold must be at least 2^17, which no v can exceed
    (netx's own readout, a dense layer without a neuron group, is du = -1, dv = 4096, vth = 2^17).
    """

    weights: np.ndarray
    neurons: CubaNeurons
    weight_exp: int = 0
    num_weight_bits: int = 8
    sign_mode: SignMode = SignMode.INFERRED
    recurrent_weights: np.ndarray | None = None
    readout: bool = False
    delays: np.ndarray | None = None
    recurrent_delays: np.ndarray | None = None

    def __post_init__(self) -> None:
        weights = _check_int_array("weights", self.weights, *DENSE_WEIGHT_RANGE)
        if weights.ndim != 2:
            raise NetworkError(f"weights must be (out, in), found shape {weights.shape}")
        object.__setattr__(self, "weights", _frozen_array(weights))
        object.__setattr__(self, "weight_exp", _check_int("weight_exp", self.weight_exp, *WEIGHT_EXP_RANGE))
        object.__setattr__(self, "num_weight_bits",
                           _check_int("num_weight_bits", self.num_weight_bits, *WEIGHT_BITS_RANGE))
        try:
            object.__setattr__(self, "sign_mode", SignMode(int(self.sign_mode)))
        except ValueError:
            raise NetworkError(f"sign_mode must be one of {[int(m) for m in SignMode]}, found {self.sign_mode}")
        if self.neurons.shape != (weights.shape[0],):
            raise NetworkError(f"neurons shape {self.neurons.shape} does not match weights rows {weights.shape[0]}")
        if self.recurrent_weights is not None:
            recurrent = _check_int_array("recurrent_weights", self.recurrent_weights, *DENSE_WEIGHT_RANGE)
            if recurrent.shape != (weights.shape[0],) * 2:
                raise NetworkError(f"recurrent_weights must be ({weights.shape[0]}, {weights.shape[0]}), "
                                   f"found {recurrent.shape}")
            object.__setattr__(self, "recurrent_weights", _frozen_array(recurrent))
        for name, matrix in (("delays", weights), ("recurrent_delays", self.recurrent_weights)):
            delays = getattr(self, name)
            if delays is None:
                continue
            if matrix is None:
                raise NetworkError(f"{name} need recurrent_weights")
            delays = _check_int_array(name, delays, 0, MAX_DELAY)
            if delays.shape != matrix.shape:
                raise NetworkError(f"{name} must have the weights' shape {matrix.shape}, found {delays.shape}")
            # All-zero delays are a plain Dense (Lava's DelayDense then computes exactly what Dense does).
            object.__setattr__(self, name, _frozen_array(delays) if np.any(delays) else None)
        if self.readout and (self.neurons.vth < NEVER_FIRES or self.recurrent_weights is not None):
            raise NetworkError(f"a readout layer needs vth >= {NEVER_FIRES} (never fires) and no recurrence")

    def effective_sign_mode(self, weights: np.ndarray | None = None) -> SignMode:
        """The sign mode Lava uses for ``weights`` (default: the feed-forward weights)."""
        weights = self.weights if weights is None else weights
        return self.sign_mode if self.sign_mode != SignMode.INFERRED else infer_sign_mode(weights)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.weights.shape[0],)

    @property
    def input_size(self) -> int:
        return self.weights.shape[1]

    @property
    def min_delay(self) -> int:
        """The smallest extra delay (steps) of a feed-forward connection that carries a non-zero weight."""
        if self.delays is None:
            return 0
        used = self.delays[self.weights != 0]
        return int(used.min()) if used.size else 0

    @property
    def max_delay(self) -> int:
        """The largest extra delay (steps) of any connection, feed-forward or recurrent."""
        return max(int(self.delays.max()) if self.delays is not None else 0,
                   int(self.recurrent_delays.max()) if self.recurrent_delays is not None else 0)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DenseLayer) and np.array_equal(self.weights, other.weights)
                and self.neurons == other.neurons
                and (self.weight_exp, self.num_weight_bits, self.sign_mode, self.readout)
                == (other.weight_exp, other.num_weight_bits, other.sign_mode, other.readout)
                and all(_optional_equal(getattr(self, name), getattr(other, name))
                        for name in ("recurrent_weights", "delays", "recurrent_delays")))


def _optional_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None) == (b is None) and (a is None or np.array_equal(a, b))


def conv_output_hw(input_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Output (H, W) of a 2-D convolution, torch's formula."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(input_hw, kernel, stride, padding, dilation))


def _pair(name: str, value: int | tuple[int, int], low: int) -> tuple[int, int]:
    values = np.asarray(value).reshape(-1)
    if values.size not in (1, 2):
        raise NetworkError(f"{name} must be one or two integers, found {value}")
    return tuple(_check_int(name, v, low, 1 << 12) for v in np.broadcast_to(values, (2,)))


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """A Lava Conv synapse (fixed_pt model) feeding CUBA neurons.

    ``weights`` is (C_out, C_in / groups, kH, kW) and the operation is torch's cross-correlation on
    (C, H, W) inputs (netx flips the kernel for Lava's true convolution in W, H, C layout). Lava's Conv
    uses the weights exactly as given: no 8-bit clip, no truncation and no weight exponent; the
    synaptic sum wraps to signed 24 bits.
    """

    weights: np.ndarray
    neurons: CubaNeurons
    input_shape: tuple[int, int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        weights = _check_int_array("weights", self.weights, *CONV_WEIGHT_RANGE)
        if weights.ndim != 4:
            raise NetworkError(f"conv weights must be (C_out, C_in/groups, kH, kW), found shape {weights.shape}")
        object.__setattr__(self, "weights", _frozen_array(weights))
        in_shape = tuple(int(n) for n in self.input_shape)
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise NetworkError(f"conv input_shape must be (C, H, W), found {self.input_shape}")
        object.__setattr__(self, "input_shape", in_shape)
        object.__setattr__(self, "stride", _pair("stride", self.stride, 1))
        object.__setattr__(self, "padding", _pair("padding", self.padding, 0))
        object.__setattr__(self, "dilation", _pair("dilation", self.dilation, 1))
        groups = _check_int("groups", self.groups, 1, 1 << 16)
        object.__setattr__(self, "groups", groups)
        c_out, c_in_per_group = weights.shape[:2]
        if in_shape[0] != c_in_per_group * groups or c_out % groups:
            raise NetworkError(f"conv channels do not fit: input has {in_shape[0]} channels, weights "
                               f"{weights.shape} with groups={groups}")
        h, w = conv_output_hw(in_shape[1:], weights.shape[2:], self.stride, self.padding, self.dilation)
        if h < 1 or w < 1:
            raise NetworkError(f"conv output would be empty ({h}x{w}) for input {in_shape}")
        if self.neurons.shape != (c_out, h, w):
            raise NetworkError(f"neurons shape {self.neurons.shape} does not match conv output {(c_out, h, w)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.neurons.shape

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ConvLayer) and np.array_equal(self.weights, other.weights)
                and self.neurons == other.neurons
                and (self.input_shape, self.stride, self.padding, self.dilation, self.groups)
                == (other.input_shape, other.stride, other.padding, other.dilation, other.groups))


Layer = Union[DenseLayer, ConvLayer]


@dataclass(frozen=True, eq=False)
class Network:
    """An integer Loihi network: ``input_shape`` ((N,) or (C, H, W)) then neuron ``layers`` in order.

    ``input_message_bits`` = 0 means binary input spikes (any non-zero value is a spike, as Lava casts
    to bool); > 0 means graded integer payloads multiplied into the first synapse.
    """

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    input_message_bits: int = 0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(n) for n in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "input_message_bits",
                           _check_int("input_message_bits", self.input_message_bits, 0, 24))
        if len(self.input_shape) not in (1, 3) or min(self.input_shape) < 1:
            raise NetworkError(f"input_shape must be (N,) or (C, H, W), found {self.input_shape}")
        if not self.layers:
            raise NetworkError("a network needs at least one layer")
        previous = self.input_shape
        for index, layer in enumerate(self.layers):
            if isinstance(layer, DenseLayer):
                if layer.input_size != int(np.prod(previous)):
                    raise NetworkError(f"layer {index}: dense weights expect {layer.input_size} inputs, "
                                       f"the previous layer has shape {previous}")
            elif isinstance(layer, ConvLayer):
                if layer.input_shape != previous:
                    raise NetworkError(f"layer {index}: conv expects input {layer.input_shape}, "
                                       f"the previous layer has shape {previous}")
            else:
                raise NetworkError(f"layer {index}: unknown layer type {type(layer).__name__}")
            previous = layer.shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].shape

    @property
    def latency(self) -> int:
        """Steps before the last layer can first respond to the input: one per synapse layer (Lava's
        buffer) plus each dense layer's smallest feed-forward delay. A readout is averaged from this step on."""
        return sum(1 + (layer.min_delay if isinstance(layer, DenseLayer) else 0) for layer in self.layers)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Network) and self.input_shape == other.input_shape
                and self.input_message_bits == other.input_message_bits
                and len(self.layers) == len(other.layers)
                and all(a == b for a, b in zip(self.layers, other.layers)))

    def run(self, x: np.ndarray, *, record_states: bool = False) -> "RunResult":
        """Simulate with the bit-exact numpy simulator (:func:`hw_sim.loihi.run`)."""
        from .loihi import run
        return run(self, x, record_states=record_states)


@dataclass(frozen=True)
class RunResult:
    """What one implementation computed for a batch.

    ``spikes[k]``: (batch, T, *shape_k) uint8, what layer k emits at Lava step t + 1; ``u[k]``, ``v[k]``:
    (batch, T, *shape_k) int64 states after step t + 1, or empty when states were not recorded.
    """

    spikes: list[np.ndarray]
    u: list[np.ndarray] = field(default_factory=list)
    v: list[np.ndarray] = field(default_factory=list)
