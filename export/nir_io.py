"""NIR ↔ :class:`~export.float_network.FloatNetwork` (NIR 1.0.8; docs/formats.md#nir).

NIR is continuous-time and carries no dt; we store ``dt`` (seconds) in the graph's and every node's
metadata, and use the forward-Euler conventions snnTorch and norse agree on, with r = τ_mem/dt and
w_in = τ_syn/dt, so that a CubaLIF node is exactly ``I' = αI + W·x``, ``V' = βV + I' + (1 − β)·v_leak``
with α = 1 − dt/τ_syn and β = 1 − dt/τ_mem. Our per-step voltage bias b is written as
``v_leak = b / (1 − β)``.

Writing: dense → ``Linear`` (``Affine`` when it has a current bias), conv → ``Conv2d`` (its current bias), a ``Flatten`` between conv and dense, neurons →
``CubaLIF`` (readout: ``CubaLI``; without leak ``IF``/``I``), recurrence → a ``Linear`` from the neuron node back to itself.

Reading (ours and other tools' graphs): ``Affine``/``Linear``/``Conv2d`` synapses followed by ``CubaLIF``,
``LIF``, ``IF``, ``Threshold``, ``CubaLI``, ``LI`` or ``I`` neurons, ``Flatten``, ``Input``/``Output``,
self-recurrent synapses, and a last synapse that feeds ``Output`` directly (a read-out with α = β = 0).
``AvgPool2d``/``SumPool2d`` in front of a synapse are linear and have no neurons: they are folded exactly into
that synapse's weights (docs/formats.md#nir-peers). Every other node type is an error that names the node and
its type — never silently dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .float_network import FloatLayer, FloatNetwork
from .nir_peers import peer_corrections, resolve_dt, single_number

SYNAPSES = ("Affine", "Linear", "Conv2d")
POOLS = ("AvgPool2d", "SumPool2d")   # folded into the next synapse
MAX_NEURONS = 1 << 24            # per layer; a larger shape is a damaged or hostile file (hw_sim's limit too)
MAX_DECLARED_BYTES = 1 << 31     # all arrays of a .nir together, checked before nir.read reads them
NEURONS = ("CubaLIF", "LIF", "IF", "Threshold", "CubaLI", "LI", "I")
READOUTS = ("CubaLI", "LI", "I")


class NIRImportError(ValueError):
    """A NIR graph we cannot map; the message names the file, the node and the problem."""


# --------------------------------------------------------------------------------------------------
# FloatNetwork -> NIR

def _time_constant(decay: float, dt: float, what: str, layer: int) -> float:
    if decay >= 1.0:
        raise ValueError(f"layer {layer}: {what} decay factor 1 (no leak) has no finite NIR time constant")
    return dt / (1.0 - decay)


def to_nir(network: FloatNetwork):
    """The network as a NIR graph, dt in the graph's and each node's metadata."""
    import nir

    dt = float(network.dt)
    meta = {"dt": dt}
    nodes = {"input": nir.Input(input_type={"input": np.array(network.input_shape)}, metadata=dict(meta))}
    edges = []
    previous, previous_shape = "input", tuple(network.input_shape)
    for index, layer in enumerate(network.layers):
        if layer.kind == "dense" and len(previous_shape) == 3:
            name = f"flatten{index}"
            nodes[name] = nir.Flatten(input_type={"input": np.array(previous_shape)}, start_dim=0, end_dim=-1,
                                      metadata=dict(meta))
            edges.append((previous, name))
            previous = name
        synapse = f"syn{index}"
        weight = np.asarray(layer.weight, dtype=np.float64)
        if layer.kind == "conv":
            nodes[synapse] = nir.Conv2d(input_shape=tuple(layer.input_shape[1:]), weight=weight, stride=layer.stride,
                                        padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                                        bias=_channel_bias(layer, index), metadata=dict(meta))
        elif layer.current_bias is not None:
            nodes[synapse] = nir.Affine(weight=weight, bias=np.asarray(layer.current_bias, dtype=np.float64),
                                        metadata=dict(meta))
        else:
            nodes[synapse] = nir.Linear(weight=weight, metadata=dict(meta))
        edges.append((previous, synapse))
        neuron = f"neuron{index}"
        nodes[neuron] = _neuron_node(layer, index, dt)
        shape = layer.shape
        edges.append((synapse, neuron))
        if layer.recurrent_weight is not None:
            recurrent = f"rec{index}"
            nodes[recurrent] = nir.Linear(weight=np.asarray(layer.recurrent_weight, dtype=np.float64), metadata=dict(meta))
            edges += [(neuron, recurrent), (recurrent, neuron)]
        previous, previous_shape = neuron, shape
    nodes["output"] = nir.Output(output_type={"output": np.array(previous_shape)}, metadata=dict(meta))
    edges.append((previous, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(meta))


def _neuron_node(layer: FloatLayer, index: int, dt: float):
    """Layer ``index``'s neurons as a NIR node with unit input gain: ``CubaLIF`` (read-out ``CubaLI``), or
    ``IF`` (read-out ``I``) for an integrator without leak (α = 0, β = 1: Sinabs's ``IAF``, norse's
    ``IAFCell``), whose decay 1 has no finite time constant."""
    import nir

    meta = {"dt": dt}
    full = lambda value: np.full(layer.shape, value, dtype=np.float64)  # noqa: E731 - per-neuron arrays
    if layer.beta >= 1.0 and layer.alpha == 0.0:
        if np.any(np.asarray(layer.bias) != 0):
            raise ValueError(f"layer {index}: a voltage bias without voltage leak (β = 1) has no NIR form")
        if layer.readout:
            return nir.I(r=full(1.0 / dt), metadata=meta)
        return nir.IF(r=full(1.0 / dt), v_threshold=full(layer.threshold), v_reset=full(0.0), metadata=meta)
    tau_syn = _time_constant(layer.alpha, dt, "current", index)
    tau_mem = _time_constant(layer.beta, dt, "voltage", index)
    v_leak = np.asarray(layer.bias, dtype=np.float64) / (1.0 - layer.beta)
    if layer.readout:
        return nir.CubaLI(tau_syn=full(tau_syn), tau_mem=full(tau_mem), r=full(tau_mem / dt), v_leak=v_leak,
                          w_in=full(tau_syn / dt), metadata=meta)
    return nir.CubaLIF(tau_syn=full(tau_syn), tau_mem=full(tau_mem), r=full(tau_mem / dt), v_leak=v_leak,
                       v_threshold=full(layer.threshold), v_reset=full(0.0), w_in=full(tau_syn / dt),
                       metadata=meta)


def _channel_bias(layer: FloatLayer, index: int) -> np.ndarray:
    """The (C_out,) ``Conv2d`` bias of conv ``layer``'s current bias (zeros without one)."""
    if layer.current_bias is None:
        return np.zeros(layer.weight.shape[0])
    channel = np.asarray(layer.current_bias, dtype=np.float64)[:, 0, 0]
    if np.any(layer.current_bias != channel[:, None, None]):
        raise ValueError(f"layer {index}: a conv current bias that differs within a channel has no NIR form")
    return channel


