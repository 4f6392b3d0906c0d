"""hw_sim's speed next to its floors and its float peers, on one thread, measured side by side in one run.

Networks (T = 100, 5 % binary input spikes): the SHD-sized dense 700-256-20 CUBA net at batch 1, 64 and
1024; a conv net 2->16c3s2->32c3s2->10 (padding 1) at batch 16 on 34x34 and 64x64 inputs. For each it
prints the median time of:

- hw_sim (``Network.run``, bit-exact integers; feed-forward layers in numba-compiled code where numba is
  installed, docs/loihi.md#integer-products-in-hw_sim);
- the float32 floor: the same products hw_sim cannot avoid, bare (numpy matmul for dense synapses,
  torch conv2d for conv synapses), on the same inputs and on hw_sim's own hidden spikes. hw_sim may run
  below this floor: on input sparser than its thresholds it computes no dense product at all, but sums
  the weights of the inputs that fired, step by step, inside its compiled kernel;
- Norse float inference of the same shapes (``torch.no_grad``, float32, norse.torch.LIF over time, each
  synapse applied to all steps at once: one product per layer);

and the ratios hw_sim / floor and hw_sim / Norse. ``--products`` adds the table behind hw_sim's choice
of path per layer (hw_sim.loihi.DENSE_EVENT_DENSITY, CONV_EVENT_DENSITY): for the dense net's two layers
(batch 64) and the conv nets' conv layers (batch 16), at input densities from 1 % to 60 %, a one-layer
hw_sim run forced onto the event-driven path (sums from the spikes inside the kernel) vs forced onto the
product path (BLAS / torch conv2d first, then the kernel), their ratio, and the path hw_sim's thresholds
pick at that density; then the table behind the no-numba fallback (hw_sim.loihi.EVENT_DENSITY,
EVENT_MIN_OUTPUTS): BLAS vs torch's event_product. Everything runs on one thread (set before numpy and
torch load). The total time is printed at the end.

Usage: .venv/bin/python benchmarks/hw_sim_speed.py [--repeats N] [--quick] [--products]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import hw_sim.loihi as loihi  # noqa: E402
from hw_sim import ConvLayer, CubaNeurons, DenseLayer, Network  # noqa: E402

STEPS, DENSITY = 100, 0.05
DENSE_SHAPE = (700, 256, 20)
CONV_CHANNELS = (2, 16, 32)
CONV_OUTPUTS = 10
CONV_THRESHOLDS = (600, 5000)   # about 10 % and 14 % spike rates at 5 % input density


def dense_network(seed: int = 0) -> Network:
    """700-256-20 CUBA with weights in [-128, 127] (the network of benchmarks/hw_sim_vs_lava.py)."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, width in zip(DENSE_SHAPE[:-1], DENSE_SHAPE[1:]):
        weights = rng.integers(-128, 128, size=(width, fan_in))
        layers.append(DenseLayer(weights=weights, neurons=CubaNeurons.create((width,), du=410, dv=205, vth=300)))
    return Network(input_shape=(DENSE_SHAPE[0],), layers=tuple(layers))


