"""The Lava side of :mod:`hw_sim.lava`. Runs inside ``.venv-lava`` (lava-nc 0.10.0, numpy < 2).

Usage: ``python -m hw_sim.lava_worker JOB_DIR``. ``JOB_DIR`` holds ``loihi.h5`` (the network),
``input.npy`` ((batch, T, *input_shape) integers) and ``job.json`` (``builder``: "description" builds
Dense/Conv/LIF processes from our description, "netx" loads the file with Intel's
``netx.hdf5.Network``; ``mode``: "concat" or "per_sample"; ``record_states``). The worker writes
``output.npz`` with ``spikes_k``, ``u_k``, ``v_k`` per layer in hw_sim's layout and timing, then exits 0.
Any failure exits non-zero with a one-line message on stderr.

Batching (docs/loihi.md): Lava has no batch dimension. In "concat" mode the samples run back to back, each
padded with zero steps, and LIFReset clears each layer at a staggered virtual step of the sample
(:func:`reset_steps`) so that no activity of one sample reaches the next. That is exact only for networks
without biases (neurons would integrate through the pad) and without recurrent synapses (their buffered
spikes cross the reset); :func:`hw_sim.lava.choose_mode` uses "per_sample" (a fresh Lava network per
sample) for everything else.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

# Import fix before the first `import lava` (docs/loihi.md).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hw_sim import lava_compat  # noqa: E402

lava_compat.install()

from hw_sim.arith import SignMode  # noqa: E402
from hw_sim.lava import WORKER_ERROR_PREFIX  # noqa: E402
from hw_sim.netx_io import load  # noqa: E402
from hw_sim.network import MAX_DELAY, ConvLayer, Network  # noqa: E402


def lava_order(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(C, H, W) -> Lava's (W, H, C); 1-D shapes unchanged."""
    return tuple(reversed(shape))


def reverse_axes(array: np.ndarray) -> np.ndarray:
    """(T, C, H, W) <-> Lava's (W, H, C, T) and (T, N) <-> (N, T): both are a reversal of all axes."""
    return np.ascontiguousarray(array.T)


class Built:
    """The Lava processes of one network: where the source connects and each layer's neuron process."""

    def __init__(self, input_port, neurons: list, keep_alive: list) -> None:
        self.input_port = input_port
        self.neurons = neurons
        self.keep_alive = keep_alive


def reset_steps(network: Network) -> tuple[list[int], int]:
    """Virtual steps r_k (the sample's first input column is sent at virtual step 1) at which LIFReset clears
    layer k, and the zero padding each sample needs, for exact back-to-back samples without bias or recurrence.

    Layer k's leftovers from the previous sample are spikes emitted before r_k; they reach layer k + 1 at most
    1 + d_(k+1) steps later (d = that synapse's largest delay), so r_(k+1) = r_k + 1 + d_(k+1) and the last
    layer is cleared at virtual step 1. The pad lets the previous sample's last input column reach layer 1
    before r_1: pad = 2 + d_1 - r_1. Without delays this is r_k = k - L + 1 with pad L.
    """
    delays = [layer.max_delay if hasattr(layer, "max_delay") else 0 for layer in network.layers]
    steps = [1]
    for delay in reversed(delays[1:]):
        steps.insert(0, steps[0] - 1 - delay)
    return steps, 2 + delays[0] - steps[0]


