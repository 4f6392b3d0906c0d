"""``sbnn simulate EXPORT --backend hw_sim|lava|torch``: run an export (or netx file) on one backend."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import EXIT_OK
from .inputs import UserError, _load_inputs, _load_network, _load_npy, _network_file, add_input_options


def add_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    simulate = commands.add_parser("simulate", help="run an export on one backend")
    add_input_options(simulate)
    # No argparse choices: the names come from sbnn.backends' registry, which --help must not import.
    simulate.add_argument("--backend", default="hw_sim", metavar="NAME",
                          help="hw_sim (default), lava, torch, or a backend registered in sbnn.backends")
    simulate.set_defaults(handler=command_simulate)
    return simulate


def command_simulate(args: argparse.Namespace) -> int:
    """Run an export on one backend: hw_sim, Lava, or the float model from model.nir (backend "torch":
    float arithmetic, no per-layer delay). With labels.npy beside the inputs, prints the accuracy too."""
    import numpy as np

    path = _network_file(Path(args.export))
    folder = path.parent
    network = _load_network(path, args)
    x, source = _load_inputs(Path(args.export), network, limit=args.limit, steps=args.steps, seed=args.seed,
                             density=args.density)
    delay = network.latency   # steps before the last layer can respond: one per layer, plus delays
    if x.shape[1] <= delay:
        raise UserError(f"{source}: {x.shape[1]} steps are too few for this network, whose last layer first "
                        f"responds at step {delay + 1} (one step per layer plus its delays)")
    from sbnn import backends

    if args.backend not in backends.backend_names():
        raise UserError(f"--backend {args.backend}: unknown; choose one of {', '.join(backends.backend_names())}")
    start = time.perf_counter()
    run = backends.simulate(args.backend, network, x, folder=folder, workers=args.workers, timeout=args.timeout)
    spikes, readout = run.result.spikes, run.readout
    seconds = time.perf_counter() - start
    labels_path = folder / "labels.npy"
    accuracy = None
    if readout is not None and labels_path.exists() and source == str(folder / "inputs.npy"):
        labels = _load_npy(labels_path)[:len(x)]
        accuracy = float((readout.mean(axis=1).argmax(axis=1) == labels).mean())
    rates = [float(s.mean()) for s in spikes]
    summary = {"backend": args.backend, "samples": int(x.shape[0]), "steps": int(x.shape[1]), "input": source,
               "output_spikes": int(np.asarray(spikes[-1]).sum()), "firing_rates": rates, "seconds": seconds,
               "accuracy": accuracy}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{path}: {x.shape[0]} samples x {x.shape[1]} steps on {args.backend} in {seconds:.3f} s")
        for k, rate in enumerate(rates):
            print(f"  layer {k}: firing rate {rate:.4f}")
        if accuracy is not None:
            print(f"  accuracy {accuracy:.4f} on {x.shape[0]} labelled samples")
    return EXIT_OK
