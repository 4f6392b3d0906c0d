"""``checkpoint.pt``: writing, loading and checking it, the resume policy, and rebuilding a trained model.

``checkpoint.pt`` holds only tensors, dicts, lists, numbers and strings, so it loads with
``torch.load(path, weights_only=True)``: the model, optimiser and scheduler states, the RNG states (torch,
CUDA, numpy, python, the data-order generator), the epoch, the global step, the metrics history and the
config.  ``--resume`` continues from it; the config may differ only in ``train.epochs``, ``device``,
``threads``, ``eval_batch_size`` and ``full_eval_every`` (and ``[export]``/``[pipeline]``).
"""

from __future__ import annotations

import filecmp
import os
import tomllib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from sbnn.config import ConfigError, RunConfig, config_from_dict
from sbnn.models import SbnnModel, build_model

from .distributed import ProcessGroup, barrier
from .errors import RunFolderError
from .optim import LambdaLR, Optimizer
from .rng import capture_rng, restore_rng
from .run_folder import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, atomic_write, run_summary, write_metrics

CHECKPOINT_FORMAT = 1

# Keys that may differ between a checkpoint's config and the config of the run that resumes it.
_RESUMABLE_CHANGES = {("train", "epochs"), ("train", "device"), ("train", "threads"), ("train", "eval_batch_size"),
                      ("train", "full_eval_every")}
_RESUMABLE_SECTIONS = {"export", "pipeline"}

# What a checkpoint of CHECKPOINT_FORMAT holds (:func:`save_checkpoint`), checked before any of it is used.
_CHECKPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "global_step": int, "config": str, "model": dict, "optimizer": dict, "scheduler": dict,
    "rng": dict, "history": list, "input_shape": list, "num_classes": int,
}

_RESTORE_ERRORS = (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError)


# ----------------------------------------------------------------------------------------------------
# Loading and checking
# ----------------------------------------------------------------------------------------------------


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
        run_summary(history, Path(path).parent, "")   # reads what a resumed run reads from the records
    except (TypeError, KeyError, IndexError, ValueError) as error:
        raise RunFolderError(f"{path}: damaged checkpoint: its history does not match its epochs ({error})") from None
    try:
        tomllib.loads(checkpoint["config"])
    except (tomllib.TOMLDecodeError, RecursionError) as error:
        raise RunFolderError(f"{path}: damaged checkpoint: its config is not valid TOML ({error})") from None


