"""Portable TE computes of the int8 ops: QConv2d, QDense (contract: ``qcompiler/ref/ops/lowbit.py``),
QAdd, QuantizeLinear, DequantizeLinear (``qcompiler/ref/ops/quant.py``).

The accumulator is exact int32 (``(x - x_zp) * (w - w_zp)`` summed, plus the int32 bias); the
epilogues reproduce the reference bit for bit:

* ``"float"``: ``float32(acc) * scale[o]`` then ``+ bias[o]`` -- two roundings. LLVM would fuse them
  into one FMA (TVM builds with FP-op fusion on), so the product goes through
  ``llvm.arithmetic.fence``, which forbids the contraction on every backend.
* ``"int8"``/``"uint8"`` with ``"fixed_point"``: int64 ``(acc * M + 2^(S-1)) >> S`` (arithmetic
  shift), ``+ zp``, clamp.
* ``"int8"``/``"uint8"`` with ``"float"``: ``rint(float32(acc) * scale[o])`` (``nearbyint``: half to
  even), clamped in float32 to ``[lo - zp, hi - zp]`` before the integer conversion, ``+ zp``.
"""

from __future__ import annotations

import tvm
from tvm import te

from qcompiler.errors import UnsupportedError

from .compute import arg_for, dt, conv2d_ocvec, dense_nvec, depthwise_conv2d, ordered, placeholders
from .compute_injective import bcast_read
from .kernel import Plan, Stages, Workload

tir = tvm.tirx


def no_contract(x):
    """``x`` behind an arithmetic fence: LLVM may not fuse it into an FMA with its consumer."""
    return tir.call_llvm_pure_intrin(dt(x), "llvm.arithmetic.fence", x)


def epilogue_inputs(wl: Workload) -> int:
    """Node input index where the epilogue's extra inputs start (after x, w, bias)."""
    return 3


def make_epilogue(wl: Workload, plan: Plan, ph):
    """``fn(acc_int32, channel) -> output expr`` for the node's ``out`` attribute."""
    out = wl.attr("out", "int32")
    e0 = epilogue_inputs(wl)
    out_dtype = wl.outputs[0].dtype
    if out == "int32":
        return lambda v, o: v
    if out == "float":
        scale, fbias = arg_for(plan, ph, "input", e0), arg_for(plan, ph, "input", e0 + 1)
        return lambda v, o: no_contract(v.astype("float32") * scale[o]) + fbias[o]
    if out in ("int8", "uint8"):
        zp, lo, hi = int(wl.attr("out_zero_point")), int(wl.attr("out_min")), int(wl.attr("out_max"))
        if wl.attr("requant") == "fixed_point":
            mult, shift = arg_for(plan, ph, "input", e0), arg_for(plan, ph, "input", e0 + 1)

            def fixed(v, o):
                s = shift[o].astype("int64")
                one = tir.const(1, "int64")
                prod = v.astype("int64") * mult[o].astype("int64") + tir.shift_left(one, s - one)
                y = tir.shift_right(prod, s) + tir.const(zp, "int64")
                y = tir.max(tir.min(y, tir.const(hi, "int64")), tir.const(lo, "int64"))
                return y.astype(out_dtype)

            return fixed
        if wl.attr("requant") == "float":
            scale = arg_for(plan, ph, "input", e0)

            def flt(v, o):
                y = te.nearbyint(v.astype("float32") * scale[o])
                y = tir.max(tir.min(y, tir.const(hi - zp, "float32")), tir.const(lo - zp, "float32"))
                return (y.astype("int32") + tir.const(zp, "int32")).astype(out_dtype)

            return flt
    raise UnsupportedError(f"epilogue out={out!r} (requant={wl.attr('requant')!r}) has no int8 kernel")


def _zp_map(zp: int):
    def fn(v):
        v = v.astype("int32")
        return v - tir.const(zp, "int32") if zp else v
    return fn


def qconv2d(wl: Workload, plan: Plan, cfg: dict, depthwise: bool = False) -> Stages:
    """QConv2d through the conv computes: int32 accumulator, zero points subtracted on read (so
    padded pixels are exactly ``x = x_zp``), bias and epilogue in the ``out`` stage."""
    ph = placeholders(plan)
    epi = make_epilogue(wl, plan, ph)
    bias = arg_for(plan, ph, "input", 2)

    def epilogue(v, o):
        return epi(v + bias[o] if bias is not None else v, o)

    fn = depthwise_conv2d if depthwise else conv2d_ocvec
    return fn(wl, plan, cfg, acc_dtype="int32", x_map=_zp_map(int(wl.attr("x_zero_point"))),
              weight_map=_zp_map(int(wl.attr("w_zero_point"))), epilogue=epilogue, ph=ph)


