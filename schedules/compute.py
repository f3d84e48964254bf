"""Portable TE computes of the float ops (what the kernels compute; ``schedules/<family>/`` say how).

Semantics are those of the reference executor (``qcompiler/ref/ops``, ONNX); each compute here names
the reference function it mirrors. Layout choices that are part of the compute (and therefore of the
kernel's arguments) are stated next to the compute and produced at compile time by the plan helpers
(``pack_*``): e.g. conv weights blocked by ``vo`` output channels, ``[O/vo, C/g, KH, KW, vo]``.

Stages whose tiles the schedules must be able to cut without remainders are computed over padded
extents (``acc`` over ``OWp = ceil(OW / tile) * tile`` columns and ``O`` rounded up to ``vo``); the
``out`` stage then reads only the valid part and applies the epilogue (bias, alpha/beta).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import tvm
from tvm import te

from .kernel import Plan, Stages, Workload, ceil_div


def placeholders(plan: Plan) -> Dict[int, te.Tensor]:
    """One TE placeholder per non-output plan argument, keyed by plan position."""
    out = {}
    for pos, a in enumerate(plan.args):
        if a.kind != "output":
            out[pos] = te.placeholder(a.spec.shape, a.spec.dtype, name=f"arg{pos}")
    return out


def arg_for(plan: Plan, ph: Dict[int, te.Tensor], kind: str, index: int) -> Optional[te.Tensor]:
    for pos, a in enumerate(plan.args):
        if a.kind == kind and a.index == index and pos in ph:
            return ph[pos]
    return None


def const_arg(plan: Plan, ph: Dict[int, te.Tensor], tag: str) -> Optional[te.Tensor]:
    """The new-constant argument whose tag starts with ``tag`` (tags carry the layout's knobs)."""
    for pos, a in enumerate(plan.args):
        if a.kind == "const" and a.tag.startswith(tag):
            return ph[pos]
    return None


def ordered(plan: Plan, ph: Dict[int, te.Tensor], outputs: Sequence[te.Tensor]) -> List[te.Tensor]:
    """PrimFunc parameters in plan order."""
    outs = iter(outputs)
    return [ph[pos] if a.kind != "output" else next(outs) for pos, a in enumerate(plan.args)]


def dt(e) -> str:
    """The dtype of a TIR expression (``PrimExpr.ty`` in TVM 0.27; loads also have ``dtype``)."""
    d = getattr(e, "dtype", None)
    return str(d if d is not None else e.ty)


def fconst(v, dtype="float32"):
    return tvm.tirx.const(float(v), dtype)


# ----------------------------------------------------------------------------------------------
# convolution (ref: nn.conv)
# ----------------------------------------------------------------------------------------------

def conv2d_geometry(wl: Workload):
    x, w = wl.inputs[0], wl.inputs[1]
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    st, dl = wl.attr("strides"), wl.attr("dilations")
    pads = wl.attr("pads")  # ONNX 2-D order: top, left, bottom, right
    oh, ow = wl.outputs[0].shape[2:]
    return dict(n=n, c=c, h=h, w=wd, o=o, cg=cg, kh=kh, kw=kw, sh=st[0], sw=st[1], dh=dl[0], dw=dl[1],
                pt=pads[0], pl=pads[1], oh=oh, ow=ow, groups=int(wl.attr("group", wl.attr("groups", 1))))


def pack_conv_weights(w: np.ndarray, vo: int) -> np.ndarray:
    """[O, Cg, KH, KW] -> [ceil(O/vo), Cg, KH, KW, vo], zero channels appended."""
    o = w.shape[0]
    ob = ceil_div(o, vo)
    wp = np.zeros((ob * vo,) + w.shape[1:], w.dtype)
    wp[:o] = w
    return np.ascontiguousarray(wp.reshape((ob, vo) + w.shape[1:]).transpose(0, 2, 3, 4, 1))


def padded_input(x: te.Tensor, g: dict, rows: int, cols: int, x_map=None, name: str = "pad"):
    """``x`` [N, C, H, W] (mapped elementwise by ``x_map``, e.g. minus a zero point) zero-padded to
    [N, C, rows, cols] with the top/left pads of ``g``. Returns ``(read, stage)``: ``read(n, c, y, x)``
    in padded coordinates, and the pad stage, or ``None`` when nothing needs padding."""
    n, c, h, w = (int(d) for d in x.shape)
    pt, pl = g["pt"], g["pl"]
    fmap = x_map or (lambda v: v)
    if pt == 0 and pl == 0 and rows <= h and cols <= w:
        return (lambda i, ch, y, xx: fmap(x[i, ch, y, xx])), None
    dtype = dt(fmap(x[0, 0, 0, 0]))

    def body(i, ch, y, xx):
        inside = tvm.tirx.all(y >= pt, y < pt + h, xx >= pl, xx < pl + w)
        return tvm.tirx.if_then_else(inside, fmap(x[i, ch, y - pt, xx - pl]), tvm.tirx.const(0, dtype))

    pad = te.compute((n, c, rows, cols), body, name=name)
    return (lambda i, ch, y, xx: pad[i, ch, y, xx]), pad


def conv2d_ocvec(wl: Workload, plan: Plan, cfg: dict, acc_dtype="float32", x_map=None,
                 weight_map=None, epilogue=None, ph=None) -> Stages:
    """Direct NCHW conv with output channels blocked by ``vo`` (the vector axis).

    ``acc[n, ob, oh, owp, vi] = sum_{rc, ky, kx} pad[n, g*Cg + rc, oh*sh + ky*dh, owp*sw + kx*dw]
    * wp[ob, rc, ky, kx, vi]`` with ``g = (ob*vo) // (O/groups)`` (the plan guarantees that a block
    of ``vo`` channels never straddles two groups). ``out`` slices the valid part and adds the bias.
    ``x_map``/``weight_map``/``epilogue`` let the int8 compute reuse this one (zero points,
    requantization); padded pixels are 0 after ``x_map``.
    """
    g = conv2d_geometry(wl)
    vo, t = cfg["vo"], cfg["tile_ow"]
    ob_n = ceil_div(g["o"], vo)
    owp = ceil_div(g["ow"], t) * t
    rows = (g["oh"] - 1) * g["sh"] + (g["kh"] - 1) * g["dh"] + 1
    cols = (owp - 1) * g["sw"] + (g["kw"] - 1) * g["dw"] + 1
    ph = ph if ph is not None else placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    wp = const_arg(plan, ph, "ocvec")
    bias = arg_for(plan, ph, "input", 2)
    read, pad = padded_input(x, g, rows, cols, x_map)
    mg = g["o"] // g["groups"]
    rc = te.reduce_axis((0, g["cg"]), name="rc")
    ky = te.reduce_axis((0, g["kh"]), name="ky")
    kx = te.reduce_axis((0, g["kw"]), name="kx")

    def acc_body(n, ob, y, xx, vi):
        ch = (ob * vo) // mg * g["cg"] + rc if g["groups"] > 1 else rc
        a = read(n, ch, y * g["sh"] + ky * g["dh"], xx * g["sw"] + kx * g["dw"])
        wv = wp[ob, rc, ky, kx, vi]
        if weight_map:
            wv = weight_map(wv)
        return te.sum(a.astype(acc_dtype) * wv.astype(acc_dtype), axis=[rc, ky, kx])

    acc = te.compute((g["n"], ob_n, g["oh"], owp, vo), acc_body, name="acc")
    return _conv_output(wl, plan, ph, acc, lambda n, o, y, xx: acc[n, o // vo, y, xx, o % vo],
                        epilogue, bias, pad)


def _conv_output(wl: Workload, plan: Plan, ph, acc, acc_at, epilogue, bias, pad) -> Stages:
    """The ``out`` stage shared by the conv computes: the epilogue (or bias) applied to ``acc``."""

    def out_body(n, o, y, xx):
        v = acc_at(n, o, y, xx)
        if epilogue is not None:
            return epilogue(v, o)
        if bias is not None:
            v = v + bias[o]
        return v

    out = te.compute(wl.outputs[0].shape, out_body, name="out")
    named = {"acc": acc, "out": out}
    if pad is not None:
        named["pad"] = pad
    return Stages(ordered(plan, ph, [out]), named)


def depthwise_conv2d(wl: Workload, plan: Plan, cfg: dict, acc_dtype="float32", x_map=None,
                     weight_map=None, epilogue=None, ph=None) -> Stages:
    """Depthwise NCHW conv (groups == C, any channel multiplier): vector axis along the output
    columns, computed over ``OWp = ceil(OW / vw) * vw`` columns in ``acc``."""
    g = conv2d_geometry(wl)
    vw = cfg["vw"]
    owp = ceil_div(g["ow"], vw) * vw
    rows = (g["oh"] - 1) * g["sh"] + (g["kh"] - 1) * g["dh"] + 1
    cols = (owp - 1) * g["sw"] + (g["kw"] - 1) * g["dw"] + 1
    ph = ph if ph is not None else placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    w = arg_for(plan, ph, "input", 1)
    bias = arg_for(plan, ph, "input", 2)
    read, pad = padded_input(x, g, rows, cols, x_map)
    mult = g["o"] // g["c"]
    ky = te.reduce_axis((0, g["kh"]), name="ky")
    kx = te.reduce_axis((0, g["kw"]), name="kx")

    def acc_body(n, o, y, xx):
        a = read(n, o // mult, y * g["sh"] + ky * g["dh"], xx * g["sw"] + kx * g["dw"])
        wv = w[o, 0, ky, kx]
        if weight_map:
            wv = weight_map(wv)
        return te.sum(a.astype(acc_dtype) * wv.astype(acc_dtype), axis=[ky, kx])

    acc = te.compute((g["n"], g["o"], g["oh"], owp), acc_body, name="acc")
    return _conv_output(wl, plan, ph, acc, lambda n, o, y, xx: acc[n, o, y, xx], epilogue, bias, pad)


# ----------------------------------------------------------------------------------------------
# dense / Gemm / MatMul (ref: nn.gemm, nn.matmul)
# ----------------------------------------------------------------------------------------------

def pack_dense_weights(w_nk: np.ndarray, vn: int) -> np.ndarray:
    """[N, K] -> [ceil(N/vn), K, vn], zero rows appended."""
    n, k = w_nk.shape
    nb = ceil_div(n, vn)
    wp = np.zeros((nb * vn, k), w_nk.dtype)
    wp[:n] = w_nk
    return np.ascontiguousarray(wp.reshape(nb, vn, k).transpose(0, 2, 1))


def dense_nvec(wl: Workload, plan: Plan, cfg: dict, m: int, k: int, n: int, a_index, b_index=None,
               acc_dtype="float32", a_map=None, w_map=None, epilogue=None, ph=None) -> Stages:
    """``acc[m, nb, vi] = sum_k A(m, k) * Bp[nb, k, vi]``; ``out[m, n] = epilogue(acc)``.

    ``Bp`` is the constant packed by :func:`pack_dense_weights` (tag ``"nvec"``) or, when B is
    computed at run time, a ``bpack`` stage built in the kernel from ``b_index(B, k, n)``.
    ``a_index(A, m, k)`` reads A (transposed or not).
    """
    vn = cfg["vn"]
    nb_n = ceil_div(n, vn)
    ph = ph if ph is not None else placeholders(plan)
    a = arg_for(plan, ph, "input", 0)
    named = {}
    bp = const_arg(plan, ph, "nvec")
    if bp is None:
        b = arg_for(plan, ph, "input", 1)
        bp = te.compute(
            (nb_n, k, vn),
            lambda j, kk, vi: tvm.tirx.if_then_else(j * vn + vi < n, b_index(b, kk, j * vn + vi),
                                                    tvm.tirx.const(0, b.dtype)), name="bpack")
        named["bpack"] = bp
    r = te.reduce_axis((0, k), name="rk")

    def acc_body(i, j, vi):
        av = a_index(a, i, r)
        wv = bp[j, r, vi]
        if a_map:
            av = a_map(av)
        if w_map:
            wv = w_map(wv)
        return te.sum(av.astype(acc_dtype) * wv.astype(acc_dtype), axis=r)

    acc = te.compute((m, nb_n, vn), acc_body, name="acc")
    out_shape = tuple(wl.outputs[0].shape)
    lead = out_shape[:-1]

    def out_body(*idx):
        i = 0
        for d, v in zip(lead, idx[:-1]):
            i = i * d + v
        j = idx[-1]
        return epilogue(acc[i, j // vn, j % vn], i, j)

    out = te.compute(out_shape, out_body, name="out")
    named.update(acc=acc, out=out)
    return Stages(ordered(plan, ph, [out]), named)


def gemm_epilogue(wl: Workload, plan: Plan, ph_c: Optional[te.Tensor], m: int, n: int):
    alpha, beta = float(wl.attr("alpha", 1.0)), float(wl.attr("beta", 1.0))

    def epi(v, i, j):
        if alpha != 1.0:
            v = v * fconst(alpha)
        if ph_c is not None and beta != 0.0:
            cs = [int(d) for d in ph_c.shape]
            idx = [i, j][2 - len(cs):] if cs else []
            idx = [0 if cs[d] == 1 else idx[d] for d in range(len(cs))]
            c = ph_c[tuple(idx)] if cs else ph_c[()]
            if beta != 1.0:
                c = c * fconst(beta)
            v = v + c
        return v

    return epi


def batch_matmul(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """General ``numpy.matmul`` (batched, broadcast, 1-D operands promoted): one reduction stage."""
    sa, sb = wl.inputs[0].shape, wl.inputs[1].shape
    out_shape = wl.outputs[0].shape
    a2 = (1,) + tuple(sa) if len(sa) == 1 else tuple(sa)
    b2 = tuple(sb) + (1,) if len(sb) == 1 else tuple(sb)
    k = a2[-1]
    batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    full = batch + (a2[-2], b2[-1])
    ph = placeholders(plan)
    a, b = arg_for(plan, ph, "input", 0), arg_for(plan, ph, "input", 1)
    r = te.reduce_axis((0, k), name="rk")

    def read(t, shape2, orig, idx_batch, row, col):
        nb = len(shape2) - 2
        bidx = list(idx_batch[len(idx_batch) - nb:]) if nb else []
        bidx = [0 if shape2[d] == 1 else bidx[d] for d in range(nb)]
        full_idx = bidx + [row, col]
        if len(orig) == 1:
            full_idx = [full_idx[-1]] if orig is sa else [full_idx[-2]]
        return t[tuple(full_idx)]

    def body(*idx):
        bi, i, j = idx[:-2], idx[-2], idx[-1]
        return te.sum(read(a, a2, sa, bi, i, r) * read(b, b2, sb, bi, r, j), axis=r)

    acc = te.compute(full, body, name="acc")
    if full != tuple(out_shape):
        out = te.compute(out_shape, lambda *i: acc[_unsqueeze_index(i, full, len(sa) == 1, len(sb) == 1)],
                         name="out")
        named = {"acc": acc, "out": out}
    else:
        out = acc
        named = {"acc": acc}
    return Stages(ordered(plan, ph, [out]), named)


def _unsqueeze_index(idx, full, a_vec, b_vec):
    idx = list(idx)
    if b_vec:
        idx.append(0)
    if a_vec:
        idx.insert(len(idx) - 1, 0)
    return tuple(idx)


# ----------------------------------------------------------------------------------------------
# pooling, softmax, normalisation (ref: nn.max_pool, average_pool, global_*, softmax, batch_norm)
# ----------------------------------------------------------------------------------------------

def pool2d(wl: Workload, plan: Plan, cfg: dict, kind: str) -> Stages:
    """MaxPool / AveragePool over 2-D windows (dilations, ceil_mode, count_include_pad).

    Taps outside the input do not take part in a max; the average divides by the number of taps
    inside the input, or (``count_include_pad``) inside input + explicit pads, never the ceil_mode
    overhang -- the divisor is computed per output position from index arithmetic.
    """
    x_spec = wl.inputs[0]
    n, c, h, w = x_spec.shape
    kh, kw = wl.attr("kernel_shape")
    sh, sw = wl.attr("strides")
    dh, dw = wl.attr("dilations")
    pt, pl, pb, pr = wl.attr("pads")
    oh, ow = wl.outputs[0].shape[2:]
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    ky = te.reduce_axis((0, kh), name="ky")
    kx = te.reduce_axis((0, kw), name="kx")
    xdt = x.dtype

    def tap(nn, cc, y, xx):
        iy = y * sh + ky * dh - pt
        ix = xx * sw + kx * dw - pl
        return iy, ix, tvm.tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)

    if kind == "max":
        lowest = te.min_value(xdt)

        def body(nn, cc, y, xx):
            iy, ix, inside = tap(nn, cc, y, xx)
            return te.max(tvm.tirx.if_then_else(inside, x[nn, cc, iy, ix], lowest), axis=[ky, kx])

        acc = te.compute((n, c, oh, ow), body, name="acc")
        return Stages(ordered(plan, ph, [acc]), {"acc": acc})

    def body_sum(nn, cc, y, xx):
        iy, ix, inside = tap(nn, cc, y, xx)
        return te.sum(tvm.tirx.if_then_else(inside, x[nn, cc, iy, ix], tvm.tirx.const(0, xdt)), axis=[ky, kx])

    acc = te.compute((n, c, oh, ow), body_sum, name="acc")
    include_pad = bool(wl.attr("count_include_pad", 0))

    def count_1d(o, s, d, k, p, size, p_end):
        lo, hi = (-p, size + p_end) if include_pad else (0, size)
        # taps j in [0, k) with lo <= o*s + j*d - p < hi
        start = o * s - p
        first = tvm.tirx.max(0, tvm.tirx.floordiv(lo - start + d - 1, d))
        last = tvm.tirx.min(k - 1, tvm.tirx.floordiv(hi - 1 - start, d))
        return tvm.tirx.max(0, last - first + 1)

    def out_body(nn, cc, y, xx):
        cnt = count_1d(y, sh, dh, kh, pt, h, pb) * count_1d(xx, sw, dw, kw, pl, w, pr)
        return acc[nn, cc, y, xx] / cnt.astype(xdt)

    out = te.compute((n, c, oh, ow), out_body, name="out")
    return Stages(ordered(plan, ph, [out]), {"acc": acc, "out": out})


def global_pool(wl: Workload, plan: Plan, cfg: dict, kind: str) -> Stages:
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    shape = [int(d) for d in x.shape]
    spatial = shape[2:]
    axes = [te.reduce_axis((0, s), name=f"r{i}") for i, s in enumerate(spatial)]
    size = int(np.prod(spatial)) if spatial else 1

    def body(nn, cc, *ones):
        v = x[(nn, cc) + tuple(axes)]
        return te.max(v, axis=axes) if kind == "max" else te.sum(v, axis=axes)

    acc = te.compute(tuple(shape[:2]) + (1,) * len(spatial), body, name="acc")
    if kind == "max":
        return Stages(ordered(plan, ph, [acc]), {"acc": acc})
    # ref: x.mean(...) -- numpy divides the float32 sum by the count
    out = te.compute(acc.shape, lambda *i: acc[i] / fconst(size, x.dtype), name="out")
    return Stages(ordered(plan, ph, [out]), {"acc": acc, "out": out})


def softmax(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """Softmax along ``axis`` (all dims from ``axis`` on with ``coerce_2d``), computed as the
    reference does: ``exp(x - max) / sum(exp(x - max))``; the op is viewed as [outer, inner, rest]."""
    ph = placeholders(plan)
    x = arg_for(plan, ph, "input", 0)
    shape = [int(d) for d in x.shape]
    axis = int(wl.attr("axis")) % max(1, len(shape))
    if wl.attr("coerce_2d", False):
        red = shape[axis:]
        keep_after = []
    else:
        red = [shape[axis]]
        keep_after = shape[axis + 1:]
    lead = shape[:axis]
    rax = [te.reduce_axis((0, s), name=f"r{i}") for i, s in enumerate(red)]
    nlead, nred = len(lead), len(red)

    def xat(lead_idx, red_idx, after_idx):
        return x[tuple(lead_idx) + tuple(red_idx) + tuple(after_idx)]

    rshape = tuple(lead) + tuple(keep_after)
    mx = te.compute(rshape, lambda *i: te.max(xat(i[:nlead], rax, i[nlead:]), axis=rax), name="maxv")
    rax2 = [te.reduce_axis((0, s), name=f"q{i}") for i, s in enumerate(red)]
    ex = te.compute(tuple(shape), lambda *i: te.exp(x[i] - mx[tuple(i[:nlead]) + tuple(i[nlead + nred:])]),
                    name="expv")
    sm = te.compute(rshape, lambda *i: te.sum(ex[tuple(i[:nlead]) + tuple(rax2) + tuple(i[nlead:])], axis=rax2),
                    name="sumv")
    out = te.compute(tuple(shape), lambda *i: ex[i] / sm[tuple(i[:nlead]) + tuple(i[nlead + nred:])],
                     name="out")
    return Stages(ordered(plan, ph, [out]), {"maxv": mx, "expv": ex, "sumv": sm, "out": out})
