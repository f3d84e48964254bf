"""Requantization arithmetic shared by the quantized ops and the passes that build them.

Two modes (see ``lowbit.py``): ``fixed_point`` (gemmlowp/TFLite style, integer only) and ``float``
(what onnxruntime's QLinearConv/QLinearMatMul do: float32 multiply, round half to even).
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from ...errors import ConfigError, ShapeError

#: the total right shift is kept in [1, MAX_SHIFT] so that ``acc * M + 2^(S-1)`` fits in int64.
MAX_SHIFT = 63


def quantize_multiplier(real: float) -> Tuple[int, int]:
    """``real`` (> 0) as ``(M, S)`` with ``M`` in [2^30, 2^31) and ``real ~= M / 2^S``, ``1 <= S <= 63``.

    ``M = round(real * 2^S)`` (exact to half an ulp of a 31-bit mantissa). Multipliers below
    2^-32 cannot keep ``S <= 63``; they become ``(2^30, 63)``, whose result is 0 for every int32
    accumulator, which is also the correctly rounded value of ``real * acc`` (|real * acc| < 0.5).
    """
    real = float(real)
    if not math.isfinite(real) or real <= 0:
        raise ConfigError(f"requantization multiplier must be positive and finite, got {real!r}")
    frac, exp = math.frexp(real)           # real = frac * 2^exp, frac in [0.5, 1)
    m = round(frac * (1 << 31))            # in [2^30, 2^31]; Python round is half-even on exact ties
    if m == 1 << 31:
        m //= 2
        exp += 1
    shift = 31 - exp
    if shift < 1:
        raise ConfigError(f"requantization multiplier {real!r} is too large (must be < 2^30)")
    if shift > MAX_SHIFT:
        return 1 << 30, MAX_SHIFT
    return int(m), int(shift)


def quantize_multipliers(real: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Vector form of :func:`quantize_multiplier`: int32 multipliers and int32 shifts."""
    pairs = [quantize_multiplier(r) for r in np.asarray(real, np.float64).reshape(-1)]
    return (np.array([p[0] for p in pairs], np.int32).reshape(np.shape(real)),
            np.array([p[1] for p in pairs], np.int32).reshape(np.shape(real)))


def _per_channel(arr: np.ndarray, channels: int, axis: int, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 1 or arr.shape[0] != channels:
        raise ShapeError(f"{what} must have shape [{channels}] (one per output channel), got {list(arr.shape)}")
    shape = [1] * ndim
    shape[axis] = channels
    return arr.reshape(shape)


def requantize_fixed_point(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, axis: int,
                           zero_point: int, lo: int, hi: int) -> np.ndarray:
    """``clamp(((int64(acc) * M + 2^(S-1)) >> S) + zero_point, lo, hi)`` per channel along ``axis`` (int64)."""
    c = acc.shape[axis]
    m = _per_channel(multiplier, c, axis, acc.ndim, "multiplier").astype(np.int64)
    s = _per_channel(shift, c, axis, acc.ndim, "shift").astype(np.int64)
    if np.any(s < 1) or np.any(s > MAX_SHIFT):
        raise ShapeError(f"shift must lie in [1, {MAX_SHIFT}], got {np.asarray(shift).tolist()}")
    if np.any(m < (1 << 30)) or np.any(m >= (1 << 31)):
        raise ShapeError("multiplier must lie in [2^30, 2^31)")
    prod = acc.astype(np.int64) * m + (np.int64(1) << (s - 1))
    return np.clip((prod >> s) + int(zero_point), lo, hi)


def requantize_float(acc: np.ndarray, scale: np.ndarray, axis: int, zero_point: int, lo: int,
                     hi: int) -> np.ndarray:
    """``clamp(rint(float32(acc) * scale) + zero_point, lo, hi)`` in float32, half to even (int64)."""
    s = _per_channel(scale, acc.shape[axis], axis, acc.ndim, "scale").astype(np.float32)
    y = np.rint(acc.astype(np.float32) * s)
    y = np.clip(y, np.float32(lo - zero_point), np.float32(hi - zero_point))  # no int overflow
    return y.astype(np.int64) + int(zero_point)


def rounding_shift_reference(x: int, m: int, s: int) -> int:
    """Scalar Python-int model of the fixed-point step (used by tests as an independent oracle)."""
    return (x * m + (1 << (s - 1))) >> s


def quantize_add_multipliers(ratio_a: float, ratio_b: float) -> Tuple[int, int, int]:
    """Fixed-point form ``(Ma, Mb, S)`` of QAdd's rescale ratios ``scale_a/scale_out``, ``scale_b/scale_out``.

    ``S`` is chosen so that the larger multiplier lies in [2^30, 2^31) (as in
    :func:`quantize_multiplier`); the smaller is ``round(ratio * 2^S)`` with the same ``S``.
    """
    big = max(float(ratio_a), float(ratio_b))
    m_big, shift = quantize_multiplier(big)
    shift = min(shift, MAX_SHIFT - 1)  # two products are summed: keep one bit of headroom
    ma = int(round(float(ratio_a) * 2.0 ** shift))
    mb = int(round(float(ratio_b) * 2.0 ** shift))
    if min(ma, mb) < 0 or max(ma, mb) >= 1 << 31:
        raise ConfigError(f"QAdd ratios {ratio_a!r}, {ratio_b!r} cannot be represented")
    return ma, mb, int(shift)
