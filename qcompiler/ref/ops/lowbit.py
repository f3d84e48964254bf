"""Quantized and bit-packed IR ops that qcompiler's passes introduce (they are not ONNX ops).

This docstring is the contract between the quantization passes (which build these nodes), the
reference executor (the functions below: the meaning) and the kernels in ``schedules/`` (which must
match the functions below bit for bit).

Bit packing
-----------
* Words are ``uint{word_bits}`` with ``word_bits`` in {8, 16, 32, 64}. Logical element ``c`` of the
  packed axis lives in word ``c // word_bits`` at bit ``c % word_bits`` (LSB first). Bits past the
  logical length are 0.
* Binary ("sign") codes: **bit 1 means -1, bit 0 means +1** (the Larq/LCE convention), so for
  n valid elements ``dot(x, y) = n - 2 * popcount(x ^ y)`` (padding bits are 0 in both operands and
  never count).
* Layouts: 4-D activations are packed NHWC along C: ``[N, H, W, ceil(C/wb)]``; 2-D ones ``[M, ceil(K/wb)]``.
  Conv weights ``[O, KH, KW, ceil((C/groups)/wb)]``; dense weights ``[N, ceil(K/wb)]``.
* k-bit unsigned (bitserial) tensors carry a plane axis right before the packed axis:
  ``[N, H, W, k, Cw]`` or ``[M, k, Kw]``; plane ``i`` holds bit ``i`` of the unsigned code
  (value = sum_i 2^i * plane_i).

Epilogues (attribute ``out`` of every conv/dense op below; extra inputs follow the weights)
--------------------------------------------------------------------------------------------
``acc`` is the exact int32 accumulator of the op. Non-packed outputs are NCHW (conv) or [M, N].
* ``"int32"``: ``y = acc``. No extra inputs.
* ``"float"``: extra inputs ``scale: float32[O]``, ``bias: float32[O]``;
  ``y = float32(acc) * scale[o] + bias[o]`` computed in float32 (multiply, then add; no FMA).
  Fused residual add (BinaryConv2d / BitserialConv2d only, built by ``passes/fuse_residual.py``):
  with attr ``residual=1`` a third extra input ``residual: float32`` of the output's shape (NCHW)
  follows, and ``y = (float32(acc) * scale[o] + bias[o]) + residual`` -- the unfused graph's
  epilogue then its float ``Add``, each step rounded to float32 in that order (no FMA), so the
  fused node is bit-identical to the unfused pair.
* ``"int8"`` / ``"uint8"``: requantization; attrs ``out_zero_point``, ``out_min``, ``out_max``
  (the clamp range, which also fuses ReLU/ReLU6) and ``requant``:
    - ``"fixed_point"`` (integer-only): extra inputs ``multiplier: int32[O]`` (in [2^30, 2^31)) and
      ``shift: int32[O]`` (total right shift S >= 1):
      ``y = clamp(((int64(acc) * multiplier[o] + 2^(S-1)) >> S) + out_zero_point)``, ``>>`` an
      arithmetic (flooring) shift, i.e. round half toward +inf.
    - ``"float"`` (what onnxruntime does, used for imported QLinear/QDQ models): extra input
      ``scale: float32[O]``; ``y = clamp(rint(float32(acc) * scale[o]) + out_zero_point)``,
      float32 multiply, ``rint`` = round half to even.
* ``"packed"`` (fused sign + bitpack for the next binary layer): extra inputs
  ``threshold: int32[O]``, ``flip: uint8[O]``; bit ``o`` (code -1) is
  ``acc > threshold[o]`` if ``flip[o]`` else ``acc < threshold[o]``; output packed along O with
  attr ``out_word_bits`` (NHWC ``[N, OH, OW, ceil(O/wb)]`` or ``[M, ceil(N/wb)]``).

Ops
---
``QConv2d(x, w, bias?, *epilogue)``: integer conv. x uint8/int8 NCHW, w int8 ``[O, C/g, KH, KW]``,
bias int32[O] or absent. attrs: strides, pads (ONNX order [top, left, bottom, right]), dilations,
groups, x_zero_point (int), w_zero_point (int), out (+ epilogue attrs).
``acc = sum (x - x_zero_point) * (w - w_zero_point) + bias``; padded pixels are real zero (x = zp).

``QDense(x, w, bias?, *epilogue)``: x uint8/int8 ``[M, K]``, w int8 ``[N, K]``, bias int32[N];
attrs x_zero_point, w_zero_point, out (+ epilogue attrs).

``BitPack(x, threshold?)``: attrs mode, word_bits, and bits (mode "unsigned").
* mode ``"sign"``: x float32/int NCHW or [M, K]; bit = ``x < threshold[c]`` (threshold float32[C],
  default 0, so ``x >= 0 -> +1``, the STE convention). Output packed as above (4-D becomes NHWC).
* mode ``"unsigned"``: x integer in ``[0, 2^bits)``; output ``bits`` planes as above.

``BitUnpack(x)``: the inverse of BitPack: attrs mode, channels (logical size of the packed axis),
bits; "sign" gives float32 +-1 in NCHW / [M, K]; "unsigned" gives int32 codes.

``BinaryConv2d(x, w, *epilogue)``: x packed NHWC sign codes, w packed sign weights. attrs:
in_channels, groups, kernel_shape, strides, pads [t, l, b, r], dilations, pad_value in {0, 1, -1}
(the real value of padded pixels: 0 is the float conv's zero padding, which the kernels reproduce
with a correction term; 1 is "one padding", free in the bit domain), out (+ epilogue attrs).
``acc[n, o, oh, ow] = sum over taps and channels of x * w`` with x, w in {-1, +1}.

``BinaryDense(x, w, *epilogue)``: x ``[M, Kw]``, w ``[N, Kw]``; attrs in_features, out.

``BitserialConv2d(x, w, *epilogue)`` / ``BitserialDense(x, w, *epilogue)``: x unsigned k-bit planes
(``act_bits`` planes), w ``weight_bits`` planes of unsigned codes u, decoded as
``w = w_mult * u - w_offset`` (unsigned: 1, 0; offset/ternary: 1, 2^(B-1) or 1; bipolar: 2,
2^B - 1). Conv padding is activation code 0. Same attrs as the binary ops plus act_bits,
weight_bits, w_mult, w_offset. The kernels compute
``acc = w_mult * sum_ij 2^(i+j) popcount(x_i & u_j) - w_offset * sum_i 2^i popcount(x_i)``.

``PackedMaxPool(x)``: max pool of sign codes packed NHWC: a pooled code is -1 only if every tap is
-1, i.e. the bitwise AND of the words over the window. attrs kernel_shape, strides, pads,
dilations; padded taps do not take part (ONNX MaxPool semantics).
``QAdd(a, b)``: int8/uint8 residual add of two quantized tensors (numpy broadcasting). attrs
a_zero_point, b_zero_point, out ("int8"/"uint8"), out_zero_point, out_min, out_max and requant:
* ``"fixed_point"`` (integer-only): attrs a_multiplier, b_multiplier (ints in [0, 2^31)), shift
  (S in [1, 62]); ``y = clamp((((a - za) * Ma + (b - zb) * Mb + 2^(S-1)) >> S) + out_zero_point)``
  in int64, ``>>`` flooring (built by ``requant.quantize_add_multipliers`` from
  ``scale_a / scale_out`` and ``scale_b / scale_out``).
* ``"float"`` (the ONNX meaning of DequantizeLinear, DequantizeLinear -> Add -> QuantizeLinear, and
  onnxruntime's scalar QLinearAdd): attrs a_scale, b_scale, out_scale; in float32,
  ``y = clamp(rint((a_scale * (a - za) + b_scale * (b - zb)) / out_scale) + out_zero_point)``
  (each product rounded to float32, then the sum, then the division; no FMA; rint half to even).

Notes on the reference (added with the implementation)
------------------------------------------------------
* Per-channel epilogue inputs (scale, bias, multiplier, shift, threshold, flip) have exactly ``[O]``
  entries. An accumulator that does not fit int32 is an error (the passes must prevent it).
* BitPack "unsigned" codes outside ``[0, 2^bits)`` are an error, not wrapped.
* Helpers: ``qcompiler.ref.ops.bits`` packs/unpacks numpy arrays in these layouts (passes pre-pack
  weights with it); ``qcompiler.ref.ops.requant`` holds the requantization arithmetic and
  ``quantize_multiplier`` (real multiplier -> (M, S)).
"""

