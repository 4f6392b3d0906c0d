"""``loihi.h5``: a :class:`Network` in the lava-dl netx HDF5 layout (docs/netx.md).

The file is one Intel's ``netx.hdf5.Network`` loads unchanged: root group ``layer`` with ``"0"`` (type
``input``, shape), then one group per layer (``dense``, ``dense_rec``, ``conv``, ``flatten``) with
``weight`` (and ``weight_rec``), ``bias``, conv geometry and a ``neuron`` group (``CUBA``: ``iDecay`` =
du + 1, ``vDecay`` = dv, ``vThMant`` = vth); a readout dense layer has no neuron group.

netx derives the synapse's exponent, weight bits and sign mode from the stored weights and always uses
bias exponent 6, so it can express only part of what Lava can run. Every layer therefore also stores
its exact Lava parameters in a ``lava`` sub-group (ignored by netx), which :func:`load` prefers. The
standard fields are written so that netx computes the very same network whenever that is possible;
:func:`netx_exact` says whether it is, and a file that claims it (root attribute ``netx_exact``) is
checked on load.

Files written by lava-dl's slayer (``export_hdf5``) or by hand (no ``lava`` groups) are read exactly the way
Intel's netx 0.6 builds them (docs/netx.md): with or without an ``input`` layer, float-stored weights cast
as netx casts them, netx's weight scaling with its quirks, and ``delay`` datasets as Lava DelayDense
synapses. A field that netx or Lava would honour but hw_sim does not model is a :class:`LoihiFileError`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from .arith import SignMode, netx_optimize_weight_bits, prepare_dense_weights
from safeio.atomic import atomic_path
from safeio.hdf5 import dataset_size_problem, hdf5_heap_damage
from .network import (MAX_DELAY, NEVER_FIRES, READOUT_NEURON, ConvLayer, CubaNeurons, DenseLayer, Layer, Network, NetworkError)

FORMAT = "sbnn-loihi/1"
NETX_BIAS_EXP = 6
MAX_ELEMENTS = 1 << 28   # refuse absurd declared dataset sizes before reading them
MAX_NEURONS = 1 << 24    # per layer (a Loihi 2 chip holds 2^20); more is a damaged or hostile shape field


class LoihiFileError(ValueError):
    """A ``loihi.h5`` that cannot be read; the message names the file, the layer and the field."""


# --------------------------------------------------------------------------------------------------
# What a synapse computes, to decide whether netx's reading of the standard fields equals ours.

def _synapse_behaviour(weights: np.ndarray, sign_mode: SignMode, bits: int, exponent: int) -> tuple:
    """A canonical form of shift(Σ W_q s, exponent): ("linear", effective weights) when the shift is
    exact for every input, else ("floor", W_q, exponent)."""
    prepared = prepare_dense_weights(weights, sign_mode, bits)
    if exponent >= 0:
        return ("linear", prepared << exponent)
    if np.all(prepared % (1 << -exponent) == 0):
        return ("linear", prepared >> -exponent)
    return ("floor", prepared, exponent)


def _same_behaviour(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:]))


def _netx_dense_weights(layer: DenseLayer) -> tuple[np.ndarray, np.ndarray | None]:
    """The file weights for netx: the effective weights when the synapse is linear, else the raw ones."""
    def file_weights(weights: np.ndarray, sign_mode: SignMode) -> np.ndarray:
        behaviour = _synapse_behaviour(weights, sign_mode, layer.num_weight_bits, layer.weight_exp)
        return behaviour[1] if behaviour[0] == "linear" else weights
    weight = file_weights(layer.weights, layer.sign_mode)
    if layer.recurrent_weights is None:
        return weight, None
    return weight, file_weights(layer.recurrent_weights, layer.effective_sign_mode(layer.recurrent_weights))


def _netx_dense_reading(weight: np.ndarray, weight_rec: np.ndarray | None) -> tuple[dict, np.ndarray | None]:
    """How netx turns file weights into Lava Dense parameters (sign mode left for Lava to infer)."""
    if weight_rec is None:
        scaled, bits, exponent = netx_optimize_weight_bits(weight)
        return dict(weights=scaled, weight_exp=exponent, num_weight_bits=bits), None
    scaled, bits, exponent = netx_optimize_weight_bits(np.hstack([weight, weight_rec]))
    return (dict(weights=scaled[:, :weight.shape[1]], weight_exp=exponent, num_weight_bits=bits),
            scaled[:, weight.shape[1]:])


def _netx_bias(neurons: CubaNeurons) -> np.ndarray | None:
    """netx's bias mantissa (exponent 6) equal to our effective bias, or None when there is none."""
    bias = neurons.bias
    if np.any(bias % (1 << NETX_BIAS_EXP)):
        return None
    mant = bias >> NETX_BIAS_EXP
    return mant if np.abs(mant).max(initial=0) < (1 << 15) else None


