"""Loihi / Lava fixed-point arithmetic helpers (docs/loihi.md#arithmetic), vectorised over numpy int64 arrays.

Every function here has a slow scalar reference in the tests. All inputs and outputs are integer arrays;
products are formed in int64 as Lava does.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

DECAY_BITS = 12                 # du, dv are 12-bit fractions of 4096
DECAY_UNITY = 1 << DECAY_BITS
STATE_SHIFT = 6                 # a_in and vth are MSB-aligned by 6 bits; the bias is not
STATE_BITS = 24                 # u and v are 24-bit two's-complement values
STATE_MAX = (1 << (STATE_BITS - 1)) - 1
CURRENT_DECAY_OFFSET = 1        # Lava's hidden +1 on du (ds_offset); dv has none


def current_factor(du: int) -> int:
    """The integer Lava multiplies u by each step, before the 12-bit shift: 4096 - (du + 1)."""
    return DECAY_UNITY - du - CURRENT_DECAY_OFFSET


def voltage_factor(dv: int) -> int:
    """The integer Lava multiplies v by each step, before the 12-bit shift: 4096 - dv (no offset)."""
    return DECAY_UNITY - dv


def du_to_alpha(du: int) -> float:
    """The float current decay α (per-step multiplier) of Lava's du: (4095 - du)/4096."""
    return current_factor(du) / DECAY_UNITY


def dv_to_beta(dv: int) -> float:
    """The float voltage decay β of Lava's dv: (4096 - dv)/4096."""
    return voltage_factor(dv) / DECAY_UNITY


def alpha_to_du(alpha: float) -> int:
    """The nearest du for a float current decay α (inverse of :func:`du_to_alpha`; not range-checked)."""
    return round(DECAY_UNITY * (1.0 - alpha)) - CURRENT_DECAY_OFFSET


def beta_to_dv(beta: float) -> int:
    """The nearest dv for a float voltage decay β (inverse of :func:`dv_to_beta`; not range-checked)."""
    return round(DECAY_UNITY * (1.0 - beta))


class SignMode(IntEnum):
    """Lava's synapse sign modes (same integer codes as ``lava.utils.weightutils.SignMode``)."""

    INFERRED = 0    # Lava's NULL: determined from the weights on the first step
    MIXED = 1
    EXCITATORY = 2
    INHIBITORY = 3


def infer_sign_mode(weights: np.ndarray) -> SignMode:
    """Lava's ``determine_sign_mode``: all ≥ 0 excitatory, else all ≤ 0 inhibitory, else mixed."""
    if weights.size == 0 or np.min(weights) >= 0:
        return SignMode.EXCITATORY
    if np.max(weights) <= 0:
        return SignMode.INHIBITORY
    return SignMode.MIXED


def prepare_dense_weights(weights: np.ndarray, sign_mode: SignMode, num_weight_bits: int) -> np.ndarray:
    """The weights Lava's bit-accurate Dense actually uses: 8-bit clip, then truncation to weight bits.

    MIXED clips to [-256, 255], EXCITATORY to [0, 255], INHIBITORY to [-255, 0]; then the lowest
    ``8 - num_weight_bits (+1 if MIXED)`` bits are dropped with an arithmetic shift (floor for MIXED,
    toward zero for INHIBITORY, whose sign is flipped around the shift). Returns int64.
    """
    if sign_mode == SignMode.INFERRED:
        sign_mode = infer_sign_mode(weights)
    w = np.asarray(weights, dtype=np.int64)
    flip = sign_mode == SignMode.INHIBITORY
    mixed = int(sign_mode == SignMode.MIXED)
    drop = 8 - int(num_weight_bits) + mixed
    if drop < 0 or drop >= 32:
        # Lava shifts int32 numpy arrays by ``drop``; numpy turns a negative or too wide shift into 0 (or -1,
        # shifted back to 0). netx can ask for this: 9 weight bits for a single-signed matrix, e.g. the
        # recurrent half of a mixed dense_rec layer. Every weight is then 0, and so is this result.
        return np.zeros_like(w)
    if flip:
        w = -w
    w = np.clip(w, -256 * mixed, 255)
    w = (w >> drop) << drop
    return -w if flip else w


