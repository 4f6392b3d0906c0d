"""ONNX export: one time step with explicit state inputs and outputs (docs/formats.md#onnx).

``model.onnx``  — the float network (:class:`~export.float_network.FloatNetwork`), float32:
                  inputs ``x`` (batch, *input_shape) and per layer ``i{k}``, ``v{k}`` (and ``s{k}`` for a
                  recurrent layer's previous spikes); outputs ``out`` (last layer's spikes, or its V for a
                  readout) and the new states under the same names with ``_next``.
``model_int.onnx`` — the integer Loihi step that reproduces hw_sim exactly: int64 states ``a{k}`` (the
                  synapse's one-step buffer), ``u{k}``, ``v{k}`` (and ``r{k}``, the recurrent buffer);
                  ``x`` is int64 spikes or payloads. Sums use float64 matrix products (exact below 2^53)
                  and float32 convolutions (onnxruntime has no float64 Conv; checked exact below 2^24),
                  decays use ``>>`` (never integer ``torch.div`` with a rounding mode, which the dynamo
                  exporter lowers to inexact float32).

Both are exported with the TorchScript exporter (``dynamo=False``): it is fast and exact for these
integer forms; the dynamo exporter (which needs onnxscript) works too but takes seconds to minutes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hw_sim.arith import STATE_MAX, STATE_SHIFT, current_factor, prepare_dense_weights, voltage_factor
from safeio.atomic import atomic_path
from hw_sim.loihi import exact_matmul_dtype
from hw_sim.network import ConvLayer, DenseLayer, Network

from .float_network import ExportError, FloatNetwork

OPSET = 18   # BitwiseAnd (the int32 and 24-bit wraps) needs opset 18
MAX_STATE_ELEMENTS = 1 << 28   # run_onnx refuses a model whose declared state would need more (all inputs)


class ONNXFileError(ValueError):
    """An ONNX file that onnxruntime cannot load, or that is not one of our step models; names the file."""


class FloatStep(nn.Module):
    """One step of a FloatNetwork in float32 torch: (x, *state) -> (out, *next_state)."""

    def __init__(self, network: FloatNetwork) -> None:
        super().__init__()
        self.network = network
        for k, layer in enumerate(network.layers):
            self.register_buffer(f"w{k}", torch.tensor(layer.weight, dtype=torch.float32))
            self.register_buffer(f"b{k}", torch.tensor(layer.bias, dtype=torch.float32))
            if layer.recurrent_weight is not None:
                self.register_buffer(f"wr{k}", torch.tensor(layer.recurrent_weight, dtype=torch.float32))
            if layer.current_bias is not None:   # added to the current every step (docs/formats.md#nir-read)
                self.register_buffer(f"c{k}", torch.tensor(layer.current_bias, dtype=torch.float32))

    def state_names(self) -> list[str]:
        names = []
        for k, layer in enumerate(self.network.layers):
            names += [f"i{k}", f"v{k}"] + ([f"s{k}"] if layer.recurrent_weight is not None else [])
        return names

    def initial_state(self, batch: int) -> list[torch.Tensor]:
        state = []
        for layer in self.network.layers:
            count = 3 if layer.recurrent_weight is not None else 2
            state += [torch.zeros(batch, *layer.shape) for _ in range(count)]
        return state

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        state = list(state)
        next_state = []
        signal = x
        position = 0
        out = x
        for k, layer in enumerate(self.network.layers):
            current, voltage = state[position], state[position + 1]
            position += 2
            weight = getattr(self, f"w{k}")
            if layer.kind == "conv":
                drive = F.conv2d(signal, weight, stride=layer.stride, padding=layer.padding,
                                 dilation=layer.dilation, groups=layer.groups)
            else:
                drive = signal.reshape(signal.shape[0], -1) @ weight.t()
            if layer.recurrent_weight is not None:
                previous_spikes = state[position]
                position += 1
                drive = drive + previous_spikes @ getattr(self, f"wr{k}").t()
            current = layer.alpha * current + drive
            if layer.current_bias is not None:
                current = current + getattr(self, f"c{k}")
            voltage = layer.beta * voltage + current + getattr(self, f"b{k}")
            if layer.readout:
                spikes = torch.zeros_like(voltage)
                out = voltage
            else:
                spikes = (voltage > layer.threshold).to(voltage.dtype)
                voltage = voltage * (1.0 - spikes)
                out = spikes
            next_state += [current, voltage] + ([spikes] if layer.recurrent_weight is not None else [])
            signal = spikes
        return (out, *next_state)


def _wrap(values: torch.Tensor, bits: int) -> torch.Tensor:
    half = 1 << (bits - 1)
    return torch.bitwise_and(values + half, (half << 1) - 1) - half


def _trunc_decay(values: torch.Tensor, factor: int) -> torch.Tensor:
    product = values * factor
    return torch.sign(product) * torch.bitwise_right_shift(torch.abs(product), 12)


def _delay_stacked(weights: np.ndarray, delays: np.ndarray | None) -> torch.Tensor:
    """Dense weights as one float64 matrix; with delays, the rows of delay 0, 1, ..., D stacked, so one
    product gives every delay group's sum ((D + 1)·out, in)."""
    if delays is None:
        return torch.tensor(weights, dtype=torch.float64)
    stacked = [np.where(delays == d, weights, 0) for d in range(int(delays.max()) + 1)]
    return torch.tensor(np.concatenate(stacked), dtype=torch.float64)


