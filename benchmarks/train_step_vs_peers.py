"""One training step side by side: the SBNN, the surrogate baseline, and peer libraries' cell loops.

700-256-20 spiking MLP (SHD-sized), T = 100, batch 64, 5 % input density, forward + backward + Adam
update, best of ``--repeats`` with the models timed alternately in one process (so they see the same
machine load).  Prints the SBNN step, the surrogate step and their ratio (target of issue 14: ≤ 1.3 on
the CPU), then the same step written with Norse's ``LIFCell``/``LICell`` loop and snnTorch's ``Leaky``
loop (their tutorials' form: one cell call per time step, surrogate gradient), each skipped with a line
saying so when the library does not import.  Freed memory is kept in the process
(:func:`sbnn.allocator.keep_freed_memory`, as ``sbnn train`` does).

Then evaluation (issue 14): ``predict_mean`` of the same network on a batch of 256 (posterior-mean
weights, deterministic neurons), with :class:`CubaLif` chunked over time without autograd against the
step loop it runs when a gradient is needed (forced here by treating every input as needing one),
timed alternately; prints both, their ratio, and whether the probabilities agree bit for bit.

Usage: .venv/bin/python benchmarks/train_step_vs_peers.py [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable
from unittest import mock

import torch
import torch.nn.functional as F

from sbnn.allocator import keep_freed_memory
from sbnn.evaluate import predict_mean
from sbnn.layers import cuba_modules
from sbnn.models import ModelConfig, build_model

BATCH, STEPS, INPUTS, HIDDEN, CLASSES = 64, 100, 700, 256, 20
EVALUATION_BATCH = 256


def _best_times(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time (s) of each run over ``repeats`` rounds after a warm-up, alternating the runs in each
    round so that all see the same machine load."""
    for run in runs.values():
        run()   # warm-up
    times = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def evaluation_lines(repeats: int) -> list[str]:
    """``predict_mean`` with the deterministic LIF chunked without autograd vs the step loop: the lines to
    print."""
    x = (torch.rand(EVALUATION_BATCH, STEPS, INPUTS) < 0.05).float()
    model = build_model(ModelConfig(kind="snn", hidden=(HIDDEN,), init_gain=3.0), (INPUTS,), CLASSES, seed=0)

    def step_loop() -> torch.Tensor:
        with mock.patch.object(cuba_modules, "_needs_graph", lambda *tensors: True):
            return predict_mean(model, x, batch_size=EVALUATION_BATCH)

    runs = {"chunked, no autograd": lambda: predict_mean(model, x, batch_size=EVALUATION_BATCH),
            "step loop": step_loop}
    times = _best_times(runs, repeats)
    same = torch.equal(runs["chunked, no autograd"](), step_loop())
    return [f"predict_mean, batch {EVALUATION_BATCH}: " + ", ".join(
                f"{name} {seconds * 1e3:.1f} ms" for name, seconds in times.items()),
            f"evaluation speed-up: {times['step loop'] / times['chunked, no autograd']:.2f}x; "
            f"same probabilities bit for bit: {same}"]


def _adam_step(module: torch.nn.Module, loss_of: Callable[[], torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of().backward()
        optimizer.step()
    return step


def sbnn_step(x: torch.Tensor, y: torch.Tensor, *, surrogate: bool) -> Callable[[], None]:
    """An SBNN (AGR, KL) or surrogate training step of ``build_model``'s spiking MLP."""
    config = ModelConfig(kind="snn", hidden=(HIDDEN,), init_gain=3.0, surrogate=surrogate)
    model = build_model(config, (INPUTS,), CLASSES, seed=0)
    generator = torch.Generator().manual_seed(0)
    return _adam_step(model, lambda: F.cross_entropy(model(x, generator=generator), y) + model.kl() / 8000)


def _cell_loop_loss(net: torch.nn.ModuleDict, x: torch.Tensor, y: torch.Tensor, states: tuple,
                    readout_of: Callable) -> torch.Tensor:
    """A peer library's tutorial loop, one cell call per step: ``fc1``, ``lif``, ``fc2``, ``out``; the
    logits are the readout's voltage (``readout_of(output, state)``) averaged over time."""
    hidden_state, readout_state = states
    voltages = []
    for t in range(x.shape[1]):
        spikes, hidden_state = net["lif"](net["fc1"](x[:, t]), hidden_state)
        output, readout_state = net["out"](net["fc2"](spikes), readout_state)
        voltages.append(readout_of(output, readout_state))
    return F.cross_entropy(torch.stack(voltages, 1).mean(1), y)


def norse_step(x: torch.Tensor, y: torch.Tensor) -> Callable[[], None] | str:
    """Norse's tutorial loop: Linear, LIFCell, Linear, LICell, one call per step; or why it is skipped."""
    try:
        import norse.torch as norse
    except ImportError as error:   # pragma: no cover - depends on the environment
        return f"norse does not import ({error})"
    net = torch.nn.ModuleDict({"fc1": torch.nn.Linear(INPUTS, HIDDEN, bias=False), "lif": norse.LIFCell(),
                               "fc2": torch.nn.Linear(HIDDEN, CLASSES, bias=False), "out": norse.LICell()})

    return _adam_step(net, lambda: _cell_loop_loss(net, x, y, (None, None), readout_of=lambda out, state: out))


def snntorch_step(x: torch.Tensor, y: torch.Tensor) -> Callable[[], None] | str:
    """snnTorch's tutorial loop: Linear, Leaky, Linear, Leaky (readout without reset); or why skipped."""
    try:
        import snntorch
    except ImportError as error:   # pragma: no cover - depends on the environment
        return f"snntorch does not import ({error})"
    net = torch.nn.ModuleDict({"fc1": torch.nn.Linear(INPUTS, HIDDEN, bias=False), "lif": snntorch.Leaky(beta=0.95),
                               "fc2": torch.nn.Linear(HIDDEN, CLASSES, bias=False),
                               "out": snntorch.Leaky(beta=0.95, reset_mechanism="none")})

    states = (net["lif"].init_leaky(), net["out"].init_leaky())
    return _adam_step(net, lambda: _cell_loop_loss(net, x, y, states, readout_of=lambda out, state: state))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = (torch.rand(BATCH, STEPS, INPUTS) < 0.05).float()
    y = torch.randint(0, CLASSES, (BATCH,))
    candidates = {"SBNN (AGR, local reparameterisation, KL)": sbnn_step(x, y, surrogate=False),
                  "surrogate (deterministic LIF, fast sigmoid)": sbnn_step(x, y, surrogate=True),
                  "Norse LIFCell/LICell loop": norse_step(x, y),
                  "snnTorch Leaky loop": snntorch_step(x, y)}
    times = _best_times({name: step for name, step in candidates.items() if callable(step)}, args.repeats)
    print(f"{INPUTS}-{HIDDEN}-{CLASSES} spiking MLP, T={STEPS}, batch {BATCH}, CPU, {args.threads} thread(s); "
          f"best of {args.repeats}")
    sbnn, surrogate = times[next(iter(candidates))], times[list(candidates)[1]]
    for name, result in candidates.items():
        if name in times:
            print(f"{name + ':':46s}{times[name] * 1e3:8.1f} ms per step   (SBNN / this: {sbnn / times[name]:.2f})")
        else:
            print(f"{name + ':':46s} skipped: {result}")
    print(f"ratio SBNN / surrogate: {sbnn / surrogate:.2f} (target ≤ 1.3)")
    print("\n".join(evaluation_lines(args.repeats)))


if __name__ == "__main__":
    main()
