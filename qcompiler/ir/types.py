"""Value-level facts of the IR: dtypes, quantization parameters and packed layouts.

Quantization facts are first-class on values so that every pass and the code generator read them from
one place. Conventions (ONNX): ``x ~= (q - zero_point) * scale``. A 1-bit value with
``QuantInfo.bipolar`` holds codes in {-1, +1} stored as bits (bit 1 = -1, the Larq/LCE convention,
so that ``x . y = n - 2 * popcount(a ^ b)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from ..errors import ConfigError

#: dtypes the IR knows, by their numpy names.
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
          "int64", "uint64", "bool")


def check_dtype(dtype: str) -> str:
    dtype = str(np.dtype(dtype)) if dtype not in DTYPES else dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of the IR dtypes {DTYPES}")
    return dtype


def _as_tuple(a) -> Tuple[float, ...]:
    arr = np.asarray(a).reshape(-1)
    return tuple(arr.tolist())


@dataclass(frozen=True)
class QuantInfo:
    """How a tensor's integers relate to the real numbers they stand for.

    ``scale`` and ``zero_point`` are tuples: one entry for per-tensor, C entries for per-channel along
    ``axis``. ``bipolar`` marks 1-bit {-1,+1} codes (and, for k-bit, the offset-binary weight
    encoding of bitserial kernels).
    """

    bits: int
    signed: bool
    scale: Tuple[float, ...] = (1.0,)
    zero_point: Tuple[int, ...] = (0,)
    axis: Optional[int] = None
    bipolar: bool = False

    def __post_init__(self):
        if not 1 <= self.bits <= 32:
            raise ConfigError(f"QuantInfo.bits must be in 1..32, got {self.bits}")
        object.__setattr__(self, "scale", tuple(float(s) for s in _as_tuple(self.scale)))
        object.__setattr__(self, "zero_point", tuple(int(z) for z in _as_tuple(self.zero_point)))
        if len(self.scale) != len(self.zero_point) and len(self.zero_point) != 1:
            raise ConfigError("QuantInfo.scale and zero_point lengths differ")
        if len(self.scale) > 1 and self.axis is None:
            raise ConfigError("per-channel QuantInfo needs an axis")
        if any(not np.isfinite(s) or s <= 0 for s in self.scale):
            raise ConfigError(f"QuantInfo.scale must be positive and finite, got {self.scale}")

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1

    @property
    def qmin(self) -> int:
        if self.bipolar and self.bits == 1:
            return -1
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        if self.bipolar and self.bits == 1:
            return 1
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def scale_array(self, ndim: int = 0) -> np.ndarray:
        return self._broadcast(np.asarray(self.scale, np.float32), ndim)

    def zero_point_array(self, ndim: int = 0) -> np.ndarray:
        return self._broadcast(np.asarray(self.zero_point, np.int32), ndim)

    def _broadcast(self, arr: np.ndarray, ndim: int) -> np.ndarray:
        if arr.size == 1 or ndim == 0 or self.axis is None:
            return arr.reshape(()) if arr.size == 1 else arr
        shape = [1] * ndim
        shape[self.axis % ndim] = arr.size
        return arr.reshape(shape)

    def describe(self) -> str:
        kind = "bipolar" if self.bipolar else ("s" if self.signed else "u")
        gran = f"per-channel(axis={self.axis})" if self.per_channel else f"scale={self.scale[0]:.4g}"
        zp = "" if not any(self.zero_point) else f" zp={self.zero_point[0] if len(self.zero_point) == 1 else '...'}"
        return f"q{kind}{self.bits} {gran}{zp}"


@dataclass(frozen=True)
class Packing:
    """A bit-packed layout: ``planes`` bit-planes of a tensor packed along ``axis`` into words.

    The packed tensor's shape is the logical shape with ``axis`` replaced by
    ``ceil(n / word_bits)`` and, when ``planes > 1``, a plane axis inserted right before it. Bit ``i``
    of word ``w`` holds logical element ``w * word_bits + i`` (little-endian within the word). Padding
    bits beyond the logical size are 0.
    """

    word_bits: int = 32
    axis: int = 1
    planes: int = 1
    layout: str = "NCHW"
    logical_shape: Tuple[int, ...] = field(default=())

    def __post_init__(self):
        if self.word_bits not in (8, 16, 32, 64):
            raise ConfigError(f"Packing.word_bits must be 8, 16, 32 or 64, got {self.word_bits}")
        if not 1 <= self.planes <= 8:
            raise ConfigError(f"Packing.planes must be in 1..8, got {self.planes}")
        object.__setattr__(self, "logical_shape", tuple(int(d) for d in self.logical_shape))

    @property
    def word_dtype(self) -> str:
        return f"uint{self.word_bits}"

    def packed_shape(self) -> Tuple[int, ...]:
        shape = list(self.logical_shape)
        ax = self.axis % len(shape)
        shape[ax] = -(-shape[ax] // self.word_bits)
        if self.planes > 1:
            shape.insert(ax, self.planes)
        return tuple(shape)

    def describe(self) -> str:
        return f"packed[{self.layout} axis={self.axis} w{self.word_bits} planes={self.planes}]"