class IntegerStep(nn.Module):
    """One Lava step of an integer hw_sim Network, exact: (x, *state) -> (out, *next_state)."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network
        for k, layer in enumerate(network.layers):
            if isinstance(layer, ConvLayer):
                # onnxruntime has no float64 Conv: float32 is exact while every sum stays below 2^24.
                max_input = (1 << network.input_message_bits) - 1 if k == 0 and network.input_message_bits else 1
                if exact_matmul_dtype(layer.weights.reshape(layer.weights.shape[0], -1), max_input) != np.float32:
                    raise ExportError(f"layer {k}: conv sums can exceed 2^24, beyond what an ONNX float32 Conv computes exactly")
                self.register_buffer(f"w{k}", torch.tensor(layer.weights, dtype=torch.float32))
            else:
                weights = prepare_dense_weights(layer.weights, layer.effective_sign_mode(), layer.num_weight_bits)
                self.register_buffer(f"w{k}", _delay_stacked(weights, layer.delays))
                if layer.recurrent_weights is not None:
                    recurrent = prepare_dense_weights(layer.recurrent_weights,
                                                      layer.effective_sign_mode(layer.recurrent_weights),
                                                      layer.num_weight_bits)
                    self.register_buffer(f"wr{k}", _delay_stacked(recurrent, layer.recurrent_delays))
            self.register_buffer(f"bias{k}", torch.tensor(layer.neurons.bias, dtype=torch.int64))

    def state_names(self) -> list[str]:
        names = []
        for k, layer in enumerate(self.network.layers):
            names += [f"a{k}", f"u{k}", f"v{k}"] + ([f"r{k}"] if getattr(layer, "recurrent_weights", None) is not None else [])
        return names

    def _state_shape(self, name: str) -> tuple[int, ...]:
        """u, v: the layer's shape. a (synapse buffer) and r (recurrent buffer): the layer's shape, or
        (1 + largest delay, N) for a delayed synapse, entry d arriving d steps after the next one."""
        k = int(name[1:])
        layer = self.network.layers[k]
        if name[0] in "ar" and isinstance(layer, DenseLayer):
            delays = layer.delays if name[0] == "a" else layer.recurrent_delays
            if delays is not None:
                return (int(delays.max()) + 1, *layer.shape)
        return layer.shape

    def initial_state(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, *self._state_shape(name), dtype=torch.int64) for name in self.state_names()]

    def _synapse(self, k: int, layer, signal: torch.Tensor, weight: torch.Tensor | None = None,
                 buffer: torch.Tensor | None = None) -> torch.Tensor:
        """The synapse's next buffer: what it sends next step (and, with delays, in later steps)."""
        weight = getattr(self, f"w{k}") if weight is None else weight
        if isinstance(layer, ConvLayer):
            summed = F.conv2d(signal.to(torch.float32), weight, stride=layer.stride, padding=layer.padding,
                              dilation=layer.dilation, groups=layer.groups).to(torch.int64)
            return _wrap(summed, 24)
        summed = (signal.reshape(signal.shape[0], -1).to(torch.float64) @ weight.t()).to(torch.int64)
        exponent = layer.weight_exp
        shifted = summed * (1 << exponent) if exponent >= 0 else torch.bitwise_right_shift(summed, -exponent)
        if buffer is None or buffer.dim() == 2:
            return _wrap(shifted, 32)
        # Lava's DelayDense: each delay group shifted on its own, added to the buffer moved on by one step.
        groups = shifted.reshape(shifted.shape[0], buffer.shape[1], -1)
        moved = torch.cat([buffer[:, 1:], torch.zeros_like(buffer[:, :1])], dim=1)
        return _wrap(moved + groups, 32)

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        state = list(state)
        next_state = []
        signal = x if self.network.input_message_bits else (x != 0).to(torch.int64)
        position = 0
        out = signal
        for k, layer in enumerate(self.network.layers):
            buffered, u, v = state[position], state[position + 1], state[position + 2]
            position += 3
            a_in = buffered[:, 0] if buffered.dim() == 3 and not isinstance(layer, ConvLayer) else buffered
            recurrent = getattr(layer, "recurrent_weights", None) is not None
            if recurrent:
                recurrent_buffer = state[position]
                a_in = _wrap(a_in + (recurrent_buffer[:, 0] if recurrent_buffer.dim() == 3 else recurrent_buffer), 32)
                position += 1
            neurons = layer.neurons
            decayed = _wrap(_trunc_decay(u, current_factor(neurons.du)), 32)
            u = _wrap(decayed + _wrap(a_in * (1 << STATE_SHIFT), 32), 32)
            half, full = STATE_MAX + 1, 2 * (STATE_MAX + 1)
            u = torch.where(u > half, u - full, torch.where(u <= -half, u + full, u))
            v = _trunc_decay(v, voltage_factor(neurons.dv)) + u + getattr(self, f"bias{k}")
            v = torch.clamp(v, -(half - 1), half - 1)
            fired = v > (neurons.vth << STATE_SHIFT)
            v = torch.where(fired, torch.zeros_like(v), v)
            spikes = fired.to(torch.int64)
            next_buffer = self._synapse(k, layer, signal, buffer=buffered)
            next_state += [next_buffer, u, v]
            if recurrent:
                next_state.append(self._synapse(k, layer, spikes, getattr(self, f"wr{k}"), recurrent_buffer))
            out = v if isinstance(layer, DenseLayer) and layer.readout else spikes
            signal = spikes
        return (out, *next_state)


