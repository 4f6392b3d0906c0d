"""Simulation backends of ``sbnn simulate``: one registry, name -> a function that runs a network.

A backend runs the integer network read from a netx file (a :class:`hw_sim.Network`) on input spikes
``x`` ``(batch, T, *input_shape)`` and returns a :class:`Simulation`: what it computed, in hw_sim's
:class:`~hw_sim.RunResult` layout, and the readout layer's voltages over the steps that see the input.

* ``hw_sim``: our bit-exact Loihi simulator (docs/loihi.md): one step of delay per layer, so the readout
  is ``v[-1]`` from step ``network.latency`` on.
* ``lava``: the same network in Intel's Lava, run by :func:`hw_sim.lava.run` in ``.venv-lava``; same
  layout and timing as hw_sim.
* ``torch``: the float model beside the file (``model.nir`` of an sbnn export folder, scaled by
  ``export.json``'s ``input_scale`` when the first layer takes graded input): float arithmetic and no
  per-layer delay, so the readout is ``v[-1]`` over the first ``T - network.latency`` steps.  Its ``v``
  holds float voltages of the readout layer only (the other layers' entries are empty).

Adding a backend is one function plus one :func:`register_backend` line (docs/extending.md#backend).
This module is command-line code (it reads export folders through :mod:`export`); :mod:`hw_sim` itself
never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from hw_sim import Network, RunResult
from hw_sim.network import DenseLayer
from sbnn.registry import Registry


@dataclass(frozen=True)
class Simulation:
    """What a backend computed for a batch.

    Attributes:
        result: spikes per layer (``result.spikes[k]``: ``(batch, T, *shape_k)``) and states, in hw_sim's
            :class:`~hw_sim.RunResult` layout.
        readout: the readout layer's voltages over the steps that see the input, ``(batch, T', classes)``
            (average over axis 1 and take the argmax for the predicted class), or None when the last layer
            is not a readout.
    """

    result: RunResult
    readout: np.ndarray | None


class BackendFunction(Protocol):
    """``run(network, x, *, folder, workers, timeout) -> Simulation``.

    ``folder`` holds the network file (an export folder has model.nir, export.json, inputs.npy beside it);
    ``workers`` and ``timeout`` are for backends that run other processes (Lava), ignored by the others.
    """

    def __call__(self, network: Network, x: np.ndarray, *, folder: Path, workers: int | None,
                 timeout: float) -> Simulation: ...


class MissingExportFiles(FileNotFoundError):
    """A backend needs files the folder does not hold (the command line reports it as bad input, exit 2)."""


@dataclass(frozen=True)
class Backend:
    """A registered backend: its ``name`` (``--backend``), the function, and one line for ``--help``."""

    name: str
    run: BackendFunction
    description: str = ""


_REGISTRY: Registry[Backend] = Registry("backend")


def register_backend(name: str, run: Callable[..., Simulation], description: str = "", *,
                     replace: bool = False) -> Backend:
    """Make ``run`` the backend called ``name`` (see :class:`BackendFunction`); returns its entry.
    A name already taken is refused unless ``replace``."""
    return _REGISTRY.register(name, Backend(name, run, description), replace=replace)


def unregister_backend(name: str) -> None:
    """Forget a registered backend (the built-in ones stay)."""
    _REGISTRY.unregister(name)


def backend_names() -> tuple[str, ...]:
    """The registered backends' names, the built-in ones (:data:`BACKENDS`) first: ``--backend``'s choices."""
    return _REGISTRY.names()


def get_backend(name: str) -> Backend:
    """The registered backend called ``name``."""
    return _REGISTRY.get(name)


def simulate(name: str, network: Network, x: np.ndarray, *, folder: str | Path, workers: int | None = None,
             timeout: float = 600.0) -> Simulation:
    """Run ``network`` on ``x`` with the backend called ``name``."""
    return get_backend(name).run(network, x, folder=Path(folder), workers=workers, timeout=timeout)


# ----------------------------------------------------------------------------------------------------
# The built-in backends
# ----------------------------------------------------------------------------------------------------


def ends_in_readout(network: Network) -> bool:
    """Whether the network's last layer is a readout (:attr:`hw_sim.network.DenseLayer.readout`; only a dense
    layer can be one)."""
    last = network.layers[-1]
    return isinstance(last, DenseLayer) and last.readout


def loihi_readout(network: Network, result: RunResult) -> np.ndarray | None:
    """The readout voltages of a run with Loihi's timing: ``v[-1]`` from step ``network.latency`` on."""
    if not ends_in_readout(network):
        return None
    return result.v[-1][:, network.latency:]


def run_hw_sim(network: Network, x: np.ndarray, *, folder: Path, workers: int | None = None,
               timeout: float = 600.0) -> Simulation:
    """Backend ``hw_sim``: :meth:`hw_sim.Network.run`, states recorded."""
    result = network.run(x, record_states=True)
    return Simulation(result, loihi_readout(network, result))


def run_lava(network: Network, x: np.ndarray, *, folder: Path, workers: int | None = None,
             timeout: float = 600.0) -> Simulation:
    """Backend ``lava``: :func:`hw_sim.lava.run` (raises :class:`hw_sim.lava.LavaError` when Lava cannot run)."""
    from hw_sim import lava

    result = lava.run(network, x, record_states=True, workers=workers, timeout=timeout)
    return Simulation(result, loihi_readout(network, result))


def run_torch(network: Network, x: np.ndarray, *, folder: Path, workers: int | None = None,
              timeout: float = 600.0) -> Simulation:
    """Backend ``torch``: the float model in ``folder/model.nir``, float arithmetic, no per-layer delay."""
    from export.folder_reader import ExportFolder

    export = ExportFolder(folder)
    if not export.has("model.nir", "export.json"):
        raise MissingExportFiles(f"{folder}: the float backend needs model.nir and export.json (an sbnn export folder)")
    float_network = export.float_network()
    always_on = int(export.report.get("always_on_inputs", 0))   # channels the float model adds as current biases
    if always_on:
        x = x[:, :, :-always_on]   # the channel axis of (batch, T, N) and (batch, T, C, H, W)
    input_scale = export.report.get("input_scale", 1.0)
    spikes, voltages = float_network.run(x / input_scale if network.input_message_bits else x)
    readout = voltages[-1][:, :x.shape[1] - network.latency] if float_network.layers[-1].readout else None
    return Simulation(RunResult(spikes=spikes, v=voltages), readout)


register_backend("hw_sim", run_hw_sim, "our bit-exact Loihi simulator")
register_backend("lava", run_lava, "Intel's Lava, in .venv-lava")
register_backend("torch", run_torch, "the float model (model.nir): float arithmetic, no per-layer delay")

# The built-in backends (backend_names() lists the registered ones, these and any added since).
BACKENDS: tuple[str, ...] = backend_names()
_REGISTRY.seal_built_ins()


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendFunction",
    "MissingExportFiles",
    "Simulation",
    "backend_names",
    "ends_in_readout",
    "get_backend",
    "loihi_readout",
    "register_backend",
    "run_hw_sim",
    "run_lava",
    "run_torch",
    "simulate",
    "unregister_backend",
]
