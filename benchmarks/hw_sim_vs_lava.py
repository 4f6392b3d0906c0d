"""hw_sim vs Lava on an SHD-sized 700-256-20 dense CUBA network, T = 100, 5 % input density.

Prints, for batch 1 and batch 64, measured side by side in this run: Lava's time in its best mode (one
run for batch 1; the batch concatenated into one run with staggered resets for batch 64), hw_sim's time,
their ratio, the bare float32 matrix-multiply floor for the same shapes and hw_sim's ratio to it, and a
bit-exactness check of every output spike. Everything runs on one thread (set before numpy loads: the
floor is a one-thread product like hw_sim). Targets (issue 2): bit-exact always; at batch 64 hw_sim at
least 100x faster than Lava; hw_sim within 2x of the matrix-multiply floor.

Usage: .venv/bin/python benchmarks/hw_sim_vs_lava.py [--repeats N]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import hw_sim  # noqa: E402
from hw_sim import CubaNeurons, DenseLayer, Network  # noqa: E402

STEPS, INPUTS, HIDDEN, OUTPUTS, DENSITY = 100, 700, 256, 20, 0.05


def shd_sized_network(seed: int = 0) -> Network:
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, width in ((INPUTS, HIDDEN), (HIDDEN, OUTPUTS)):
        weights = rng.integers(-128, 128, size=(width, fan_in))
        layers.append(DenseLayer(weights=weights, neurons=CubaNeurons.create((width,), du=410, dv=205, vth=300)))
    return Network(input_shape=(INPUTS,), layers=tuple(layers))


def best_of(repeats: int, function) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def matmul_floor(x: np.ndarray, hidden_spikes: np.ndarray, network: Network, repeats: int) -> float:
    """The bare float32 products of the two layers on their real inputs (x, then hw_sim's hidden spikes):
    (B*T, 700) @ (700, 256) and (B*T, 256) @ (256, 20)."""
    rows = x.reshape(-1, INPUTS).astype(np.float32)
    hidden = hidden_spikes.reshape(-1, HIDDEN).astype(np.float32)
    w1 = np.ascontiguousarray(network.layers[0].weights.T, dtype=np.float32)
    w2 = np.ascontiguousarray(network.layers[1].weights.T, dtype=np.float32)
    return best_of(repeats, lambda: (rows @ w1, hidden @ w2))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="hw_sim and floor repeats (best is kept)")
    args = parser.parse_args()
    network = shd_sized_network()
    rng = np.random.default_rng(0)
    print(f"700-256-20 CUBA, T={STEPS}, input density {DENSITY:.0%}; times are best of {args.repeats} (Lava: 1 run)")
    print(f"{'batch':>5} {'lava s':>8} {'lava mode':>10} {'hw_sim s':>9} {'lava/hw_sim':>11} "
          f"{'floor s':>8} {'hw_sim/floor':>12} {'bit-exact':>9} {'out spikes':>10}")
    for batch in (1, 64):
        x = (rng.random((batch, STEPS, INPUTS)) < DENSITY).astype(np.uint8)
        mode = "concat" if batch > 1 else "per_sample"
        lava_seconds, lava_result = best_of(1, lambda: hw_sim.lava.run(network, x, mode=mode))
        sim_seconds, sim_result = best_of(args.repeats, lambda: network.run(x))
        floor_seconds = matmul_floor(x, sim_result.spikes[0], network, args.repeats)
        exact = all(np.array_equal(a, b) for a, b in zip(sim_result.spikes, lava_result.spikes))
        print(f"{batch:>5} {lava_seconds:>8.2f} {mode:>10} {sim_seconds:>9.4f} {lava_seconds / sim_seconds:>11.0f} "
              f"{floor_seconds:>8.4f} {sim_seconds / floor_seconds:>12.2f} {str(exact):>9} "
              f"{int(sim_result.spikes[-1].sum()):>10}")
    print("Lava's time includes its start-up (compile, process spawn) and the worker's own Python start.")


if __name__ == "__main__":
    main()