def checkpoint_config(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> RunConfig:
    """The run configuration stored in a checked checkpoint (a bad one is a RunFolderError)."""
    try:
        return config_from_dict(tomllib.loads(checkpoint["config"]), source=f"{path} (its stored config)")
    except ConfigError as error:
        raise RunFolderError(str(error)) from None


def config_differences(saved: RunConfig, current: RunConfig) -> list[str]:
    """The ``section.key`` names whose values differ and may not differ on resume."""
    saved_values, current_values = saved.to_dict(), current.to_dict()
    differences = []
    for section in current_values:
        if section in _RESUMABLE_SECTIONS:
            continue
        keys = set(saved_values.get(section, {})) | set(current_values[section])
        for key in sorted(keys):
            if (section, key) in _RESUMABLE_CHANGES:
                continue
            saved_value, current_value = saved_values.get(section, {}).get(key), current_values[section].get(key)
            if saved_value != current_value and not (section == "data" and _same_file(saved_value, current_value)):
                differences.append(f"{section}.{key}")
    return differences


def _same_file(saved: Any, current: Any) -> bool:
    """Two ``[data]`` paths (absolute, docs/data.md#paths) naming files of identical content: a data file that
    moved or was copied along with its project is the same data, so the run may resume."""
    if not (isinstance(saved, str) and isinstance(current, str) and os.path.isfile(saved) and os.path.isfile(current)):
        return False
    try:
        return filecmp.cmp(saved, current, shallow=False)
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------
# Resuming
# ----------------------------------------------------------------------------------------------------


def checkpoint_to_resume(config: RunConfig, run_dir: Path, group: ProcessGroup, *, resume: bool, overwrite: bool,
                         log: Callable[[str], None]) -> dict[str, Any] | None:
    """The resume policy: the checked checkpoint to continue from, or None to start at epoch 1.

    With ``overwrite`` (and not ``resume``) an earlier run's checkpoint and metrics are deleted (by rank 0,
    once every process has seen them); otherwise an existing checkpoint without ``resume``, or one of a
    different config, is a :class:`RunFolderError`.
    """
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if checkpoint_path.exists() and overwrite and not resume:
        barrier(group)  # every process has seen the old checkpoint before rank 0 removes it
        if group.is_main:
            for name in (CHECKPOINT_FILE, METRICS_FILE):
                (run_dir / name).unlink(missing_ok=True)
        log(f"{run_dir}: overwriting the previous run")
    elif checkpoint_path.exists():
        if not resume:
            raise RunFolderError(f"{run_dir}: already holds {CHECKPOINT_FILE}; pass --resume to continue that run, "
                                 f"--overwrite to start it again, or choose another --out")
        checkpoint = load_checkpoint(checkpoint_path)
        saved = checkpoint_config(checkpoint, checkpoint_path)
        differences = config_differences(saved, config)
        if differences:
            raise RunFolderError(f"{checkpoint_path}: cannot resume with a different config "
                                 f"({', '.join(differences)} changed); resume with {run_dir / CONFIG_FILE} or start a "
                                 f"new run folder")
        return checkpoint
    elif resume:
        log(f"{run_dir}: no checkpoint yet, starting from epoch 1")
    return None


def restore_checkpoint(checkpoint: dict[str, Any], path: Path, model: nn.Module, optimizer: Optimizer,
                       scheduler: LambdaLR, data_generator: torch.Generator,
                       device: torch.device) -> tuple[int, int, list[dict[str, Any]]]:
    """Load the model, optimiser, scheduler and RNG states; returns the epoch, global step and history."""
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        restore_rng(checkpoint["rng"], data_generator, device)
    except _RESTORE_ERRORS as error:
        raise RunFolderError(f"{path}: damaged checkpoint, cannot resume from it "
                             f"({type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]})") from None
    return int(checkpoint["epoch"]), int(checkpoint["global_step"]), list(checkpoint["history"])


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def _cpu_state_dict(module: nn.Module) -> dict[str, Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()}


def save_checkpoint(run_dir: Path, config: RunConfig, model: SbnnModel, optimizer: Optimizer,
                    scheduler: LambdaLR, data_generator: torch.Generator,
                    device: torch.device, epoch: int, global_step: int, history: list[dict[str, Any]],
                    group: ProcessGroup, classes: tuple[str, ...] | None = None) -> None:
    """Write ``checkpoint.pt`` after ``epoch`` (1-based), then ``metrics.json`` (rank 0 only; ``classes``: the
    class names of text labels)."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "global_step": global_step,
        "world_size": group.world_size,
        "model": _cpu_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(data_generator, device),
        "history": history,
        "config": config.to_toml(),
        "model_config": config.model.to_dict(),
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-safe
    }
    # The checkpoint first: metrics.json never describes an epoch that the checkpoint lacks.
    atomic_write(run_dir / CHECKPOINT_FILE, lambda file: torch.save(checkpoint, file))
    write_metrics(run_dir, history, config.train.method, classes)


# ----------------------------------------------------------------------------------------------------
# The trained model
# ----------------------------------------------------------------------------------------------------


def load_trained_model(run_dir: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> SbnnModel:
    """Rebuild a run's model from its ``checkpoint.pt``: the architecture from the stored config and the
    data shape stored beside it (no data is loaded), then the trained weights.  Mode: as built
    (``"noisy"``; the surrogate baseline ``"mean"``)."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_FILE
    checkpoint = load_checkpoint(path, map_location)
    config = checkpoint_config(checkpoint, path)
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


__all__ = [
    "CHECKPOINT_FORMAT",
    "checkpoint_config",
    "checkpoint_to_resume",
    "config_differences",
    "load_checkpoint",
    "load_trained_model",
    "restore_checkpoint",
    "save_checkpoint",
]