def qdense(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """QDense ``x [M, K] @ w[N, K].T`` with the packed-weight dense compute."""
    m, k = wl.inputs[0].shape
    n = wl.inputs[1].shape[0]
    ph = placeholders(plan)
    epi = make_epilogue(wl, plan, ph)
    bias = arg_for(plan, ph, "input", 2)

    def epilogue(v, i, j):
        return epi(v + bias[j] if bias is not None else v, j)

    return dense_nvec(wl, plan, cfg, m, k, n, a_index=lambda a, i, r: a[i, r], acc_dtype="int32",
                      a_map=_zp_map(int(wl.attr("x_zero_point"))), w_map=_zp_map(int(wl.attr("w_zero_point"))),
                      epilogue=epilogue, ph=ph)


def qadd(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """QAdd with numpy broadcasting (ref: lowbit.qadd)."""
    ph = placeholders(plan)
    a, b = arg_for(plan, ph, "input", 0), arg_for(plan, ph, "input", 1)
    out_dtype = wl.outputs[0].dtype
    zp, lo, hi = int(wl.attr("out_zero_point")), int(wl.attr("out_min")), int(wl.attr("out_max"))
    za, zb = int(wl.attr("a_zero_point")), int(wl.attr("b_zero_point"))
    mode = wl.attr("requant")

    def body(*i):
        da = bcast_read(a, i).astype("int64") - tir.const(za, "int64")
        db = bcast_read(b, i).astype("int64") - tir.const(zb, "int64")
        if mode == "fixed_point":
            s = int(wl.attr("shift"))
            y = (da * tir.const(int(wl.attr("a_multiplier")), "int64")
                 + db * tir.const(int(wl.attr("b_multiplier")), "int64") + tir.const(1 << (s - 1), "int64"))
            y = tir.shift_right(y, tir.const(s, "int64")) + tir.const(zp, "int64")
            y = tir.max(tir.min(y, tir.const(hi, "int64")), tir.const(lo, "int64"))
            return y.astype(out_dtype)
        if mode == "float":
            f32 = lambda v: tir.const(float(wl.attr(v)), "float32")  # noqa: E731
            total = no_contract(f32("a_scale") * da.astype("float32")) + \
                no_contract(f32("b_scale") * db.astype("float32"))
            q = te.nearbyint(total / f32("out_scale"))
            q = tir.max(tir.min(q, tir.const(hi - zp, "float32")), tir.const(lo - zp, "float32"))
            return (q.astype("int32") + tir.const(zp, "int32")).astype(out_dtype)
        raise UnsupportedError(f"QAdd requant={mode!r}")

    out = te.compute(wl.outputs[0].shape, body, name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def _param_read(t, idx, axis: int):
    """A per-tensor (size 1) or per-axis quantization parameter at output index ``idx``."""
    if t is None:
        return None
    size = 1
    for d in t.shape:
        size *= int(d)
    if size == 1:
        return t[(0,) * len(t.shape)]
    return t[idx[axis]]


def quantize_linear(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """``saturate(rint(x / scale) + zp)`` (ref: quant.quantize_linear; NaN becomes 0 + zp)."""
    ph = placeholders(plan)
    x, scale, zpt = (arg_for(plan, ph, "input", i) for i in range(3))
    out_dtype = wl.outputs[0].dtype
    info = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}[out_dtype]
    axis = int(wl.attr("axis", 1)) % max(1, len(wl.inputs[0].shape))

    def body(*i):
        xv = x[i]
        s = _param_read(scale, i, axis)
        y = te.nearbyint(xv / s.astype(dt(xv)))
        y = tir.Select(te.isnan(y), tir.const(0, dt(y)), y)
        z = _param_read(zpt, i, axis)
        z = z.astype("int32") if z is not None else tir.const(0, "int32")
        zf = z.astype(dt(y))
        y = tir.max(tir.min(y, tir.const(info[1], dt(y)) - zf), tir.const(info[0], dt(y)) - zf)
        return (y.astype("int32") + z).astype(out_dtype)

    out = te.compute(wl.outputs[0].shape, body, name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def dequantize_linear(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """``float(int64(x) - zp) * scale`` (ref: quant.dequantize_linear)."""
    ph = placeholders(plan)
    x, scale, zpt = (arg_for(plan, ph, "input", i) for i in range(3))
    out_dtype = wl.outputs[0].dtype
    axis = int(wl.attr("axis", 1)) % max(1, len(wl.inputs[0].shape))

    def body(*i):
        d = x[i].astype("int64")
        z = _param_read(zpt, i, axis)
        if z is not None:
            d = d - z.astype("int64")
        s = _param_read(scale, i, axis)
        return (d.astype(dt(s)) * s).astype(out_dtype)

    out = te.compute(wl.outputs[0].shape, body, name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})