def write_nir(network: FloatNetwork, path: str | os.PathLike) -> Path:
    """Write ``model.nir`` (atomically) and check that ``nir.read`` reads it back with type checking on."""
    import nir

    from safeio.atomic import atomic_path

    path = Path(path)
    graph = to_nir(network)
    with atomic_path(path) as temporary:
        nir.write(temporary, graph)
        nir.read(temporary)   # type-checked read-back before the file is published
    return path


# --------------------------------------------------------------------------------------------------
# NIR -> FloatNetwork

def _array(node, name: str, shape: tuple[int, ...]) -> np.ndarray:
    value = np.asarray(getattr(node, name), dtype=np.float64)
    try:
        return np.broadcast_to(value.reshape(-1) if value.size == int(np.prod(shape)) and value.ndim != len(shape)
                               else value, shape).astype(np.float64)
    except ValueError:
        raise ValueError(f"parameter '{name}' of shape {value.shape} does not fit {shape} neurons")


def _neuron_to_float(node, kind: str, shape: tuple[int, ...], dt: float) -> tuple[dict, float]:
    """(layer fields, input gain folded into the weights and into a synaptic bias)."""
    def leak(tau):
        tau = _array(node, tau, shape)
        if np.any(tau <= 0) or np.any(~np.isfinite(tau)):
            raise ValueError("time constants must be positive and finite")
        if not np.allclose(tau, tau.reshape(-1)[0]):
            raise ValueError("per-neuron time constants differ; Loihi has one decay per layer")
        return float(tau.reshape(-1)[0])

    if kind == "Threshold":
        return dict(alpha=0.0, beta=0.0, threshold=_uniform_threshold(node, "threshold", shape),
                    bias=np.zeros(shape)), 1.0
    v_leak = _finite(_array(node, "v_leak", shape), "v_leak") if hasattr(node, "v_leak") else np.zeros(shape)
    r = _finite(_array(node, "r", shape), "r")
    if kind in ("CubaLIF", "CubaLI"):
        tau_syn, tau_mem = leak("tau_syn"), leak("tau_mem")
        alpha, beta = 1.0 - dt / tau_syn, 1.0 - dt / tau_mem
        input_gain = _array(node, "w_in", shape) * dt / tau_syn * r * dt / tau_mem
    elif kind in ("LIF", "LI"):
        tau_mem = leak("tau")
        alpha, beta = 0.0, 1.0 - dt / tau_mem
        input_gain = r * dt / tau_mem
    else:  # IF, I: v̇ = R·I
        alpha, beta = 0.0, 1.0
        input_gain = r * dt
        v_leak = np.zeros(shape)
    if not (0.0 <= alpha <= 1.0 and 0.0 <= beta <= 1.0):
        raise ValueError(f"dt = {dt} s is larger than a time constant (decay factors α={alpha:.3g}, β={beta:.3g})")
    _finite(input_gain, "input gain (r, w_in)")
    if not np.allclose(input_gain, input_gain.reshape(-1)[0]):
        raise ValueError("per-neuron input gains (r, w_in) differ; fold them into the weights first")
    fields = dict(alpha=alpha, beta=beta, bias=(1.0 - beta) * v_leak, threshold=None)
    if kind not in READOUTS:
        if hasattr(node, "v_reset") and node.v_reset is not None and np.any(_array(node, "v_reset", shape) != 0):
            raise ValueError("v_reset ≠ 0 cannot be mapped (Loihi resets v to 0)")
        fields["threshold"] = _uniform_threshold(node, "v_threshold", shape)
    return fields, float(input_gain.reshape(-1)[0])