def _delayed_behaviour(weights: np.ndarray, sign_mode: SignMode, bits: int, exponent: int,
                       delays: np.ndarray | None) -> tuple:
    """A synapse's canonical form: its behaviour (as above) and the delay of every non-zero connection.
    With delays, Lava shifts each delay group's sum on its own, so a "floor" synapse is compared group by group."""
    behaviour = _synapse_behaviour(weights, sign_mode, bits, exponent)
    if delays is None:
        return behaviour + (None,)
    used = np.where(prepare_dense_weights(weights, sign_mode, bits) != 0, delays, 0)
    return behaviour + (used,) if np.any(used) else behaviour + (None,)


def _layer_behaviour(layer: Layer) -> tuple:
    neurons = layer.neurons
    common = ((neurons.du, neurons.dv, neurons.vth), neurons.bias)
    if isinstance(layer, ConvLayer):
        return ("conv", layer.weights, layer.stride, layer.padding, layer.dilation, layer.groups) + common
    synapses = [_delayed_behaviour(layer.weights, layer.sign_mode, layer.num_weight_bits, layer.weight_exp,
                                   layer.delays)]
    if layer.recurrent_weights is not None:
        synapses.append(_delayed_behaviour(layer.recurrent_weights, layer.effective_sign_mode(layer.recurrent_weights),
                                           layer.num_weight_bits, layer.weight_exp, layer.recurrent_delays))
    return ("dense", *synapses) + common


def _behaviours_equal(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_behaviours_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def equivalent(a: Network, b: Network) -> bool:
    """True when two descriptions compute the same spikes for every input (e.g. netx's reading of a
    file and its exact parameters): same shapes, neuron parameters, effective biases and synapses."""
    return (a.input_shape == b.input_shape and a.input_message_bits == b.input_message_bits
            and len(a.layers) == len(b.layers)
            and all(_behaviours_equal(_layer_behaviour(x), _layer_behaviour(y)) for x, y in zip(a.layers, b.layers)))


def netx_exact(network: Network) -> bool:
    """True when Intel's netx, reading only the standard fields we write, runs exactly this network."""
    with h5py.File(f"netx-view-{id(network)}.h5", "w", driver="core", backing_store=False) as handle:
        write_layers(handle, network)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LoihiFileWarning)
                netx_view = read_network(handle, Path("<memory>"), use_lava_groups=False)
        except LoihiFileError:
            return False
    return equivalent(network, netx_view)


# --------------------------------------------------------------------------------------------------
# Writing

def _string(group: h5py.Group, name: str, value: str) -> None:
    group.create_dataset(name, data=np.array([value.encode("ascii")], dtype="S10"))


def _write_neurons(group: h5py.Group, neurons: CubaNeurons, layer_shape: tuple[int, ...], readout: bool) -> None:
    netx_bias = _netx_bias(neurons)
    if netx_bias is not None and np.any(netx_bias):
        group.create_dataset("bias", data=_to_netx_bias_layout(netx_bias, layer_shape))
    if readout:
        return
    neuron = group.create_group("neuron")
    _string(neuron, "type", "CUBA")
    for name, value in (("iDecay", neurons.du + 1), ("vDecay", neurons.dv), ("vThMant", neurons.vth),
                        ("refDelay", 1), ("gradedSpike", 0)):
        neuron.create_dataset(name, data=np.int64(value))


def _to_netx_bias_layout(bias: np.ndarray, layer_shape: tuple[int, ...]) -> np.ndarray:
    """Dense: (N,). Conv: per channel (C,) when constant over (H, W), else netx's (W, H, C) order."""
    if len(layer_shape) == 1:
        return bias
    per_channel = bias[:, :1, :1]
    if np.all(bias == per_channel):
        return per_channel[:, 0, 0]
    return bias.transpose(2, 1, 0)


def _write_lava_group(group: h5py.Group, layer: Layer) -> None:
    lava = group.create_group("lava")
    lava.create_dataset("weight", data=layer.weights)
    if isinstance(layer, DenseLayer):
        for name in ("weight_exp", "num_weight_bits", "sign_mode", "readout"):
            lava.create_dataset(name, data=np.int64(getattr(layer, name)))
        for name, value in (("weight_rec", layer.recurrent_weights), ("delays", layer.delays),
                            ("recurrent_delays", layer.recurrent_delays)):
            if value is not None:
                lava.create_dataset(name, data=value)
    neurons = layer.neurons
    for name in ("du", "dv", "vth"):
        lava.create_dataset(name, data=np.int64(getattr(neurons, name)))
    lava.create_dataset("bias_mant", data=neurons.bias_mant)
    lava.create_dataset("bias_exp", data=neurons.bias_exp)