from __future__ import annotations  # noqa: E402

from typing import List, Optional, Sequence, Tuple  # noqa: E402

import numpy as np  # noqa: E402

from ...errors import ModelError, QCompilerError, ShapeError, UnsupportedError  # noqa: E402
from ..registry import op  # noqa: E402
from .bits import (n_words, pack_bits, pack_planes, pack_sign, unpack_planes, unpack_sign,  # noqa: E402
                   word_bits_of, word_dtype)
from .intmath import conv_nd, conv_output_shape, int_conv, int_matmul  # noqa: E402
from .requant import requantize_fixed_point, requantize_float  # noqa: E402

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

#: number of extra inputs each epilogue takes (after the op's own inputs)
EPILOGUE_INPUTS = {"int32": 0, "float": 2, "packed": 2}
REQUANT_INPUTS = {"fixed_point": 2, "float": 1}


# -- attributes ------------------------------------------------------------------------------------

def _attr(attrs: dict, name: str):
    try:
        return attrs[name]
    except KeyError:
        raise ModelError(f"missing attribute {name!r}") from None


def _ints(attrs: dict, name: str, n: int) -> Tuple[int, ...]:
    v = tuple(int(a) for a in _attr(attrs, name))
    if len(v) != n:
        raise ModelError(f"attribute {name!r} must have {n} entries, got {list(v)}")
    return v


