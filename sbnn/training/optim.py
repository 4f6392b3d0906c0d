"""Adam, AdamW, SGD and a per-step :class:`LambdaLR` that never import ``torch._dynamo``.

``torch.optim`` routes ``Optimizer.__init__``, ``step`` and ``zero_grad`` through ``torch._disable_dynamo``,
whose first call imports ``torch._dynamo`` (about a second of every ``sbnn train``), and its schedulers accept
only ``torch.optim.Optimizer`` instances. These classes repeat torch's arithmetic operation by operation, so
the updates are bit-identical to ``torch.optim``'s default implementation: the single-tensor path where any
parameter is on the CPU, the ``_foreach_`` (multi-tensor) path where all are on CUDA (or another foreach
device), as torch chooses it. Their ``state_dict()`` is torch's format (state keyed by parameter index, with
``step``, ``exp_avg``, ``exp_avg_sq`` or ``momentum_buffer``; torch's ``param_groups`` keys; LambdaLR's keys),
so checkpoints move between the two either way.

Only torch's defaults are implemented: no amsgrad, maximize, nesterov, dampening, capturable, differentiable
or fused; a state dict that asks for one of them is refused (ValueError).
"""

from __future__ import annotations

import types
from collections import defaultdict
from copy import deepcopy
from itertools import chain
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

_FOREACH_TYPES = (Tensor, nn.Parameter)
_UNSUPPORTED_TRUE = ("amsgrad", "maximize", "nesterov", "capturable", "differentiable", "fused")


def _scalar_dtype() -> torch.dtype:
    """The dtype of Adam's ``step`` tensors (torch's ``_get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _uses_foreach(group: dict[str, Any], params: list[Tensor]) -> bool:
    """torch's choice between the ``_foreach_`` and the single-tensor path (``_default_to_fused_or_foreach``)."""
    if group["foreach"] is not None:
        return bool(group["foreach"])
    if group["fused"] is not None:  # fused=False (an old SGD state) turns the default off too
        return False
    devices = ("cuda", "xpu", "mtia", torch._C._get_privateuse1_backend_name())
    return all(type(p) in _FOREACH_TYPES and p.device.type in devices for p in params)