def _finite(value: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{what} holds NaN or infinite values")
    return value


def _uniform_threshold(node, name: str, shape: tuple[int, ...]) -> float:
    threshold = _finite(_array(node, name, shape), name)
    if not np.allclose(threshold, threshold.reshape(-1)[0]):
        raise ValueError("per-neuron thresholds differ; Loihi has one threshold per layer")
    return float(threshold.reshape(-1)[0])


def _shape(value, what: str) -> tuple[int, ...]:
    """A declared shape: positive integer sizes (and not absurdly many neurons)."""
    array = np.asarray(value).reshape(-1)
    if array.dtype.kind not in "iuf" or not np.all(np.isfinite(array)) or np.any(array != np.round(array)) \
            or np.any(array < 1):
        raise ValueError(f"{what} must be positive integer sizes, found {array.tolist()}")
    if float(np.prod(array, dtype=np.float64)) > MAX_NEURONS:
        raise ValueError(f"{what} {array.tolist()} has more than {MAX_NEURONS} elements")
    return tuple(int(n) for n in array)


def from_nir(graph, *, dt: float | None = None) -> tuple[FloatNetwork, list[str]]:
    """Map a NIR graph to a FloatNetwork. Returns the network and notes on approximations made.

    The graph must be a chain Input → [Flatten] → synapse → neuron → … → Output, where a neuron may also
    receive a synapse from its own output (recurrence), and the last synapse may feed Output directly (a
    read-out with α = β = 0). Errors name the node and its type.
    """
    import copy

    graph = copy.deepcopy(graph)   # known exporters' mistakes are corrected on this copy
    dt, notes = resolve_dt(graph, dt)
    notes += peer_corrections(graph, dt)
    chain = _Chain.of(graph)
    current, input_shape = _input_node(chain, notes)
    layers: list[FloatLayer] = []
    pools: list[_Pooling] = []   # pooling nodes since the last neuron group, to fold into the next synapse
    shape = input_shape
    while True:
        name = _next_node(chain, current)
        kind = type(chain.nodes[name]).__name__
        if kind == "Output":
            break
        if kind in POOLS:
            pools.append(_Pooling.of(chain.nodes[name], name, shape))
            shape, current = pools[-1].output_shape, name
            continue
        if kind == "Flatten":
            shape, current = (int(np.prod(shape)),), name
            continue
        if kind not in SYNAPSES:
            raise ValueError(f"node '{name}' of type {kind} follows '{current}', where a synapse "
                             f"(Affine, Linear, Conv2d) is expected")
        layer, current = _synapse_layer(chain, name, shape, dt)
        layers.append(_fold_pooling(layer, name, pools, notes) if pools else layer)
        pools = []
        shape = layer.shape
    if pools:
        raise ValueError(f"pooling node '{pools[0].name}' is followed by no synapse to fold it into")
    if not layers:
        raise ValueError("the graph has no synapse and neuron layers")
    return FloatNetwork(input_shape=input_shape, layers=tuple(layers), dt=dt), notes


@dataclass
class _Chain:
    """A NIR graph as :func:`from_nir` walks it: its nodes by name, each node's successors and predecessors
    (in edge order), and the nodes already mapped."""

    nodes: dict
    successors: dict[str, list[str]]
    predecessors: dict[str, list[str]]
    visited: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, graph) -> _Chain:
        """The graph's chain, after checking that every node type can be mapped and every edge's nodes exist."""
        nodes = graph.nodes
        for name, node in nodes.items():
            kind = type(node).__name__
            if kind not in SYNAPSES + NEURONS + POOLS + ("Input", "Output", "Flatten"):
                hint = ("; only AvgPool2d and SumPool2d (linear) fold into the next synapse: max pooling is not "
                        "linear, replace it by average pooling or a strided Conv2d" if "Pool" in kind else "")
                raise ValueError(f"node '{name}' of type {kind} cannot be mapped to Loihi (supported: "
                                 f"{', '.join(SYNAPSES + NEURONS + POOLS)}, Flatten, Input, Output){hint}")
        chain = cls(nodes, {name: [] for name in nodes}, {name: [] for name in nodes})
        for source, target in list(graph.edges):
            if source not in nodes or target not in nodes:
                raise ValueError(f"edge ({source}, {target}) names a node that does not exist")
            chain.successors[source].append(target)
            chain.predecessors[target].append(source)
        return chain