def _conv_geometry(attrs: dict) -> Tuple[tuple, tuple, tuple]:
    return _ints(attrs, "strides", 2), _ints(attrs, "pads", 4), _ints(attrs, "dilations", 2)


def _check_dtype(arr: np.ndarray, allowed: Sequence[str], what: str) -> None:
    if str(arr.dtype) not in allowed:
        raise ShapeError(f"{what} must be {'/'.join(allowed)}, got {arr.dtype}")


# -- epilogues -------------------------------------------------------------------------------------

def epilogue_arity(attrs: dict) -> int:
    """How many extra inputs the node's ``out`` epilogue takes."""
    out = _attr(attrs, "out")
    if int(attrs.get("residual", 0)):
        if out != "float":
            raise UnsupportedError(f"residual=1 needs the float epilogue, got out={out!r}")
        return EPILOGUE_INPUTS["float"] + 1
    if out in EPILOGUE_INPUTS:
        return EPILOGUE_INPUTS[out]
    if out in ("int8", "uint8"):
        mode = _attr(attrs, "requant")
        if mode not in REQUANT_INPUTS:
            raise UnsupportedError(f"requant must be one of {sorted(REQUANT_INPUTS)}, got {mode!r}")
        return REQUANT_INPUTS[mode]
    raise UnsupportedError(f"out must be one of int32/float/int8/uint8/packed, got {out!r}")


#: ops whose float epilogue takes the fused residual input (attr ``residual``)
RESIDUAL_OPS = ("BinaryConv2d", "BitserialConv2d")


def _no_residual(attrs: dict, opname: str) -> None:
    if int(attrs.get("residual", 0)):
        raise UnsupportedError(f"{opname}: the fused residual epilogue (residual=1) is defined for "
                               f"{'/'.join(RESIDUAL_OPS)} only")


def _epilogue_args(inputs: List[Optional[np.ndarray]], start: int, attrs: dict) -> List[np.ndarray]:
    k = epilogue_arity(attrs)
    extra = list(inputs[start:])
    if len(extra) != k or any(e is None for e in extra):
        raise ModelError(f"epilogue out={attrs['out']!r} takes {k} extra input(s), got {len(extra)}")
    return extra


def _acc_int32(acc: np.ndarray) -> np.ndarray:
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise QCompilerError(f"the accumulator overflows int32 (range [{acc.min()}, {acc.max()}])")
    return acc