def _by_device_and_dtype(params: list[Tensor]) -> list[list[int]]:
    """Indices into ``params`` grouped by (device, dtype), as ``_foreach_`` ops need them."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, param in enumerate(params):
        groups.setdefault((param.device, param.dtype), []).append(index)
    return list(groups.values())


class Optimizer:
    """What :class:`Adam` and :class:`SGD` share: parameter groups, lazy per-parameter state, ``zero_grad``
    and torch's state-dict format."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        for group in items if isinstance(items[0], dict) else [{"params": items}]:
            self.add_param_group(dict(group))

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Append ``group`` (``params`` and any options; the rest from the defaults)."""
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for existing in self.param_groups for p in existing["params"]}
        for param in group["params"]:
            if not isinstance(param, Tensor) or torch.is_complex(param):
                raise TypeError(f"can only optimize real tensors, not {torch.typename(param)}")
            if not (param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
            if id(param) in seen:
                raise ValueError("a parameter appears twice in the optimizer's parameter groups")
            seen.add(id(param))
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (``set_to_none``) or zero them in place."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if set_to_none:
                    param.grad = None
                    continue
                if param.grad.grad_fn is not None:
                    param.grad.detach_()
                else:
                    param.grad.requires_grad_(False)
                param.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}``: torch's layout, the
        state's tensors shared, not copied."""
        indices = {id(p): i for i, p in enumerate(chain.from_iterable(g["params"] for g in self.param_groups))}
        groups = []
        for group in self.param_groups:
            packed = {key: value for key, value in group.items() if key != "params"}
            packed["params"] = [indices[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {indices[id(key)] if isinstance(key, Tensor) else key: value for key, value in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` of this class or of the same ``torch.optim`` class: the groups' options
        (``lr`` included) replace the current ones; state tensors move to their parameter's device (and, but for
        ``step``, its floating dtype)."""
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(saved["params"]) != len(group["params"]) for saved, group in zip(saved_groups, self.param_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                             "optimizer's group")
        for saved, group in zip(saved_groups, self.param_groups):
            self._restore_group(saved)
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
        id_map = dict(zip(chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in id_map:
                param = id_map[key]
                state[param] = {name: self._restore_state(param, name, item) for name, item in value.items()}
            else:
                state[key] = value
        self.state, self.param_groups = state, saved_groups

    def _restore_group(self, group: dict[str, Any]) -> None:
        """Fill options that older state dicts lack; refuse those this module does not implement."""
        for name, default in self.defaults.items():
            if name != "lr":
                group.setdefault(name, default)
        unsupported = [name for name in _UNSUPPORTED_TRUE if group.get(name)]
        if group.get("dampening", 0) != 0:
            unsupported.append("dampening")
        if unsupported:
            raise ValueError(f"optimizer state asks for {', '.join(unsupported)}, which sbnn's "
                             f"{type(self).__name__} does not implement")

    @staticmethod
    def _restore_state(param: Tensor, name: str, value: Any) -> Any:
        if not isinstance(value, Tensor):
            return torch.tensor(float(value), dtype=_scalar_dtype()) if name == "step" else value
        if name == "step":  # torch keeps step where it was saved (on the CPU), in its dtype
            return value
        if param.is_floating_point():
            return value.to(dtype=param.dtype, device=param.device)
        return value.to(device=param.device)

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if any(param.grad.is_sparse for param in params):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if params:
                self._update(group, params)

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Update ``params`` (those of ``group`` with a gradient) and their state."""
        raise NotImplementedError


class Adam(Optimizer):
    """``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient), bit for bit; ``lr`` per step."""

    _decoupled = False

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 *, foreach: bool | None = None) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "amsgrad": False,
                    "maximize": False, "foreach": foreach, "capturable": False, "differentiable": False,
                    "fused": None, "decoupled_weight_decay": self._decoupled}
        super().__init__(params, defaults)

    def _restore_group(self, group: dict[str, Any]) -> None:
        super()._restore_group(group)
        if self._decoupled:  # as torch.optim.AdamW.__setstate__
            group["decoupled_weight_decay"] = True

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        states = []
        for param in params:
            state = self.state[param]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=_scalar_dtype(), device="cpu")
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            states.append(state)
        update = _adam_foreach if _uses_foreach(group, params) else _adam_single
        update(params, states, group)


class AdamW(Adam):
    """``torch.optim.AdamW`` (decoupled weight decay: ``param *= 1 - lr * weight_decay``), bit for bit."""

    _decoupled = True

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 *, foreach: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, foreach=foreach)


def _adam_single(params: list[Tensor], states: list[dict[str, Any]], group: dict[str, Any]) -> None:
    """torch's ``_single_tensor_adam`` (amsgrad, maximize, capturable off)."""
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    for param, state in zip(params, states):
        grad, exp_avg, exp_avg_sq, step_t = param.grad, state["exp_avg"], state["exp_avg_sq"], state["step"]
        step_t += 1
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def _adam_foreach(params: list[Tensor], states: list[dict[str, Any]], group: dict[str, Any]) -> None:
    """torch's ``_multi_tensor_adam`` (amsgrad, maximize, capturable off)."""
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    for indices in _by_device_and_dtype(params):
        device_params = [params[i] for i in indices]
        grads = [param.grad for param in device_params]
        exp_avgs = [states[i]["exp_avg"] for i in indices]
        exp_avg_sqs = [states[i]["exp_avg_sq"] for i in indices]
        steps = [states[i]["step"] for i in indices]
        if steps[0].is_cpu:
            torch._foreach_add_(steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
        else:
            torch._foreach_add_(steps, 1)
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(device_params, 1 - lr * weight_decay)
            else:
                grads = torch._foreach_add(grads, device_params, alpha=weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        step_sizes = [(lr / (1 - beta1 ** step.item())) * -1 for step in steps]
        bias_corrections2_sqrt = [(1 - beta2 ** step.item()) ** 0.5 for step in steps]
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, bias_corrections2_sqrt)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(device_params, exp_avgs, denoms, step_sizes)


class SGD(Optimizer):
    """``torch.optim.SGD`` with heavy-ball ``momentum`` and L2 ``weight_decay``, bit for bit."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3, momentum: float = 0,
                 weight_decay: float = 0, *, foreach: bool | None = None) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {"lr": lr, "momentum": momentum, "dampening": 0, "weight_decay": weight_decay,
                    "nesterov": False, "maximize": False, "foreach": foreach, "differentiable": False, "fused": None}
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        momentum = group["momentum"] != 0
        buffers = [self.state[param].get("momentum_buffer") for param in params] if momentum else []
        update = _sgd_foreach if _uses_foreach(group, params) else _sgd_single
        update(params, buffers, group)
        for param, buffer in zip(params, buffers):
            self.state[param]["momentum_buffer"] = buffer


def _sgd_single(params: list[Tensor], buffers: list[Tensor | None], group: dict[str, Any]) -> None:
    """torch's ``_single_tensor_sgd`` (nesterov, maximize off); fills ``buffers`` (when momentum is on)."""
    lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
    for i, param in enumerate(params):
        grad = param.grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            buffer = buffers[i]
            if buffer is None:
                buffer = buffers[i] = grad.detach().clone()
            else:
                buffer.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = buffer
        param.add_(grad, alpha=-lr)


def _sgd_foreach(params: list[Tensor], buffers: list[Tensor | None], group: dict[str, Any]) -> None:
    """torch's ``_multi_tensor_sgd`` (nesterov, maximize off); fills ``buffers`` (when momentum is on)."""
    lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
    for indices in _by_device_and_dtype(params):
        device_params = [params[i] for i in indices]
        grads = [param.grad for param in device_params]
        if weight_decay != 0:
            grads = torch._foreach_add(grads, device_params, alpha=weight_decay)
        if momentum != 0:
            device_buffers = [buffers[i] for i in indices]
            if all(buffer is not None for buffer in device_buffers):
                torch._foreach_mul_(device_buffers, momentum)
                torch._foreach_add_(device_buffers, grads, alpha=1 - group["dampening"])
            else:
                for k, i in enumerate(indices):
                    if buffers[i] is None:
                        buffers[i] = grads[k].detach().clone()
                    else:
                        buffers[i].mul_(momentum).add_(grads[k], alpha=1 - group["dampening"])
                device_buffers = [buffers[i] for i in indices]
            grads = device_buffers
        torch._foreach_add_(device_params, grads, alpha=-lr)


class LambdaLR:
    """``torch.optim.lr_scheduler.LambdaLR`` for the optimisers above: ``lr = initial_lr * lr_lambda(n)`` after
    the n-th :meth:`step` (n = 0 at construction); the same values and state-dict keys."""

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
                 last_epoch: int = -1) -> None:
        self.optimizer = optimizer
        groups = optimizer.param_groups
        self.lr_lambdas = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * len(groups)
        if len(self.lr_lambdas) != len(groups):
            raise ValueError(f"Expected {len(groups)} lr_lambdas, but got {len(self.lr_lambdas)}")
        for index, group in enumerate(groups):
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(f"param 'initial_lr' is not specified in param_groups[{index}] when resuming a "
                               f"scheduler with last_epoch >= 0")
        self.base_lrs: list[float] = [group["initial_lr"] for group in groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._last_lr: list[float] = []
        self.step()

    def step(self) -> None:
        """Advance one step and set every group's ``lr``."""
        self._step_count += 1
        self.last_epoch += 1
        for group, function, base_lr in zip(self.optimizer.param_groups, self.lr_lambdas, self.base_lrs):
            group["lr"] = base_lr * function(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates the last :meth:`step` set, one per parameter group."""
        return self._last_lr

    def state_dict(self) -> dict[str, Any]:
        """LambdaLR's keys; ``lr_lambdas`` holds the ``__dict__`` of callable objects, None for functions."""
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch, "_step_count": self._step_count,
                "_is_initial": False, "_get_lr_called_within_step": False, "_last_lr": self._last_lr,
                "lr_lambdas": [None if isinstance(function, types.FunctionType) else function.__dict__.copy()
                               for function in self.lr_lambdas]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` of this class or of ``torch.optim.lr_scheduler.LambdaLR``."""
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict["_step_count"])
        self._last_lr = list(state_dict["_last_lr"])
        for function, saved in zip(self.lr_lambdas, state_dict.get("lr_lambdas", [])):
            if saved is not None:
                function.__dict__.update(saved)


__all__ = ["SGD", "Adam", "AdamW", "LambdaLR", "Optimizer"]
