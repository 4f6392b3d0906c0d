"""Training from a run configuration: ``sbnn train CONFIG.toml [--out RUN] [--set key=value ...] [--resume]``.

The loss of method ``sbnn`` is the negative ELBO of docs/method.md#loss plus the auxiliary penalty::

    loss = NLL(batch) + beta_t * KL(q || p) / N_train + aux

with ``beta_t`` ramping linearly from 0 to ``train.kl_weight`` over ``train.kl_warmup_epochs`` (per step).
The network runs in mode ``"noisy"`` (fresh neuron and local-reparameterisation noise per example and step).
Method ``surrogate`` trains the same architecture with deterministic neurons and the fast-sigmoid
surrogate gradient; its KL is 0.

A run folder holds ``config.toml`` (the resolved config), ``checkpoint.pt`` and ``metrics.json``, all
written atomically (:mod:`safeio.atomic`: hidden temporary file, then ``os.replace``) after every epoch, by
rank 0 only; the temporaries a killed run left are removed when a run starts writing into its folder.
It also holds ``.sbnn-run``, the marker that lets ``--out`` name it again (:func:`check_run_folder` refuses any
other non-empty folder, so training never writes over a user's ``config.toml``), and ``.sbnn.lock``:
``sbnn train`` holds that folder's writer lock (:func:`safeio.atomic.folder_lock`) while it trains.
``checkpoint.pt`` holds only tensors, dicts, lists, numbers and strings, so it loads with
``torch.load(path, weights_only=True)``: the model, optimiser and scheduler states, the RNG states (torch,
CUDA, numpy, python, the data-order generator), the epoch, the global step, the metrics history and the
config.  ``--resume`` continues from it and reaches exactly the weights of an uninterrupted run:

* the data order comes from one generator whose state is checkpointed;
* the neuron noise of epoch ``e`` on rank ``r`` comes from a generator seeded with ``(seed, e, r)``, so
  no process's noise state has to be gathered to resume at an epoch boundary;
* evaluation draws from its own generators seeded with ``train.eval_seed`` and works on a copy of the
  model, so it never touches the training state.

Bit-exact equality needs the same config (``train.epochs``, ``device``, ``threads`` and
``eval_batch_size`` may change on resume; a longer run follows the schedule of its new length), the
same number of processes and the same hardware and thread count.

Multi-process data parallelism: started by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the
environment) the processes join a ``torch.distributed`` group (gloo on CPU, NCCL on CUDA), wrap the model
in ``DistributedDataParallel`` and each take a deterministic shard of every epoch's permutation
(``DistributedSampler``'s layout: padded to a multiple of the world size, rank ``r`` takes every
``world``-th example from ``r``); ``train.batch_size`` is the global batch.  Rank 0 evaluates and writes
files while the others wait.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import re
import sys
import time
import tomllib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safeio.atomic import LOCK_NAME, atomic_path, remove_stale
from sbnn.aux_loss import make_penalty, record_activity
from sbnn.config import ConfigError, RunConfig, TrainConfig, config_from_dict
from sbnn.data import DataError, Dataset, load_dataset
from sbnn.evaluate import evaluate_split
from sbnn.models import SbnnModel, build_model

CONFIG_FILE = "config.toml"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
RUN_FILES = (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE)
RUN_MARKER = ".sbnn-run"   # written into every run folder: what makes a non-empty folder usable as --out
# What a run folder of an earlier version (no marker) may hold: its files, the pipeline's, export folders,
# the writer lock and hidden temporaries of atomic writes.
_LEGACY_RUN_ENTRY = re.compile(r"config\.toml|checkpoint\.pt|metrics\.json|results\.json|report\.html"
                               r"|export(_sample[0-9]+)?|\.sbnn\.lock|\..+\.(new|old|tmp[0-9]*)")
CHECKPOINT_FORMAT = 1
JSON_KEYS: tuple[str, ...] = (
    "test_accuracy_mean", "test_accuracy_noisy", "test_accuracy_ensemble", "epochs", "seconds", "run_dir",
)

# Keys that may differ between a checkpoint's config and the config of the run that resumes it.
_RESUMABLE_CHANGES = {("train", "epochs"), ("train", "device"), ("train", "threads"), ("train", "eval_batch_size")}
_RESUMABLE_SECTIONS = {"export", "pipeline"}
_DISTRIBUTED_TIMEOUT = datetime.timedelta(hours=2)  # rank 0 evaluates while the others wait


class TrainingError(RuntimeError):
    """Training could not go on (e.g. a NaN or infinite loss); the last good checkpoint is kept."""


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (a finished or different run in it, unreadable checkpoint)."""


