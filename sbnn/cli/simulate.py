"""``sbnn simulate EXPORT --backend hw_sim|lava|torch [--device cpu|cuda]``: run an export (or netx file) on one
backend; ``--device`` runs hw_sim's torch backend (docs/loihi.md#torch-backend), bit for bit the same."""

from __future__ import annotations

import argparse
import json
import time

from . import EXIT_OK
from .inputs import UserError, _predict, add_input_options, network_and_inputs


def add_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    simulate = commands.add_parser("simulate", help="run an export on one backend")
    add_input_options(simulate)
    # No argparse choices: the names come from sbnn.backends' registry, which --help must not import.
    simulate.add_argument("--backend", default="hw_sim", metavar="NAME",
                          help="hw_sim (default), lava, torch, or a backend registered in sbnn.backends")
    simulate.add_argument("--device", metavar="DEVICE",
                          help="run hw_sim's torch backend on DEVICE (cpu, cuda, cuda:N) instead of numpy, for "
                               "large batches on a GPU: the same results bit for bit (hw_sim backend only)")
    simulate.set_defaults(handler=command_simulate)
    return simulate


def command_simulate(args: argparse.Namespace) -> int:
    """Run an export on one backend: hw_sim, Lava, or the float model from model.nir (backend "torch":
    float arithmetic, no per-layer delay), batch by batch. With labels (``--labels``, or labels.npy beside
    the stored inputs) prints the accuracy too, scored by the readout rule of the network's last layer."""
    import numpy as np

    _check_device(args)
    path, network, inputs = network_and_inputs(args)
    folder = path.parent
    source, steps = inputs.source, inputs.steps
    delay = network.latency   # steps before the last layer can respond: one per layer, plus delays
    if steps <= delay:
        raise UserError(f"{source}: {steps} steps are too few for this network, whose last layer first "
                        f"responds at step {delay + 1} (one step per layer plus its delays)")
    from sbnn import backends

    if args.backend not in backends.backend_names():
        raise UserError(f"--backend {args.backend}: unknown; choose one of {', '.join(backends.backend_names())}")
    start = time.perf_counter()
    spike_sums, output_spikes, predictions, rule = None, 0, [], None
    for _, x in inputs.batches(args.batch_size, label=f"sbnn simulate ({args.backend})"):
        if args.device is None:
            run = backends.simulate(args.backend, network, x, folder=folder, workers=args.workers, timeout=args.timeout)
        else:
            run = _simulate_on_device(network, x, args.device)
        spikes = run.result.spikes
        sums = [float(np.asarray(s, dtype=np.float64).sum()) for s in spikes]
        sizes = [int(np.asarray(s).size) for s in spikes]
        spike_sums = [(a + s, b + n) for (a, b), s, n in zip(spike_sums or [(0.0, 0)] * len(sums), sums, sizes)]
        output_spikes += int(np.asarray(spikes[-1]).sum())
        predicted, rule = _predict(run.readout, spikes[-1])
        predictions.append(predicted)
    seconds = time.perf_counter() - start
    predictions = np.concatenate(predictions)
    accuracy = None
    if inputs.labels is not None:
        accuracy = float((predictions == inputs.labels).mean())
    rates = [total / size if size else 0.0 for total, size in spike_sums]
    summary = {"backend": args.backend, **({"device": args.device} if args.device else {}),
               "samples": len(inputs), "steps": steps, "input": source, "output_spikes": output_spikes,
               "firing_rates": rates, "seconds": seconds,
               "accuracy": accuracy, "readout_rule": rule, **_named_classes(path, predictions, inputs.labels)}
    if args.json:
        print(json.dumps(summary))
    else:
        where = args.backend if args.device is None else f"{args.backend} ({args.device})"
        print(f"{path}: {len(inputs)} samples x {steps} steps on {where} in {seconds:.3f} s")
        for k, rate in enumerate(rates):
            print(f"  layer {k}: firing rate {rate:.4f}")
        print(f"  readout rule: {rule}")
        if accuracy is not None:
            print(f"  accuracy {accuracy:.4f} on {len(inputs)} labelled samples ({rule})")
        for name, share in summary.get("per_class_accuracy", {}).items():
            print(f"  class {name}: accuracy {'-' if share is None else f'{share:.4f}'}")
    return EXIT_OK


def _check_device(args: argparse.Namespace) -> None:
    """``--device``: only with the hw_sim backend, and one torch can run on (checked before any work)."""
    if args.device is None:
        return
    if args.backend != "hw_sim":
        raise UserError(f"--device {args.device}: only the hw_sim backend runs on a device, not {args.backend}")
    from hw_sim import NetworkError
    from hw_sim.torch_backend import resolve_device

    try:
        resolve_device(args.device)
    except NetworkError as error:   # "device 'X': why"
        raise UserError(f"--{error}") from None


def _simulate_on_device(network, x, device: str):
    """The hw_sim backend's :class:`sbnn.backends.Simulation`, computed by hw_sim's torch backend on ``device``."""
    import hw_sim
    from sbnn.backends import Simulation, loihi_readout

    result = hw_sim.run(network, x, record_states=True, device=device)
    return Simulation(result, loihi_readout(network, result))


def _named_classes(path, predictions, labels) -> dict:
    """``classes`` (the class names the export records for text labels, in class order) and, with labels,
    ``per_class_accuracy``: name -> the share of that class's samples predicted as it (None when the inputs hold
    none of it). Empty when the export records no names."""
    import numpy as np

    from export.folder_reader import ExportFolder

    names = ExportFolder.holding(path).classes()
    if names is None:
        return {}
    named: dict = {"classes": names}
    if labels is not None:
        named["per_class_accuracy"] = {
            name: float(np.mean(predictions[labels == k] == k)) if np.any(labels == k) else None
            for k, name in enumerate(names)}
    return named