def _clamp_range(attrs: dict, dtype: str) -> Tuple[int, int, int]:
    info = np.iinfo(dtype)
    zp, lo, hi = int(_attr(attrs, "out_zero_point")), int(_attr(attrs, "out_min")), int(_attr(attrs, "out_max"))
    if not info.min <= lo <= hi <= info.max:
        raise ModelError(f"clamp range [{lo}, {hi}] is not inside {dtype}'s range")
    if not info.min <= zp <= info.max:
        raise ModelError(f"out_zero_point {zp} is outside {dtype}'s range")
    return zp, lo, hi


def apply_epilogue(acc: np.ndarray, extra: List[np.ndarray], attrs: dict) -> np.ndarray:
    """The ``out`` epilogue on an int64 accumulator (NCHW or [M, N], channels on axis 1)."""
    acc = _acc_int32(acc)
    out = attrs["out"]
    channels = acc.shape[1]
    if out == "int32":
        return acc.astype(np.int32)
    if out == "float":
        scale, bias = (np.asarray(e) for e in extra[:2])
        for name, arr in (("scale", scale), ("bias", bias)):
            _check_dtype(arr, ("float32",), f"epilogue {name}")
            if arr.shape != (channels,):
                raise ShapeError(f"epilogue {name} must have shape [{channels}], got {list(arr.shape)}")
        shape = (1, channels) + (1,) * (acc.ndim - 2)
        y = acc.astype(np.float32) * scale.reshape(shape)
        y = (y + bias.reshape(shape)).astype(np.float32)
        if len(extra) == 3:  # fused residual add, after the epilogue's rounding (see the contract)
            res = np.asarray(extra[2])
            _check_dtype(res, ("float32",), "epilogue residual")
            if res.shape != acc.shape:
                raise ShapeError(f"epilogue residual must have the output's shape {list(acc.shape)}, "
                                 f"got {list(res.shape)}")
            y = (y + res).astype(np.float32)
        return y
    if out in ("int8", "uint8"):
        zp, lo, hi = _clamp_range(attrs, out)
        if attrs["requant"] == "fixed_point":
            mult, shift = extra
            _check_dtype(mult, ("int32",), "multiplier")
            _check_dtype(shift, ("int32",), "shift")
            y = requantize_fixed_point(acc, mult, shift, 1, zp, lo, hi)
        else:
            (scale,) = extra
            _check_dtype(scale, ("float32",), "requant scale")
            y = requantize_float(acc, scale, 1, zp, lo, hi)
        return y.astype(out)
    # packed: fused sign + bitpack along the output channels
    threshold, flip = extra
    _check_dtype(threshold, ("int32",), "threshold")
    _check_dtype(flip, ("uint8",), "flip")
    for name, arr in (("threshold", threshold), ("flip", flip)):
        if arr.shape != (channels,):
            raise ShapeError(f"{name} must have shape [{channels}], got {list(arr.shape)}")
    shape = (1, channels) + (1,) * (acc.ndim - 2)
    t = threshold.astype(np.int64).reshape(shape)
    bits = np.where(flip.reshape(shape) != 0, acc > t, acc < t)
    if bits.ndim == 4:
        bits = np.transpose(bits, (0, 2, 3, 1))
    return pack_bits(bits, int(_attr(attrs, "out_word_bits")))


def epilogue_type(logical_shape: tuple, attrs: dict) -> Tuple[tuple, str]:
    """(shape, dtype) of the epilogue's output for an accumulator of ``logical_shape``."""
    out = _attr(attrs, "out")
    epilogue_arity(attrs)
    if out == "packed":
        wb = int(_attr(attrs, "out_word_bits"))
        dt = str(word_dtype(wb))
        c = logical_shape[1]
        if len(logical_shape) == 4:
            n, _, h, w = logical_shape
            return (n, h, w, n_words(c, wb)), dt
        return (logical_shape[0], n_words(c, wb)), dt
    return tuple(logical_shape), {"int32": "int32", "float": "float32"}.get(out, out)


# -- integer conv / dense --------------------------------------------------------------------------

def _int_operand_check(x: np.ndarray, w: np.ndarray, bias: Optional[np.ndarray], o: int) -> None:
    _check_dtype(x, ("uint8", "int8"), "x")
    _check_dtype(w, ("int8",), "w")
    if bias is not None:
        _check_dtype(bias, ("int32",), "bias")
        if bias.shape != (o,):
            raise ShapeError(f"bias must have shape [{o}], got {list(bias.shape)}")


