"""Seeded random networks over the whole Lava parameter space, for verification, demos and benchmarks."""

from __future__ import annotations

import numpy as np

from .arith import SignMode
from .network import ConvLayer, CubaNeurons, DenseLayer, Network, conv_output_hw


def _neurons(rng: np.random.Generator, shape: tuple[int, ...], *, bias: bool, stress: bool,
             drive: float) -> CubaNeurons:
    """Random neurons whose threshold is a random multiple of ``drive``, the typical |input| per step
    (in a_in units), so that random networks are neither silent nor saturated."""
    vth = int(np.clip(drive * rng.uniform(0.2, 2.0), 0, (1 << 17) - 1))
    if stress:
        du, dv = int(rng.choice([0, 4095, int(rng.integers(0, 4096))])), int(rng.choice([0, 4096, int(rng.integers(0, 4097))]))
        vth = int(rng.choice([0, 1, (1 << 17) - 1, vth]))
    else:
        du, dv = int(rng.integers(0, 4096)), int(rng.integers(0, 4097))
    if bias:
        # The bias is not MSB-aligned: 64 bias units equal one unit of a_in.
        mant = rng.integers(-300, 500, size=shape) * max(1, int(drive) // 8)
        mant = np.clip(mant, -(1 << 15), (1 << 15) - 1)
        exp = rng.integers(-3, 3, size=shape) if stress else np.full(shape, int(rng.integers(0, 3)))
    else:
        mant, exp = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    return CubaNeurons(du=du, dv=dv, vth=vth, bias_mant=mant, bias_exp=exp)


def _drive(weights: np.ndarray, scale: float, density: float) -> float:
    """Typical net synaptic input per step when a fraction ``density`` of the inputs spike."""
    rows = weights.reshape(weights.shape[0], -1)
    net = max(float(rows.sum(axis=1).mean()), 0.1 * float(np.abs(rows).sum(axis=1).mean()))
    return max(1.0, net * density * scale)


def _dense_weights(rng: np.random.Generator, out: int, inp: int, sign_mode: SignMode) -> np.ndarray:
    weights = rng.integers(-200, 256, size=(out, inp))
    if sign_mode == SignMode.EXCITATORY:
        weights = np.abs(weights) % 256
    elif sign_mode == SignMode.INHIBITORY:
        weights = -(np.abs(weights) % 256)
    return weights


def random_network(seed: int, *, input_shape: tuple[int, ...] = (32,), hidden: tuple[int, ...] = (48,),
                   outputs: int = 10, conv_channels: tuple[int, ...] = (), recurrent: bool = False,
                   bias: bool = True, stress: bool = False, readout: bool = False,
                   input_message_bits: int = 0, netx_compatible: bool = False, delays: int = 0) -> Network:
    """A random integer network: optional conv layers (3x3, random stride and padding) on a (C, H, W)
    input, dense hidden layers (the first recurrent if asked), then ``outputs`` neurons (a readout
    integrator if ``readout``). Weights, exponents, weight bits, sign modes, decays, thresholds and biases
    are drawn over Lava's ranges; ``stress`` adds extremes (du/dv at their limits, thresholds 0 and
    2^17 - 1, large weight exponents) and makes the last layer a slow integrator of large
    sums, so that u wraps and v saturates. ``netx_compatible`` restricts
    the draw to what netx can express exactly (weights in [-127, 127], exponent 0, bias exponent 6).
    ``delays`` > 0 gives every dense synapse (and recurrent synapse) random delays in [0, delays] steps:
    per neuron, per input or per connection (netx can express all three)."""
    rng = np.random.default_rng(seed)
    layers = []
    shape = tuple(input_shape)
    for channels in conv_channels:
        stride, padding = int(rng.integers(1, 3)), int(rng.integers(0, 2))
        h, w = conv_output_hw(shape[1:], (3, 3), (stride, stride), (padding, padding), (1, 1))
        weights = rng.integers(-30 if not stress else -3000, 41 if not stress else 3001, size=(channels, shape[0], 3, 3))
        neurons = _neurons(rng, (channels, h, w), bias=bias, stress=stress, drive=_drive(weights, 1, 0.2))
        layer = ConvLayer(weights=weights, neurons=neurons,
                          input_shape=shape, stride=(stride, stride), padding=(padding, padding))
        layers.append(_netx_bias(layer) if netx_compatible else layer)
        shape = layer.shape
    widths = list(hidden) + [outputs]
    for index, width in enumerate(widths):
        sign_mode = SignMode(int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1])))
        is_readout = readout and index == len(widths) - 1
        weights = _dense_weights(rng, width, int(np.prod(shape)), sign_mode)
        weight_exp = int(rng.integers(-7, 8)) if stress else int(rng.integers(-3, 3))
        if netx_compatible:
            weights, weight_exp, sign_mode = np.clip(weights, -127, 127), 0, SignMode.INFERRED
        neurons = (CubaNeurons.integrator((width,), bias_mant=rng.integers(-50, 50, size=width) if bias else 0)
                   if is_readout else _neurons(rng, (width,), bias=bias, stress=stress,
                                               drive=_drive(weights, 2.0 ** weight_exp, 0.2)))
        layers.append(DenseLayer(
            weights=weights, neurons=neurons, weight_exp=weight_exp,
            num_weight_bits=8 if netx_compatible else int(rng.integers(1, 9)), sign_mode=sign_mode,
            recurrent_weights=(_dense_weights(rng, width, width, sign_mode)
                               if recurrent and index == 0 and not is_readout else None),
            readout=is_readout, delays=_random_delays(rng, (width, int(np.prod(shape))), delays)))
        if delays and layers[-1].recurrent_weights is not None:
            from dataclasses import replace
            layers[-1] = replace(layers[-1], recurrent_delays=_random_delays(rng, (width, width), delays))
        if netx_compatible:
            layers[-1] = _netx_bias(layers[-1])
        if stress and index == len(widths) - 1 and not is_readout:
            # A near-integrator at the top threshold, fed by large excitatory sums: u wraps and v saturates.
            from dataclasses import replace
            layers[-1] = replace(layers[-1], weights=np.abs(layers[-1].weights) % 256, weight_exp=7,
                                 num_weight_bits=8, sign_mode=SignMode.EXCITATORY,
                                 neurons=replace(layers[-1].neurons, du=0, dv=0, vth=(1 << 17) - 1),
                                 recurrent_weights=None)
        shape = (width,)
    return Network(input_shape=tuple(input_shape), layers=tuple(layers), input_message_bits=input_message_bits)


