"""sbnn.training.optim against torch.optim: bit-identical updates, state dicts that move both ways, LambdaLR's
learning rates, and an ``sbnn train`` that never imports ``torch._dynamo``."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from sbnn.training import optim

SHAPES = [(5, 3), (7,), (2, 3, 4)]
STEPS = 20

# (ours, torch's, keyword arguments)
CASES = [
    (optim.Adam, torch.optim.Adam, {"lr": 0.01}),
    (optim.Adam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}),
    (optim.AdamW, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.0}),
    (optim.AdamW, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    (optim.SGD, torch.optim.SGD, {"lr": 0.05}),
    (optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    (optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}),
]
CASE_IDS = ["adam", "adam-wd", "adamw-nowd", "adamw", "sgd", "sgd-momentum", "sgd-momentum-wd"]


def factor(step: int) -> float:
    """A schedule that changes every step (cosine with a floor), as train.schedule = "cosine" does."""
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(step, 30) / 30))


def make_params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in SHAPES]


def gradients(dtype: torch.dtype, seed: int) -> list[list[torch.Tensor | None]]:
    """``STEPS`` lists of seeded random gradients, one per parameter; the second parameter has none on every
    third step (as a parameter that a batch does not reach)."""
    generator = torch.Generator().manual_seed(seed)
    return [[None if index == 1 and step % 3 == 2 else torch.randn(shape, generator=generator, dtype=dtype)
             for index, shape in enumerate(SHAPES)] for step in range(STEPS)]


def run_steps(params, optimizer, scheduler, grads: list[list[torch.Tensor | None]]) -> list[float]:
    """One update per entry of ``grads`` (as sbnn's loop does it); returns the learning rates used."""
    rates = []
    for step_grads in grads:
        optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(params, step_grads):
            param.grad = None if grad is None else grad.clone()
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def assert_identical(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    for mine, other in zip(ours, theirs):
        assert mine.dtype == other.dtype and torch.equal(mine, other)


def assert_same_state(ours: dict, theirs: dict) -> None:
    """Two optimiser state dicts: equal groups, the same state keys and bit-identical tensors."""
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for index, state in ours["state"].items():
        assert list(state) == list(theirs["state"][index])
        for name, value in state.items():
            other = theirs["state"][index][name]
            assert value.dtype == other.dtype and value.device == other.device and torch.equal(value, other)


@pytest.mark.parametrize("foreach", [None, True], ids=["default", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ours_class, torch_class, kwargs", CASES, ids=CASE_IDS)
def test_updates_are_bit_identical_to_torch(ours_class, torch_class, kwargs, dtype, foreach):
    # foreach=True runs torch's multi-tensor path (CUDA's default) on the CPU, so both paths are checked here.
    ours_params, torch_params = make_params(dtype), make_params(dtype)
    ours = ours_class(ours_params, foreach=foreach, **kwargs)
    theirs = torch_class(torch_params, foreach=foreach, **kwargs)
    grads = gradients(dtype, seed=1)
    ours_rates = run_steps(ours_params, ours, optim.LambdaLR(ours, factor), grads)
    theirs_rates = run_steps(torch_params, theirs, torch.optim.lr_scheduler.LambdaLR(theirs, factor), grads)
    assert ours_rates == theirs_rates and len(set(ours_rates)) > 10
    assert_identical(ours_params, torch_params)
    assert not torch.equal(ours_params[0], make_params(dtype)[0])
    assert_same_state(ours.state_dict(), theirs.state_dict())


@pytest.mark.parametrize("ours_class, torch_class, kwargs", CASES, ids=CASE_IDS)
def test_torch_checkpoint_resumes_in_ours_and_back(ours_class, torch_class, kwargs, tmp_path):
    """torch.optim + LambdaLR save after 7 steps; ours loads them and takes 7 more and saves; torch loads that
    and takes the last 6: parameters, states and learning rates end as a torch-only run's, bit for bit."""
    grads = gradients(torch.float32, seed=2)
    reference_params = make_params(torch.float32)
    reference = torch_class(reference_params, **kwargs)
    reference_scheduler = torch.optim.lr_scheduler.LambdaLR(reference, factor)
    reference_rates = run_steps(reference_params, reference, reference_scheduler, grads)

    params = make_params(torch.float32)
    rates: list[float] = []
    checkpoint = None
    for (optimizer_class, scheduler_class), (begin, end) in zip(
            [(torch_class, torch.optim.lr_scheduler.LambdaLR), (ours_class, optim.LambdaLR),
             (torch_class, torch.optim.lr_scheduler.LambdaLR)], [(0, 7), (7, 14), (14, STEPS)]):
        optimizer = optimizer_class(params, **kwargs)
        scheduler = scheduler_class(optimizer, factor)
        if checkpoint is not None:
            saved = torch.load(checkpoint, weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        rates += run_steps(params, optimizer, scheduler, grads[begin:end])
        checkpoint = tmp_path / f"after-{end}.pt"
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, checkpoint)

    assert rates == reference_rates
    assert_identical(params, reference_params)
    assert_same_state(optimizer.state_dict(), reference.state_dict())
    assert scheduler.state_dict() == reference_scheduler.state_dict()


class Halving:
    """A callable schedule with state: LambdaLR saves its ``__dict__``."""

    def __init__(self) -> None:
        self.every = 4

    def __call__(self, step: int) -> float:
        return 0.5 ** (step // self.every)


@pytest.mark.parametrize("schedule", [factor, Halving()], ids=["function", "callable-object"])
def test_scheduler_matches_lambda_lr(schedule):
    ours = optim.LambdaLR(optim.SGD(make_params(torch.float32), lr=0.3), schedule)
    theirs = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(make_params(torch.float32), lr=0.3), schedule)
    assert ours.state_dict() == theirs.state_dict()
    for _ in range(40):
        theirs.optimizer.step()  # no gradients: only quiets torch's "scheduler before optimizer" warning
        ours.step()
        theirs.step()
        assert ours.get_last_lr() == theirs.get_last_lr() == [ours.optimizer.param_groups[0]["lr"]]
    assert ours.state_dict() == theirs.state_dict()
    assert ours.optimizer.state_dict()["param_groups"] == theirs.optimizer.state_dict()["param_groups"]
    assert ours.optimizer.param_groups[0]["initial_lr"] == 0.3 and ours.last_epoch == 40


def test_scheduler_state_restores_callable_object():
    saved_schedule = Halving()
    saved_schedule.every = 2
    source = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(make_params(torch.float32), lr=1.0), saved_schedule)
    schedule = Halving()
    ours = optim.LambdaLR(optim.SGD(make_params(torch.float32), lr=1.0), schedule)
    ours.load_state_dict(source.state_dict())
    assert schedule.every == 2
    ours.step()
    ours.step()
    assert ours.last_epoch == 2 and ours.get_last_lr() == [0.5]  # 1.0 with the unrestored every = 4


@pytest.mark.parametrize("torch_optimizer, ours_class", [
    (lambda params: torch.optim.Adam(params, amsgrad=True), optim.Adam),
    (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True), optim.SGD),
    (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.5), optim.SGD),
], ids=["amsgrad", "nesterov", "dampening"])
def test_unsupported_options_are_refused(torch_optimizer, ours_class):
    ours = ours_class(make_params(torch.float32))
    before = ours.state_dict()
    with pytest.raises(ValueError, match="does not implement"):
        ours.load_state_dict(torch_optimizer(make_params(torch.float32)).state_dict())
    assert ours.state_dict() == before


def test_zero_grad_and_loaded_state_placement():
    params = make_params(torch.float64)
    optimizer = optim.Adam(params, lr=0.1)
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.zero_grad(set_to_none=False)
    assert all(param.grad is not None and not param.grad.any() for param in params)
    optimizer.step()
    optimizer.zero_grad()
    assert all(param.grad is None for param in params)
    # A float32 state loads into float64 parameters as float64, but 'step' stays as torch stores it.
    source_params = make_params(torch.float32)
    source = torch.optim.Adam(source_params, lr=0.1)
    for param in source_params:
        param.grad = torch.ones_like(param)
    source.step()
    optimizer.load_state_dict(source.state_dict())
    state = optimizer.state[params[0]]
    assert state["exp_avg"].dtype == torch.float64 and state["step"].dtype == torch.float32
    assert optimizer.param_groups[0]["params"] is not source.param_groups[0]["params"]


def test_make_optimizer_builds_ours():
    from sbnn.config import TrainConfig
    from sbnn.training.schedule import make_optimizer, make_scheduler

    expected = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD}
    for name, cls in expected.items():
        train = TrainConfig(optimizer=name, lr=0.02, weight_decay=0.001, epochs=3)
        optimizer = make_optimizer(make_params(torch.float32), train)
        assert type(optimizer) is cls and optimizer.param_groups[0]["weight_decay"] == 0.001
        scheduler = make_scheduler(optimizer, train, steps_per_epoch=10)
        assert isinstance(scheduler, optim.LambdaLR) and scheduler.get_last_lr() == [0.02]


def test_sbnn_train_never_imports_dynamo(tmp_path):
    """A short quickstart ``sbnn train`` in a fresh interpreter: torch._dynamo is never imported."""
    code = ("import atexit, runpy, sys; "
            "atexit.register(lambda: print('torch._dynamo imported:', 'torch._dynamo' in sys.modules)); "
            "sys.argv[0] = 'sbnn'; runpy.run_module('sbnn', run_name='__main__', alter_sys=True)")
    overrides = ["train.epochs=1", "train.train_subset=256", "train.test_subset=64", "train.eval_samples=1"]
    command = [sys.executable, "-c", code, "train", "examples/quickstart.toml", "--out", str(tmp_path / "run")]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch._dynamo imported: False" in done.stdout, done.stdout[-2000:]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
