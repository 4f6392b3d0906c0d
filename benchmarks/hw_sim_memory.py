"""Peak memory and time of hw_sim on the 700-256-20 SHD-sized network, T = 100, 5 % input density.

Each case runs in a fresh process so that its peak resident memory (ru_maxrss) is its own; the baseline
row is the same process importing everything and building the input without simulating, so the
difference is what the simulation itself needs.

Usage: .venv/bin/python benchmarks/hw_sim_memory.py [--batches 64 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASE = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {bench!r})
from hw_sim_vs_lava import shd_sized_network, STEPS, INPUTS, DENSITY
batch, simulate, states = {batch}, {simulate}, {states}
network = shd_sized_network()
rng = np.random.default_rng(0)
x = np.empty((batch, STEPS, INPUTS), dtype=np.uint8)
for i in range(batch):  # row by row, so the baseline holds no large float temporary
    x[i] = rng.random((STEPS, INPUTS)) < DENSITY
start = time.perf_counter()
if simulate:
    network.run(x, record_states=states)
seconds = time.perf_counter() - start
print(json.dumps({{"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}}))
"""


def measure(batch: int, simulate: bool, states: bool) -> dict:
    code = CASE.format(bench=str(Path(__file__).parent), batch=batch, simulate=simulate, states=states)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    args = parser.parse_args()
    print(f"{'batch':>6} {'mode':>16} {'peak MiB':>9} {'above baseline MiB':>19} {'seconds':>8}")
    for batch in args.batches:
        baseline = measure(batch, simulate=False, states=False)
        print(f"{batch:>6} {'baseline':>16} {baseline['peak_mib']:>9.0f} {0:>19.0f} {0:>8.2f}")
        for states in (False, True):
            result = measure(batch, simulate=True, states=states)
            mode = "spikes + u, v" if states else "spikes only"
            print(f"{batch:>6} {mode:>16} {result['peak_mib']:>9.0f} "
                  f"{result['peak_mib'] - baseline['peak_mib']:>19.0f} {result['seconds']:>8.2f}")


if __name__ == "__main__":
    main()