def _random_delays(rng: np.random.Generator, shape: tuple[int, int], largest: int) -> np.ndarray | None:
    """Delays in [0, largest]: one per neuron (slayer's axonal delays), one per input, or one per connection."""
    if largest <= 0:
        return None
    form = int(rng.integers(0, 3))
    if form == 0:
        return np.repeat(rng.integers(0, largest + 1, size=(shape[0], 1)), shape[1], axis=1)
    if form == 1:
        return np.repeat(rng.integers(0, largest + 1, size=(1, shape[1])), shape[0], axis=0)
    return rng.integers(0, largest + 1, size=shape)


def write_slayer_style_file(path, seed: int, *, input_size: int = 24, input_shape: tuple[int, int, int] | None = None,
                            hidden: tuple[int, ...] = (20,), outputs: int = 8, conv_channels: tuple[int, ...] = (),
                            recurrent: bool = False, delays: int = 0, input_layer: bool = False,
                            bias: bool = False, density: float = 0.2) -> None:
    """A random netx file laid out the way lava-dl's slayer ``Network.export_hdf5`` writes one: no ``input``
    layer (unless asked), conv blocks first on a (C, H, W) ``input_shape`` when ``conv_channels``, a
    ``flatten``, dense (``dense_rec`` for the first hidden layer when ``recurrent``) blocks; float32 weights
    that are even integers in [-256, 254] (slayer's 64 x weight, 8-bit quantised), axonal ``delay`` per
    neuron in [0, delays], a CUBA ``neuron`` group (iDecay, vDecay, vThMant, refDelay, gradedSpike) and
    slayer's descriptor fields. Thresholds follow each layer's typical drive so the network is active.

    The file is for testing readers against Intel's netx; it is written directly, not atomically.
    """
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as handle:
        blocks = _SlayerBlocks(handle.create_group("layer"), rng)
        if input_layer:
            blocks.add("input").create_dataset("shape", data=np.array(input_shape or (input_size,)))
        shape = tuple(input_shape) if conv_channels else (input_size,)
        for channels in conv_channels:
            shape = blocks.add_conv(shape, channels, density)
        if len(shape) == 3:
            blocks.add("flatten").create_dataset("shape", data=np.array((int(np.prod(shape)), 1, 1)))
        for position, width in enumerate(list(hidden) + [outputs]):
            blocks.add_dense(shape, width, recurrent=recurrent and position == 0, bias=bias, delays=delays,
                             density=density if position == 0 else 0.2)
            shape = (width,)


