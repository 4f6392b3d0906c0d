"""Time of one training step: SBNN spiking MLP vs the same architecture with a surrogate gradient.

700-256-20 (SHD-sized), T = 100, batch 64, 5 % input density. The SBNN step (noisy CUBA-LIF, local
reparameterisation: a second matrix product for the variance, AGR estimator, KL term) and the surrogate
step (deterministic LIF, fast-sigmoid surrogate, no KL) are timed alternately in one process, forward +
backward + Adam update; the best of several repeats is kept. Target (issue 3): SBNN ≤ 2× surrogate.

By default glibc returns large freed blocks to the system, so the SBNN step, which holds a few more
whole-sequence tensors, page-faults more than the surrogate's many small per-step tensors, and how much
that costs depends on the host's memory pressure.  ``--reuse-memory`` keeps freed memory in the process
for both models (:func:`sbnn.allocator.keep_freed_memory`, which ``sbnn train`` and ``sbnn pipeline``
call); the allocator in use is printed with the ratio.

Usage: .venv/bin/python benchmarks/train_step.py [--repeats N] [--threads N] [--device cpu|cuda]
       [--reuse-memory] [--recurrent]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sbnn.allocator import keep_freed_memory
from sbnn.models import ModelConfig, build_model


def make_step(model, x, y):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator(x.device).manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, generator=generator), y) + model.kl() / 8000
        loss.backward()
        optimizer.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--recurrent", action="store_true", help="recurrent weights in the hidden layer (SHD)")
    parser.add_argument("--reuse-memory", action="store_true",
                        help="keep freed memory in the process (glibc mallopt) for both models")
    args = parser.parse_args()
    allocator = "glibc defaults"
    if args.reuse_memory:
        allocator = "freed memory kept (mallopt)" if keep_freed_memory() else "glibc defaults (mallopt failed)"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    x = (torch.rand(64, 100, 700) < 0.05).float().to(device)
    y = torch.randint(0, 20, (64,)).to(device)
    steps = {}
    for name, surrogate in (("sbnn", False), ("surrogate", True)):
        config = ModelConfig(kind="snn", hidden=(256,), init_gain=3.0, surrogate=surrogate, recurrent=args.recurrent)
        model = build_model(config, (700,), 20, seed=0)
        steps[name] = make_step(model.to(device), x, y)
    times = {name: float("inf") for name in steps}
    for _ in range(args.repeats):      # alternate, so both see the same machine load
        for name, step in steps.items():
            times[name] = min(times[name], best_time(step, 1))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    kind = "recurrent spiking MLP" if args.recurrent else "spiking MLP"
    print(f"700-256-20 {kind}, T=100, batch 64, {where}, {allocator}; best of {args.repeats}")
    print(f"SBNN (AGR, local reparameterisation, KL): {times['sbnn'] * 1e3:8.1f} ms per step")
    print(f"surrogate (deterministic LIF):            {times['surrogate'] * 1e3:8.1f} ms per step")
    print(f"ratio SBNN / surrogate: {times['sbnn'] / times['surrogate']:.2f} (target ≤ 2)")


if __name__ == "__main__":
    main()