def _input_node(chain: _Chain, notes: list[str]) -> tuple[str, tuple[int, ...]]:
    """The name of the graph's one Input node (marked visited) and the network's input shape, a leading
    batch dimension of 1 removed (with a note)."""
    inputs = [name for name, node in chain.nodes.items() if type(node).__name__ == "Input"]
    if len(inputs) != 1:
        # nir.read adds an Input before every node no edge reaches (e.g. an unconnected Output): name them all
        raise ValueError(f"the graph needs exactly one Input node, found {len(inputs)}"
                         + (f" ({', '.join(inputs)}; is a node left unconnected?)" if inputs else ""))
    input_node = chain.nodes[inputs[0]]
    input_shape = _shape(input_node.input_type["input"], f"input shape of node '{inputs[0]}'")
    if len(input_shape) in (2, 4) and input_shape[0] == 1:
        notes.append(f"input shape {input_shape} read as {input_shape[1:]} (a leading batch dimension)")
        input_shape = input_shape[1:]
    chain.visited.add(inputs[0])
    return inputs[0], input_shape


def _next_node(chain: _Chain, current: str) -> str:
    """The one node not yet visited that ``current`` leads to, now marked visited."""
    forward = [n for n in chain.successors[current] if n not in chain.visited]
    if not forward:
        raise ValueError(f"node '{current}' leads nowhere (no Output reached)")
    if len(forward) > 1:
        raise ValueError(f"node '{current}' branches to {forward}; only chains (plus self-recurrence) map to Loihi")
    chain.visited.add(forward[0])
    return forward[0]