def build_from_description(network: Network, period: int | None) -> Built:
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense, DelayDense
    from lava.proc.lif.process import LIF, LIFReset
    from lava.utils.weightutils import SignMode as LavaSignMode

    offsets = [step % period for step in reset_steps(network)[0]] if period else None

    def dense(weights, delays, **arguments):
        if delays is None:
            return Dense(weights=weights, **arguments)
        return DelayDense(weights=weights, delays=np.asarray(delays, dtype=int), max_delay=MAX_DELAY, **arguments)

    previous_out = None
    input_port = None
    neurons, keep = [], []
    previous_shape = network.input_shape
    for index, layer in enumerate(network.layers):
        message_bits = network.input_message_bits if index == 0 else 0
        params = dict(shape=lava_order(layer.shape), du=layer.neurons.du, dv=layer.neurons.dv,
                      vth=layer.neurons.vth,
                      bias_mant=_lava_array(layer.neurons.bias_mant), bias_exp=_lava_array(layer.neurons.bias_exp))
        lif = LIFReset(**params, reset_interval=period, reset_offset=offsets[index]) if period else LIF(**params)
        if isinstance(layer, ConvLayer):
            synapse = Conv(weight=np.ascontiguousarray(layer.weights[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)),
                           input_shape=lava_order(layer.input_shape), stride=layer.stride[::-1],
                           padding=layer.padding[::-1], dilation=layer.dilation[::-1], groups=layer.groups,
                           num_message_bits=message_bits)
            synapse_in = synapse.s_in
        else:
            dense_args = dict(weight_exp=layer.weight_exp, num_weight_bits=layer.num_weight_bits,
                              num_message_bits=message_bits)
            if layer.sign_mode != SignMode.INFERRED:
                dense_args["sign_mode"] = LavaSignMode(int(layer.sign_mode))
            synapse = dense(layer.weights, layer.delays, **dense_args)
            synapse_in = synapse.s_in
            if layer.recurrent_weights is not None:
                dense_args["num_message_bits"] = 0
                recurrent = dense(layer.recurrent_weights, layer.recurrent_delays, **dense_args)
                lif.s_out.connect(recurrent.s_in)
                recurrent.a_out.connect(lif.a_in)
                keep.append(recurrent)
        synapse.a_out.connect(lif.a_in)
        if previous_out is None:
            input_port = synapse_in
        elif len(previous_shape) == 3 and len(layer.shape) == 1:
            previous_out.transpose([2, 1, 0]).flatten().connect(synapse_in)   # netx's flatten (to C, H, W)
        else:
            previous_out.connect(synapse_in)
        previous_out, previous_shape = lif.s_out, layer.shape
        neurons.append(lif)
        keep.append(synapse)
    return Built(input_port, neurons, keep)


def _lava_array(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(2, 1, 0)) if array.ndim == 3 else np.asarray(array)


def build_from_netx(path: Path, network: Network, period: int | None) -> Built:
    """Intel's netx loads the file itself; ``input_shape`` is given as netx takes it, (W, H, C), for files
    without an input layer that start with a conv layer (netx ignores it otherwise)."""
    from lava.lib.dl.netx import hdf5

    kwargs = dict(net_config=str(path), input_message_bits=network.input_message_bits)
    if len(network.input_shape) == 3:
        kwargs["input_shape"] = lava_order(network.input_shape)
    if period:
        # netx clears layer k (0-based) at time_step ≡ reset_offset + 1 + k; we want virtual step k + 2 - L.
        kwargs.update(reset_interval=period, reset_offset=(1 - len(network.layers)) % period)
    net = hdf5.Network(**kwargs)
    return Built(net.inp, [layer.neuron for layer in net.layers], [net])


def _import_netx() -> None:
    """netx imports slayer, whose package __init__ imports cv2 and torchvision for object detection, which
    netx never uses and which are not installed (docs/netx.md): stand-ins let the import complete."""
    from unittest import mock

    for name in ("cv2", "torchvision", "torchvision.ops", "torchvision.transforms", "torchvision.io",
                 "torchvision.utils", "torchvision.transforms.functional", "torchvision.datasets"):
        sys.modules.setdefault(name, mock.MagicMock())