def _export(module: nn.Module, example: tuple[torch.Tensor, ...], state_names: list[str], path: Path) -> Path:
    input_names = ["x"] + state_names
    output_names = ["out"] + [f"{name}_next" for name in state_names]
    dynamic = {name: {0: "batch"} for name in input_names + output_names}
    with atomic_path(path) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(temporary), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        import onnx
        onnx.checker.check_model(str(temporary))
    return path


def export_float_onnx(network: FloatNetwork, path: str | os.PathLike) -> Path:
    module = FloatStep(network).eval()
    example = (torch.zeros(1, *network.input_shape), *module.initial_state(1))
    return _export(module, example, module.state_names(), Path(path))


def export_integer_onnx(network: Network, path: str | os.PathLike) -> Path:
    module = IntegerStep(network).eval()
    example = (torch.zeros(1, *network.input_shape, dtype=torch.int64), *module.initial_state(1))
    return _export(module, example, module.state_names(), Path(path))


def run_onnx(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Step an exported model over ``x`` (batch, T, *input_shape) in onnxruntime; returns ``out`` (batch, T, ...)."""
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise ONNXFileError(f"{path}: no such file")
    x = np.asarray(x)
    if x.ndim < 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"inputs for {path} must be (batch, T, *input_shape) with batch, T >= 1, found {x.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"inputs for {path} must be numbers, found dtype {x.dtype}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # (name, type, shape) of each input, and the output names; a damaged file can make even these fail
        inputs = [(item.name, item.type, list(item.shape)) for item in session.get_inputs()]
        names = [item.name for item in session.get_outputs()]
    except Exception as error:  # onnxruntime's errors are its own classes (InvalidProtobuf, Fail, ...)
        raise ONNXFileError(f"{path}: onnxruntime cannot load it ({_one_line(error)})") from None
    state_names = [name for name, _, _ in inputs[1:]]
    if not inputs or inputs[0][0] != "x" or names[:1] != ["out"] \
            or sorted(names[1:]) != sorted(f"{name}_next" for name in state_names):
        raise ONNXFileError(f"{path}: not a step model (inputs x and states, outputs out and the states' _next)")
    declared = inputs[0][2][1:]   # x's per-step shape after the batch axis; a symbolic size is not checked
    if len(declared) != x.ndim - 2 or any(isinstance(n, int) and n != m for n, m in zip(declared, x.shape[2:])):
        raise ValueError(f"inputs for {path} must be (batch, T, {', '.join(map(str, declared))}), found {x.shape}")
    batch = x.shape[0]
    state = {}
    total = 0
    for name, kind, shape in inputs[1:]:
        dims = shape[1:]
        if not all(isinstance(n, int) and n >= 1 for n in dims):
            raise ONNXFileError(f"{path}: state '{name}' has no fixed shape ({shape})")
        total += batch * int(np.prod(dims, dtype=np.float64))
        if total > MAX_STATE_ELEMENTS:
            raise ONNXFileError(f"{path}: its states would need more than {MAX_STATE_ELEMENTS} elements for batch {batch}")
        state[name] = np.zeros((batch, *dims), dtype=np.int64 if "int64" in kind else np.float32)
    x_dtype = np.int64 if "int64" in inputs[0][1] else np.float32
    if not np.all(np.isfinite(x)) or (x_dtype == np.int64 and np.any(x != np.round(x))):
        raise ValueError(f"inputs for {path} must be finite{' integers' if x_dtype == np.int64 else ''}")
    outputs = []
    for t in range(x.shape[1]):
        try:
            result = session.run(names, {"x": x[:, t].astype(x_dtype), **state})
        except Exception as error:
            raise ONNXFileError(f"{path}: cannot run on inputs of shape {x.shape} ({_one_line(error)})") from None
        outputs.append(result[0])
        state = {name[:-len("_next")]: value for name, value in zip(names[1:], result[1:])}
    return np.stack(outputs, axis=1)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]
