"""The training loop: :func:`train` sets up (or restores) a run, then trains, evaluates and checkpoints one
epoch at a time.

The loss of method ``sbnn`` is the negative ELBO of docs/method.md#loss plus the auxiliary penalty::

    loss = NLL(batch) + beta_t * KL(q || p) / N_train + aux

Each process sums its steps' losses into an :class:`EpochTotals` (packed into one tensor on the device, so
that logging adds no host synchronisation and the processes all-reduce it in one call); rank 0 turns the
reduced totals into the epoch's record, evaluates on a copy of the model and writes the checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbnn.aux_loss import Penalty, make_penalty, record_activity
from sbnn.config import ConfigError, RunConfig, TrainConfig
from sbnn.evaluate import PREDICTIONS, evaluate_split
from sbnn.models import SbnnModel

from .augment import draw_shifts, shift_images
from .checkpoint import checkpoint_to_resume, restore_checkpoint, save_checkpoint
from .data import TrainingData, build_run_model, load_training_data
from .distributed import (
    ProcessGroup,
    all_reduce,
    barrier,
    broadcast_from_main,
    epoch_shard,
    join_process_group,
    leave_process_group,
    select_device,
)
from .errors import TrainingError
from .optim import LambdaLR, Optimizer
from .rng import noise_seed, seed_everything
from .run_folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    atomic_write,
    check_run_folder,
    remove_stale_temporaries,
    run_summary,
    write_marker,
    write_metrics,
)
from .defaults import resolve_auto, risk_warnings
from .schedule import kl_weight_at, make_optimizer, make_scheduler


@dataclass(frozen=True)
class EpochTotals:
    """Sums over an epoch's steps on one process (after :meth:`reduce`: on all of them), as 0-dim tensors.

    Per example: ``nll`` (each batch's mean NLL times its size), ``correct`` and ``count``. Per step: ``kl``,
    ``kl_term`` (``beta_t * KL / N_train``), ``aux`` and ``loss`` (the total). :meth:`to_tensor` packs them,
    in this order, into one float64 tensor (the running sum and what the processes all-reduce);
    :meth:`from_tensor` unpacks one.
    """

    nll: Tensor
    correct: Tensor
    count: Tensor
    kl: Tensor
    kl_term: Tensor
    aux: Tensor
    loss: Tensor

    def to_tensor(self) -> Tensor:
        return torch.stack([getattr(self, field.name) for field in fields(self)]).to(torch.float64)

    @classmethod
    def from_tensor(cls, values: Tensor) -> "EpochTotals":
        return cls(*values.unbind())

    @classmethod
    def packed_zeros(cls, device: torch.device) -> Tensor:
        """A packed running sum of nothing yet."""
        return torch.zeros(len(fields(cls)), dtype=torch.float64, device=device)

    @classmethod
    def reduce(cls, running: Tensor, group: ProcessGroup) -> "EpochTotals":
        """All processes' totals from this process's packed running sum (on the CPU)."""
        return cls.from_tensor(all_reduce(running, group).cpu())

    @property
    def batch_accuracy(self) -> float:
        return float(self.correct / self.count)

    def loss_record(self, step_count: int) -> dict[str, float]:
        """The epoch record's ``loss``: the NLL per example, the others per step (of all processes)."""
        return {
            "nll": float(self.nll / self.count),
            "kl": float(self.kl / step_count),
            "kl_term": float(self.kl_term / step_count),
            "aux": float(self.aux / step_count),
            "total": float(self.loss / step_count),
        }


@dataclass
class _Run:
    """What the epochs of one process share: the set-up, and the step count and history they advance."""

    config: RunConfig
    run_dir: Path
    group: ProcessGroup
    device: torch.device
    data: TrainingData
    model: SbnnModel
    network: nn.Module               # the model, or its DistributedDataParallel wrapper
    parameters: list[nn.Parameter]
    optimizer: Optimizer
    scheduler: LambdaLR
    data_generator: torch.Generator  # the data order (checkpointed)
    penalty: Penalty
    records_activity: bool
    local_batch: int
    steps_per_epoch: int
    global_step: int
    history: list[dict[str, Any]]
    log: Callable[[str], None]
    show_progress: bool

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE


def train(config: RunConfig, run_dir: str | os.PathLike[str], *, resume: bool = False,
          json_mode: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train the configured model and write the run folder (see :mod:`sbnn.training`).

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
    device = select_device(config, group)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.train.threads)
    # Denormal floats (e.g. exp of a very negative margin) make CPU maths up to 20x slower; they carry
    # nothing a network needs, so they are flushed to zero while training (torch's default, off, after).
    torch.set_flush_denormal(True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        join_process_group(group, device)
        return _train(config, run_dir, group, device, resume=resume, overwrite=overwrite,
                      verbose=not json_mode and group.is_main,
                      show_progress=not json_mode and group.is_main and sys.stdout.isatty())
    finally:
        leave_process_group(group)
        torch.set_flush_denormal(False)
        torch.set_num_threads(previous_threads)


def _train(config: RunConfig, run_dir: Path, group: ProcessGroup, device: torch.device, *, resume: bool,
           overwrite: bool, verbose: bool, show_progress: bool) -> dict[str, Any]:
    log: Callable[[str], None] = (lambda text: print(text, flush=True)) if verbose else (lambda text: None)
    check_run_folder(run_dir)
    # "auto" settings -> numbers (defaults.py); the data they are chosen from are the data trained on
    data = load_training_data(config) if "auto" in (config.train.kl_weight, config.train.epochs) else None
    config = resolve_auto(config, world_size=group.world_size, data=data, log=log)
    checkpoint = checkpoint_to_resume(config, run_dir, group, resume=resume, overwrite=overwrite, log=log)
    run, start_epoch = _set_up(config, run_dir, group, device, checkpoint, log, show_progress, data)
    for epoch in range(start_epoch, config.train.epochs):
        epoch_start = time.perf_counter()
        totals, beta, step_count = _train_epoch(run, epoch)
        _finish_epoch(run, epoch, totals, beta, step_count, train_seconds=time.perf_counter() - epoch_start)
    summary = run_summary(run.history, run_dir, config.train.method) if group.is_main else None
    return broadcast_from_main(summary, group)


# ----------------------------------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------------------------------


def _set_up(config: RunConfig, run_dir: Path, group: ProcessGroup, device: torch.device,
            checkpoint: dict[str, Any] | None, log: Callable[[str], None], show_progress: bool,
            data: TrainingData | None = None) -> tuple[_Run, int]:
    """Seed, load the data (unless given), build the model, optimiser and scheduler, restore ``checkpoint`` into them (if
    any) and prepare the run folder; returns the run and the (0-based) epoch to start at."""
    train_config = config.train
    if train_config.batch_size % group.world_size:
        raise ConfigError(f"{config.source}: train.batch_size: {train_config.batch_size} is not divisible by the "
                          f"{group.world_size} processes")
    local_batch = train_config.batch_size // group.world_size

    seed_everything(train_config.seed)
    data = data if data is not None else load_training_data(config)
    model = build_run_model(config, data).to(device)
    model.set_mode("mean" if model.is_surrogate else "noisy")
    if group.is_main and checkpoint is None:
        for warning in risk_warnings(config, data, model):   # risky settings, each with the value that fixes it
            print(f"sbnn train: warning: {warning}", file=sys.stderr, flush=True)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = make_optimizer(parameters, train_config)
    data_generator = torch.Generator().manual_seed(train_config.seed)
    shard_length = len(epoch_shard(torch.arange(len(data.x_train)), group))
    steps_per_epoch = math.ceil(shard_length / local_batch)
    scheduler = make_scheduler(optimizer, train_config, steps_per_epoch)
    penalty = make_penalty(train_config.aux_penalty, train_config.aux_weight)

    start_epoch, global_step, history = 0, 0, []
    if checkpoint is not None:
        start_epoch, global_step, history = restore_checkpoint(checkpoint, run_dir / CHECKPOINT_FILE, model,
                                                               optimizer, scheduler, data_generator, device)
        log(f"{run_dir}: resuming after epoch {start_epoch}")
    if train_config.device == "auto" and device.type != "cpu":
        log(f"{run_dir}: training on {device} (train.device = \"auto\"; \"cpu\" keeps it off the GPU)")

    if group.is_main:
        _prepare_run_folder(run_dir, config, history if checkpoint is not None else None, data.classes)
    network: nn.Module = model
    if group.distributed:
        from torch.nn.parallel import DistributedDataParallel

        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(config=config, run_dir=run_dir, group=group, device=device, data=data, model=model, network=network,
               parameters=parameters, optimizer=optimizer, scheduler=scheduler, data_generator=data_generator,
               penalty=penalty, records_activity=penalty.name != "none" and penalty.weight > 0,
               local_batch=local_batch, steps_per_epoch=steps_per_epoch, global_step=global_step, history=history,
               log=log, show_progress=show_progress)
    return run, start_epoch


def _prepare_run_folder(run_dir: Path, config: RunConfig, resumed_history: list[dict[str, Any]] | None,
                        classes: tuple[str, ...] | None = None) -> None:
    """Rank 0, before the first epoch: the folder, its marker and ``config.toml``; when resuming, ``metrics.json``
    as of the checkpoint. The temporaries a killed run left are removed first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    write_marker(run_dir)
    atomic_write(run_dir / CONFIG_FILE, lambda file: file.write(config.to_toml()), mode="w")
    if resumed_history is not None:
        # metrics.json is written just after the checkpoint, so a run killed between the two has it one
        # epoch behind; the checkpoint's history is the record (and a finished run trains no more epochs).
        write_metrics(run_dir, resumed_history, config.train.method, classes)


# ----------------------------------------------------------------------------------------------------
# One epoch
# ----------------------------------------------------------------------------------------------------


def _train_epoch(run: _Run, epoch: int) -> tuple[EpochTotals, float, int]:
    """Train epoch ``epoch`` (0-based) on this process's shard; returns all processes' totals, the last step's
    KL weight and the number of steps of all processes."""
    train_config = run.config.train
    order = torch.randperm(len(run.data.x_train), generator=run.data_generator)
    max_shift = train_config.augment_shift
    shifts = draw_shifts(len(order), max_shift, run.data_generator) if max_shift else None
    batches = _batches(epoch_shard(order, run.group), run.local_batch)
    noise = torch.Generator(device=run.device).manual_seed(noise_seed(train_config.seed, epoch, run.group.rank))
    running = EpochTotals.packed_zeros(run.device)
    beta = kl_weight_at(train_config, run.global_step, run.steps_per_epoch)
    bar = _progress(len(batches), f"epoch {epoch + 1}/{train_config.epochs} training", run.show_progress)
    for batch_index, indices in enumerate(batches):
        beta = kl_weight_at(train_config, run.global_step, run.steps_per_epoch)
        step = _train_step(run, indices, noise, beta, epoch, batch_index,
                           None if shifts is None else shifts[indices])
        running += step.to_tensor()
        bar.update(1)
        if run.show_progress:
            accuracy = EpochTotals.from_tensor(running).batch_accuracy
            bar.set_postfix(loss=f"{float(step.loss):.3f}", acc=f"{accuracy:.3f}")
    bar.close()
    return EpochTotals.reduce(running, run.group), beta, len(batches) * run.group.world_size


def _train_step(run: _Run, indices: Tensor, noise: torch.Generator, beta: float, epoch: int,
                batch_index: int, shifts: Tensor | None = None) -> EpochTotals:
    """One optimiser step on the examples ``indices`` (moved by ``shifts``, if given); returns its sums (on
    the device)."""
    model, device, n_train = run.model, run.device, len(run.data.x_train)
    x = run.data.x_train[indices].to(device, non_blocking=True)
    if shifts is not None:
        x = shift_images(x, shifts, run.config.train.augment_shift)
    y = run.data.y_train[indices].to(device, non_blocking=True)
    with record_activity(model) if run.records_activity else nullcontext() as record:
        logits = run.network(x, generator=noise)
    nll = F.cross_entropy(logits, y)
    kl = model.kl()
    kl_term = beta * kl / n_train
    aux = run.penalty(model, record)
    loss = nll + kl_term + aux
    finite = torch.isfinite(loss.detach()).to(torch.float64).reshape(1)
    if not bool(all_reduce(finite, run.group, op="min").item()):
        raise TrainingError(_nonfinite_message(
            "loss", float(loss.detach()), epoch, batch_index, run.checkpoint_path, run.history,
            f"nll {float(nll.detach()):.4g}, kl {float(kl.detach()):.4g}, aux {float(aux.detach()):.4g}"))
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.config.train.grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(run.parameters, run.config.train.grad_clip)
        if not bool(torch.isfinite(norm)):
            raise TrainingError(_nonfinite_message(
                "gradient norm", float(norm), epoch, batch_index, run.checkpoint_path, run.history, ""))
    run.optimizer.step()
    run.scheduler.step()
    run.global_step += 1

    count = len(indices)
    return EpochTotals(nll=nll.detach() * count, correct=(logits.detach().argmax(1) == y).sum(),
                       count=torch.tensor(count, device=device), kl=kl.detach(),
                       kl_term=torch.as_tensor(kl_term, device=device).detach(), aux=aux.detach(), loss=loss.detach())


def _nonfinite_message(what: str, value: float, epoch: int, batch_index: int, checkpoint_path: Path,
                       history: list[dict[str, Any]], detail: str) -> str:
    completed = len(history)
    kept = (f"the last good checkpoint {checkpoint_path} (after epoch {completed}) is kept" if completed
            else "no checkpoint had been written yet")
    detail = f" ({detail})" if detail else ""
    return (f"the {what} became {value} at epoch {epoch + 1}, batch {batch_index + 1}{detail}; training stopped, "
            f"{kept}. Try a lower train.lr, train.grad_clip, or check the data for NaN/Inf")


def _batches(indices: Tensor, batch_size: int) -> list[Tensor]:
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, disable=not enabled, leave=False, file=sys.stderr,
                dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------
# Evaluation and checkpoint
# ----------------------------------------------------------------------------------------------------


def _finish_epoch(run: _Run, epoch: int, totals: EpochTotals, beta: float, step_count: int, *,
                  train_seconds: float) -> None:
    """Rank 0 evaluates (:func:`_evaluate`), records the epoch, writes the checkpoint and ``metrics.json`` and logs
    a line; the other processes record the epoch's number only. All wait for rank 0."""
    if run.group.is_main:
        full = full_evaluation_due(run.config.train, epoch)
        eval_start = time.perf_counter()
        evaluation = _evaluate(run, epoch, full)
        eval_seconds = time.perf_counter() - eval_start
        record = {
            "epoch": epoch + 1,
            "lr": float(run.optimizer.param_groups[0]["lr"]),
            "kl_weight": float(beta),
            "loss": totals.loss_record(step_count),
            "evaluation": evaluation["evaluation"],
            "train": {"batch_accuracy": totals.batch_accuracy, **evaluation["train"]},
            "test": evaluation["test"],
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "seconds": train_seconds + eval_seconds,
            "device": str(run.device),
        }
        run.history.append(record)
        save_checkpoint(run.run_dir, run.config, run.model, run.optimizer, run.scheduler, run.data_generator,
                        run.device, epoch + 1, run.global_step, run.history, run.group, run.data.classes)
        run.log(_format_epoch(record, run.config.train.epochs, run.config.train.eval_samples))
    else:
        run.history.append({"epoch": epoch + 1})
    barrier(run.group)


def full_evaluation_due(train: TrainConfig, epoch: int) -> bool:
    """Whether epoch ``epoch`` (0-based) ends with the full evaluation: the last one, and every
    ``train.full_eval_every``-th when that is > 0."""
    completed = epoch + 1
    return completed >= train.epochs or (train.full_eval_every > 0 and completed % train.full_eval_every == 0)


def evaluation_label(full: bool, samples: int, examples: int) -> str:
    """What an epoch's evaluation runs, as progress shows it: ``evaluating (mean, 2000 examples)`` or
    ``full evaluation (noisy ×8, ensemble ×8)``."""
    if full:
        return f"full evaluation (noisy ×{samples}, ensemble ×{samples})"
    return f"evaluating (mean, {examples} examples)"


def _evaluate(run: _Run, epoch: int, full: bool) -> dict[str, Any]:
    """The epoch's evaluation on the model in place (its mode is restored; no training state is touched).

    Per epoch: the posterior-mean prediction on the fixed ``train.epoch_eval_subset`` subsets; the full
    evaluation (see :func:`full_evaluation_due`): mean, noisy and ensemble on the train evaluation set and
    the whole test set. Returns ``{"evaluation": {"kind", "train_examples", "test_examples"}, "train": ...,
    "test": ...}``, the splits as :func:`sbnn.evaluate.evaluate_split` returns them.
    """
    train = run.config.train
    sets = run.data.full_eval_sets() if full else run.data.epoch_eval_sets()
    predictions = PREDICTIONS if full else ("mean",)
    examples = sum(len(y) for _, y in sets.values())
    label = evaluation_label(full, train.eval_samples, examples)
    if full:
        run.log(f"epoch {epoch + 1}/{train.epochs}: {label} on {len(sets['train'][1])} train and "
                f"{len(sets['test'][1])} test examples")
    bar = _progress(len(sets) * len(predictions), f"epoch {epoch + 1}/{train.epochs} {label}", run.show_progress)
    result: dict[str, Any] = {"evaluation": {"kind": "full" if full else "mean",
                                             **{f"{split}_examples": len(y) for split, (_, y) in sets.items()}}}
    for split, (x, y) in sets.items():
        result[split] = {}
        for prediction in predictions:
            result[split].update(evaluate_split(run.model, x, y, samples=train.eval_samples, seed=train.eval_seed,
                                                batch_size=train.eval_batch_size, predictions=(prediction,)))
            bar.update(1)
    bar.close()
    return result


def _format_epoch(record: dict[str, Any], epochs: int, samples: int) -> str:
    """The epoch's log line; a record of an earlier version (no ``evaluation``) counts as a full evaluation."""
    test = record["test"]
    evaluation = record.get("evaluation", {"kind": "full"})
    full = evaluation["kind"] == "full"
    accuracies = f"test mean {100 * test['mean']['accuracy']:.1f}%"
    if full:
        accuracies += (f" noisy {100 * test['noisy']['accuracy']:.1f}% "
                       f"ensemble {100 * test['ensemble']['accuracy']:.1f}%")
    examples = evaluation.get("train_examples", 0) + evaluation.get("test_examples", 0)
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']['total']:.4f} (nll {record['loss']['nll']:.4f}, "
        f"kl {record['loss']['kl_term']:.4f}, aux {record['loss']['aux']:.4f}), train batches "
        f"{100 * record['train']['batch_accuracy']:.1f}% | {accuracies} (ECE mean {test['mean']['ece']:.3f}) | "
        f"training {record['train_seconds']:.1f} s, {evaluation_label(full, samples, examples)} "
        f"{record['eval_seconds']:.1f} s"
    )


__all__ = ["EpochTotals", "train"]
