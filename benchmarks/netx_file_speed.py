"""hw_sim vs our Lava runner on a netx file laid out as lava-dl's slayer writes it (no input layer, float
weights, axonal delays), 700-256-20 CUBA, T = 100, batch 64, 5 % input density.

For a file without delays and one with axonal delays 0-4 on both layers, prints side by side in this run:
the time of ``hw_sim.load`` + run (best of --repeats), of Lava through our runner with Intel's netx
building the network from the file itself (one run; back to back without delays, one fresh network per
sample on every core with them), their ratio, and whether every output spike of every layer agreed (the
tests compare u and v as well). Target (issue 11): hw_sim at least 100x faster, bit-exact.

Usage: .venv/bin/python benchmarks/netx_file_speed.py [--repeats N] [--batch B]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import hw_sim
from hw_sim.random_networks import write_slayer_style_file

STEPS, INPUTS, HIDDEN, OUTPUTS, DENSITY = 100, 700, 256, 20, 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="hw_sim repeats (best is kept)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = (rng.random((args.batch, STEPS, INPUTS)) < DENSITY).astype(np.uint8)
    print(f"netx file (slayer layout) 700-256-20, T={STEPS}, batch {args.batch}, density {DENSITY:.0%}")
    print(f"{'file':>14} {'hw_sim s':>9} {'lava s':>8} {'lava mode':>10} {'lava/hw_sim':>11} {'bit-exact':>9} "
          f"{'spikes':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for name, delays in (("no delays", 0), ("delays 0-4", 4)):
            path = Path(folder) / f"{delays}.h5"
            write_slayer_style_file(path, 0, input_size=INPUTS, hidden=(HIDDEN,), outputs=OUTPUTS, delays=delays,
                                    density=DENSITY)

            def simulate():
                return hw_sim.load(path).run(x)

            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                ours = simulate()
                best = min(best, time.perf_counter() - start)
            network = hw_sim.load(path)
            mode = hw_sim.lava.choose_mode(network, "netx")
            start = time.perf_counter()
            theirs = hw_sim.lava.run(network, x, builder="netx", netx_file=path)
            lava_seconds = time.perf_counter() - start
            report = hw_sim.compare(ours, theirs)
            print(f"{name:>14} {best:9.3f} {lava_seconds:8.1f} {mode:>10} {lava_seconds / best:10.0f}x "
                  f"{str(report.bit_exact):>9} {int(sum(s.sum() for s in ours.spikes)):7d}")


if __name__ == "__main__":
    main()