def write_layers(handle: h5py.File, network: Network) -> None:
    root = handle.create_group("layer")
    entries: list[tuple[str, Layer | None]] = []
    previous_is_conv = len(network.input_shape) == 3
    for layer in network.layers:
        if isinstance(layer, DenseLayer) and previous_is_conv:
            entries.append(("flatten", None))
        entries.append(("conv" if isinstance(layer, ConvLayer) else
                        "dense_rec" if layer.recurrent_weights is not None else "dense", layer))
        previous_is_conv = isinstance(layer, ConvLayer)
    input_group = root.create_group("0")
    _string(input_group, "type", "input")
    input_group.create_dataset("shape", data=np.array(network.input_shape, dtype=np.int64))
    input_group.create_dataset("inputMessageBits", data=np.int64(network.input_message_bits))
    for index, (kind, layer) in enumerate(entries, start=1):
        group = root.create_group(str(index))
        _string(group, "type", kind)
        if layer is None:
            continue
        group.create_dataset("shape", data=np.array(layer.shape, dtype=np.int64))
        if isinstance(layer, ConvLayer):
            group.create_dataset("weight", data=layer.weights)
            for name in ("stride", "padding", "dilation"):
                group.create_dataset(name, data=np.array(getattr(layer, name), dtype=np.int64))
            group.create_dataset("groups", data=np.int64(layer.groups))
        else:
            weight, weight_rec = _netx_dense_weights(layer)
            group.create_dataset("weight", data=weight)
            if weight_rec is not None:
                group.create_dataset("weight_rec", data=weight_rec)
            if layer.delays is not None:
                # netx gives a dense_rec layer's recurrent synapse these same delays (netx_exact checks it).
                group.create_dataset("delay", data=layer.delays)
        _write_neurons(group, layer.neurons, layer.shape,
                       isinstance(layer, DenseLayer) and layer.readout and layer.neurons.is_integrator)
        _write_lava_group(group, layer)


