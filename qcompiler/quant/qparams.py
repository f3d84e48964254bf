"""Scales and zero points from ranges, and quantization of constant tensors (ONNX convention).

``x ~= (q - zero_point) * scale``, ``q = clamp(rint(x / scale) + zero_point)``. Symmetric signed uses
the restricted range [-(2^(b-1)-1), 2^(b-1)-1] and zero point 0; asymmetric ranges are widened to
include 0 so that zero (padding, ReLU) is exactly representable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class QParams:
    """Scale/zero point (shape () or [C] along ``axis``) and the integer range of a quantized tensor."""

    scale: np.ndarray        # float32
    zero_point: np.ndarray   # int32
    qmin: int
    qmax: int
    axis: Optional[int] = None

    @property
    def dtype(self) -> str:
        """The smallest numpy integer type holding [qmin, qmax] (int8/uint8 for up to 8 bits)."""
        for dt in ("int8", "uint8", "int16", "uint16", "int32"):
            info = np.iinfo(dt)
            if info.min <= self.qmin and self.qmax <= info.max:
                return dt
        raise ConfigError(f"no integer dtype holds [{self.qmin}, {self.qmax}]")

    def _bcast(self, arr: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None or arr.ndim == 0:
            return arr
        shape = [1] * ndim
        shape[self.axis] = arr.size
        return arr.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """``clamp(rint(x / scale) + zero_point)`` in the ONNX way (float32 division, half to even)."""
        x = np.asarray(x, np.float32)
        q = np.rint(x / self._bcast(self.scale, x.ndim)) + self._bcast(self.zero_point, x.ndim)
        return np.clip(q, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q)
        d = (q.astype(np.int64) - self._bcast(self.zero_point, q.ndim)).astype(np.float32)
        return d * self._bcast(self.scale, q.ndim)


def int_range(bits: int, signed: bool, symmetric: bool) -> Tuple[int, int]:
    if not 1 <= bits <= 16:
        raise ConfigError(f"bits must be in 1..16, got {bits}")
    if signed:
        half = 1 << (bits - 1)
        return (-(half - 1) if symmetric else -half), half - 1
    return 0, (1 << bits) - 1


def qparams_from_range(lo, hi, bits: int, signed: bool, symmetric: bool,
                       axis: Optional[int] = None) -> QParams:
    """Scale and zero point covering ``[lo, hi]`` (arrays of shape () or [C])."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    qmin, qmax = int_range(bits, signed, symmetric)
    if symmetric:
        if not signed:
            raise ConfigError("symmetric quantization needs a signed range")
        amax = np.maximum(-lo, hi)
        scale = amax / qmax
        zp = np.zeros(np.shape(scale), np.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.rint(qmin - lo / safe), qmin, qmax).astype(np.int32)
    # an all-zero tensor gets scale 1 (any positive scale represents it exactly)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    scale = np.maximum(scale, np.float32(np.finfo(np.float32).tiny))
    return QParams(scale, zp, qmin, qmax, axis if np.ndim(scale) else None)


def weight_qparams(w: np.ndarray, bits: int, per_channel: bool, symmetric: bool, axis: int = 0,
                   method: str = "minmax") -> QParams:
    """QParams for a weight tensor (per output channel along ``axis`` when ``per_channel``)."""
    from .observers import observe

    lo, hi = observe(w, method, axis=axis if per_channel else None, bits=bits)
    return qparams_from_range(lo, hi, bits, signed=True, symmetric=symmetric,
                              axis=axis if per_channel else None)


def activation_qparams(lo, hi, bits: int) -> QParams:
    """Activations: unsigned asymmetric when the range is non-negative, else signed asymmetric."""
    signed = float(np.min(lo)) < 0
    return qparams_from_range(lo, hi, bits, signed=signed, symmetric=False)