# ----------------------------------------------------------------------------------------------------
# Processes and devices
# ----------------------------------------------------------------------------------------------------


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


def _select_device(config: RunConfig, group: ProcessGroup) -> torch.device:
    if config.train.device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{config.source}: train.device: cuda was asked for but torch sees no CUDA device "
                              f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use cpu")
        if group.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"{config.source}: train.device: LOCAL_RANK {group.local_rank} but only "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(group.local_rank)
        return torch.device("cuda", group.local_rank)
    return torch.device("cpu")


def _join_process_group(group: ProcessGroup, device: torch.device) -> None:
    import torch.distributed as dist

    if group.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_DISTRIBUTED_TIMEOUT)


def _leave_process_group(group: ProcessGroup) -> None:
    import torch.distributed as dist

    if group.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce(values: Tensor, group: ProcessGroup, op: str = "sum") -> Tensor:
    """Reduce ``values`` over the processes in place (NCCL needs them on the GPU: keep them there)."""
    if not group.distributed:
        return values
    import torch.distributed as dist

    dist.all_reduce(values, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MIN)
    return values


def _barrier(group: ProcessGroup) -> None:
    if group.distributed:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_from_main(value: Any, group: ProcessGroup) -> Any:
    if not group.distributed:
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The splits as CPU tensors (inputs keep the loader's dtype; the model casts them)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    train_eval_indices: Tensor
    num_classes: int
    input_shape: tuple[int, ...]


def _subset(size: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``limit`` out of ``size`` (None: keep everything)."""
    if limit is None or limit >= size:
        return None
    return np.sort(np.random.default_rng(seed).permutation(size)[:limit])


def load_training_data(config: RunConfig) -> TrainingData:
    """Load the configured data set and apply ``train_subset``/``test_subset``/``train_eval_subset``.

    Raises:
        DataError: files missing or malformed.
        ConfigError: the loader rejects the ``[data]`` settings.
    """
    try:
        dataset: Dataset = load_dataset(config.data.name, **config.data.load_arguments())
    except DataError:
        raise
    except ValueError as error:
        raise ConfigError(f"{config.source}: data: {error}") from None
    x_train, y_train, x_test, y_test = dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    # Distinct seeds per subset, derived from the data seed, so each choice is fixed by the config.
    train_keep = _subset(len(x_train), config.train.train_subset, config.data.seed * 3 + 1)
    if train_keep is not None:
        x_train, y_train = x_train[train_keep], y_train[train_keep]
    test_keep = _subset(len(x_test), config.train.test_subset, config.data.seed * 3 + 2)
    if test_keep is not None:
        x_test, y_test = x_test[test_keep], y_test[test_keep]
    eval_keep = _subset(len(x_train), config.train.train_eval_subset, config.data.seed * 3 + 3)
    eval_indices = np.arange(len(x_train)) if eval_keep is None else eval_keep
    if len(x_train) == 0 or len(x_test) == 0:
        raise ConfigError(f"{config.source}: data: an empty split ({len(x_train)} train, {len(x_test)} test examples)")
    return TrainingData(
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)).long(),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test)).long(),
        train_eval_indices=torch.from_numpy(eval_indices).long(),
        num_classes=int(dataset.num_classes),
        input_shape=tuple(int(s) for s in dataset.input_shape),
    )


def epoch_shard(order: Tensor, group: ProcessGroup) -> Tensor:
    """This rank's share of an epoch's permutation (``DistributedSampler``'s layout: pad, then stride)."""
    if not group.distributed:
        return order
    padded_length = math.ceil(len(order) / group.world_size) * group.world_size
    padding = padded_length - len(order)
    if padding:
        order = torch.cat([order, order[:padding]])
    return order[group.rank::group.world_size]


def _noise_seed(seed: int, epoch: int, rank: int) -> int:
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # a non-negative 62-bit seed


# ----------------------------------------------------------------------------------------------------
# Model, optimiser, schedule, loss
# ----------------------------------------------------------------------------------------------------


def build_run_model(config: RunConfig, data: TrainingData) -> SbnnModel:
    """The configured model for the data's input shape and classes, initialised from ``train.seed``."""
    try:
        return build_model(config.model, data.input_shape, data.num_classes, seed=config.train.seed)
    except ValueError as error:
        raise ConfigError(f"{config.source}: model: {error} (input shape {data.input_shape})") from None
    except (MemoryError, RuntimeError) as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        if isinstance(error, RuntimeError) and "allocate" not in reason:
            raise
        raise ConfigError(f"{config.source}: model: its parameters do not fit in memory ({reason[:200]}; "
                          f"input shape {data.input_shape})") from None


def _make_optimizer(parameters: list[nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def learning_rate_factor(train: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of ``train.lr`` at optimiser step ``step`` (0-based)."""
    if train.schedule == "cosine":
        total = max(1, train.epochs * steps_per_epoch)
        progress = min(step, total) / total
        return train.lr_min_ratio + (1.0 - train.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if train.schedule == "step":
        return train.step_gamma ** ((step // steps_per_epoch) // train.step_epochs)
    return 1.0


def kl_weight_at(train: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """``beta_t``: ``train.kl_weight`` after a linear warm-up over ``kl_warmup_epochs`` (per step)."""
    if train.kl_warmup_epochs == 0:
        return train.kl_weight
    return train.kl_weight * min(1.0, (step + 1) / (train.kl_warmup_epochs * steps_per_epoch))


def _make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    # A closure (not a callable object) keeps the schedule out of the scheduler's state_dict: the
    # schedule always follows the current config, the state is only the step count.
    def factor(step: int) -> float:
        return learning_rate_factor(train, step, steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------------------------------
# Random number generator states (as tensors, lists and numbers, for weights_only loading)
# ----------------------------------------------------------------------------------------------------


def _capture_rng(data_generator: torch.Generator, device: torch.device) -> dict[str, Any]:
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


def _restore_rng(state: dict[str, Any], data_generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    data_generator.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(file)`` into a temporary file beside ``path`` (:func:`safeio.atomic.atomic_path`),
    flushed to disk, then rename it over ``path``."""
    with atomic_path(path) as temporary:
        with open(temporary, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())


def check_run_folder(run_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`RunFolderError` unless ``run_dir`` may be used as a run folder without losing anything.

    Training writes ``config.toml``, ``checkpoint.pt`` and ``metrics.json`` into the folder (and
    ``--overwrite`` deletes the last two), so a folder that is not a run would lose the user's files of those
    names: ``--out .`` in a project holding its own ``config.toml``, ``--out ~``. Usable: a folder that does
    not exist, an empty one (the writer lock aside), one holding :data:`RUN_MARKER` (written into every run
    folder), or a run folder of an earlier version (``config.toml`` with ``checkpoint.pt`` or
    ``metrics.json``, and nothing a run does not write). Anything else, a file included, is refused before
    anything is touched.
    """
    run_dir = Path(run_dir)
    if not os.path.lexists(run_dir):
        return
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: exists and is not a folder; nothing was changed (choose another --out)")
    try:
        names = sorted(entry.name for entry in os.scandir(run_dir))
    except OSError as error:
        raise RunFolderError(f"{run_dir}: cannot be listed ({error.strerror}); nothing was changed") from None
    if RUN_MARKER in names or not [name for name in names if name != LOCK_NAME]:
        return
    if (CONFIG_FILE in names and (CHECKPOINT_FILE in names or METRICS_FILE in names)
            and all(_LEGACY_RUN_ENTRY.fullmatch(name) for name in names)):
        return
    shown = ", ".join(names[:3]) + (f", … ({len(names)} entries)" if len(names) > 3 else "")
    raise RunFolderError(f"{run_dir}: exists and is not an sbnn run folder (it holds {shown}); nothing was changed "
                         f"(choose a new --out)")


def remove_stale_temporaries(run_dir: Path) -> None:
    """Remove the hidden temporaries that a killed run left beside its files (:func:`safeio.atomic.remove_stale`)."""
    for name in RUN_FILES:
        remove_stale(run_dir, name)


def _json_safe(value: Any) -> Any:
    """NaN and infinities (e.g. metrics of a diverged model) as null, so the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _write_json(path: Path, document: Any) -> None:
    text = json.dumps(_json_safe(document), indent=1, allow_nan=False)
    _atomic_write(path, lambda file: file.write(text + "\n"), mode="w")


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ``checkpoint.pt`` safely (``weights_only=True``) and check its format.

    Raises:
        RunFolderError: the file cannot be read or is not a checkpoint of this format.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged or foreign files
        # torch's own explanation of weights_only spans many lines and suggests weights_only=False: keep
        # its first line only (a file that needs more than tensors and plain data is refused, not trusted).
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        raise RunFolderError(f"{path}: cannot be loaded as a checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(checkpoint, dict) or type(checkpoint.get("format")) is not int \
            or checkpoint["format"] != CHECKPOINT_FORMAT:
        raise RunFolderError(f"{path}: not an sbnn checkpoint of format {CHECKPOINT_FORMAT}")
    _check_checkpoint(checkpoint, path)
    return checkpoint


# What a checkpoint of CHECKPOINT_FORMAT holds (``_save_epoch``), checked before any of it is used.
_CHECKPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "global_step": int, "config": str, "model": dict, "optimizer": dict, "scheduler": dict,
    "rng": dict, "history": list, "input_shape": list, "num_classes": int,
}


def _check_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Types and values of the fields a checkpoint must hold; a bad one is a one-line RunFolderError."""
    for key, kind in _CHECKPOINT_FIELDS.items():
        value = checkpoint.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise RunFolderError(f"{path}: damaged checkpoint: '{key}' is {type(value).__name__}, "
                                 f"expected {getattr(kind, '__name__', kind)}")
    if checkpoint["epoch"] < 0 or checkpoint["global_step"] < 0:
        raise RunFolderError(f"{path}: damaged checkpoint: negative epoch or step")
    shape = checkpoint["input_shape"]
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise RunFolderError(f"{path}: damaged checkpoint: input_shape {shape!r} is not positive integers")
    if checkpoint["num_classes"] < 1:
        raise RunFolderError(f"{path}: damaged checkpoint: num_classes {checkpoint['num_classes']} < 1")
    for name, tensor in checkpoint["model"].items():
        if not isinstance(name, str) or not isinstance(tensor, Tensor):
            raise RunFolderError(f"{path}: damaged checkpoint: model entry {name!r} is not a named tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RunFolderError(f"{path}: damaged checkpoint: model tensor {name!r} holds NaN or infinite values")
    history = checkpoint["history"]
    try:
        if len(history) != checkpoint["epoch"] or not all(isinstance(record, dict) for record in history):
            raise TypeError("one record per epoch expected")
        _summary(history, Path(path).parent, "")   # reads what a resumed run reads from the records
    except (TypeError, KeyError, IndexError, ValueError) as error:
        raise RunFolderError(f"{path}: damaged checkpoint: its history does not match its epochs ({error})") from None
    try:
        tomllib.loads(checkpoint["config"])
    except (tomllib.TOMLDecodeError, RecursionError) as error:
        raise RunFolderError(f"{path}: damaged checkpoint: its config is not valid TOML ({error})") from None


def _checkpoint_config(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> RunConfig:
    """The run configuration stored in a checked checkpoint (a bad one is a RunFolderError)."""
    try:
        return config_from_dict(tomllib.loads(checkpoint["config"]), source=f"{path} (its stored config)")
    except ConfigError as error:
        raise RunFolderError(str(error)) from None


def _config_differences(saved: RunConfig, current: RunConfig) -> list[str]:
    saved_values, current_values = saved.to_dict(), current.to_dict()
    differences = []
    for section in current_values:
        if section in _RESUMABLE_SECTIONS:
            continue
        keys = set(saved_values.get(section, {})) | set(current_values[section])
        for key in sorted(keys):
            if (section, key) in _RESUMABLE_CHANGES:
                continue
            if saved_values.get(section, {}).get(key) != current_values[section].get(key):
                differences.append(f"{section}.{key}")
    return differences


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def _cpu_state_dict(module: nn.Module) -> dict[str, Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()}


def _batches(indices: Tensor, batch_size: int) -> list[Tensor]:
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, disable=not enabled, leave=False, file=sys.stderr,
                dynamic_ncols=True)


def _evaluate(model: SbnnModel, data: TrainingData, train: TrainConfig) -> dict[str, Any]:
    common = dict(samples=train.eval_samples, seed=train.eval_seed, batch_size=train.eval_batch_size)
    eval_x = data.x_train[data.train_eval_indices]
    eval_y = data.y_train[data.train_eval_indices]
    return {
        "train": evaluate_split(model, eval_x, eval_y, **common),
        "test": evaluate_split(model, data.x_test, data.y_test, **common),
    }


def _summary(history: list[dict[str, Any]], run_dir: Path, method: str) -> dict[str, Any]:
    last = history[-1] if history else None
    return {
        "test_accuracy_mean": last["test"]["mean"]["accuracy"] if last else None,
        "test_accuracy_noisy": last["test"]["noisy"]["accuracy"] if last else None,
        "test_accuracy_ensemble": last["test"]["ensemble"]["accuracy"] if last else None,
        "epochs": len(history),
        "seconds": float(sum(record["seconds"] for record in history)),
        "run_dir": str(run_dir),
        "method": method,
    }


def _format_epoch(record: dict[str, Any], epochs: int) -> str:
    test = record["test"]
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']['total']:.4f} (nll {record['loss']['nll']:.4f}, "
        f"kl {record['loss']['kl_term']:.4f}, aux {record['loss']['aux']:.4f}), train batches "
        f"{100 * record['train']['batch_accuracy']:.1f}% | test mean {100 * test['mean']['accuracy']:.1f}% "
        f"noisy {100 * test['noisy']['accuracy']:.1f}% ensemble {100 * test['ensemble']['accuracy']:.1f}% "
        f"(ECE mean {test['mean']['ece']:.3f}) | {record['seconds']:.1f} s"
    )


def train(config: RunConfig, run_dir: str | os.PathLike[str], *, resume: bool = False,
          json_mode: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train the configured model and write the run folder (see the module docstring).

    Args:
        config: the validated run configuration.
        run_dir: the run folder (created if needed).
        resume: continue from ``run_dir/checkpoint.pt`` if it exists (else start afresh).
        json_mode: print nothing (the caller prints one JSON object); no progress bar.
        overwrite: without ``resume``, delete an existing run's checkpoint and metrics and start afresh
            (otherwise an existing checkpoint is an error).

    Returns:
        The summary: ``test_accuracy_mean``, ``test_accuracy_noisy``, ``test_accuracy_ensemble`` (of
        the last epoch), ``epochs`` (completed), ``seconds`` (training and evaluation, all epochs),
        ``run_dir`` and ``method``.  Every process of a multi-process run returns rank 0's summary.

    Raises:
        ConfigError: a setting the data or model rejects, or an unavailable device.
        DataError: data files missing or malformed.
        RunFolderError: ``run_dir`` holds a checkpoint and neither ``resume`` nor ``overwrite``, or a checkpoint of a
            different config, or an unreadable one.
        TrainingError: the loss (or gradient norm) became NaN or infinite; the last checkpoint is kept.
    """
    run_dir = Path(run_dir)
    group = ProcessGroup.from_environment()
    device = _select_device(config, group)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.train.threads)
    # Denormal floats (e.g. exp of a very negative margin) make CPU maths up to 20x slower; they carry
    # nothing a network needs, so they are flushed to zero while training (torch's default, off, after).
    torch.set_flush_denormal(True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        _join_process_group(group, device)
        return _train(config, run_dir, group, device, resume=resume, overwrite=overwrite,
                      verbose=not json_mode and group.is_main,
                      show_progress=not json_mode and group.is_main and sys.stdout.isatty())
    finally:
        _leave_process_group(group)
        torch.set_flush_denormal(False)
        torch.set_num_threads(previous_threads)


def _train(config: RunConfig, run_dir: Path, group: ProcessGroup, device: torch.device, *, resume: bool,
           overwrite: bool, verbose: bool, show_progress: bool) -> dict[str, Any]:
    train_config = config.train
    log: Callable[[str], None] = (lambda text: print(text, flush=True)) if verbose else (lambda text: None)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    check_run_folder(run_dir)

    checkpoint = None
    if checkpoint_path.exists() and overwrite and not resume:
        _barrier(group)  # every process has seen the old checkpoint before rank 0 removes it
        if group.is_main:
            for name in (CHECKPOINT_FILE, METRICS_FILE):
                (run_dir / name).unlink(missing_ok=True)
        log(f"{run_dir}: overwriting the previous run")
    elif checkpoint_path.exists():
        if not resume:
            raise RunFolderError(f"{run_dir}: already holds {CHECKPOINT_FILE}; pass --resume to continue that run, "
                                 f"--overwrite to start it again, or choose another --out")
        checkpoint = load_checkpoint(checkpoint_path)
        saved = _checkpoint_config(checkpoint, checkpoint_path)
        differences = _config_differences(saved, config)
        if differences:
            raise RunFolderError(f"{checkpoint_path}: cannot resume with a different config "
                                 f"({', '.join(differences)} changed); resume with {run_dir / CONFIG_FILE} or start a "
                                 f"new run folder")
    elif resume:
        log(f"{run_dir}: no checkpoint yet, starting from epoch 1")

    if train_config.batch_size % group.world_size:
        raise ConfigError(f"{config.source}: train.batch_size: {train_config.batch_size} is not divisible by the "
                          f"{group.world_size} processes")
    local_batch = train_config.batch_size // group.world_size

    _seed_everything(train_config.seed)
    data = load_training_data(config)
    model = build_run_model(config, data).to(device)
    model.set_mode("mean" if model.is_surrogate else "noisy")
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = _make_optimizer(parameters, train_config)
    data_generator = torch.Generator().manual_seed(train_config.seed)
    shard_length = len(epoch_shard(torch.arange(len(data.x_train)), group))
    steps_per_epoch = math.ceil(shard_length / local_batch)
    scheduler = _make_scheduler(optimizer, train_config, steps_per_epoch)
    penalty = make_penalty(train_config.aux_penalty, train_config.aux_weight)
    records_activity = penalty.name != "none" and penalty.weight > 0

    start_epoch, global_step, history = 0, 0, []
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            _restore_rng(checkpoint["rng"], data_generator, device)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            raise RunFolderError(f"{checkpoint_path}: damaged checkpoint, cannot resume from it "
                                 f"({type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]})") from None
        start_epoch, global_step = int(checkpoint["epoch"]), int(checkpoint["global_step"])
        history = list(checkpoint["history"])
        log(f"{run_dir}: resuming after epoch {start_epoch}")

    if group.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        if not (run_dir / RUN_MARKER).is_file():
            _atomic_write(run_dir / RUN_MARKER, lambda file: file.write('{"format": 1, "written_by": "sbnn train"}\n'),
                          mode="w")
        _atomic_write(run_dir / CONFIG_FILE, lambda file: file.write(config.to_toml()), mode="w")
        if checkpoint is not None:
            # metrics.json is written just after the checkpoint, so a run killed between the two has it one
            # epoch behind; the checkpoint's history is the record (and a finished run trains no more epochs).
            _write_json(run_dir / METRICS_FILE, {"history": history,
                                                 "summary": _summary(history, run_dir, config.train.method)})
    network: nn.Module = model
    if group.distributed:
        from torch.nn.parallel import DistributedDataParallel

        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    n_train = len(data.x_train)
    for epoch in range(start_epoch, train_config.epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(n_train, generator=data_generator)
        batches = _batches(epoch_shard(order, group), local_batch)
        noise = torch.Generator(device=device).manual_seed(_noise_seed(train_config.seed, epoch, group.rank))
        # Sums over this process's examples (nll, correct, count) and steps (kl, kl_term, aux, total),
        # kept on the device so that logging adds no host synchronisation.
        totals = torch.zeros(7, dtype=torch.float64, device=device)
        beta = kl_weight_at(train_config, global_step, steps_per_epoch)
        bar = _progress(len(batches), f"epoch {epoch + 1}/{train_config.epochs}", show_progress)
        for batch_index, indices in enumerate(batches):
            x = data.x_train[indices].to(device, non_blocking=True)
            y = data.y_train[indices].to(device, non_blocking=True)
            beta = kl_weight_at(train_config, global_step, steps_per_epoch)
            with record_activity(model) if records_activity else nullcontext() as record:
                logits = network(x, generator=noise)
            nll = F.cross_entropy(logits, y)
            kl = model.kl()
            kl_term = beta * kl / n_train
            aux = penalty(model, record)
            loss = nll + kl_term + aux
            finite = torch.isfinite(loss.detach()).to(torch.float64).reshape(1)
            if not bool(_all_reduce(finite, group, op="min").item()):
                raise TrainingError(_nonfinite_message(
                    "loss", float(loss.detach()), epoch, batch_index, checkpoint_path, history,
                    f"nll {float(nll.detach()):.4g}, kl {float(kl.detach()):.4g}, aux {float(aux.detach()):.4g}"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_config.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(parameters, train_config.grad_clip)
                if not bool(torch.isfinite(norm)):
                    raise TrainingError(_nonfinite_message(
                        "gradient norm", float(norm), epoch, batch_index, checkpoint_path, history, ""))
            optimizer.step()
            scheduler.step()
            global_step += 1

            count = len(indices)
            correct = (logits.detach().argmax(1) == y).sum()
            totals += torch.stack([nll.detach() * count, correct, torch.tensor(count, device=device), kl.detach(),
                                   torch.as_tensor(kl_term, device=device).detach(), aux.detach(),
                                   loss.detach()]).to(torch.float64)
            bar.update(1)
            if show_progress:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{float(totals[1] / totals[2]):.3f}")
        bar.close()
        totals = _all_reduce(totals, group).cpu()
        train_seconds = time.perf_counter() - epoch_start

        record = None
        if group.is_main:
            eval_start = time.perf_counter()
            evaluation = _evaluate(model, data, train_config)
            eval_seconds = time.perf_counter() - eval_start
            step_count = len(batches) * group.world_size
            record = {
                "epoch": epoch + 1,
                "lr": float(optimizer.param_groups[0]["lr"]),
                "kl_weight": float(beta),
                "loss": {
                    "nll": float(totals[0] / totals[2]),
                    "kl": float(totals[3] / step_count),
                    "kl_term": float(totals[4] / step_count),
                    "aux": float(totals[5] / step_count),
                    "total": float(totals[6] / step_count),
                },
                "train": {"batch_accuracy": float(totals[1] / totals[2]), **evaluation["train"]},
                "test": evaluation["test"],
                "train_seconds": train_seconds,
                "eval_seconds": eval_seconds,
                "seconds": train_seconds + eval_seconds,
            }
            history.append(record)
            _save_epoch(run_dir, config, model, optimizer, scheduler, data_generator, device, epoch + 1,
                        global_step, history, group)
            log(_format_epoch(record, train_config.epochs))
        else:
            history.append({"epoch": epoch + 1})
        _barrier(group)

    summary = _summary(history, run_dir, train_config.method) if group.is_main else None
    return _broadcast_from_main(summary, group)


def _nonfinite_message(what: str, value: float, epoch: int, batch_index: int, checkpoint_path: Path,
                       history: list[dict[str, Any]], detail: str) -> str:
    completed = len(history)
    kept = (f"the last good checkpoint {checkpoint_path} (after epoch {completed}) is kept" if completed
            else "no checkpoint had been written yet")
    detail = f" ({detail})" if detail else ""
    return (f"the {what} became {value} at epoch {epoch + 1}, batch {batch_index + 1}{detail}; training stopped, "
            f"{kept}. Try a lower train.lr, train.grad_clip, or check the data for NaN/Inf")


def _save_epoch(run_dir: Path, config: RunConfig, model: SbnnModel, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, data_generator: torch.Generator,
                device: torch.device, epoch: int, global_step: int, history: list[dict[str, Any]],
                group: ProcessGroup) -> None:
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "global_step": global_step,
        "world_size": group.world_size,
        "model": _cpu_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _capture_rng(data_generator, device),
        "history": history,
        "config": config.to_toml(),
        "model_config": config.model.to_dict(),
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-safe
    }
    # The checkpoint first: metrics.json never describes an epoch that the checkpoint lacks.
    _atomic_write(run_dir / CHECKPOINT_FILE, lambda file: torch.save(checkpoint, file))
    _write_json(run_dir / METRICS_FILE, {"history": history, "summary": _summary(history, run_dir, config.train.method)})


def load_trained_model(run_dir: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> SbnnModel:
    """Rebuild a run's model from its ``checkpoint.pt``: the architecture from the stored config and the
    data shape stored beside it (no data is loaded), then the trained weights.  Mode: as built
    (``"noisy"``; the surrogate baseline ``"mean"``)."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_FILE
    checkpoint = load_checkpoint(path, map_location)
    config = _checkpoint_config(checkpoint, path)
    input_shape, num_classes = tuple(checkpoint["input_shape"]), int(checkpoint["num_classes"])
    # The architecture first on the meta device (nothing allocated): a checkpoint whose shapes or config
    # describe a different (or absurdly large) model is refused before memory is spent on it.
    try:
        with torch.device("meta"):
            skeleton = build_model(config.model, input_shape, num_classes, seed=config.train.seed)
    except ValueError as error:
        raise RunFolderError(f"{path}: damaged checkpoint: {error}") from None
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    stored = {name: tuple(tensor.shape) for name, tensor in checkpoint["model"].items()}
    if expected != stored:
        different = sorted(set(expected) ^ set(stored)) or sorted(k for k in expected if expected[k] != stored[k])
        raise RunFolderError(f"{path}: damaged checkpoint: its tensors do not fit the model its config describes "
                             f"(first difference: {different[0]})")
    model = build_model(config.model, input_shape, num_classes, seed=config.train.seed)
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, ValueError, TypeError) as error:
        raise RunFolderError(f"{path}: damaged checkpoint: {(str(error).splitlines() or [''])[0]}") from None
    return model.to(map_location)


# ----------------------------------------------------------------------------------------------------
# Run folder names and the command line entry
# ----------------------------------------------------------------------------------------------------


def default_run_dir(source: str | os.PathLike[str]) -> Path:
    """``runs/<file name without suffix>``; a name of only dots (``...toml``) becomes ``runs/run``, never
    ``runs/..``."""
    stem = Path(source).stem.strip(".")
    return Path("runs") / (stem or "run")


def main(argv: list[str] | None = None) -> int:
    """``python -m sbnn.train CONFIG.toml [...]`` (what ``torchrun -m sbnn.train`` starts): the same as ``sbnn
    train``, whose arguments and exit codes are :mod:`sbnn.cli.train`'s."""
    from sbnn.cli.train import main as train_command

    return train_command(argv)


__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "JSON_KEYS",
    "METRICS_FILE",
    "ProcessGroup",
    "RUN_MARKER",
    "RunFolderError",
    "TrainingData",
    "TrainingError",
    "check_run_folder",
    "default_run_dir",
    "epoch_shard",
    "kl_weight_at",
    "learning_rate_factor",
    "load_checkpoint",
    "load_trained_model",
    "load_training_data",
    "main",
    "train",
]


if __name__ == "__main__":
    sys.exit(main())