class _SlayerBlocks:
    """Appends slayer-style layer groups "0", "1", ... to a file's ``layer`` group, drawing from ``rng``
    (in the order :func:`write_slayer_style_file` has always drawn, so that a seed gives the same file)."""

    def __init__(self, root, rng: np.random.Generator) -> None:
        self.root = root
        self.rng = rng
        self.count = 0

    def add(self, kind: str):
        """A new layer group of type ``kind`` (an "S10" string, as slayer writes it)."""
        group = self.root.create_group(str(self.count))
        group.create_dataset("type", (1,), "S10", [kind.encode("ascii")])
        self.count += 1
        return group

    def weights(self, shape: tuple[int, ...]) -> np.ndarray:
        """float32 weights that are even integers in [-256, 254] (slayer's 64 x weight, 8-bit quantised)."""
        return (2 * self.rng.integers(-128, 128, size=shape)).astype(np.float32)

    def neuron(self, group, drive: float) -> None:
        """A CUBA ``neuron`` group with random decays and a threshold near ``drive`` (a_in units per step)."""
        import h5py

        cuba = group.create_group("neuron")
        cuba.create_dataset("type", data="CUBA", dtype=h5py.string_dtype())
        cuba.create_dataset("iDecay", data=int(self.rng.integers(0, 4097)))
        cuba.create_dataset("vDecay", data=int(self.rng.integers(0, 4097)))
        cuba.create_dataset("vThMant", data=int(np.clip(drive * self.rng.uniform(0.3, 1.5), 1, (1 << 17) - 1)))
        cuba.create_dataset("refDelay", data=1)
        cuba.create_dataset("gradedSpike", data=False)

    def add_conv(self, shape: tuple[int, int, int], channels: int, density: float) -> tuple[int, int, int]:
        """A 3x3 conv block (random stride and padding) on a (C, H, W) input; returns its output shape."""
        stride, padding = int(self.rng.integers(1, 3)), int(self.rng.integers(0, 2))
        h, w = conv_output_hw(shape[1:], (3, 3), (stride, stride), (padding, padding), (1, 1))
        group = self.add("conv")
        group.create_dataset("shape", data=np.array((channels, h, w)))
        for name, value in (("inChannels", shape[0]), ("outChannels", channels), ("groups", 1)):
            group.create_dataset(name, data=value)
        for name, value in (("kernelSize", 3), ("stride", stride), ("padding", padding), ("dilation", 1)):
            group.create_dataset(name, data=np.array([value, value]))
        kernel = self.weights((channels, shape[0], 3, 3))
        group.create_dataset("weight", data=kernel)
        self.neuron(group, _drive(kernel, 1, density) * 2)
        return (channels, h, w)

    def add_dense(self, shape: tuple[int, ...], width: int, *, recurrent: bool, bias: bool, delays: int,
                  density: float) -> None:
        """A dense (``dense_rec`` when ``recurrent``) block of ``width`` neurons on an input of ``shape``:
        optional bias, axonal delays in [0, delays] per neuron (not on a recurrent block)."""
        inputs = int(np.prod(shape))
        group = self.add("dense_rec" if recurrent else "dense")
        group.create_dataset("shape", data=np.array([width]))
        group.create_dataset("inFeatures", data=inputs)
        group.create_dataset("outFeatures", data=width)
        matrix = self.weights((width, inputs))
        group.create_dataset("weight", data=matrix)
        if recurrent:
            group.create_dataset("weight_rec", data=self.weights((width, width)) / 4)
        if bias:
            group.create_dataset("bias", data=self.rng.integers(-20, 40, size=width).astype(np.float32))
        if delays and not recurrent:
            group.create_dataset("delay", data=self.rng.integers(0, delays + 1, size=width).astype(np.float32))
        self.neuron(group, _drive(matrix, 1, density) * 2)


def _netx_bias(layer):
    """The same layer with its bias re-expressed with netx's fixed exponent 6 (rounded to a multiple of 64)."""
    from dataclasses import replace
    mant = np.clip(layer.neurons.bias >> 6, -(1 << 15), (1 << 15) - 1)
    return replace(layer, neurons=replace(layer.neurons, bias_mant=mant, bias_exp=np.full(mant.shape, 6)))


def random_input(seed: int, network: Network, batch: int, steps: int, density: float = 0.3) -> np.ndarray:
    """Random input spikes (batch, T, *input_shape): binary with ``density``, or graded payloads 0..199."""
    rng = np.random.default_rng(seed)
    shape = (batch, steps, *network.input_shape)
    spikes = rng.random(shape) < density
    if network.input_message_bits:
        return spikes * rng.integers(1, 200, size=shape)
    return spikes.astype(np.uint8)
