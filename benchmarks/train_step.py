"""Time of one training step: SBNN spiking MLP vs the same architecture with a surrogate gradient.

700-256-20 (SHD-sized), T = 100, batch 64, 5 % input density. The SBNN step (noisy CUBA-LIF, local
reparameterisation: a second matrix product for the variance, AGR estimator, KL term) and the surrogate
step (deterministic LIF, fast-sigmoid surrogate, no KL) are timed alternately in one process, forward +
backward + Adam update; the best of several repeats is kept. Target (issue 3): SBNN ≤ 2× surrogate.

Usage: .venv/bin/python benchmarks/train_step.py [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sbnn.models import ModelConfig, build_model


def make_step(model, x, y):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, generator=generator), y) + model.kl() / 8000
        loss.backward()
        optimizer.step()
    return step


def best_time(step, repeats: int) -> float:
    step()   # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = (torch.rand(64, 100, 700) < 0.05).float()
    y = torch.randint(0, 20, (64,))
    steps = {}
    for name, surrogate in (("sbnn", False), ("surrogate", True)):
        model = build_model(ModelConfig(kind="snn", hidden=(256,), init_gain=3.0, surrogate=surrogate), (700,), 20, seed=0)
        steps[name] = make_step(model, x, y)
    times = {name: float("inf") for name in steps}
    for _ in range(args.repeats):      # alternate, so both see the same machine load
        for name, step in steps.items():
            times[name] = min(times[name], best_time(step, 1))
    print(f"700-256-20 spiking MLP, T=100, batch 64, {args.threads} thread(s); best of {args.repeats}")
    print(f"SBNN (AGR, local reparameterisation, KL): {times['sbnn'] * 1e3:8.1f} ms per step")
    print(f"surrogate (deterministic LIF):            {times['surrogate'] * 1e3:8.1f} ms per step")
    print(f"ratio SBNN / surrogate: {times['sbnn'] / times['surrogate']:.2f} (target ≤ 2)")


if __name__ == "__main__":
    main()