def shift_by_exponent(values: np.ndarray, exponent: int | np.ndarray) -> np.ndarray:
    """``values << exponent`` for exponent ≥ 0, else ``values >> -exponent`` (arithmetic, i.e. floor)."""
    values = np.asarray(values, dtype=np.int64)
    if np.ndim(exponent) == 0:
        exponent = int(exponent)
        return values << exponent if exponent > 0 else values >> -exponent if exponent < 0 else values
    exponent = np.asarray(exponent, dtype=np.int64)
    return np.where(exponent >= 0, values << np.maximum(exponent, 0), values >> np.maximum(-exponent, 0))


def decay_toward_zero(state: np.ndarray, factor: int) -> np.ndarray:
    """``sign(p) * (|p| >> 12)`` with ``p = state * factor``: multiply by factor/4096, rounding toward zero."""
    product = np.asarray(state, dtype=np.int64) * np.int64(factor)
    return np.sign(product) * (np.abs(product) >> DECAY_BITS)


def wrap_current(u: np.ndarray) -> np.ndarray:
    """Lava's one-fold 24-bit wrap of u: u > 2^23 loses 2^24, u ≤ -2^23 gains 2^24 (+2^23 is kept)."""
    half, full = 1 << (STATE_BITS - 1), 1 << STATE_BITS
    return np.where(u > half, u - full, np.where(u <= -half, u + full, u))


def saturate_voltage(v: np.ndarray) -> np.ndarray:
    """Clip v to [-(2^23 - 1), 2^23 - 1]."""
    return np.clip(v, -STATE_MAX, STATE_MAX)


def wrap_signed(values: np.ndarray, bits: int = STATE_BITS) -> np.ndarray:
    """Modular wrap to signed ``bits`` (Lava Conv's ``signed_clamp``): range [-2^(bits-1), 2^(bits-1) - 1]."""
    half = 1 << (bits - 1)
    return ((np.asarray(values, dtype=np.int64) + half) & ((half << 1) - 1)) - half


def effective_bias(bias_mant: np.ndarray, bias_exp: np.ndarray) -> np.ndarray:
    """The bias added to v each step: ``bias_mant`` shifted by ``bias_exp`` (not MSB-aligned)."""
    return shift_by_exponent(bias_mant, bias_exp)


def netx_optimize_weight_bits(weight: np.ndarray) -> tuple[np.ndarray, int, int]:
    """netx's ``optimize_weight_bits`` (lava-dl 0.6.0): file weights -> (Lava weights, weight bits, exponent).

    netx scales the weights up by the largest power of two that keeps them in 8 bits, and compensates
    with a negative weight exponent; Lava then infers the sign mode from the scaled matrix. For weights
    in about [-128, 127] the result is exactly Σ w·s. Outside that range netx's quirks are kept, not refused
    (docs/netx.md): weights in [-128, 0] become [-256, 0], which Lava then reads as inhibitory and clips to
    -255; mixed odd weights beyond ±128 get 9 weight bits; single-signed weights beyond 8 bits become 0.
    """
    w = np.asarray(weight, dtype=np.float64)
    max_weight, min_weight = np.max(w), np.min(w)   # numpy scalars: x / 0 is inf, as in netx
    if max_weight > 254 and min_weight < 0 or min_weight < -256 and max_weight > 0:
        w = np.clip(w, -256, 254)
        max_weight, min_weight = np.max(w), np.min(w)
    with np.errstate(divide="ignore"):
        if max_weight < 0:
            is_signed, scale = 0, -256 / min_weight
        elif min_weight >= 0:
            is_signed, scale = 0, 255 / max_weight
        else:
            is_signed, scale = 1, min(127 / max_weight, -128 / min_weight)
    if not np.isfinite(scale):  # an all-zero matrix: netx fails converting log2(inf) to an integer
        raise ValueError("netx cannot load an all-zero weight matrix (netx 0.6 fails on it)")
    scale_bits = int(np.floor(np.log2(scale))) + is_signed
    n = 8
    while n > 0 and np.sum(np.abs(w / 2**n - np.round(w / 2**n))) != 0:
        n -= 1
    n -= is_signed
    if scale_bits < 0:
        # A single-signed matrix beyond 8 bits: netx shifts it by a negative count, which numpy turns into
        # all zeros. Lava runs the zero matrix; so do we (with netx's exponent; the bits no longer matter).
        return np.zeros(w.shape, dtype=np.int64), 8, int(-scale_bits)
    num_weight_bits = 8 - scale_bits - n
    scaled = np.left_shift(w.astype(np.int64), scale_bits)
    return scaled, int(num_weight_bits), int(-scale_bits)