def conv_network(side: int, seed: int = 0) -> Network:
    """2 -> 16c3s2 -> 32c3s2 (padding 1) -> dense 10, weights in [-64, 64], on a (2, side, side) input."""
    rng = np.random.default_rng(seed)
    layers, shape = [], (CONV_CHANNELS[0], side, side)
    for channels, vth in zip(CONV_CHANNELS[1:], CONV_THRESHOLDS):
        h, w = ((n + 2 - 3) // 2 + 1 for n in shape[1:])
        weights = rng.integers(-48, 65, size=(channels, shape[0], 3, 3))
        neurons = CubaNeurons.create((channels, h, w), du=410, dv=205, vth=vth)
        layers.append(ConvLayer(weights=weights, neurons=neurons, input_shape=shape, stride=(2, 2), padding=(1, 1)))
        shape = (channels, h, w)
    weights = rng.integers(-128, 128, size=(CONV_OUTPUTS, int(np.prod(shape))))
    layers.append(DenseLayer(weights=weights, neurons=CubaNeurons.create((CONV_OUTPUTS,), du=410, dv=205, vth=300)))
    return Network(input_shape=(CONV_CHANNELS[0], side, side), layers=tuple(layers))


def median_time(repeats: int, function) -> float:
    """Median wall time (s) of ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor_function(network: Network, x: np.ndarray, spikes: list[np.ndarray]):
    """The bare float32 products of every synapse on its real input (x, then hw_sim's hidden spikes)."""
    import torch.nn.functional as F
    batch = x.shape[0]
    inputs = [x] + spikes[:-1]
    work = []
    for layer, layer_input in zip(network.layers, inputs):
        if isinstance(layer, ConvLayer):
            rows = torch.from_numpy(layer_input.reshape(batch * STEPS, *layer.input_shape).astype(np.float32))
            kernel = torch.from_numpy(layer.weights.astype(np.float32))
            work.append(lambda r=rows, k=kernel, s=layer.stride, p=layer.padding: F.conv2d(r, k, stride=s, padding=p))
        else:
            rows = layer_input.reshape(batch * STEPS, -1).astype(np.float32)
            matrix = np.ascontiguousarray(layer.weights.T, dtype=np.float32)
            work.append(lambda r=rows, m=matrix: r @ m)

    def run() -> None:
        with torch.no_grad():
            for item in work:
                item()
    return run


def norse_function(network: Network, x: np.ndarray):
    """Norse float32 inference of the same shapes: synapse on all steps at once, then LIF over time."""
    import norse.torch as norse
    batch = x.shape[0]
    torch.manual_seed(0)
    synapses = []
    for layer in network.layers:
        if isinstance(layer, ConvLayer):
            synapses.append(torch.nn.Conv2d(layer.input_shape[0], layer.shape[0], 3, stride=2, padding=1, bias=False))
        else:
            synapses.append(torch.nn.Linear(layer.input_size, layer.shape[0], bias=False))
    neurons = [norse.LIF() for _ in network.layers]
    data = torch.from_numpy(x.transpose(1, 0, *range(2, x.ndim)).astype(np.float32))   # (T, B, ...)

    def run() -> None:
        with torch.no_grad():
            h = data
            for synapse, lif in zip(synapses, neurons):
                if isinstance(synapse, torch.nn.Conv2d):
                    h = synapse(h.reshape(STEPS * batch, *h.shape[2:]))
                    h = h.reshape(STEPS, batch, *h.shape[1:])
                else:
                    h = synapse(h.reshape(STEPS, batch, -1))
                h, _ = lif(h)
    return run


def measure(name: str, network: Network, batch: int, repeats: int, seed: int = 0) -> None:
    x = (np.random.default_rng(seed).random((batch, STEPS, *network.input_shape)) < DENSITY).astype(np.uint8)
    result = network.run(x)
    sim = median_time(repeats, lambda: network.run(x))
    floor = median_time(repeats, floor_function(network, x, result.spikes))
    peer = median_time(repeats, norse_function(network, x))
    rates = " ".join(f"{float(s.mean()):.3f}" for s in result.spikes)
    print(f"{name:>22} {batch:>5} {sim * 1e3:>10.1f} {floor * 1e3:>9.1f} {sim / floor:>8.2f} "
          f"{peer * 1e3:>9.1f} {sim / peer:>8.2f}   {rates}")


PRODUCT_DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6)
PRODUCT_CONV_SIDES = (34, 64)   # the conv layers of conv_network(side) in the product table
PATHS = {"event": math.inf, "product": 0.0}   # threshold values that force each path of _run_compiled


@contextlib.contextmanager
def forced_path(path: str):
    """Force hw_sim's compiled layers onto one path: ``"event"`` (sums from the spikes inside the kernel)
    or ``"product"`` (BLAS / torch conv2d first). hw_sim has no switch for this; hw_sim.loihi._run_compiled
    compares the measured input density with the module constants DENSE_EVENT_DENSITY and
    CONV_EVENT_DENSITY at each call, so they are set to inf or 0 here and restored afterwards."""
    saved = (loihi.DENSE_EVENT_DENSITY, loihi.CONV_EVENT_DENSITY)
    loihi.DENSE_EVENT_DENSITY = loihi.CONV_EVENT_DENSITY = PATHS[path]
    try:
        yield
    finally:
        loihi.DENSE_EVENT_DENSITY, loihi.CONV_EVENT_DENSITY = saved


def product_layers() -> list[tuple[str, DenseLayer | ConvLayer, int]]:
    """(name, layer, batch) of the layers in the product table: the dense net's two (batch 64) and the
    conv nets' two conv layers (batch 16) for each side in PRODUCT_CONV_SIDES."""
    items = [(f"dense {layer.input_size}->{layer.shape[0]}", layer, 64) for layer in dense_network().layers]
    for side in PRODUCT_CONV_SIDES:
        for layer in conv_network(side).layers[:2]:
            c, h, w = layer.input_shape
            items.append((f"conv {c}x{h}x{w}->{layer.shape[0]}c", layer, 16))
    return items


def product_table(repeats: int) -> None:
    """Per layer shape and input density: a one-layer hw_sim run (``Network.run``) forced onto the
    event-driven path vs forced onto the product path (:func:`forced_path`), their ratio, the path hw_sim's
    thresholds pick at that density and whether it is the faster one."""
    if importlib.util.find_spec("numba") is None:
        print("numba is not installed: hw_sim's compiled paths are not available")
        return
    print(f"one-layer runs, T={STEPS}; event: sums from the spikes in the kernel; product: BLAS / conv2d first "
          f"(thresholds: dense {loihi.DENSE_EVENT_DENSITY:.0%}, conv {loihi.CONV_EVENT_DENSITY:.0%})")
    print(f"{'layer':>22} {'batch':>5} {'density':>7} {'event ms':>9} {'product ms':>10} {'event/prod':>10} "
          f"{'hw_sim picks':>12}")
    rng = np.random.default_rng(0)
    for name, layer, batch in product_layers():
        shape = layer.input_shape if isinstance(layer, ConvLayer) else (layer.input_size,)
        network = Network(input_shape=shape, layers=(layer,))
        threshold = loihi.CONV_EVENT_DENSITY if isinstance(layer, ConvLayer) else loihi.DENSE_EVENT_DENSITY
        for density in PRODUCT_DENSITIES:
            x = (rng.random((batch, STEPS, *shape)) < density).astype(np.uint8)
            times = {}
            for path in PATHS:
                with forced_path(path):
                    times[path] = median_time(repeats, lambda: network.run(x))
            pick = "event" if loihi._density(x) < threshold else "product"
            faster = "event" if times["event"] < times["product"] else "product"
            print(f"{name:>22} {batch:>5} {density:>7.0%} {times['event'] * 1e3:>9.1f} "
                  f"{times['product'] * 1e3:>10.1f} {times['event'] / times['product']:>10.2f} "
                  f"{pick:>12}{'' if pick == faster else ' (slower)'}")


def fallback_product_table(repeats: int) -> None:
    """The no-numba fallback (hw_sim.loihi.EVENT_DENSITY, EVENT_MIN_OUTPUTS): BLAS vs torch's
    event_product in float32 on 6400 binary rows (batch 64 x T 100) per density, for the dense shapes."""
    print(f"no-numba fallback: float32 products on {64 * STEPS} binary rows")
    print(f"{'product':>22} {'density':>7} {'BLAS ms':>8} {'event ms':>9} {'event/BLAS':>10}")
    rng = np.random.default_rng(0)
    for n_in, n_out in zip(DENSE_SHAPE[:-1], DENSE_SHAPE[1:]):
        matrix = rng.integers(-128, 128, size=(n_in, n_out)).astype(np.float32)
        for density in (0.02, 0.05, 0.1, 0.25):
            rows = (rng.random((64 * STEPS, n_in)) < density).astype(np.uint8)
            blas = median_time(repeats, lambda: rows.astype(np.float32) @ matrix)
            event = median_time(repeats, lambda: loihi.event_product(rows, matrix))
            print(f"{f'{n_in}->{n_out}':>22} {density:>7.2f} {blas * 1e3:>8.1f} {event * 1e3:>9.1f} "
                  f"{event / blas:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median kept)")
    parser.add_argument("--quick", action="store_true", help="skip batch 1024 (for a fast look)")
    parser.add_argument("--products", action="store_true",
                        help="also time hw_sim's event-driven vs product paths per layer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"T={STEPS}, input density {DENSITY:.0%}, 1 thread, median of {args.repeats} (ms); "
          "ratios > 1 mean hw_sim is slower")
    print(f"{'network':>22} {'batch':>5} {'hw_sim ms':>10} {'floor ms':>9} {'/floor':>8} {'norse ms':>9} "
          f"{'/norse':>8}   spike rate per layer")
    dense = dense_network()
    for batch in (1, 64) if args.quick else (1, 64, 1024):
        measure("dense 700-256-20", dense, batch, args.repeats if batch < 1024 else max(1, args.repeats // 2))
    for side in (34, 64):
        measure(f"conv {side}x{side} 16c-32c-10", conv_network(side), 16, args.repeats)
    if args.products:
        product_table(args.repeats)
        fallback_product_table(args.repeats)
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