def _synapse_layer(chain: _Chain, synapse_name: str, shape: tuple[int, ...], dt: float) -> tuple[FloatLayer, str]:
    """The layer of synapse ``synapse_name`` (on inputs of ``shape``), the neuron node it feeds and that
    neuron's self-recurrent synapse, if any; and the neuron node's name."""
    synapse, nodes = chain.nodes[synapse_name], chain.nodes
    after = [n for n in chain.successors[synapse_name] if n not in chain.visited]
    kinds = [type(nodes[n]).__name__ for n in after]
    if kinds == ["Output"]:   # a read-out synapse without neurons: its output W·x + b at every step
        neuron_name, neuron_kind = synapse_name, "Output"
    elif len(after) != 1 or kinds[0] not in NEURONS:
        raise ValueError(f"synapse '{synapse_name}' must feed exactly one neuron node (or the Output), found "
                         f"{', '.join(f'{n} ({k})' for n, k in zip(after, kinds)) or 'none'}")
    else:
        neuron_name, neuron_kind = after[0], kinds[0]
        chain.visited.add(neuron_name)
    weight = np.asarray(synapse.weight, dtype=np.float64)
    synaptic_bias = np.asarray(getattr(synapse, "bias", 0.0), dtype=np.float64)
    if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(synaptic_bias))):
        raise ValueError(f"node '{synapse_name}': weight or bias holds NaN or infinite values")
    layer_kind, conv, out_shape = _synapse_geometry(synapse, synapse_name, weight, shape)
    if synaptic_bias.size not in (1, out_shape[0]):
        raise ValueError(f"node '{synapse_name}': bias of shape {synaptic_bias.shape} does not fit "
                         f"{out_shape[0]} outputs")
    try:
        fields, gain = (_neuron_to_float(nodes[neuron_name], neuron_kind, out_shape, dt) if neuron_kind != "Output"
                        else (dict(alpha=0.0, beta=0.0, bias=np.zeros(out_shape), threshold=None), 1.0))
    except ValueError as error:
        raise ValueError(f"node '{neuron_name}' ({neuron_kind}): {error}")
    recurrent_weight, recurrent_bias = ((None, 0.0) if neuron_kind == "Output" else
                                        _recurrent_weight(chain, neuron_name, synapse_name, out_shape, gain))
    per_neuron = np.broadcast_to(synaptic_bias.reshape(-1, *([1] * (len(out_shape) - 1))), out_shape) + recurrent_bias
    if np.any(per_neuron != 0):   # the quantiser feeds it to the current through always-on inputs
        fields["current_bias"] = per_neuron * gain
    layer = FloatLayer(kind=layer_kind, weight=weight * gain, recurrent_weight=recurrent_weight, **conv, **fields)
    return layer, neuron_name


def _synapse_geometry(synapse, name: str, weight: np.ndarray,
                      shape: tuple[int, ...]) -> tuple[str, dict, tuple[int, ...]]:
    """("conv" or "dense", the conv geometry (empty for dense), the output shape) of synapse node ``name``
    with ``weight`` on inputs of ``shape``."""
    if type(synapse).__name__ == "Conv2d":
        conv = _conv_geometry(synapse, name, shape)
        groups = conv["groups"]
        if weight.ndim != 4 or weight.shape[0] < 1 or shape[0] != weight.shape[1] * groups \
                or weight.shape[0] % groups:
            raise ValueError(f"node '{name}': Conv2d weight {weight.shape} with groups {conv['groups']} "
                             f"does not fit input shape {shape}")
        return "conv", conv, _shape(_conv_shape(weight, shape, conv), f"node '{name}': output shape")
    if weight.ndim != 2 or weight.shape[0] < 1 or weight.shape[1] != int(np.prod(shape)):
        raise ValueError(f"node '{name}': weight {weight.shape} does not fit input shape {shape}")
    return "dense", {}, (weight.shape[0],)


def _recurrent_weight(chain: _Chain, neuron_name: str, synapse_name: str, out_shape: tuple[int, ...],
                      gain: float) -> tuple[np.ndarray | None, np.ndarray | float]:
    """The weights (input gain folded in) of the neuron's self-recurrent Linear/Affine node, now visited, and
    its bias (n,) (input gain not folded in; 0.0 without one), a constant added to the current every step like
    the feed-forward synapse's (snnTorch's ``RLeaky``/``RSynaptic`` recurrent ``nn.Linear`` has one);
    (None, 0.0) when the neuron's only input is the feed-forward synapse ``synapse_name``."""
    recurrent = [p for p in chain.predecessors[neuron_name] if p != synapse_name]
    if not recurrent:
        return None, 0.0
    loop = recurrent[0]
    nodes = chain.nodes
    if len(recurrent) > 1 or type(nodes[loop]).__name__ not in ("Linear", "Affine") \
            or chain.predecessors[loop] != [neuron_name]:
        raise ValueError(f"node '{neuron_name}' has inputs {chain.predecessors[neuron_name]}; only one "
                         f"feed-forward synapse and one self-recurrent Linear/Affine are supported")
    recurrent_weight = np.asarray(nodes[loop].weight, dtype=np.float64) * gain
    bias = np.asarray(getattr(nodes[loop], "bias", 0.0), dtype=np.float64)
    if recurrent_weight.shape != (out_shape[0],) * 2 or len(out_shape) != 1 or bias.size not in (1, out_shape[0]):
        raise ValueError(f"recurrent node '{loop}': weight {recurrent_weight.shape} (bias {bias.shape}) does not "
                         f"fit {out_shape} neurons")
    if not (np.all(np.isfinite(recurrent_weight)) and np.all(np.isfinite(bias))):
        raise ValueError(f"recurrent node '{loop}': weight or bias holds NaN or infinite values")
    chain.visited.add(loop)
    return recurrent_weight, np.broadcast_to(bias.reshape(-1), out_shape).copy()


