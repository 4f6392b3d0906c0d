"""The random number generators of training: seeding, the per-epoch noise seed, and the states a checkpoint
holds (as tensors, lists and numbers, for ``weights_only`` loading).

* the data order comes from one generator whose state is checkpointed;
* the neuron noise of epoch ``e`` on rank ``r`` comes from a generator seeded with ``(seed, e, r)``
  (:func:`noise_seed`), so no process's noise state has to be gathered to resume at an epoch boundary.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def noise_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the neuron-noise generator of ``epoch`` (0-based) on ``rank``."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # a non-negative 62-bit seed


def capture_rng(data_generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """The states of torch's (and CUDA's), numpy's and python's generators and of the data-order generator."""
    numpy_name, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": numpy_name, "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
                  "position": int(numpy_position), "has_gauss": int(numpy_has_gauss),
                  "cached_gaussian": float(numpy_gauss)},
        "python": [python_version, list(python_state), python_gauss],
        "data": data_generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], data_generator: torch.Generator, device: torch.device) -> None:
    """Set the generators to a state of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    data_generator.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


__all__ = ["capture_rng", "noise_seed", "restore_rng", "seed_everything"]
