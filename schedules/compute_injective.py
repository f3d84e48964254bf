"""Portable TE computes of elementwise, data-movement and reduction ops (ref: ``ref/ops/elementwise.py``,
``ref/ops/tensor.py``, ``nn.batch_norm``).

Every compute here produces one ``out`` stage per output whose element is a closed expression of the
inputs (no reduction), except the Reduce* ops (one ``acc`` stage). Broadcasting follows numpy: an
input of lower rank is aligned to the right and its size-1 dims read index 0.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np
import tvm
from tvm import te

from qcompiler.errors import UnsupportedError

from .compute import arg_for, dt, fconst, ordered, placeholders
from .kernel import Plan, Stages, Workload

tir = tvm.tirx


def bcast_read(t: te.Tensor, out_idx) -> tvm.tirx.PrimExpr:
    """``t`` read at the numpy-broadcast position of output index ``out_idx``."""
    shape = [int(d) for d in t.shape]
    if not shape:
        return t[()]
    idx = list(out_idx)[len(out_idx) - len(shape):]
    return t[tuple(0 if shape[d] == 1 else idx[d] for d in range(len(shape)))]


def _c(x, v):
    return tir.const(v, dt(x))


def _is_float(x) -> bool:
    return dt(x).startswith("float")


# -- unary: ``fn(x, attrs) -> expr`` -------------------------------------------------------------

def _sigmoid(x, a):
    # ref splits by sign so that exp never overflows
    e = te.exp(-te.abs(x))
    one = _c(x, 1.0)
    return tir.Select(x >= _c(x, 0), one / (one + e), e / (one + e))


def _hard_sigmoid(x, a):
    return tir.max(tir.min(_c(x, a["alpha"]) * x + _c(x, a["beta"]), _c(x, 1.0)), _c(x, 0.0))


def _hard_swish(x, a):
    return x * tir.max(tir.min(x * _c(x, 1 / 6) + _c(x, 0.5), _c(x, 1.0)), _c(x, 0.0))


def _elu(x, a):
    return tir.Select(x >= _c(x, 0), x, _c(x, a["alpha"]) * (te.exp(tir.min(x, _c(x, 0))) - _c(x, 1)))


def _selu(x, a):
    neg = _c(x, a["alpha"]) * (te.exp(tir.min(x, _c(x, 0))) - _c(x, 1))
    return _c(x, a["gamma"]) * tir.Select(x > _c(x, 0), x, neg)


def _softplus(x, a):
    # logaddexp(x, 0) = max(x, 0) + log1p(exp(-|x|))
    return tir.max(x, _c(x, 0)) + te.log(_c(x, 1) + te.exp(-te.abs(x)))


def _sign(x, a):
    zero = _c(x, 0)
    return tir.Select(x > zero, _c(x, 1), tir.Select(x < zero, _c(x, -1), zero))


UNARY: Dict[str, Callable] = {
    "Relu": lambda x, a: tir.max(x, _c(x, 0)),
    "Abs": lambda x, a: te.abs(x),
    "Neg": lambda x, a: -x,
    "Sign": _sign,
    "Sqrt": lambda x, a: te.sqrt(x),
    "Exp": lambda x, a: te.exp(x),
    "Log": lambda x, a: te.log(x),
    "Floor": lambda x, a: te.floor(x),
    "Ceil": lambda x, a: te.ceil(x),
    "Round": lambda x, a: te.nearbyint(x),  # half to even, as np.rint
    "Tanh": lambda x, a: te.tanh(x),
    "Sigmoid": _sigmoid,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "LeakyRelu": lambda x, a: tir.Select(x >= _c(x, 0), x, x * _c(x, a["alpha"])),
    "Elu": _elu,
    "Selu": _selu,
    "Softplus": _softplus,
    "Softsign": lambda x, a: x / (_c(x, 1) + te.abs(x)),
    "Reciprocal": lambda x, a: _c(x, 1) / x,
}

#: unary ops whose TVM lowering is not exact to float32 rounding in every case; kept off the
#: kernel list until checked (``select`` reports them as unsupported with this reason).
UNCHECKED_UNARY = {"Erf": "TVM lowers erf to a fast approximation that is not checked against the "
                          "reference yet"}


def _div(a, b):
    if _is_float(a):
        return a / b
    return tir.truncdiv(a, b)  # C semantics, as the reference's _int_div


BINARY: Dict[str, Callable] = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": _div,
    "PRelu": lambda x, s: tir.Select(x < _c(x, 0), x * s, x),
    "Equal": lambda a, b: a == b,
    "Greater": lambda a, b: a > b,
    "Less": lambda a, b: a < b,
    "GreaterOrEqual": lambda a, b: a >= b,
    "LessOrEqual": lambda a, b: a <= b,
    "And": lambda a, b: tir.And(a, b),
    "Or": lambda a, b: tir.Or(a, b),
    "Xor": lambda a, b: tir.Not(a == b),
}

VARIADIC = ("Min", "Max", "Sum", "Mean")


def _as_bool(e):
    return e if dt(e) == "bool" else e != tir.const(0, dt(e))


def elementwise(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """Unary, binary, variadic, Where, Clip, Cast, Not and Pow with numpy broadcasting."""
    op = wl.op
    attrs = dict(wl.attrs)
    ph = placeholders(plan)
    out_spec = wl.outputs[0]
    ins = [arg_for(plan, ph, "input", i) for i in range(len(wl.inputs))]
    baked = {i: tir.const(v, wl.inputs[i].dtype) for i, v in wl.scalars if wl.inputs[i] is not None}

    def body(*idx):
        vals = [baked.get(i) if t is None else bcast_read(t, idx) for i, t in enumerate(ins)]
        if op in UNARY:
            return UNARY[op](vals[0], attrs)
        if op in BINARY:
            a, b = vals[0], vals[1]
            if op in ("And", "Or", "Xor"):
                a, b = _as_bool(a), _as_bool(b)
            if op == "PRelu":
                b = b.astype(dt(a))
            return BINARY[op](a, b)
        if op in VARIADIC:
            xs = [v for v in vals if v is not None]
            y = xs[0]
            for v in xs[1:]:
                y = tir.min(y, v) if op == "Min" else tir.max(y, v) if op == "Max" else y + v
            if op == "Mean":
                n = len(xs)
                y = y / _c(y, n) if _is_float(y) else tir.floordiv(y, _c(y, n))
            return y
        if op == "Where":
            return tir.Select(_as_bool(vals[0]), vals[1], vals[2])
        if op == "Not":
            return tir.Not(_as_bool(vals[0]))
        if op == "Cast":
            return _cast(vals[0], out_spec.dtype)
        if op == "Clip":
            y = vals[0]
            lo, hi = wl.scalar(1), wl.scalar(2)
            if lo is not None:
                y = tir.max(y, tir.const(lo, dt(y)))
            if hi is not None:
                y = tir.min(y, tir.const(hi, dt(y)))
            return y
        if op == "Pow":
            return _pow(vals[0], vals[1], wl.scalar(1))
        raise UnsupportedError(f"no elementwise compute for {op}")

    out = te.compute(out_spec.shape, body, name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def _cast(x, dtype: str):
    if dtype == "bool":
        return _as_bool(x)
    if _is_float(x) and not dtype.startswith("float"):
        return x.astype(dtype)  # LLVM fptosi/fptoui truncate toward zero, as numpy does
    return x.astype(dtype)


def _pow(a, b, scalar):
    if scalar is not None and float(scalar) == 2.0:
        return a * a
    if scalar is not None and float(scalar) == 1.0:
        return a
    if not _is_float(a):
        raise UnsupportedError("Pow with an integer base is not supported by the kernels")
    return te.power(a, b.astype(dt(a)))


# -- batch norm (inference) -----------------------------------------------------------------------

def bn_inv(inputs: List[np.ndarray], eps: float, dtype: str) -> np.ndarray:
    """``scale / sqrt(var + eps)`` computed exactly as the reference does (numpy, x's dtype)."""
    scale, var = inputs[1], inputs[4]
    t = np.dtype(dtype).type
    return (scale.astype(dtype) / np.sqrt(var.astype(dtype) + t(eps))).astype(dtype)


def batch_norm(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """``(x - mean[c]) * inv[c] + bias[c]``, ``inv`` folded at compile time (ref: nn.batch_norm)."""
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    from .compute import const_arg
    inv = const_arg(plan, ph, "bn_inv")
    bias = arg_for(plan, ph, "input", 2)
    mean = arg_for(plan, ph, "input", 3)
    out = te.compute(wl.outputs[0].shape,
                     lambda *i: (x[i] - mean[i[1]].astype(x.dtype)) * inv[i[1]] + bias[i[1]].astype(x.dtype),
                     name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


# -- data movement ------------------------------------------------------------------------------

def transpose(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    perm = wl.attr("perm")
    inv = np.argsort(perm)
    out = te.compute(wl.outputs[0].shape, lambda *i: x[tuple(i[inv[d]] for d in range(len(perm)))],
                     name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def concat(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    ph = placeholders(plan)
    xs = [arg_for(plan, ph, "input", i) for i, s in enumerate(wl.inputs) if s is not None]
    axis = int(wl.attr("axis"))
    offsets = np.cumsum([0] + [int(t.shape[axis]) for t in xs]).tolist()

    def body(*i):
        # select the source by position along ``axis`` (a chain of Selects, last source innermost)
        val = None
        for k in reversed(range(len(xs))):
            idx = list(i)
            idx[axis] = i[axis] - offsets[k]
            read = xs[k][tuple(tir.max(tir.min(v, int(xs[k].shape[d]) - 1), 0) if d == axis else v
                               for d, v in enumerate(idx))]
            val = read if val is None else tir.Select(i[axis] < offsets[k + 1], read, val)
        return val

    out = te.compute(wl.outputs[0].shape, body, name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def pad(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """ONNX Pad (constant with a baked scalar value, reflect, edge, wrap; negative pads crop)."""
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    shape = [int(d) for d in x.shape]
    n = len(shape)
    pads = [int(p) for p in wl.attr("pads")]
    begin = pads[:n]
    mode = wl.attr("mode")
    value = wl.scalar(1, 0)

    def src_index(i):
        idx, inside = [], []
        for d in range(n):
            j = i[d] - begin[d]
            size = shape[d]
            if mode == "constant":
                inside.append(tir.all(j >= 0, j < size))
                idx.append(tir.max(tir.min(j, size - 1), 0))
            elif mode == "edge":
                idx.append(tir.max(tir.min(j, size - 1), 0))
            elif mode == "reflect":
                if size == 1:
                    idx.append(tir.const(0, "int32"))
                    continue
                period = 2 * (size - 1)
                r = tir.floormod(j, period)
                idx.append(tir.Select(r < size, r, period - r))
            elif mode == "wrap":
                idx.append(tir.floormod(j, size))
            else:
                raise UnsupportedError(f"Pad mode {mode!r}")
        return idx, inside

    def body(*i):
        idx, inside = src_index(i)
        v = x[tuple(idx)]
        if inside:
            v = tir.if_then_else(tir.all(*inside), v, tir.const(value, x.dtype))
        return v

    out = te.compute(wl.outputs[0].shape, body, name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def slice_(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """ONNX Slice; the clamped start and step per axis come from the reference's own helper."""
    from qcompiler.ref.ops.tensor import _clamped_slice

    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    shape = [int(d) for d in x.shape]
    start = [0] * len(shape)
    step = [1] * len(shape)
    for s, e, ax, st in zip(wl.attr("starts"), wl.attr("ends"), wl.attr("axes"), wl.attr("steps")):
        sl = _clamped_slice(int(s), int(e), int(st), shape[ax])
        start[ax], step[ax] = sl.start, sl.step
    out = te.compute(wl.outputs[0].shape,
                     lambda *i: x[tuple(start[d] + i[d] * step[d] for d in range(len(shape)))], name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def gather(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """ONNX Gather along ``axis``; negative indices wrap once, out-of-range ones are clamped (the
    reference rejects them; a kernel must not read out of bounds)."""
    ph = placeholders(plan)
    x, ind = arg_for(plan, ph, "input", 0), arg_for(plan, ph, "input", 1)
    axis = int(wl.attr("axis"))
    xr = len(x.shape)
    ir = len(ind.shape)
    size = int(x.shape[axis])

    def body(*i):
        jidx = i[axis:axis + ir]
        j = ind[tuple(jidx)] if ir else ind[()]
        j = j.astype("int64")
        j = tir.Select(j < 0, j + size, j)
        j = tir.max(tir.min(j, size - 1), 0).astype("int32")
        src = list(i[:axis]) + [j] + list(i[axis + ir:])
        return x[tuple(src[:xr])]

    out = te.compute(wl.outputs[0].shape, body, name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def expand(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    out = te.compute(wl.outputs[0].shape, lambda *i: bcast_read(x, i), name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def tile(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    shape = [int(d) for d in x.shape]
    out = te.compute(wl.outputs[0].shape, lambda *i: x[tuple(tir.floormod(i[d], shape[d]) for d in range(len(shape)))],
                     name="out")
    return Stages(ordered(plan, ph, [out]), {"out": out})


def split(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    axis = int(wl.attr("axis"))
    outs, off = [], 0
    def piece(off):
        return lambda *i: x[tuple(v + off if d == axis else v for d, v in enumerate(i))]

    for j, spec in enumerate(wl.outputs):
        outs.append(te.compute(spec.shape, piece(off), name=f"out{j}"))
        off += spec.shape[axis]
    named = {f"out{j}": o for j, o in enumerate(outs)}
    return Stages(ordered(plan, ph, outs), named)


# -- reductions -----------------------------------------------------------------------------------

def reduce(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    shape = [int(d) for d in x.shape]
    axes = sorted(int(a) for a in wl.attr("axes"))
    keep = bool(wl.attr("keepdims"))
    raxes = {a: te.reduce_axis((0, shape[a]), name=f"r{a}") for a in axes}
    kept = [d for d in range(len(shape)) if d not in raxes]
    rshape = tuple(1 if d in raxes else shape[d] for d in range(len(shape))) if keep else \
        tuple(shape[d] for d in kept)
    op = wl.op

    def src(i):
        if keep:
            return tuple(raxes[d] if d in raxes else i[d] for d in range(len(shape)))
        it = iter(i)
        return tuple(raxes[d] if d in raxes else next(it) for d in range(len(shape)))

    ra = list(raxes.values())
    if op in ("ReduceSum", "ReduceMean"):
        acc = te.compute(rshape, lambda *i: te.sum(x[src(i)], axis=ra), name="acc")
    elif op == "ReduceMax":
        acc = te.compute(rshape, lambda *i: te.max(x[src(i)], axis=ra), name="acc")
    elif op == "ReduceMin":
        acc = te.compute(rshape, lambda *i: te.min(x[src(i)], axis=ra), name="acc")
    elif op == "ReduceProd":
        prod = te.comm_reducer(lambda a, b: a * b, lambda t: tir.const(1, t), name="prod")
        acc = te.compute(rshape, lambda *i: prod(x[src(i)], axis=ra), name="acc")
    else:
        raise UnsupportedError(f"no reduction compute for {op}")
    named = {"acc": acc}
    out = acc
    if op == "ReduceMean":
        count = int(np.prod([shape[a] for a in axes])) if axes else 1
        if _is_float(acc):
            out = te.compute(rshape, lambda *i: acc[i] / fconst(count, x.dtype), name="out")
        else:
            out = te.compute(rshape, lambda *i: tir.truncdiv(acc[i], tir.const(count, x.dtype)), name="out")
        named["out"] = out
    return Stages(ordered(plan, ph, [out]), named)
