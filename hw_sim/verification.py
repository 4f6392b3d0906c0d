"""Spike-for-spike (and u, v) comparison of two implementations of one network."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .network import Network, RunResult


@dataclass(frozen=True)
class Difference:
    """One place where the implementations disagree; ``neuron`` is the index within the layer's shape."""

    quantity: str          # "spike", "u" or "v"
    sample: int
    step: int
    layer: int
    neuron: tuple[int, ...]
    expected: int          # hw_sim.loihi
    actual: int            # the other implementation (Lava)


@dataclass
class VerifyReport:
    """Counts compared and differing per quantity, and the earliest difference (by sample, step, layer)."""

    samples: int
    steps: int
    spikes_compared: int
    spike_mismatches: int
    states_compared: int
    state_mismatches: int
    first_difference: Difference | None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def bit_exact(self) -> bool:
        return self.spike_mismatches == 0 and self.state_mismatches == 0

    def to_json(self) -> dict:
        data = asdict(self)
        data["bit_exact"] = self.bit_exact
        return data

    def summary(self) -> str:
        if self.bit_exact:
            return (f"bit-exact: {self.spikes_compared} spikes and {self.states_compared} u/v values identical "
                    f"({self.samples} samples x {self.steps} steps)")
        d = self.first_difference
        return (f"DIFFERENT: {self.spike_mismatches}/{self.spikes_compared} spikes and "
                f"{self.state_mismatches}/{self.states_compared} u/v values differ; first: {d.quantity} of "
                f"sample {d.sample}, step {d.step}, layer {d.layer}, neuron {d.neuron}: "
                f"hw_sim {d.expected}, lava {d.actual}")


def compare(expected: RunResult, actual: RunResult) -> VerifyReport:
    """Compare two results of the same network and input (states only where both recorded them)."""
    if len(expected.spikes) != len(actual.spikes):
        raise ValueError(f"results have {len(expected.spikes)} and {len(actual.spikes)} layers")
    samples, steps = expected.spikes[0].shape[:2]
    quantities = [("spike", expected.spikes, actual.spikes)]
    if expected.u and actual.u:
        quantities += [("u", expected.u, actual.u), ("v", expected.v, actual.v)]
    counts = {"spike": [0, 0], "state": [0, 0]}
    candidates = []
    for name, ours, theirs in quantities:
        for layer, (a, b) in enumerate(zip(ours, theirs)):
            if a.shape != b.shape:
                raise ValueError(f"layer {layer} {name}: shapes {a.shape} and {b.shape} differ")
            bucket = counts["spike" if name == "spike" else "state"]
            differing = a != b
            bucket[0] += a.size
            bucket[1] += int(np.count_nonzero(differing))
            if differing.any():
                # earliest (sample, step) for this layer and quantity
                flat = np.flatnonzero(differing.reshape(a.shape[0] * a.shape[1], -1).any(axis=1))[0]
                sample, step = divmod(int(flat), a.shape[1])
                neuron = tuple(int(i) for i in np.argwhere(differing[sample, step])[0])
                candidates.append(Difference(name, sample, step, layer, neuron,
                                             int(a[(sample, step, *neuron)]), int(b[(sample, step, *neuron)])))
    first = min(candidates, key=lambda d: (d.sample, d.step, d.layer, d.quantity != "spike")) if candidates else None
    return VerifyReport(samples=int(samples), steps=int(steps), spikes_compared=counts["spike"][0],
                        spike_mismatches=counts["spike"][1], states_compared=counts["state"][0],
                        state_mismatches=counts["state"][1], first_difference=first)


def verify(network: Network, x: np.ndarray, *, record_states: bool = True, **lava_options) -> VerifyReport:
    """Run ``network`` on ``x`` in hw_sim and in Lava and compare every spike (and u, v) of every layer.

    ``lava_options`` go to :func:`hw_sim.lava.run` (``mode``, ``builder``, ``workers``, ``timeout``,
    ``netx_file``). To judge a user's file, pass ``network=hw_sim.load(path)``, ``builder="netx"`` and
    ``netx_file=path``: Intel's netx then runs the file itself, not hw_sim's reading of it.
    """
    from . import lava
    from .loihi import run

    start = time.perf_counter()
    ours = run(network, x, record_states=record_states)
    middle = time.perf_counter()
    theirs = lava.run(network, x, record_states=record_states, **lava_options)
    end = time.perf_counter()
    report = compare(ours, theirs)
    report.seconds = {"hw_sim": middle - start, "lava": end - middle}
    return report
