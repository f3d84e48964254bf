"""ONNX quantization ops: QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul,
ConvInteger, MatMulInteger (ONNX semantics, every opset 10..25 variant that the IR's dtypes hold).

IR attributes (the frontend normaliser ``frontend/normalize.py`` fills them; passes that build these
nodes give them explicitly):

* QuantizeLinear(x, scale, zero_point?) / DequantizeLinear(x, scale, zero_point?): ``axis``
  (non-negative), ``block_size`` (0 = per-tensor/per-axis), ``output_dtype`` (numpy dtype name:
  QuantizeLinear int8/uint8/int16/uint16; DequantizeLinear float32/float16, default the scale's),
  QuantizeLinear also ``precision`` ("" or the float dtype the division runs in, opset 23).
  QuantizeLinear: ``y = saturate(rint(x / scale) + zero_point)`` (division in the promoted dtype of
  x and scale, round half to even). DequantizeLinear: ``y = float(x - zero_point) * scale``; the
  subtraction is exact in integers (as onnxruntime does it), then one rounding to the scale's dtype
  and one for the product.
* QLinearConv / ConvInteger: ``group``, ``kernel_shape``, ``strides``, ``pads`` (begin..., end...),
  ``dilations`` (``auto_pad`` resolved at import). 1-D to 3-D convolutions.
* QLinearConv / QLinearMatMul requantize as onnxruntime does: the output multiplier is computed in
  float32 as ``(x_scale * w_scale[o]) / y_scale``, then ``y = saturate(rint(float32(acc) * m) + y_zp)``
  (``requant.requantize_float``; the same arithmetic as the ``"float"`` requant mode of QConv2d /
  QDense, so folding one into the other is exact). ONNX's own numpy reference multiplies in float64;
  the two differ only where ``acc * m`` lies within float32 rounding of a .5 tie.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import ModelError, ShapeError, UnsupportedError
from ..registry import op
from .intmath import conv_output_shape, int_conv, int_matmul
from .requant import requantize_float

QUANT_DTYPES = ("int8", "uint8", "int16", "uint16")
DEQUANT_INPUT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32")
FLOAT_DTYPES = ("float32", "float16")


def broadcast_param(param: np.ndarray, shape: tuple, axis: int, block_size: int, what: str) -> np.ndarray:
    """Scale/zero point as an array broadcastable to ``shape``: per-tensor, per-axis or blocked."""
    param = np.asarray(param)
    if param.size == 1 and not block_size:
        return param.reshape(())
    rank = len(shape)
    if not 0 <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    if not block_size:
        if param.ndim != 1 or param.shape[0] != shape[axis]:
            raise ShapeError(f"{what} must be a scalar or have {shape[axis]} entries (axis {axis}), got "
                             f"shape {list(param.shape)}")
        dims = [1] * rank
        dims[axis] = param.shape[0]
        return param.reshape(dims)
    if block_size < 0:
        raise ShapeError(f"block_size must be positive, got {block_size}")
    blocks = -(-shape[axis] // block_size)
    expect = tuple(blocks if i == axis else d for i, d in enumerate(shape))
    if param.shape != expect:
        raise ShapeError(f"blocked {what} must have shape {list(expect)} (block_size {block_size} on axis "
                         f"{axis}), got {list(param.shape)}")
    return np.repeat(param, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)


def _axis(attrs: dict, rank: int) -> int:
    axis = int(attrs.get("axis", 1))
    return axis + rank if axis < 0 else axis


@op("QuantizeLinear")
def quantize_linear(inputs, attrs):
    """``y = saturate(rint(x / scale) + zero_point)``."""
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    out = attrs.get("output_dtype") or (str(zp.dtype) if zp is not None else "uint8")
    if out not in QUANT_DTYPES:
        raise UnsupportedError(f"QuantizeLinear output dtype {out} is not supported ({'/'.join(QUANT_DTYPES)})")
    if zp is not None and str(zp.dtype) != out:
        raise ModelError(f"zero point dtype {zp.dtype} differs from the output dtype {out}")
    if x.dtype.kind not in "fi":
        raise ShapeError(f"QuantizeLinear input must be float or int32, got {x.dtype}")
    axis, block = _axis(attrs, x.ndim), int(attrs.get("block_size", 0) or 0)
    s = broadcast_param(scale, x.shape, axis, block, "scale")
    precision = attrs.get("precision") or ""
    if precision:  # opset 23: the division runs in this float type
        if precision not in FLOAT_DTYPES:
            raise UnsupportedError(f"QuantizeLinear precision {precision} is not supported")
        x, s = x.astype(precision), s.astype(precision)
    y = np.rint(x / s)
    info = np.iinfo(out)
    if zp is None:
        q = np.clip(y, info.min, info.max)
        return [np.nan_to_num(q).astype(out)]
    z = broadcast_param(zp, x.shape, axis, block, "zero point").astype(np.int64)
    # clamp before the integer conversion, so huge values saturate instead of wrapping
    q = np.clip(np.nan_to_num(y), info.min - z - 1, info.max - z + 1).astype(np.int64) + z
    return [np.clip(q, info.min, info.max).astype(out)]


@op("DequantizeLinear")
def dequantize_linear(inputs, attrs):
    """``y = float(x - zero_point) * scale``."""
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    if str(x.dtype) not in DEQUANT_INPUT_DTYPES:
        raise UnsupportedError(f"DequantizeLinear input dtype {x.dtype} is not supported "
                               f"({'/'.join(DEQUANT_INPUT_DTYPES)})")
    if str(scale.dtype) not in FLOAT_DTYPES:
        raise UnsupportedError(f"DequantizeLinear scale dtype {scale.dtype} is not supported")
    if zp is not None and zp.dtype != x.dtype:
        raise ModelError(f"zero point dtype {zp.dtype} differs from the input dtype {x.dtype}")
    out = attrs.get("output_dtype") or str(scale.dtype)
    axis, block = _axis(attrs, x.ndim), int(attrs.get("block_size", 0) or 0)
    s = broadcast_param(scale, x.shape, axis, block, "scale")
    d = x.astype(np.int64)
    if zp is not None:
        d = d - broadcast_param(zp, x.shape, axis, block, "zero point").astype(np.int64)
    return [(d.astype(s.dtype) * s).astype(out)]


# -- integer conv / matmul --------------------------------------------------------------------------

def _conv_attrs(attrs: dict, nd: int):
    def ints(name, default):
        v = attrs.get(name) or default
        return tuple(int(a) for a in v)

    return (ints("strides", (1,) * nd), ints("pads", (0,) * (2 * nd)), ints("dilations", (1,) * nd),
            int(attrs.get("group", 1)))


def _per_out_channel(param: Optional[np.ndarray], o: int, what: str) -> np.ndarray:
    """A scalar or [O] parameter as int64/float [O]."""
    if param is None:
        return np.zeros(o, np.int64)
    p = np.asarray(param).reshape(-1)
    if p.size == 1:
        return np.repeat(p, o)
    if p.size != o:
        raise ShapeError(f"{what} must be a scalar or have {o} entries (one per output channel), got {p.size}")
    return p


def _scalar(param: Optional[np.ndarray], what: str) -> int:
    if param is None:
        return 0
    p = np.asarray(param)
    if p.size != 1:
        raise UnsupportedError(f"{what} must be a scalar (per-tensor), got shape {list(p.shape)}")
    return int(p.reshape(-1)[0])


def _int_input(arr: np.ndarray, what: str) -> None:
    if str(arr.dtype) not in ("int8", "uint8"):
        raise ShapeError(f"{what} must be int8 or uint8, got {arr.dtype}")


def _conv_acc(x, w, x_zp, w_zp, attrs) -> np.ndarray:
    """int64 ``sum (x - x_zp)(w - w_zp[o])`` with zero padding of ``x - x_zp``."""
    _int_input(x, "x")
    _int_input(w, "w")
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ShapeError(f"conv needs x [N, C, ...] and w [O, C/group, ...] of equal rank, got "
                         f"{list(x.shape)} and {list(w.shape)}")
    strides, pads, dil, group = _conv_attrs(attrs, x.ndim - 2)
    wz = _per_out_channel(w_zp, w.shape[0], "w_zero_point").astype(np.int64)
    wd = w.astype(np.int64) - wz.reshape((-1,) + (1,) * (w.ndim - 1))
    xd = x.astype(np.int64) - _scalar(x_zp, "x_zero_point")
    return int_conv(xd, wd, strides, pads, dil, group, pad_value=0)


def _conv_infer_shape(x_shape, w_shape, attrs) -> tuple:
    nd = len(x_shape) - 2
    strides, pads, dil, group = _conv_attrs(attrs, nd)
    if len(w_shape) != len(x_shape) or x_shape[1] != w_shape[1] * group or w_shape[0] % group:
        raise ShapeError(f"x {list(x_shape)} and w {list(w_shape)} do not fit group={group}")
    return (x_shape[0], w_shape[0]) + conv_output_shape(x_shape[2:], w_shape[2:], strides, pads, dil)


def _int32(acc: np.ndarray, what: str) -> np.ndarray:
    if acc.size and (acc.min() < -(1 << 31) or acc.max() >= 1 << 31):
        raise ShapeError(f"{what}: the int32 accumulator overflows")
    return acc.astype(np.int32)


def _infer_conv_integer(inputs, attrs):
    return [(_conv_infer_shape(inputs[0][0], inputs[1][0], attrs), "int32")]


@op("ConvInteger", infer=_infer_conv_integer)
def conv_integer(inputs, attrs):
    """int32 ``conv(x - x_zero_point, w - w_zero_point)``."""
    x, w = inputs[0], inputs[1]
    x_zp = inputs[2] if len(inputs) > 2 else None
    w_zp = inputs[3] if len(inputs) > 3 else None
    return [_int32(_conv_acc(x, w, x_zp, w_zp, attrs), "ConvInteger")]


def output_multiplier(x_scale, w_scale, y_scale, channels: int) -> np.ndarray:
    """float32 ``(x_scale * w_scale[o]) / y_scale`` per output channel, as onnxruntime computes it."""
    xs = np.float32(np.asarray(x_scale, np.float32).reshape(-1)[0])
    ys = np.float32(np.asarray(y_scale, np.float32).reshape(-1)[0])
    ws = _per_out_channel(np.asarray(w_scale, np.float32), channels, "w_scale").astype(np.float32)
    return ((xs * ws) / ys).astype(np.float32)


def _out_dtype(y_zp: np.ndarray, what: str) -> str:
    if str(y_zp.dtype) not in ("int8", "uint8"):
        raise ShapeError(f"{what} y_zero_point must be int8 or uint8, got {y_zp.dtype}")
    return str(y_zp.dtype)


def _infer_qlinear_conv(inputs, attrs):
    return [(_conv_infer_shape(inputs[0][0], inputs[3][0], attrs), inputs[7][1])]


@op("QLinearConv", infer=_infer_qlinear_conv)
def qlinear_conv(inputs, attrs):
    """Integer conv requantized with the float32 multiplier ``x_scale * w_scale / y_scale``."""
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = inputs[:8]
    bias = inputs[8] if len(inputs) > 8 else None
    out = _out_dtype(y_zp, "QLinearConv")
    for s in (x_scale, y_scale):
        if np.asarray(s).size != 1:
            raise UnsupportedError("QLinearConv x_scale and y_scale must be scalars")
    acc = _conv_acc(x, w, x_zp, w_zp, attrs)
    o = w.shape[0]
    if bias is not None:
        if str(bias.dtype) != "int32" or bias.shape != (o,):
            raise ShapeError(f"QLinearConv bias must be int32[{o}], got {bias.dtype}{list(bias.shape)}")
        acc = acc + bias.astype(np.int64).reshape((1, o) + (1,) * (acc.ndim - 2))
    acc = _int32(acc, "QLinearConv").astype(np.int64)
    info = np.iinfo(out)
    m = output_multiplier(x_scale, w_scale, y_scale, o)
    y = requantize_float(acc, m, 1, _scalar(y_zp, "y_zero_point"), info.min, info.max)
    return [y.astype(out)]


def _row_col(param: Optional[np.ndarray], a_shape: tuple, axis_from_end: int, what: str) -> np.ndarray:
    """Per-tensor, per-row (a: axis -2) or per-column (b: axis -1) parameter, broadcastable."""
    if param is None:
        return np.zeros((), np.int64)
    p = np.asarray(param)
    if p.size == 1:
        return p.reshape(())
    n = a_shape[axis_from_end]
    if p.ndim == 1 and p.size == n:
        return p.reshape((n, 1) if axis_from_end == -2 else (1, n))
    if p.ndim == len(a_shape):  # e.g. [D, M, 1] for N-d per-row parameters
        return p
    raise ShapeError(f"{what} must be a scalar or have {n} entries, got shape {list(p.shape)}")


def _matmul_acc(a, b, a_zp, b_zp) -> np.ndarray:
    _int_input(a, "A")
    _int_input(b, "B")
    if a.ndim < 1 or b.ndim < 1:
        raise ShapeError("MatMul inputs must have rank >= 1")
    a2 = a if a.ndim > 1 else a[None, :]
    b2 = b if b.ndim > 1 else b[:, None]
    ad = a2.astype(np.int64) - _row_col(a_zp, a2.shape, -2, "a_zero_point").astype(np.int64)
    bd = b2.astype(np.int64) - _row_col(b_zp, b2.shape, -1, "b_zero_point").astype(np.int64)
    acc = int_matmul(ad, bd)
    if a.ndim == 1:
        acc = acc[..., 0, :]
    if b.ndim == 1:
        acc = acc[..., 0]
    return acc


@op("MatMulInteger")
def matmul_integer(inputs, attrs):
    """int32 ``(A - a_zero_point) @ (B - b_zero_point)``; zero points per tensor, row (A) or column (B)."""
    a, b = inputs[0], inputs[1]
    a_zp = inputs[2] if len(inputs) > 2 else None
    b_zp = inputs[3] if len(inputs) > 3 else None
    return [_int32(_matmul_acc(a, b, a_zp, b_zp), "MatMulInteger")]


@op("QLinearMatMul")
def qlinear_matmul(inputs, attrs):
    """Integer matmul requantized with the float32 multiplier ``a_scale * b_scale / y_scale``."""
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = inputs[:8]
    out = _out_dtype(y_zp, "QLinearMatMul")
    acc = _int32(_matmul_acc(a, b, a_zp, b_zp), "QLinearMatMul").astype(np.int64)
    a2 = a.shape if a.ndim > 1 else (1,) + a.shape
    b2 = b.shape if b.ndim > 1 else b.shape + (1,)
    sa = _row_col(np.asarray(a_scale, np.float32), a2, -2, "a_scale").astype(np.float32)
    sb = _row_col(np.asarray(b_scale, np.float32), b2, -1, "b_scale").astype(np.float32)
    if a.ndim == 1 and sa.ndim:
        sa = sa[..., 0, :]
    if b.ndim == 1 and sb.ndim:
        sb = sb[..., 0]
    if np.asarray(y_scale).size != 1 or np.asarray(y_zp).size != 1:
        raise UnsupportedError("QLinearMatMul y_scale and y_zero_point must be scalars")
    m = ((sa * sb) / np.float32(np.asarray(y_scale).reshape(-1)[0])).astype(np.float32)
    zp = _scalar(y_zp, "y_zero_point")
    info = np.iinfo(out)
    y = np.rint(acc.astype(np.float32) * m)
    y = np.clip(y, np.float32(info.min - zp), np.float32(info.max - zp)).astype(np.int64) + zp
    return [y.astype(out)]