def _qconv_shape(x_shape, w_shape, attrs) -> tuple:
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ShapeError(f"QConv2d needs 4-D x and w, got {list(x_shape)} and {list(w_shape)}")
    groups = int(_attr(attrs, "groups"))
    n, c, h, w = x_shape
    o, cg, kh, kw = w_shape
    if groups < 1 or c % groups or o % groups or c // groups != cg:
        raise ShapeError(f"x has {c} channels and w {o}x{cg}: does not fit groups={groups}")
    strides, pads, dil = _conv_geometry(attrs)
    oh, ow = conv_output_shape((h, w), (kh, kw), strides, pads, dil)
    return (n, o, oh, ow)


def _infer_qconv(inputs, attrs):
    (xs, _, _), (ws, _, _) = inputs[0], inputs[1]
    return [epilogue_type(_qconv_shape(xs, ws, attrs), attrs)]


@op("QConv2d", infer=_infer_qconv)
def qconv2d(inputs, attrs):
    """Integer conv with an epilogue (see the module docstring)."""
    _no_residual(attrs, "QConv2d")
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    _qconv_shape(x.shape, w.shape, attrs)
    _int_operand_check(x, w, bias, w.shape[0])
    strides, pads, dil = _conv_geometry(attrs)
    xz, wz = int(_attr(attrs, "x_zero_point")), int(_attr(attrs, "w_zero_point"))
    acc = int_conv(x.astype(np.int64) - xz, w.astype(np.int64) - wz, strides, pads, dil,
                   int(attrs["groups"]), pad_value=0)
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(1, -1, 1, 1)
    return [apply_epilogue(acc, _epilogue_args(inputs, 3, attrs), attrs)]


def _qdense_shape(x_shape, w_shape) -> tuple:
    if len(x_shape) != 2 or len(w_shape) != 2 or x_shape[1] != w_shape[1]:
        raise ShapeError(f"QDense needs x [M, K] and w [N, K], got {list(x_shape)} and {list(w_shape)}")
    return (x_shape[0], w_shape[0])


def _infer_qdense(inputs, attrs):
    return [epilogue_type(_qdense_shape(inputs[0][0], inputs[1][0]), attrs)]


@op("QDense", infer=_infer_qdense)
def qdense(inputs, attrs):
    """Integer dense ``x @ w.T`` with an epilogue."""
    _no_residual(attrs, "QDense")
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    _qdense_shape(x.shape, w.shape)
    _int_operand_check(x, w, bias, w.shape[0])
    xz, wz = int(_attr(attrs, "x_zero_point")), int(_attr(attrs, "w_zero_point"))
    acc = int_matmul(x.astype(np.int64) - xz, (w.astype(np.int64) - wz).T)
    if bias is not None:
        acc = acc + bias.astype(np.int64)[None, :]
    return [apply_epilogue(acc, _epilogue_args(inputs, 3, attrs), attrs)]


# -- bit packing -----------------------------------------------------------------------------------

@op("BitPack")
def bitpack(inputs, attrs):
    """Sign or bit-plane packing of an NCHW / [M, K] tensor."""
    x = inputs[0]
    threshold = inputs[1] if len(inputs) > 1 else None
    mode = _attr(attrs, "mode")
    wb = int(_attr(attrs, "word_bits"))
    word_dtype(wb)
    if x.ndim not in (2, 4):
        raise ShapeError(f"BitPack needs a 4-D NCHW or 2-D [M, K] tensor, got {list(x.shape)}")
    if mode == "sign":
        if threshold is not None:
            _check_dtype(threshold, ("float32",), "threshold")
        if x.dtype.kind not in "fiu":
            raise ShapeError(f"BitPack sign needs a float or integer tensor, got {x.dtype}")
        return [pack_sign(x, wb, threshold)]
    if mode == "unsigned":
        if threshold is not None:
            raise ModelError("BitPack mode 'unsigned' takes no threshold")
        if x.dtype.kind not in "iu":
            raise ShapeError(f"BitPack unsigned needs integer codes, got {x.dtype}")
        return [pack_planes(x, int(_attr(attrs, "bits")), wb)]
    raise UnsupportedError(f"BitPack mode must be 'sign' or 'unsigned', got {mode!r}")


