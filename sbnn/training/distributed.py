"""Processes and devices of a (possibly single-process) data-parallel run.

Started by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the environment) the processes join a
``torch.distributed`` group (gloo on CPU, NCCL on CUDA) and each take a deterministic shard of every epoch's
permutation (:func:`epoch_shard`: ``DistributedSampler``'s layout). Rank 0 evaluates and writes files while the
others wait. Every collective here is a no-op in a single process.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sbnn.config import ConfigError, RunConfig

from .errors import RunFolderError

_DISTRIBUTED_TIMEOUT = datetime.timedelta(hours=2)  # rank 0 evaluates while the others wait


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in a (possibly single-process) data-parallel run."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "ProcessGroup":
        """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (set by ``torchrun``); defaults: one process."""
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as error:
            raise RunFolderError(f"bad torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {error}") from None
        if world_size < 1 or not 0 <= rank < world_size:
            raise RunFolderError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
        return cls(world_size, rank, local_rank)


def select_device(config: RunConfig, group: ProcessGroup) -> torch.device:
    """``train.device`` for this process (CUDA: the GPU of its ``LOCAL_RANK``, made the current one); ``auto``
    is CUDA when torch sees a GPU, else the CPU."""
    wanted = config.train.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{config.source}: train.device: cuda was asked for but torch sees no CUDA device "
                              f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use cpu")
        if group.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"{config.source}: train.device: LOCAL_RANK {group.local_rank} but only "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(group.local_rank)
        return torch.device("cuda", group.local_rank)
    return torch.device("cpu")


def join_process_group(group: ProcessGroup, device: torch.device) -> None:
    import torch.distributed as dist

    if group.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_DISTRIBUTED_TIMEOUT)


def leave_process_group(group: ProcessGroup) -> None:
    import torch.distributed as dist

    if group.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(values: Tensor, group: ProcessGroup, op: str = "sum") -> Tensor:
    """Reduce ``values`` over the processes in place (NCCL needs them on the GPU: keep them there)."""
    if not group.distributed:
        return values
    import torch.distributed as dist

    dist.all_reduce(values, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MIN)
    return values


def barrier(group: ProcessGroup) -> None:
    if group.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast_from_main(value: Any, group: ProcessGroup) -> Any:
    """Rank 0's ``value`` on every process (any picklable object)."""
    if not group.distributed:
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def epoch_shard(order: Tensor, group: ProcessGroup) -> Tensor:
    """This rank's share of an epoch's permutation (``DistributedSampler``'s layout: pad, then stride)."""
    if not group.distributed:
        return order
    padded_length = math.ceil(len(order) / group.world_size) * group.world_size
    padding = padded_length - len(order)
    if padding:
        order = torch.cat([order, order[:padding]])
    return order[group.rank::group.world_size]


__all__ = [
    "ProcessGroup",
    "all_reduce",
    "barrier",
    "broadcast_from_main",
    "epoch_shard",
    "join_process_group",
    "leave_process_group",
    "select_device",
]