def run_once(build, network: Network, data: np.ndarray, steps: int, record_states: bool,
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Build, run ``steps`` Lava steps with ``data`` (*lava_input_shape, steps) as the source, read back."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.monitor.process import Monitor

    built = build()
    if len(built.input_port.shape) == 1 and data.ndim > 2:   # a dense first layer reads (C, H, W) flattened
        data = reverse_axes(reverse_axes(data).reshape(data.shape[-1], -1))
    source = Source(data=data.astype(np.int32))
    source.s_out.connect(built.input_port)
    sinks, monitors = [], []
    for lif, layer in zip(built.neurons, network.layers):
        sink = Sink(shape=lava_order(layer.shape), buffer=steps)
        lif.s_out.connect(sink.a_in)
        sinks.append(sink)
        if record_states:
            pair = (Monitor(), Monitor())
            pair[0].probe(lif.u, steps)
            pair[1].probe(lif.v, steps)
            monitors.append(pair)
    # No stop() after a failed run: it waits forever on Lava's failed runtime; the worker exits at once
    # (os._exit below) and the parent ends its process group.
    source.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    try:
        spikes = [reverse_axes(np.asarray(sink.data.get()))
                  for sink, layer in zip(sinks, network.layers)]
        us, vs = [], []
        for (monitor_u, monitor_v), lif, layer in zip(monitors, built.neurons, network.layers):
            for monitor, name, store in ((monitor_u, "u", us), (monitor_v, "v", vs)):
                recorded = np.asarray(next(iter(monitor.get_data().values()))[name])  # (steps, *lava_shape)
                store.append(reverse_axes(recorded.reshape(steps, *lava_order(layer.shape))
                                          .transpose(*range(1, len(layer.shape) + 1), 0)))
    finally:
        source.stop()
    return spikes, us, vs


def main(job_dir: Path) -> None:
    job = json.loads((job_dir / "job.json").read_text())
    input_shape = job.get("input_shape")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the parent has shown the file's warnings already
        network = load(job_dir / "loihi.h5", input_shape=tuple(input_shape) if input_shape else None)
    x = np.load(job_dir / "input.npy", allow_pickle=False)
    batch, steps = x.shape[:2]
    record_states = bool(job["record_states"])
    if job["builder"] == "netx":
        _import_netx()

    def builder(period):
        if job["builder"] == "netx":
            return lambda: build_from_netx(job_dir / "loihi.h5", network, period)
        return lambda: build_from_description(network, period)

    outputs: dict[str, list] = {"spikes": [[] for _ in network.layers], "u": [[] for _ in network.layers],
                                "v": [[] for _ in network.layers]}
    if job["mode"] == "concat":
        period = steps + reset_steps(network)[1]
        data = np.zeros((*lava_order(network.input_shape), batch * period), dtype=np.int64)
        for i in range(batch):
            data[..., i * period:i * period + steps] = reverse_axes(x[i])
        results = run_once(builder(period), network, data, batch * period, record_states)
        for name, per_layer in zip(("spikes", "u", "v"), results):
            for k, series in enumerate(per_layer):
                outputs[name][k] = [series[i * period:i * period + steps] for i in range(batch)]
    else:
        for i in range(batch):
            results = run_once(builder(None), network, reverse_axes(x[i]), steps, record_states)
            for name, per_layer in zip(("spikes", "u", "v"), results):
                for k, series in enumerate(per_layer):
                    outputs[name][k].append(series)
    arrays = {}
    for name, per_layer in outputs.items():
        for k, samples in enumerate(per_layer):
            if samples:
                arrays[f"{name}_{k}"] = np.stack(samples).astype(np.uint8 if name == "spikes" else np.int64)
    np.savez(job_dir / "output.npz", **arrays)


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]))
    except Exception as error:  # one line for the parent; the full trace goes to the log file
        (Path(sys.argv[1]) / "worker.log").write_text(traceback.format_exc())
        print(WORKER_ERROR_PREFIX + f"{type(error).__name__}: {error}".replace("\n", " "), file=sys.stderr, flush=True)
        # A failed Lava run leaves its runtime processes waiting forever, holding our output pipes (which the
        # parent reads to the end): end them, and exit without the interpreter's wait for them.
        import multiprocessing
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(3)