@op("BitUnpack")
def bitunpack(inputs, attrs):
    """Inverse of BitPack: float32 +-1 (sign) or int32 codes (unsigned), NCHW / [M, K]."""
    x = inputs[0]
    word_bits_of(x.dtype)
    mode = _attr(attrs, "mode")
    channels = int(_attr(attrs, "channels"))
    if mode == "sign":
        if x.ndim not in (2, 4):
            raise ShapeError(f"BitUnpack sign needs [N, H, W, Cw] or [M, Kw] words, got {list(x.shape)}")
        return [unpack_sign(x, channels)]
    if mode == "unsigned":
        bits = int(_attr(attrs, "bits"))
        if x.ndim not in (3, 5) or x.shape[-2] != bits:
            raise ShapeError(f"BitUnpack unsigned needs [N, H, W, {bits}, Cw] or [M, {bits}, Kw] words, "
                             f"got {list(x.shape)}")
        return [unpack_planes(x, channels)]
    raise UnsupportedError(f"BitUnpack mode must be 'sign' or 'unsigned', got {mode!r}")


# -- binary and bitserial conv / dense ------------------------------------------------------------

def _packed_conv_shape(x_shape, w_shape, attrs, planes: Optional[Tuple[int, int]]) -> tuple:
    """Logical NCHW output shape of a packed conv; checks the packed input/weight shapes."""
    xr, wr = (5, 5) if planes else (4, 4)
    if len(x_shape) != xr or len(w_shape) != wr:
        raise ShapeError(f"packed conv needs {xr}-D x and {wr}-D w, got {list(x_shape)} and {list(w_shape)}")
    c = int(_attr(attrs, "in_channels"))
    groups = int(_attr(attrs, "groups"))
    kh, kw = _ints(attrs, "kernel_shape", 2)
    n, h, w = x_shape[:3]
    o = w_shape[0]
    if groups < 1 or c % groups or o % groups:
        raise ShapeError(f"in_channels {c} and {o} output channels do not fit groups={groups}")
    if tuple(w_shape[1:3]) != (kh, kw):
        raise ShapeError(f"weights have taps {list(w_shape[1:3])}, kernel_shape says {[kh, kw]}")
    if planes:
        if x_shape[3] != planes[0] or w_shape[3] != planes[1]:
            raise ShapeError(f"x has {x_shape[3]} planes (act_bits {planes[0]}), w has {w_shape[3]} "
                             f"(weight_bits {planes[1]})")
    strides, pads, dil = _conv_geometry(attrs)
    oh, ow = conv_output_shape((h, w), (kh, kw), strides, pads, dil)
    return (n, o, oh, ow)


def _check_words(arr_shape, dtype, n: int, what: str) -> None:
    wb = word_bits_of(dtype)
    if arr_shape[-1] != n_words(n, wb):
        raise ShapeError(f"{what} has {arr_shape[-1]} words of {wb} bits; {n} elements need {n_words(n, wb)}")


def _infer_binary_conv(inputs, attrs):
    return [epilogue_type(_packed_conv_shape(inputs[0][0], inputs[1][0], attrs, None), attrs)]