def save(network: Network, path: str | os.PathLike) -> Path:
    """Write ``network`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        with h5py.File(temporary, "w") as handle:
            handle.attrs["format"] = FORMAT
            handle.attrs["netx_exact"] = netx_exact(network)
            write_layers(handle, network)
    return path


# --------------------------------------------------------------------------------------------------
# Reading

class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = ""

    def fail(self, message: str) -> LoihiFileError:
        return LoihiFileError(f"{self.path}: {self.where}{message}")

    def array(self, group: h5py.Group, name: str, *, required: bool = True, cast: bool = False,
              integer: bool = True) -> np.ndarray | None:
        """A numeric field as int64. ``cast``: truncate floats toward zero as netx's ``astype(int)`` does
        (weights and biases, which slayer stores as floats); ``integer=False``: return float64 as stored."""
        if name not in group:
            if required:
                raise self.fail(f"missing field '{name}'")
            return None
        dataset = self.member(group, name)
        if not isinstance(dataset, h5py.Dataset):
            raise self.fail(f"field '{name}' is not a dataset")
        self.check_declared_size(dataset, name)
        try:
            value = np.asarray(dataset[()])
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            raise self.fail(f"field '{name}' cannot be read ({' '.join(str(error).split())})")
        if value.dtype.kind not in "iuf" and not (value.dtype.kind == "b"):
            raise self.fail(f"field '{name}' must be numeric, found {value.dtype}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise self.fail(f"field '{name}' holds NaN or infinity")
        if value.dtype.kind == "f" and integer and not cast and np.any(value != np.round(value)):
            raise self.fail(f"field '{name}' must be integer-valued")
        # Every field holds small integers; refuse values int64 (and float64, exactly) cannot hold.
        if value.size and value.dtype.kind in "uf" and np.abs(value).max() >= 2.0 ** 53:
            raise self.fail(f"field '{name}' holds a value beyond ±2^53")
        if not integer:
            return value.astype(np.float64)
        return np.trunc(value).astype(np.int64) if value.dtype.kind == "f" else value.astype(np.int64)

    def member(self, group: h5py.Group, name: str):
        """``group[name]``, refusing links to other files (a file reads nothing but itself)."""
        try:
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise self.fail(f"'{name}' is a link to another file ({link.filename}), which is not allowed")
            return group[name]
        except (KeyError, OSError, RuntimeError, ValueError) as error:
            if isinstance(error, LoihiFileError):
                raise
            raise self.fail(f"'{name}' cannot be opened ({' '.join(str(error).split())})")

    def check_declared_size(self, dataset: h5py.Dataset, name: str) -> None:
        """Refuse a dataset whose declared size is absurd or not backed by the file, before reading it."""
        problem = dataset_size_problem(dataset, max_elements=MAX_ELEMENTS)
        if problem:
            raise self.fail(f"field '{name}' {problem}")

    def shape(self, group: h5py.Group, name: str = "shape", *, scalar: bool = False) -> tuple[int, ...]:
        """A layer shape: 1 or 3 positive sizes, at most :data:`MAX_NEURONS` neurons. ``scalar``: a 0-d
        size is accepted too (netx takes a dense layer's ``prod(shape)``; elsewhere it reverses the shape)."""
        value = self.array(group, name)
        if self.member(group, name).dtype.kind == "f":
            raise self.fail(f"field '{name}' holds floats; netx 0.6 fails on them (store integers)")
        if value.ndim == 0 and not scalar:
            raise self.fail(f"field '{name}' is a 0-d scalar; netx 0.6 reverses it and fails (store (N,) or (C, H, W))")
        if value.ndim > 1 or value.size not in (1, 3) or value.min() < 1:
            raise self.fail(f"field '{name}' must be (N,) or (C, H, W) positive sizes, found {value.tolist()}")
        if int(np.prod(value, dtype=np.float64)) > MAX_NEURONS:
            raise self.fail(f"field '{name}' declares {value.tolist()}, more than {MAX_NEURONS} neurons")
        return tuple(int(n) for n in value.reshape(-1))

    def scalar(self, group: h5py.Group, name: str, *, default: int | None = None) -> int:
        value = self.array(group, name, required=default is None)
        if value is None:
            return default
        if value.size != 1:
            raise self.fail(f"field '{name}' must be a single integer, found shape {value.shape}")
        return int(value.reshape(-1)[0])

    def string(self, group: h5py.Group, name: str) -> str:
        dataset = self.member(group, name) if name in group else None
        if not isinstance(dataset, h5py.Dataset):
            raise self.fail(f"missing field '{name}'")
        if dataset.size != 1:
            raise self.fail(f"field '{name}' must be one string")
        try:
            value = np.asarray(dataset[()]).reshape(-1)
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            raise self.fail(f"field '{name}' cannot be read ({' '.join(str(error).split())})")
        if value.size != 1 or value.dtype.kind not in "SOU":
            raise self.fail(f"field '{name}' must be one string")
        item = value[0]
        return (item.decode("ascii", "replace") if isinstance(item, bytes) else str(item)).strip()


def _bias_from_netx(bias: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """netx's bias field -> per-neuron bias in our layout: (N,) or one value for dense; (C,) or (W, H, C) for conv."""
    if bias is None:
        return np.zeros(shape, dtype=np.int64)
    if len(shape) == 1 and bias.size == 1:   # netx hands a dense layer's bias to Lava as it is: one for all
        return np.full(shape, bias.reshape(-1)[0], dtype=np.int64)
    if len(shape) == 1 and bias.ndim > 1:
        raise ValueError(f"bias of shape {bias.shape}: netx hands a dense layer's bias to Lava as it is, which "
                         f"fails on it (store ({shape[0]},))")
    if len(shape) == 1 and bias.size == shape[0]:
        return bias.reshape(shape)
    if len(shape) == 3 and bias.shape == tuple(reversed(shape)):
        return bias.transpose(2, 1, 0)
    if len(shape) == 3 and bias.shape == (shape[0],):
        return np.broadcast_to(bias[:, None, None], shape)
    raise ValueError(f"bias of shape {bias.shape} does not fit layer shape {shape}")


# What each group of a netx file may hold. Fields netx reads and hw_sim models, fields netx reads but does not
# use (slayer's descriptors), and our own exact-parameter group ``lava``. Anything else is refused, so that no
# field that netx or Lava would honour is silently dropped (docs/netx.md lists them).
SYNAPSE_FIELDS = {
    "dense": {"type", "shape", "weight", "bias", "delay", "neuron", "lava", "inFeatures", "outFeatures"},
    "dense_rec": {"type", "shape", "weight", "weight_rec", "bias", "delay", "neuron", "lava", "inFeatures",
                  "outFeatures"},
    "conv": {"type", "shape", "weight", "bias", "delay", "neuron", "lava", "stride", "padding", "dilation",
             "groups", "inChannels", "outChannels", "kernelSize"},
    "flatten": {"type", "shape"},
    "input": {"type", "shape", "inputMessageBits"},
}
NEURON_FIELDS = {"type", "iDecay", "vDecay", "vThMant", "refDelay", "gradedSpike", "messageBits", "weight_exp"}
# refDelay: the Lava LIF has no refractory period and netx does not pass it on; gradedSpike: netx ignores it.
LAYER_TYPES = ("input", "dense", "dense_rec", "conv", "flatten")
NOT_MODELLED_LAYERS = {"dense_comp": "complex dense layers", "pool": "pooling layers", "convT": "transposed conv",
                       "unpool": "unpooling layers", "average": "average layers", "concat": "concat layers"}


class LoihiFileWarning(UserWarning):
    """Something in a netx file that netx itself ignores (so hw_sim does too), but a user should know."""


def _warn(reader: "_Reader", message: str) -> None:
    warnings.warn(LoihiFileWarning(f"{reader.path}: {reader.where}{message}"), stacklevel=4)


def _check_fields(reader: "_Reader", group: h5py.Group, allowed: set[str], what: str) -> None:
    if "weight" in group and isinstance(reader.member(group, "weight"), h5py.Group):
        raise reader.fail("complex weights ('weight/real', 'weight/imag') are not modelled by hw_sim")
    for name in group.keys():
        if name not in allowed:
            raise reader.fail(f"field '{name}' is not one hw_sim models in {what} (it reads: "
                              f"{', '.join(sorted(allowed - {'lava'}))})")


def _layer_type(reader: "_Reader", group: h5py.Group) -> str:
    if not len(group):
        raise reader.fail("is an empty group (slayer's export_hdf5 writes nothing for some blocks, e.g. KWTA; "
                          "netx cannot build them either)")
    return reader.string(group, "type")


def _check_layer_fields(reader: "_Reader", group: h5py.Group, kind: str) -> None:
    """The neuron type first (an RF layer's complex weights or an SDNN input block are refused for their
    neurons), then the layer's fields; an input layer with neurons is refused by the caller. The neuron
    group of a layer with a ``lava`` group is read only for netx's view (:func:`_read_neuron_group`)."""
    neuron = reader.member(group, "neuron") if "neuron" in group else None
    if isinstance(neuron, h5py.Group) and "lava" not in group:   # our files' exact parameters replace it
        where = reader.where
        reader.where += "neuron: "
        _check_neuron_type(reader, neuron)
        reader.where = where
    if not (kind == "input" and neuron is not None):
        _check_fields(reader, group, SYNAPSE_FIELDS[kind], f"layers of type '{kind}'")


def _conv_geometry(reader: "_Reader", group: h5py.Group) -> dict:
    """stride, padding, dilation (one value, or (H, W)) and groups (one value), as netx 0.6 can build them."""
    geometry = {}
    for name in ("stride", "padding", "dilation", "groups"):
        value = reader.array(group, name)
        if value.ndim != 0 and (name == "groups" or value.size == 1):
            raise reader.fail(f"field '{name}' is a 1-d array of shape {value.shape}; netx 0.6 fails on it "
                              f"(store {'a scalar' if name == 'groups' else 'a scalar or (H, W)'})")
        geometry[name] = int(value) if name == "groups" else tuple(value.reshape(-1))
    return geometry


def _uniform(reader: "_Reader", group: h5py.Group, name: str, *, default: int | None = None) -> int:
    """A neuron parameter: one integer, or an array of one repeated value (netx passes arrays on to Lava)."""
    value = reader.array(group, name, required=default is None)
    if value is None:
        return default
    if value.size == 0 or np.any(value != value.reshape(-1)[0]):
        raise reader.fail(f"field '{name}' differs between neurons; hw_sim models one value per layer")
    if reader.member(group, name).dtype.kind == "f":
        raise reader.fail(f"field '{name}' is stored as a float; netx 0.6 hands it to Lava's fixed-point LIF, "
                          "which fails on it (store an integer)")
    return int(value.reshape(-1)[0])


def _check_neuron_type(reader: "_Reader", neuron: h5py.Group) -> None:
    """Refuse neuron types other than CUBA and LOIHI, naming the type (``reader.where`` ends in "neuron: ")."""
    neuron_type = reader.string(neuron, "type")
    if neuron_type == "SDNN":
        raise reader.fail("sigma-delta neurons (type 'SDNN') are not modelled by hw_sim (CUBA or LOIHI only)")
    if "RF" in neuron_type:
        raise reader.fail(f"resonate-and-fire neurons (type '{neuron_type}') are not modelled by hw_sim "
                          "(CUBA or LOIHI only)")
    if neuron_type not in ("CUBA", "LOIHI"):
        raise reader.fail(f"neuron type '{neuron_type}' is not supported (CUBA or LOIHI)")


def _read_neuron_group(reader: "_Reader", group: h5py.Group) -> dict:
    """netx's CUBA mapping: du = iDecay - 1, dv = vDecay, vth = vThMant (bias exponent 6, set by the caller)."""
    neuron = reader.member(group, "neuron")
    if not isinstance(neuron, h5py.Group):
        raise reader.fail("field 'neuron' is not a group")
    where = reader.where
    reader.where += "neuron: "
    _check_neuron_type(reader, neuron)
    _check_fields(reader, neuron, NEURON_FIELDS, "a CUBA neuron group")
    if "weight_exp" in neuron:
        _warn(reader, "field 'weight_exp' (slayer's normalisation exponent) is ignored by netx 0.6, and so here")
    if "messageBits" in neuron:
        # Graded spikes are not modelled; netx 0.6 itself cannot build it either (its file reader returns the
        # dataset wrapped as a group, which the next synapse then fails to compare with 0).
        raise reader.fail("field 'messageBits' (graded spikes) is not modelled by hw_sim, and netx 0.6 fails on it")
    params = dict(du=_uniform(reader, neuron, "iDecay") - 1, dv=_uniform(reader, neuron, "vDecay"),
                  vth=_uniform(reader, neuron, "vThMant"))
    reader.where = where
    return params


def _netx_delays(reader: "_Reader", group: h5py.Group, weight_shape: tuple[int, int]) -> np.ndarray | None:
    """A dense layer's ``delay`` read as netx 0.6 builds it: one value for all, one per neuron (axonal, as
    slayer writes it), one per input, or one per connection; clamped to 62 if any exceeds it (netx warns too)
    and cast to int (truncation) for Lava's DelayDense, which refuses negative delays."""
    if "delay" not in group:
        return None
    raw = reader.array(group, "delay", required=True, cast=True, integer=False)
    out, inputs = weight_shape
    if raw.size and raw.max() > MAX_DELAY:
        _warn(reader, f"field 'delay' holds {raw.max():g} > {MAX_DELAY}; netx clamps delays to [0, {MAX_DELAY}]")
        raw = np.clip(raw, 0, MAX_DELAY)
    if raw.ndim == 0:
        delays = np.broadcast_to(raw, weight_shape)
    elif raw.ndim == 1 and raw.size == out:
        delays = np.repeat(raw.reshape(-1, 1), inputs, axis=1)
    elif raw.ndim == 1 and raw.size == inputs:
        delays = np.repeat(raw.reshape(1, -1), out, axis=0)
    elif raw.shape == weight_shape:
        delays = raw
    else:
        raise reader.fail(f"field 'delay' of shape {raw.shape} fits neither the {out} neurons, the {inputs} "
                          f"inputs nor the weights {weight_shape} (netx refuses it too)")
    delays = delays.astype(np.int64)
    if delays.size and delays.min() < 0:
        raise reader.fail(f"field 'delay' holds {delays.min()} < 0; Lava's DelayDense refuses negative delays")
    return delays


def _read_dense_netx(reader: "_Reader", group: h5py.Group, kind: str, neurons: CubaNeurons,
                     readout: bool) -> DenseLayer:
    """A dense or dense_rec layer exactly as netx 0.6 builds it from the standard fields."""
    size = neurons.shape[0]
    weight = reader.array(group, "weight", cast=True)
    weight_rec = reader.array(group, "weight_rec", cast=True) if kind == "dense_rec" else None
    for field_name, value in (("weight", weight), ("weight_rec", weight_rec)):
        if value is not None and (value.ndim not in (1, 2) or value.size == 0 or value.size % size
                                  or (value.ndim == 2 and value.shape[0] != size)):
            raise reader.fail(f"field '{field_name}' of shape {value.shape} does not fit {size} neurons")
    weight = weight.reshape(size, -1)
    if weight_rec is not None:
        weight_rec = weight_rec.reshape(size, -1)
        if weight_rec.shape != (size, size):
            raise reader.fail(f"field 'weight_rec' must be ({size}, {size}), found {weight_rec.shape}")
    both = weight if weight_rec is None else np.hstack([weight, weight_rec])
    if both.max() > 254 or both.min() < -256:
        _warn(reader, f"weights in [{both.min()}, {both.max()}] exceed the 8-bit range [-256, 254] (e.g. a slayer "
                      "quantisation hook with more bits); netx 0.6 clips mixed-sign weights to it and zeroes "
                      "single-signed ones: simulated as netx runs it")
    try:
        reading, rec_scaled = _netx_dense_reading(weight, weight_rec)
    except ValueError as error:
        raise reader.fail(f"field 'weight': {error}")
    delays = _netx_delays(reader, group, weight.shape)
    recurrent_delays = None
    if delays is not None and rec_scaled is not None:
        if delays.shape != rec_scaled.shape:
            raise reader.fail(f"field 'delay': netx 0.6 gives the recurrent synapse the same delays, which needs "
                              f"as many inputs as neurons ({weight.shape[1]} inputs, {size} neurons)")
        recurrent_delays = delays
        if reading["weight_exp"] != 0:
            _warn(reader, f"netx 0.6 drops the weight exponent ({reading['weight_exp']}) of a dense_rec layer with "
                          "delays; simulated as netx runs it, with exponent 0")
        reading["weight_exp"] = 0
    return DenseLayer(**reading, neurons=neurons, recurrent_weights=rec_scaled, readout=readout, delays=delays,
                      recurrent_delays=recurrent_delays)


def _read_layer(reader: _Reader, group: h5py.Group, kind: str, previous: tuple[int, ...],
                use_lava_groups: bool) -> Layer:
    shape = reader.shape(group, scalar=kind != "conv")
    if kind != "conv":
        shape = (int(np.prod(shape)),)   # netx: a dense layer has prod(shape) neurons
    lava = (reader.member(group, "lava") if "lava" in group else None) if use_lava_groups else None
    if lava is not None and not isinstance(lava, h5py.Group):
        raise reader.fail("field 'lava' is not a group")
    has_neuron = "neuron" in group
    if lava is not None:
        reader.where += "lava/"
        neurons = CubaNeurons(du=reader.scalar(lava, "du"), dv=reader.scalar(lava, "dv"),
                              vth=reader.scalar(lava, "vth"), bias_mant=reader.array(lava, "bias_mant"),
                              bias_exp=reader.array(lava, "bias_exp"))
    else:
        if has_neuron:
            params = _read_neuron_group(reader, group)
        elif kind == "conv":
            raise reader.fail("missing group 'neuron'")
        else:
            params = dict(READOUT_NEURON)
        try:
            bias = _bias_from_netx(reader.array(group, "bias", required=False, cast=True), shape)
        except ValueError as error:
            raise reader.fail(f"field 'bias': {error}")
        neurons = CubaNeurons.create(shape, **params, bias_mant=bias, bias_exp=NETX_BIAS_EXP)
    if kind == "conv":
        if "delay" in group:
            _warn(reader, "field 'delay' of a conv layer is ignored by netx 0.6 (it builds conv synapses without "
                          "delays), and so here")
        source = lava if lava is not None else group
        weights = reader.array(source, "weight", cast=lava is None)
        if weights.ndim == 5 and weights.shape[4] == 1:   # slayer's trailing time axis
            weights = weights[..., 0]
        return ConvLayer(weights=weights, neurons=neurons, input_shape=previous, **_conv_geometry(reader, group))
    readout = not has_neuron or neurons.vth >= NEVER_FIRES
    if lava is not None:
        return DenseLayer(weights=reader.array(lava, "weight"), neurons=neurons,
                          weight_exp=reader.scalar(lava, "weight_exp"),
                          num_weight_bits=reader.scalar(lava, "num_weight_bits"),
                          sign_mode=reader.scalar(lava, "sign_mode"),
                          recurrent_weights=reader.array(lava, "weight_rec", required=kind == "dense_rec"),
                          readout=bool(reader.scalar(lava, "readout", default=int(readout))),
                          delays=reader.array(lava, "delays", required=False),
                          recurrent_delays=reader.array(lava, "recurrent_delays", required=False))
    return _read_dense_netx(reader, group, kind, neurons, readout)


def resolve_input_shape(given: tuple[int, ...] | None, first_conv_weights: np.ndarray, groups: int) -> tuple[int, int, int]:
    """A conv-first network's input shape from the user: (C, H, W) as everywhere in hw_sim, or netx's own
    (W, H, C) order; the channel count from the conv weights tells them apart (and where both ends equal it,
    the two readings are the same shape)."""
    channels = int(first_conv_weights.shape[1]) * int(groups)
    shape = tuple(int(n) for n in given)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be three positive sizes (C, H, W), found {given}")
    if shape[0] == channels:
        return shape
    if shape[2] == channels:
        return shape[::-1]
    raise ValueError(f"input_shape {shape} does not hold the first conv layer's {channels} input channels "
                     "(expected (C, H, W) or netx's (W, H, C))")


def load(path: str | os.PathLike, *, input_shape: tuple[int, ...] | None = None) -> Network:
    """Read and validate a ``loihi.h5`` (ours, or any netx file with CUBA neurons, e.g. slayer's
    ``export_hdf5``); any problem is a :class:`LoihiFileError` naming file, layer and field.

    ``input_shape`` is needed only when the file has no ``input`` layer and starts with a conv layer, as
    netx's own ``input_shape`` argument is: (C, H, W), or netx's (W, H, C). Fields that netx ignores but
    a user should know about give a :class:`LoihiFileWarning`.
    """
    path = Path(path)
    reader = _Reader(path)
    if not path.is_file():
        raise reader.fail("no such file")
    try:
        damage = hdf5_heap_damage(path)
    except OSError as error:
        raise reader.fail(f"cannot be read ({' '.join(str(error).split())})")
    if damage:
        raise reader.fail(f"damaged HDF5 file ({damage})")
    try:
        handle = h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as error:
        raise reader.fail(f"not an HDF5 file ({' '.join(str(error).split())})")
    with handle:
        network = read_network(handle, path, input_shape=input_shape)
        try:
            claims_netx_exact = bool(np.asarray(handle.attrs.get("netx_exact", False)).reshape(-1)[0])
        except (IndexError, TypeError, ValueError, OSError, RuntimeError, KeyError):
            raise reader.fail("root attribute 'netx_exact' must be one boolean")
        if claims_netx_exact:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", LoihiFileWarning)
                    netx_view = read_network(handle, path, use_lava_groups=False, input_shape=input_shape)
            except LoihiFileError:
                netx_view = None
            if netx_view is None or not equivalent(network, netx_view):
                raise reader.fail("claims netx_exact but its netx fields disagree with its exact Lava parameters")
        return network


def read_network(handle: h5py.File, path: Path, *, use_lava_groups: bool = True,
                 input_shape: tuple[int, ...] | None = None) -> Network:
    """Read the layers of an open netx file; ``use_lava_groups=False`` reads it exactly as netx does."""
    reader = _Reader(path)
    try:
        return _read_network(handle, reader, use_lava_groups, input_shape)
    except LoihiFileError:
        raise
    except (KeyError, TypeError, IndexError, OSError, RuntimeError, ValueError) as error:
        # HDF5 reports a damaged structure (B-tree, heap, addresses) from wherever it is first touched.
        raise reader.fail(f"damaged or malformed file ({type(error).__name__}: {' '.join(str(error).split())})")


def _first_layer_input(reader: _Reader, group: h5py.Group, kind: str, file_shape: tuple[int, ...] | None,
                       given: tuple[int, ...] | None) -> tuple[int, ...]:
    """The network's input shape, found the way netx finds it: a dense layer takes as many inputs as its
    weights have columns (whatever an input layer says); a conv layer needs the input layer's shape or
    the caller's ``input_shape``."""
    if kind == "conv":
        if file_shape is not None:
            if given is not None and tuple(given) not in (file_shape, file_shape[::-1]):
                raise reader.fail(f"input_shape {tuple(given)} contradicts the file's input layer {file_shape}")
            if len(file_shape) != 3:
                raise reader.fail(f"a conv layer needs a (C, H, W) input, the input layer says {file_shape}")
            return file_shape
        if given is None:
            raise reader.fail("the file has no input layer and starts with a conv layer: give the input shape "
                              "(C, H, W) as netx needs it too (hw_sim.load(path, input_shape=...), sbnn --input-shape)")
        weights = reader.array(group, "weight", cast=True)
        try:
            return resolve_input_shape(given, weights, reader.scalar(group, "groups"))
        except ValueError as error:
            raise reader.fail(str(error))
    weight = reader.array(group, "weight", cast=True)
    neurons = int(np.prod(reader.shape(group, scalar=True)))
    if weight.ndim not in (1, 2) or weight.size == 0 or weight.size % neurons:
        raise reader.fail(f"field 'weight' of shape {weight.shape} does not fit {neurons} neurons")
    inputs = weight.size // neurons
    for candidate, what in ((file_shape, "the input layer's shape"), (given, "input_shape")):
        if candidate is not None and int(np.prod(candidate)) != inputs:
            raise reader.fail(f"{what} {tuple(candidate)} has {int(np.prod(candidate))} values, but the first "
                              f"dense layer takes {inputs} inputs")
    shape = file_shape if file_shape is not None else tuple(given) if given is not None else (inputs,)
    return shape if len(shape) in (1, 3) else (inputs,)


def _layer_groups(handle: h5py.File, reader: _Reader) -> tuple[h5py.Group, list[str]]:
    """The root group ``layer`` and the names of its layer groups, which must be "0".."N-1" (N >= 1), in order."""
    root = reader.member(handle, "layer") if "layer" in handle else None
    if not isinstance(root, h5py.Group):
        raise reader.fail("missing group 'layer' (not a netx network file)")
    names = sorted(root.keys(), key=lambda name: int(name) if name.isdigit() else -1)
    if names != [str(i) for i in range(len(names))] or not names:
        raise reader.fail(f"layer groups must be named 0..N-1, found {sorted(root.keys())[:10]}")
    return root, names


def _read_network(handle: h5py.File, reader: _Reader, use_lava_groups: bool,
                  given_input_shape: tuple[int, ...] | None) -> Network:
    """The network in an open netx file, layer by layer (what :func:`read_network` does, its errors aside)."""
    root, names = _layer_groups(handle, reader)
    layers: list[Layer] = []
    input_shape: tuple[int, ...] | None = None
    file_input_shape: tuple[int, ...] | None = None
    input_message_bits = 0
    flatten_pending = False
    for name in names:
        reader.where = f"layer {name}: "
        group = reader.member(root, name)
        if not isinstance(group, h5py.Group):
            raise reader.fail("is not a group")
        kind = _layer_type(reader, group)
        try:
            if kind in NOT_MODELLED_LAYERS:
                raise reader.fail(f"layer type '{kind}' ({NOT_MODELLED_LAYERS[kind]}) is not modelled by hw_sim "
                                  "(dense, dense_rec, conv, flatten)")
            if kind not in LAYER_TYPES:
                raise reader.fail(f"layer type '{kind}' is not supported (dense, dense_rec, conv, flatten)")
            _check_layer_fields(reader, group, kind)
            if kind == "input":
                if name != "0":
                    raise reader.fail("an input layer must come first")
                if "neuron" in group:
                    raise reader.fail("input layers with neurons (slayer's Input block) are not modelled by hw_sim")
                file_input_shape = reader.shape(group) if "shape" in group else None
                input_message_bits = reader.scalar(group, "inputMessageBits", default=0)
                continue
            if kind == "flatten":
                if layers and len(layers[-1].shape) == 1:
                    raise reader.fail("a flatten layer after a dense layer (netx 0.6 fails on it)")
                flatten_pending = True
                continue
            if input_shape is None:
                input_shape = _first_layer_input(reader, group, kind, file_input_shape, given_input_shape)
            previous = layers[-1].shape if layers else input_shape
            if kind == "conv" and len(previous) != 3:
                raise reader.fail(f"a conv layer needs a (C, H, W) input, the previous layer has shape {previous}")
            if kind != "conv" and layers and len(previous) == 3 and not flatten_pending:
                raise reader.fail("a dense layer after a conv layer needs a 'flatten' layer before it")
            flatten_pending = False
            layers.append(_read_layer(reader, group, kind, previous, use_lava_groups))
        except NetworkError as error:
            raise reader.fail(str(error))
        except LoihiFileError:
            raise
        except (KeyError, TypeError, IndexError, OSError, RuntimeError, ValueError) as error:
            raise reader.fail(f"malformed ({type(error).__name__}: {' '.join(str(error).split())})")
    reader.where = ""
    if not layers:
        raise reader.fail("no dense or conv layer")
    try:
        network = Network(input_shape=input_shape, layers=tuple(layers), input_message_bits=input_message_bits)
    except NetworkError as error:
        raise reader.fail(str(error))
    return network
