"""Where the sparse product of a 0/1 input stops paying off: a first layer's two routes timed side by side.

A ``BayesLinear`` built with ``binary_input=False`` (a model's first layer) takes one of two routes for 0/1
(spike) data on the CPU, chosen per call by the cost model of ``sbnn.layers.bayesian``
(``_sparse_density_limit`` with ``_SCAN_COST``, ``_CHECK_COST``, ``_DENSE_COSTS``, ``_SPARSE_COSTS``): the
dense route (one product, with ``[mu; sigma^2]`` stacked along the outputs for the moments, after checking
``x^2 = x`` over the whole input) or the sparse route (find the ones, gather weight rows forward, scatter
gradient rows for the weight gradient: ``spike_linear``, numba kernels where numba is installed).  This
script times the layer's own forward (and backward), the route forced by replacing
``_sparse_density_limit`` by "always" or "never", the two routes alternating call by call in one process
so that both see the same machine load; freed memory is kept in the process as ``sbnn train`` keeps it.
Cases:

- train: noisy mode (the moments, 2 x out columns), forward + weight gradient;
- noisy forward: the same under ``torch.no_grad``;
- mean forward: mode ``"mean"`` under ``torch.no_grad`` (out columns).

Shapes (rows = batch x T, in_features -> out): SHD MLP 64x100 x 700 -> 256, MNIST MLP 128x30 x 784 -> 512,
quickstart 64x50 x 50 -> 128; Bernoulli inputs at densities 2-40 %.  It prints, per case and shape, the
median of the sparse/dense ratios of consecutive calls per density, the measured crossover (where the
straight line through the ratios crosses 1), the crossover of the cost model in ``bayesian.py`` and that
of the costs fitted here to the model's form, in ns per input element:
``dense = columns (D_f + backward D_b) + moments check``, ``sparse = scan + density columns (S_f + backward
S_b)``.  The dense costs are fitted to the dense route's times, the sparse ones so that the sparse time
equals the fitted dense time at each measured crossover (least squares of relative errors), on the SHD
and MNIST layers only: the quickstart layer's 50 inputs make its dense product about twice as costly per
column (a short inner dimension), which the form cannot hold, and its times are a few ms.  The "fitted"
line holds the values for ``bayesian.py``.  One thread (torch and numba).  The total time is printed at
the end.

Usage: .venv/bin/python benchmarks/sparse_product_crossover.py [--repeats N] [--quick]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sbnn.allocator import keep_freed_memory  # noqa: E402
from sbnn.layers import BayesLinear, bayesian, set_mode  # noqa: E402


class Shape(NamedTuple):
    """A first layer: input ``(batch, steps, in_features)``, ``out_features`` outputs."""

    name: str
    batch: int
    steps: int
    in_features: int
    out_features: int
    fitted: bool = True   # whether the fit of the costs uses it


class Case(NamedTuple):
    """What the layer is timed doing."""

    name: str
    mode: str        # the layer's mode
    backward: bool   # forward + weight gradient, else forward under no_grad

    @property
    def moments(self) -> bool:
        """Whether the layer forms the moments (mean and variance), as it tells the cost model."""
        return self.mode == "noisy"

    def columns(self, shape: Shape) -> int:
        """Output columns of the products in all, as the layer counts them for the cost model."""
        return shape.out_features * (2 if self.moments else 1)


SHAPES = (Shape("SHD MLP", 64, 100, 700, 256), Shape("MNIST MLP", 128, 30, 784, 512),
          Shape("quickstart", 64, 50, 50, 128, fitted=False))
CASES = (Case("train", "noisy", True), Case("noisy forward", "noisy", False), Case("mean forward", "mean", False))
DENSITIES = (0.02, 0.05, 0.10, 0.15, 0.20, 0.30, 0.40)
ROUTES = ("sparse", "dense")


@contextlib.contextmanager
def forced_route(route: str):
    """The layers take ``route`` for every 0/1 input while inside (the cost model's limit set to 1 or -1)."""
    chosen = bayesian._sparse_density_limit
    limit = 1.0 if route == "sparse" else -1.0
    bayesian._sparse_density_limit = lambda columns, backward, moments: limit
    try:
        yield
    finally:
        bayesian._sparse_density_limit = chosen


def call_of(layer: BayesLinear, case: Case, x: torch.Tensor, seed: int):
    """One forward (and, for ``case.backward``, backward with fixed output gradients) of ``layer`` on ``x``."""
    set_mode(layer, case.mode)
    generator = torch.Generator().manual_seed(seed)
    shape = (*x.shape[:-1], layer.out_features)
    grads = [torch.randn(shape, generator=generator) for _ in range(2)]

    def call() -> None:
        if not case.backward:
            with torch.no_grad():
                layer(x)
            return
        layer.zero_grad(set_to_none=True)
        outputs = [t for t in layer(x) if t is not None]
        torch.autograd.backward(outputs, grads[:len(outputs)])
    return call


def route_times(call, repeats: int) -> dict[str, float]:
    """Median seconds of ``call`` on each route, the routes alternating (after one warm-up call each), and
    the median of the sparse/dense ratios of the calls made one after the other (``ratio``)."""
    times: dict[str, list[float]] = {route: [] for route in ROUTES}
    for repeat in range(repeats + 1):
        for route in ROUTES if repeat % 2 else ROUTES[::-1]:
            with forced_route(route):
                start = time.perf_counter()
                call()
                elapsed = time.perf_counter() - start
            if repeat:
                times[route].append(elapsed)
    ratios = [sparse / dense for sparse, dense in zip(times["sparse"], times["dense"])]
    return {"ratio": statistics.median(ratios), **{route: statistics.median(values) for route, values in times.items()}}


def measure(shapes: tuple[Shape, ...], densities: tuple[float, ...], repeats: int) -> list[dict]:
    """One row per shape, case and density: the routes' median times (s) and what the fit needs."""
    rows = []
    for shape in shapes:
        layer = BayesLinear(shape.in_features, shape.out_features, binary_input=False,
                            generator=torch.Generator().manual_seed(0))
        for density in densities:
            generator = torch.Generator().manual_seed(int(density * 1000))
            x = (torch.rand(shape.batch, shape.steps, shape.in_features, generator=generator) < density).float()
            for case in CASES:
                times = route_times(call_of(layer, case, x, seed=1), repeats)
                rows.append({"shape": shape, "case": case, "density": density, **times,
                             "elements": x.numel(), "columns": case.columns(shape)})
    return rows


def crossover(densities: list[float], ratios: list[float]) -> float:
    """The density where the straight line fitted to the sparse/dense ratios crosses 1 (the sparse time is
    linear in the density, the dense one constant); ``nan`` where the ratio does not grow with it."""
    slope, intercept = np.polyfit(densities, ratios, 1)
    return (1.0 - intercept) / slope if slope > 0 else float("nan")


def crossovers(rows: list[dict]) -> dict[tuple[Case, Shape], float]:
    """The measured crossover density of each case and shape (:func:`crossover`)."""
    found = {}
    for key in dict.fromkeys((row["case"], row["shape"]) for row in rows):   # in measured order
        mine = [row for row in rows if (row["case"], row["shape"]) == key]
        found[key] = crossover([row["density"] for row in mine], [row["ratio"] for row in mine])
    return found


def fit_costs(rows: list[dict]) -> tuple[float, float, tuple[float, float], tuple[float, float]]:
    """``(scan, check, dense, sparse)`` costs (ns) of the model's form, fitted on the shapes marked ``fitted``
    (least squares of relative errors): the dense route's to its times per input element; the sparse
    route's so that its time equals the fitted dense time at each crossover measured within the densities."""
    rows = [row for row in rows if row["shape"].fitted]

    def terms(case: Case, shape: Shape) -> np.ndarray:
        columns = case.columns(shape)
        return np.asarray([columns, columns * case.backward, case.moments], dtype=float)

    design = np.stack([terms(row["case"], row["shape"]) for row in rows])
    measured = np.asarray([row["dense"] / row["elements"] * 1e9 for row in rows])
    dense = np.linalg.lstsq(design / measured[:, None], np.ones(len(rows)), rcond=None)[0]
    top = max(row["density"] for row in rows)
    equations, targets = [], []
    for (case, shape), density in crossovers(rows).items():
        if 0 < density <= top:
            columns = case.columns(shape)
            equations.append([1.0, density * columns, density * columns * case.backward])
            targets.append(terms(case, shape) @ dense)
    if len(targets) < 3:   # too few crossovers measured to fit (a --quick run)
        return float("nan"), float(dense[2]), (float(dense[0]), float(dense[1])), (float("nan"), float("nan"))
    sparse = np.linalg.lstsq(np.asarray(equations) / np.asarray(targets)[:, None], np.ones(len(targets)),
                             rcond=None)[0]
    return float(sparse[0]), float(dense[2]), (float(dense[0]), float(dense[1])), (float(sparse[1]), float(sparse[2]))


def density_text(value: float) -> str:
    """A crossover density as a percentage: "never" where the sparse route never wins, "always" above 1,
    "n/a" where the ratio does not grow with the density."""
    if math.isnan(value):
        return "n/a"
    return "never" if value <= 0 else "always" if value > 1 else f"{value:.1%}"


def report(rows: list[dict], fitted) -> None:
    """The ratio table with the measured and modelled crossovers, per case and shape."""
    densities = list(dict.fromkeys(row["density"] for row in rows))
    measured = crossovers(rows)
    print("\nsparse / dense time per input density (median of consecutive calls' ratios); crossover densities:\n"
          "measured (line through the ratios), cost model in bayesian.py, fitted costs; dense route's median time")
    print(f"{'case':>13} {'shape':>28} " + " ".join(f"{d:>5.0%}" for d in densities)
          + f" {'measured':>8} {'model':>7} {'fitted':>7} {'dense ms':>8}")
    for case in CASES:
        for shape in dict.fromkeys(row["shape"] for row in rows):   # in measured order
            mine = [row for row in rows if row["case"] == case and row["shape"] == shape]
            ratios = [row["ratio"] for row in mine]
            columns = case.columns(shape)
            label = f"{shape.name} {shape.batch * shape.steps}x{shape.in_features}->{columns}"
            model = bayesian._sparse_density_limit(columns, case.backward, case.moments)
            fit = bayesian._sparse_density_limit(columns, case.backward, case.moments, fitted)
            dense_ms = 1e3 * statistics.median(row["dense"] for row in mine)
            print(f"{case.name:>13} {label:>28} " + " ".join(f"{r:>5.2f}" for r in ratios)
                  + f" {density_text(measured[case, shape]):>8} {density_text(model):>7} {density_text(fit):>7}"
                  + f" {dense_ms:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed repeats per route and point (median kept)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small batches, three densities, 1 repeat")
    args = parser.parse_args()
    torch.set_num_threads(1)
    allocator = "freed memory kept" if keep_freed_memory() else "glibc defaults"   # as `sbnn train` runs
    start = time.perf_counter()
    shapes, densities, repeats = SHAPES, DENSITIES, args.repeats
    if args.quick:
        shapes = tuple(shape._replace(batch=2) for shape in SHAPES)
        densities, repeats = (0.02, 0.1, 0.4), 1
    kernels = "numba kernels" if bayesian._spike_kernels() is not None else "torch fallback (no numba)"
    print(f"1 thread, {kernels}, {allocator}, median of {repeats}; load average {os.getloadavg()[0]:.2f} at the start")
    rows = measure(shapes, densities, repeats)
    fitted = fit_costs(rows)
    report(rows, fitted)
    scan, check, dense, sparse = fitted
    print(f"\nin bayesian.py: _SCAN_COST = {bayesian._SCAN_COST}, _CHECK_COST = {bayesian._CHECK_COST}, "
          f"_DENSE_COSTS = {bayesian._DENSE_COSTS}, _SPARSE_COSTS = {bayesian._SPARSE_COSTS}")
    print(f"fitted (ns):    _SCAN_COST = {scan:.2f}, _CHECK_COST = {check:.2f}, "
          f"_DENSE_COSTS = ({dense[0]:.4f}, {dense[1]:.4f}), _SPARSE_COSTS = ({sparse[0]:.4f}, {sparse[1]:.4f})")
    print(f"load average {os.getloadavg()[0]:.2f} at the end; total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