@op("BinaryConv2d", infer=_infer_binary_conv)
def binary_conv2d(inputs, attrs):
    """Conv of packed {-1,+1} activations and weights; padded pixels have value ``pad_value``."""
    x, w = inputs[0], inputs[1]
    _packed_conv_shape(x.shape, w.shape, attrs, None)
    c, groups = int(attrs["in_channels"]), int(attrs["groups"])
    _check_words(x.shape, x.dtype, c, "x")
    _check_words(w.shape, w.dtype, c // groups, "w")
    pad_value = int(_attr(attrs, "pad_value"))
    if pad_value not in (0, 1, -1):
        raise ModelError(f"pad_value must be 0, 1 or -1, got {pad_value}")
    strides, pads, dil = _conv_geometry(attrs)
    xs = unpack_sign(x, c).astype(np.float64)
    ws = unpack_sign(w, c // groups).astype(np.float64)  # [O, KH, KW, Cw] -> [O, C/g, KH, KW]
    acc = np.rint(conv_nd(xs, ws, strides, pads, dil, groups, float(pad_value))).astype(np.int64)
    return [apply_epilogue(acc, _epilogue_args(inputs, 2, attrs), attrs)]


def _dense_check(x_shape, w_shape, what: str, planes: Optional[Tuple[int, int]]) -> tuple:
    r = 3 if planes else 2
    if len(x_shape) != r or len(w_shape) != r or x_shape[-1] != w_shape[-1] and not planes:
        raise ShapeError(f"{what} needs x [M, {'k, ' if planes else ''}Kw] and w [N, "
                         f"{'k, ' if planes else ''}Kw], got {list(x_shape)} and {list(w_shape)}")
    if planes and (x_shape[1] != planes[0] or w_shape[1] != planes[1]):
        raise ShapeError(f"x has {x_shape[1]} planes (act_bits {planes[0]}), w has {w_shape[1]} "
                         f"(weight_bits {planes[1]})")
    return (x_shape[0], w_shape[0])


def _infer_binary_dense(inputs, attrs):
    return [epilogue_type(_dense_check(inputs[0][0], inputs[1][0], "BinaryDense", None), attrs)]


@op("BinaryDense", infer=_infer_binary_dense)
def binary_dense(inputs, attrs):
    """Dense product of packed {-1,+1} rows: ``acc = K - 2 * popcount(x ^ w)``."""
    _no_residual(attrs, "BinaryDense")
    x, w = inputs[0], inputs[1]
    _dense_check(x.shape, w.shape, "BinaryDense", None)
    k = int(_attr(attrs, "in_features"))
    _check_words(x.shape, x.dtype, k, "x")
    _check_words(w.shape, w.dtype, k, "w")
    xs = unpack_sign(x, k).astype(np.float64)
    ws = unpack_sign(w, k).astype(np.float64)
    acc = np.rint(xs @ ws.T).astype(np.int64)
    return [apply_epilogue(acc, _epilogue_args(inputs, 2, attrs), attrs)]


def _bitserial_attrs(attrs: dict) -> Tuple[int, int, int, int]:
    ab, wbits = int(_attr(attrs, "act_bits")), int(_attr(attrs, "weight_bits"))
    mult, off = int(_attr(attrs, "w_mult")), int(_attr(attrs, "w_offset"))
    if not (1 <= ab <= 8 and 1 <= wbits <= 8):
        raise ModelError(f"act_bits and weight_bits must be in 1..8, got {ab} and {wbits}")
    return ab, wbits, mult, off


def _infer_bitserial_conv(inputs, attrs):
    ab, wbits, _, _ = _bitserial_attrs(attrs)
    return [epilogue_type(_packed_conv_shape(inputs[0][0], inputs[1][0], attrs, (ab, wbits)), attrs)]


@op("BitserialConv2d", infer=_infer_bitserial_conv)
def bitserial_conv2d(inputs, attrs):
    """Conv of unsigned k-bit activation codes with decoded weights ``w_mult * u - w_offset``."""
    x, w = inputs[0], inputs[1]
    ab, wbits, mult, off = _bitserial_attrs(attrs)
    _packed_conv_shape(x.shape, w.shape, attrs, (ab, wbits))
    c, groups = int(attrs["in_channels"]), int(attrs["groups"])
    _check_words(x.shape, x.dtype, c, "x")
    _check_words(w.shape, w.dtype, c // groups, "w")
    strides, pads, dil = _conv_geometry(attrs)
    xc = unpack_planes(x, c).astype(np.int64)
    u = unpack_planes(w, c // groups).astype(np.int64)  # [O, C/g, KH, KW]
    acc = int_conv(xc, mult * u - off, strides, pads, dil, groups, pad_value=0)
    return [apply_epilogue(acc, _epilogue_args(inputs, 2, attrs), attrs)]


def _infer_bitserial_dense(inputs, attrs):
    ab, wbits, _, _ = _bitserial_attrs(attrs)
    return [epilogue_type(_dense_check(inputs[0][0], inputs[1][0], "BitserialDense", (ab, wbits)), attrs)]


@op("BitserialDense", infer=_infer_bitserial_dense)
def bitserial_dense(inputs, attrs):
    """Dense product of unsigned k-bit codes with decoded weights ``w_mult * u - w_offset``."""
    _no_residual(attrs, "BitserialDense")
    x, w = inputs[0], inputs[1]
    ab, wbits, mult, off = _bitserial_attrs(attrs)
    _dense_check(x.shape, w.shape, "BitserialDense", (ab, wbits))
    k = int(_attr(attrs, "in_features"))
    _check_words(x.shape, x.dtype, k, "x")
    _check_words(w.shape, w.dtype, k, "w")
    xc = unpack_planes(x, k).astype(np.int64)
    u = unpack_planes(w, k).astype(np.int64)
    acc = int_matmul(xc, (mult * u - off).T)
    return [apply_epilogue(acc, _epilogue_args(inputs, 2, attrs), attrs)]


# -- pooling ---------------------------------------------------------------------------------------

@op("PackedMaxPool")
def packed_maxpool(inputs, attrs):
    """Max pool of packed sign codes: bitwise AND of the words over each window's valid taps."""
    (x,) = inputs
    word_bits_of(x.dtype)
    if x.ndim != 4:
        raise ShapeError(f"PackedMaxPool needs NHWC words [N, H, W, Cw], got {list(x.shape)}")
    kh, kw = _ints(attrs, "kernel_shape", 2)
    strides, pads, dil = _conv_geometry(attrs)
    n, h, w, cw = x.shape
    oh, ow = conv_output_shape((h, w), (kh, kw), strides, pads, dil)
    ones = np.array(np.iinfo(x.dtype).max, x.dtype)  # AND identity for padded taps
    xp = np.pad(x, [(0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)], constant_values=ones)
    valid = np.pad(np.ones((h, w), bool), [(pads[0], pads[2]), (pads[1], pads[3])])
    out = np.full((n, oh, ow, cw), ones, x.dtype)
    seen = np.zeros((oh, ow), bool)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dil[0], i * dil[0] + (oh - 1) * strides[0] + 1, strides[0])
            cols = slice(j * dil[1], j * dil[1] + (ow - 1) * strides[1] + 1, strides[1])
            out &= xp[:, rows, cols, :]
            seen |= valid[rows, cols]
    if not seen.all():
        raise ShapeError(f"pads {list(pads)} leave pooling windows with no input pixel")
    return [out]


# -- residual add ----------------------------------------------------------------------------------

@op("QAdd")
def qadd(inputs, attrs):
    """Quantized add of two int8/uint8 tensors, requantized to the output's scale."""
    a, b = inputs
    _check_dtype(a, ("int8", "uint8"), "a")
    _check_dtype(b, ("int8", "uint8"), "b")
    out = _attr(attrs, "out")
    if out not in ("int8", "uint8"):
        raise UnsupportedError(f"QAdd out must be 'int8' or 'uint8', got {out!r}")
    zp, lo, hi = _clamp_range(attrs, out)
    za, zb = int(_attr(attrs, "a_zero_point")), int(_attr(attrs, "b_zero_point"))
    mode = _attr(attrs, "requant")
    da = a.astype(np.int64) - za
    db = b.astype(np.int64) - zb
    if mode == "fixed_point":
        ma, mb, s = int(_attr(attrs, "a_multiplier")), int(_attr(attrs, "b_multiplier")), int(_attr(attrs, "shift"))
        if not (0 <= ma < 1 << 31 and 0 <= mb < 1 << 31 and 1 <= s <= 62):
            raise ModelError(f"QAdd multipliers must be in [0, 2^31) and shift in [1, 62], got {ma}, {mb}, {s}")
        y = (da * ma + db * mb + (np.int64(1) << (s - 1))) >> s
        y = np.clip(y + zp, lo, hi)
    elif mode == "float":
        sa, sb, so = (np.float32(_attr(attrs, k)) for k in ("a_scale", "b_scale", "out_scale"))
        total = sa * da.astype(np.float32) + sb * db.astype(np.float32)
        q = np.rint((total / so).astype(np.float32))
        y = np.clip(q, np.float32(lo - zp), np.float32(hi - zp)).astype(np.int64) + zp
    else:
        raise UnsupportedError(f"QAdd requant must be 'fixed_point' or 'float', got {mode!r}")
    return [y.astype(out)]