def _conv_geometry(node, name: str, shape: tuple[int, ...]) -> dict:
    if len(shape) != 3:
        raise ValueError(f"node '{name}': Conv2d needs a (C, H, W) input, found {shape}")
    kernel = np.asarray(node.weight).shape[2:]
    pair = lambda value: tuple(int(v) for v in np.broadcast_to(np.asarray(value).reshape(-1), (2,)))  # noqa: E731
    padding = node.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same" and np.all(np.asarray(node.stride) == 1):
            padding = tuple(int(d) * (k - 1) // 2 for k, d in zip(kernel, pair(node.dilation)))
        else:
            raise ValueError(f"node '{name}': padding '{padding}' with stride {node.stride} is not supported")
    geometry = dict(input_shape=tuple(shape), stride=pair(node.stride), padding=pair(padding),
                    dilation=pair(node.dilation), groups=_integer(node.groups, f"node '{name}': groups"))
    if min(geometry["stride"] + geometry["dilation"]) < 1 or min(geometry["padding"]) < 0 or geometry["groups"] < 1:
        raise ValueError(f"node '{name}': stride {geometry['stride']}, dilation {geometry['dilation']} and groups "
                         f"{geometry['groups']} must be >= 1, padding {geometry['padding']} >= 0")
    return geometry


def _integer(value, what: str) -> int:
    number = single_number(value, what)
    if number != round(number):
        raise ValueError(f"{what} must be an integer, found {number}")
    return int(number)


def _conv_shape(weight: np.ndarray, shape: tuple[int, ...], conv: dict) -> tuple[int, int, int]:
    from hw_sim.network import conv_output_hw
    h, w = conv_output_hw(shape[1:], weight.shape[2:], conv["stride"], conv["padding"], conv["dilation"])
    return (weight.shape[0], h, w)


@dataclass(frozen=True)
class _Pooling:
    """An ``AvgPool2d``/``SumPool2d`` node waiting to be folded into the next synapse: the (C, H, W) map it
    pools and its (height, width) kernel, stride and padding (floor output size, as nir's shape inference)."""

    name: str
    kind: str
    input_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @classmethod
    def of(cls, node, name: str, shape: tuple[int, ...]) -> _Pooling:
        kind = type(node).__name__
        if len(shape) != 3:
            raise ValueError(f"node '{name}' ({kind}) needs a (C, H, W) input, found {shape}")
        kernel, stride, padding = (tuple(_integer(v, f"node '{name}': {field}") for v in
                                         np.broadcast_to(np.asarray(getattr(node, field)).reshape(-1), (2,)))
                                   for field in ("kernel_size", "stride", "padding"))
        if min(kernel + stride) < 1 or min(padding) < 0:
            raise ValueError(f"node '{name}' ({kind}): kernel {kernel} and stride {stride} must be >= 1, "
                             f"padding {padding} >= 0")
        if kind == "AvgPool2d" and any(padding):
            raise ValueError(f"node '{name}' (AvgPool2d): padding {padding} cannot be folded: NIR does not say "
                             f"whether the average counts the padded zeros (use SumPool2d or no padding)")
        pooling = cls(name, kind, tuple(shape), kernel, stride, padding)
        if min(pooling.output_shape) < 1:
            raise ValueError(f"node '{name}' ({kind}): kernel {kernel} does not fit the {shape} map")
        return pooling

    def scale(self, axis: int) -> float:
        """Each input's weight in a window along ``axis`` (0: height, 1: width): an average's 1/k, a sum's 1."""
        return 1.0 / self.kernel[axis] if self.kind == "AvgPool2d" else 1.0

    def axis_matrix(self, axis: int) -> np.ndarray:
        """The pooling along ``axis`` (0: height, 1: width) as an (out, in) matrix."""
        return _axis_matrix(np.full(self.kernel[axis], self.scale(axis)), self.input_shape[1 + axis],
                            self.stride[axis], self.padding[axis])

    @property
    def output_shape(self) -> tuple[int, int, int]:
        from hw_sim.network import conv_output_hw
        return (self.input_shape[0], *conv_output_hw(self.input_shape[1:], self.kernel, self.stride, self.padding,
                                                     (1, 1)))


def _axis_matrix(kernel: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """The 1-D cross-correlation of a map of ``size`` (zero-padded by ``padding`` on both sides) with
    ``kernel`` at ``stride``, as an (out, size) matrix; out = (size + 2·padding − len(kernel)) // stride + 1."""
    count = max((size + 2 * padding - len(kernel)) // stride + 1, 0)
    matrix = np.zeros((count, size))
    for out in range(count):
        for tap, value in enumerate(kernel):
            position = out * stride - padding + tap
            if 0 <= position < size:
                matrix[out, position] += value
    return matrix


def _fold_pooling(layer: FloatLayer, synapse_name: str, pools: list[_Pooling], notes: list[str]) -> FloatLayer:
    """``layer`` (synapse ``synapse_name``, on the last pooling's output) with ``pools`` (in graph order) folded
    exactly into its weights: the same layer on the first pooling's input map, with a note."""
    before = layer.weight.size
    for pool in reversed(pools):
        if layer.kind == "dense":
            weight = layer.weight.reshape(layer.weight.shape[0], *pool.output_shape)
            weight = np.einsum("ochw,hH,wW->ocHW", weight, pool.axis_matrix(0), pool.axis_matrix(1), optimize=True)
            layer = replace(layer, weight=weight.reshape(weight.shape[0], -1))
        else:
            layer = _fold_into_conv(layer, synapse_name, pool)
    names = ", ".join(f"'{pool.name}' ({pool.kind} {pool.kernel}, stride {pool.stride})" for pool in pools)
    notes.append(f"pooling {names} folded exactly into synapse '{synapse_name}': {before} weights became "
                 f"{layer.weight.size}")
    return layer


def _fold_into_conv(layer: FloatLayer, synapse_name: str, pool: _Pooling) -> FloatLayer:
    """Conv ``layer`` after ``pool`` as one conv on the pooling's input: along each axis the kernel grows to
    (K − 1)·s_pool + k, the stride to s·s_pool and the padding to p·s_pool + p_pool; each axis's composed
    map is checked against conv ∘ pooling (a padded conv reads zeros the un-pooled map may not have)."""
    if layer.dilation != (1, 1):
        raise ValueError(f"node '{pool.name}' ({pool.kind}) cannot be folded into Conv2d '{synapse_name}' with "
                         f"dilation {layer.dilation} (only dilation 1)")
    expansions, geometry = [], []
    for axis, name in enumerate(("height", "width")):
        size, taps = layer.weight.shape[2 + axis], pool.kernel[axis]
        step, stride = pool.stride[axis], layer.stride[axis] * pool.stride[axis]
        padding = layer.padding[axis] * step + pool.padding[axis]
        expansion = np.zeros(((size - 1) * step + taps, size))
        for tap in range(size):   # column tap: the pooling's window, placed where the conv's tap reads it
            expansion[tap * step:tap * step + taps, tap] = pool.scale(axis)
        pooling = pool.axis_matrix(axis)
        for tap in range(size):
            unit = np.eye(size)[tap]
            wanted = _axis_matrix(unit, pooling.shape[0], layer.stride[axis], layer.padding[axis]) @ pooling
            folded = _axis_matrix(expansion[:, tap], pool.input_shape[1 + axis], stride, padding)
            if wanted.shape != folded.shape or not np.allclose(wanted, folded, rtol=0.0, atol=1e-12):
                raise ValueError(f"node '{pool.name}' ({pool.kind} {pool.kernel}, stride {pool.stride}) cannot "
                                 f"be folded exactly into Conv2d '{synapse_name}' (padding {layer.padding}): along "
                                 f"the {name}, the padded conv would read un-pooled values where the pooled map has "
                                 f"its padding (a map the pooling stride does not divide, or windows wider than the "
                                 f"stride)")
        expansions.append(expansion)
        geometry.append((stride, padding))
    weight = np.einsum("oiab,ua,vb->oiuv", layer.weight, *expansions, optimize=True)
    return replace(layer, weight=weight, input_shape=pool.input_shape, stride=tuple(g[0] for g in geometry),
                   padding=tuple(g[1] for g in geometry))


def normalise_graph(graph):
    """A copy of an in-memory graph that ``nir.write`` can store: tensors become numpy arrays and 0-d
    arrays become 1-element arrays. norse's ``to_nir`` leaves torch tensors and a 0-d ``v_reset`` in its
    nodes, and ``nir.write`` (which gzips every array) rejects 0-d datasets."""
    import copy

    def fix(value):
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.reshape(1)
        return value

    graph = copy.deepcopy(graph)
    for node in graph.nodes.values():
        if type(node).__name__ == "NIRGraph":
            normalise_graph(node)
            continue
        for name, value in vars(node).items():
            if name not in ("metadata", "input_type", "output_type"):
                setattr(node, name, fix(value))
    return graph


def read_nir(path: str | os.PathLike, *, dt: float | None = None) -> tuple[FloatNetwork, list[str]]:
    """Read a ``.nir`` file (``nir.read`` with type checking) and map it; errors name the file."""
    import nir

    path = Path(path)
    if not path.is_file():
        raise NIRImportError(f"{path}: no such file")
    _check_file(path)
    notes = []
    try:
        try:
            graph = nir.read(path)
        except ValueError as error:
            if "Type inference" not in str(error):
                raise
            # Other tools' graphs often fail nir's shape inference (norse stores the batch dimension in
            # Input); our own mapping checks every shape itself.
            graph = nir.read(path, type_check=False)
            notes.append(f"nir's type check failed ({str(error)[:120]}); read without it")
    except Exception as error:  # nir raises many kinds on malformed files
        message = " ".join(str(error).split())[:200]
        raise NIRImportError(f"{path}: not a readable NIR file ({type(error).__name__}: {message})")
    try:
        network, mapping_notes = from_nir(graph, dt=dt)
    except ValueError as error:
        raise NIRImportError(f"{path}: {' '.join(str(error).split())}")
    except (TypeError, KeyError, AttributeError, IndexError, ArithmeticError) as error:
        # a node whose fields have unexpected types (nir.read checks few of them)
        raise NIRImportError(f"{path}: malformed graph ({type(error).__name__}: {' '.join(str(error).split())[:200]})")
    return network, notes + mapping_notes


def _check_file(path: Path) -> None:
    """Before ``nir.read`` loads every array: the file is HDF5, links stay inside it, and no dataset
    declares more data than the file can hold (a forged chunked dataset would be allocated in full)."""
    import h5py

    from safeio.hdf5 import dataset_size_problem, hdf5_heap_damage

    try:
        damage = hdf5_heap_damage(path)
    except OSError as error:
        raise NIRImportError(f"{path}: cannot be read ({' '.join(str(error).split())})")
    if damage:
        raise NIRImportError(f"{path}: not a readable NIR file (damaged HDF5: {damage})")
    try:
        handle = h5py.File(path, "r")
    except Exception as error:
        raise NIRImportError(f"{path}: not a readable NIR file (not HDF5: {' '.join(str(error).split())[:200]})")
    problems: list[str] = []
    total = 0

    def visit(name: str, link) -> None:
        nonlocal total
        if problems:
            return
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"'{name}' links to another file ({link.filename}), which is not allowed")
            return
        if isinstance(link, h5py.SoftLink):
            return   # its target is visited (or missing, which nir.read reports)
        item = handle[name]
        if not isinstance(item, h5py.Dataset):
            return
        problem = dataset_size_problem(item)
        if problem:
            problems.append(f"'{name}' {problem}")
            return
        total += int(item.size) * item.dtype.itemsize
        if total > MAX_DECLARED_BYTES:
            problems.append(f"its arrays declare more than {MAX_DECLARED_BYTES} bytes")

    with handle:
        try:
            handle.visititems_links(visit)
        except NIRImportError:
            raise
        except Exception as error:  # HDF5 reports damaged structures from wherever they are touched
            raise NIRImportError(f"{path}: not a readable NIR file (damaged: {type(error).__name__}: "
                                 f"{' '.join(str(error).split())[:200]})")
    if problems:
        raise NIRImportError(f"{path}: {problems[0]}")
