"""Exact integer convolution on torch's conv2d (docs/loihi.md#integer-products-in-hw_sim).

Integer inputs and kernels are convolved in float32 when every possible sum (and so every partial sum,
whatever the order) is an integer below 2^24, else in float64 (below 2^53): exact either way, provided
the primitive really sums the products. torch's CPU float32 conv goes to oneDNN's direct algorithm or to
im2col + GEMM, both plain sums; other backends (NNPACK's Winograd/FFT, reduced-precision fp32 math modes)
are not, so float32 is used only when torch says it will take a direct one, and float64 otherwise.

torch is imported here only, on first use: hw_sim's dense paths and light commands need numpy alone.
"""

from __future__ import annotations

import warnings

import numpy as np

from .network import ConvLayer, NetworkError

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53
_DIRECT_BACKENDS = ("Mkldnn", "Slow2d", "SlowDilated2d")


def _float32_is_direct(torch, inputs, kernel, layer: ConvLayer) -> bool:
    """Whether torch computes this float32 conv as plain sums (direct or im2col + GEMM, full fp32 math)."""
    precisions = (getattr(getattr(torch.backends.mkldnn, "conv", None), "fp32_precision", "none"),
                  getattr(torch.backends, "fp32_precision", "none"))
    if any(p not in ("none", "ieee") for p in precisions) or torch.get_float32_matmul_precision() != "highest":
        return False
    try:
        backend = torch._C._select_conv_backend(inputs, kernel, None, list(layer.stride), list(layer.padding),
                                                list(layer.dilation), False, [0, 0], layer.groups, None)
    except (AttributeError, RuntimeError, TypeError):
        return False
    return str(backend).rsplit(".", 1)[-1] in _DIRECT_BACKENDS


def exact_conv2d(layer: ConvLayer, inputs: np.ndarray, bound: int) -> np.ndarray:
    """``conv(inputs, layer.weights)`` (torch's cross-correlation), every value an exact integer.

    ``inputs``: (rows, C, H, W) integers; ``bound``: an upper bound of every |sum| (loihi.synaptic_bound).
    Returns (rows, C_out, H_out, W_out) float32 (when the bound is below 2^24 and torch's float32 conv is
    direct) or float64. No wrap is applied.
    """
    import torch
    import torch.nn.functional as F

    if bound >= FLOAT64_EXACT:
        raise NetworkError("conv sums beyond 2^53 cannot be computed exactly")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)    # read-only inputs: torch only reads them
        source = torch.from_numpy(np.ascontiguousarray(inputs))
    kernel = torch.from_numpy(np.array(layer.weights, dtype=np.float32))
    rows = source.to(torch.float32) if bound < FLOAT32_EXACT else None
    if rows is None or not _float32_is_direct(torch, rows, kernel, layer):
        rows, kernel = source.to(torch.float64), kernel.to(torch.float64)
    with torch.no_grad():
        out = F.conv2d(rows, kernel, stride=layer.stride, padding=layer.padding,
                       dilation=layer.dilation, groups=layer.groups)
    return out.numpy()
