"""TE computes of the bit-packing ops around the binary layers: BitPack, BitUnpack, PackedMaxPool.

The meaning of each op is its reference in ``qcompiler/ref/ops/lowbit.py``; these computes match it
bit for bit. Every function here is ``fn(workload, plan, config) -> Stages`` (the KernelImpl
interface of ``schedules/kernel.py``) and names its one stage ``"out"`` for the schedule.

* ``BitPack`` "sign": bit ``c % wb`` of word ``c // wb`` is ``x < threshold[c]`` (``x < 0`` without a
  threshold); the comparison with a threshold is done in float64, like the reference, so int32
  inputs compare exactly. NCHW input becomes NHWC words, ``[M, K]`` becomes ``[M, Kw]``.
* ``BitPack`` "unsigned": plane ``i`` holds bit ``i`` of each code. Codes must lie in
  ``[0, 2^bits)``: the reference rejects others, the kernel cannot raise at run time and keeps the
  low ``bits`` bits, so producers must clamp first (``quantize_bitserial`` does, with ``Min``).
* ``BitUnpack``: the inverse (float32 +-1 for "sign", int32 codes for "unsigned").
* ``PackedMaxPool``: bitwise AND of the words over the valid taps of each window (a pooled code is
  -1 only if every tap is -1); padded taps take no part.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from qcompiler.errors import ShapeError, UnsupportedError

from .kernel import Plan, Stages, Workload


def _ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _ints(v, n: int, default) -> Tuple[int, ...]:
    out = tuple(int(a) for a in (v if v is not None else default))
    if len(out) != n:
        raise ShapeError(f"expected {n} values, got {list(out)}")
    return out


def word_bits_of(dtype: str) -> int:
    if dtype not in ("uint8", "uint16", "uint32", "uint64"):
        raise UnsupportedError(f"packed words must be uint8/16/32/64, got {dtype}")
    return int(dtype[4:])


def _all_ones(dtype: str):
    from tvm import tirx

    return ~tirx.const(0, dtype)


# -- BitPack ----------------------------------------------------------------------------------------

def bitpack(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """``BitPack`` (modes "sign" and "unsigned"); see the module docstring."""
    from tvm import te, tirx

    xs = wl.inputs[0]
    mode = wl.attr("mode")
    wb = int(wl.attr("word_bits"))
    wdt = f"uint{wb}"
    if xs.dtype == "bool" or np.dtype(xs.dtype).kind not in "fiu":
        raise UnsupportedError(f"BitPack needs a float or integer input, got {xs.dtype}")
    rank = len(xs.shape)
    if rank not in (2, 4):
        raise UnsupportedError(f"BitPack needs a 4-D NCHW or 2-D [M, K] input, got rank {rank}")
    c = int(xs.shape[1])
    x = te.placeholder(xs.shape, xs.dtype, name="x")
    args = [x]
    nb = min(wb, c)                     # bits of a word that can hold a channel
    b = te.reduce_axis((0, nb), name="bit")
    ragged = c % wb != 0

    def read(lead, ch, spatial):
        chc = te.min(ch, c - 1) if ragged else ch
        return x[(lead, chc) + spatial]

    def word_of(bit_on, cw):
        ch = cw * wb + b
        if ragged:
            bit_on = tirx.all(bit_on, ch < c)
        return te.sum(tirx.Select(bit_on, tirx.const(1, wdt) << b.astype(wdt), tirx.const(0, wdt)), axis=b)

    if mode == "sign":
        thr = None
        if wl.input(1) is not None:
            ts = wl.inputs[1]
            if ts.dtype != "float32" or int(np.prod(ts.shape)) != c:
                raise UnsupportedError(f"BitPack threshold must be float32[{c}], got {ts.dtype}{list(ts.shape)}")
            thr = te.placeholder(ts.shape, ts.dtype, name="threshold")
            args.append(thr)

        def code(lead, ch, spatial):
            v = read(lead, ch, spatial)
            if thr is None:
                return v < tirx.const(0, xs.dtype)
            chc = te.min(ch, c - 1) if ragged else ch
            # the threshold may be [C] or broadcast-shaped ([1, C, 1, 1]): index its channel axis
            t = thr[tuple(chc if int(s) == c and c > 1 else 0 for s in thr.shape)]
            return v.astype("float64") < t.astype("float64")

        if rank == 4:
            n, _, h, w = xs.shape
            out = te.compute((n, h, w, _ceil_div(c, wb)),
                             lambda i, y, z, cw: word_of(code(i, cw * wb + b, (y, z)), cw), name="out")
        else:
            out = te.compute((xs.shape[0], _ceil_div(c, wb)),
                             lambda i, cw: word_of(code(i, cw * wb + b, ()), cw), name="out")
    elif mode == "unsigned":
        if np.dtype(xs.dtype).kind not in "iu":
            raise UnsupportedError(f"BitPack unsigned needs integer codes, got {xs.dtype}")
        bits = int(wl.attr("bits"))
        wide = "int64" if np.dtype(xs.dtype).itemsize == 8 else "int32"

        def plane_bit(lead, ch, spatial, i):
            return ((read(lead, ch, spatial).astype(wide) >> i.astype(wide)) & tirx.const(1, wide)) != 0

        if rank == 4:
            n, _, h, w = xs.shape
            out = te.compute((n, h, w, bits, _ceil_div(c, wb)),
                             lambda i, y, z, p, cw: word_of(plane_bit(i, cw * wb + b, (y, z), p), cw), name="out")
        else:
            out = te.compute((xs.shape[0], bits, _ceil_div(c, wb)),
                             lambda i, p, cw: word_of(plane_bit(i, cw * wb + b, (), p), cw), name="out")
    else:
        raise UnsupportedError(f"BitPack mode must be 'sign' or 'unsigned', got {mode!r}")
    if tuple(int(s) for s in out.shape) != tuple(wl.outputs[0].shape) or wl.outputs[0].dtype != wdt:
        raise ShapeError(f"BitPack output is {wdt}{[int(s) for s in out.shape]}, the graph says "
                         f"{wl.outputs[0].dtype}{list(wl.outputs[0].shape)}")
    return Stages(args + [out], {"out": out})


# -- BitUnpack --------------------------------------------------------------------------------------

def bitunpack(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """``BitUnpack``: packed words back to float32 +-1 ("sign") or int32 codes ("unsigned"), NCHW/[M, K]."""
    from tvm import te, tirx

    xs = wl.inputs[0]
    wb = word_bits_of(xs.dtype)
    x = te.placeholder(xs.shape, xs.dtype, name="x")
    mode = wl.attr("mode")
    out_shape = tuple(wl.outputs[0].shape)

    def bit(word, ch):
        return ((word >> (ch % wb).astype(xs.dtype)) & tirx.const(1, xs.dtype)).astype("int32")

    if mode == "sign":
        if len(xs.shape) == 4:
            def f(n, ch, h, w):
                return (1 - 2 * bit(x[n, h, w, ch // wb], ch)).astype("float32")
        elif len(xs.shape) == 2:
            def f(m, ch):
                return (1 - 2 * bit(x[m, ch // wb], ch)).astype("float32")
        else:
            raise UnsupportedError(f"BitUnpack sign needs [N, H, W, Cw] or [M, Kw] words, got {list(xs.shape)}")
        out = te.compute(out_shape, f, name="out")
    elif mode == "unsigned":
        bits = int(wl.attr("bits"))
        if len(xs.shape) not in (3, 5) or int(xs.shape[-2]) != bits:
            raise UnsupportedError(f"BitUnpack unsigned needs {bits} planes, got words {list(xs.shape)}")

        def codes(word_at, ch):
            v = tirx.const(0, "int32")
            for i in range(bits):
                v = v + (bit(word_at(i), ch) << i)
            return v

        if len(xs.shape) == 5:
            out = te.compute(out_shape, lambda n, ch, h, w: codes(lambda i: x[n, h, w, i, ch // wb], ch), name="out")
        else:
            out = te.compute(out_shape, lambda m, ch: codes(lambda i: x[m, i, ch // wb], ch), name="out")
    else:
        raise UnsupportedError(f"BitUnpack mode must be 'sign' or 'unsigned', got {mode!r}")
    return Stages([x, out], {"out": out})


# -- PackedMaxPool ---------------------------------------------------------------------------------

def pool_geometry(wl: Workload):
    """(kernel, strides, pads, dilations, out hw) of a PackedMaxPool; windows without any input pixel
    are refused (the reference refuses them too)."""
    n, h, w, _ = wl.inputs[0].shape
    k = _ints(wl.attr("kernel_shape"), 2, None)
    s = _ints(wl.attr("strides"), 2, (1, 1))
    p = _ints(wl.attr("pads"), 4, (0, 0, 0, 0))
    d = _ints(wl.attr("dilations"), 2, (1, 1))
    oh, ow = wl.outputs[0].shape[1:3]
    for size, out, ki, si, pb, di in ((h, oh, k[0], s[0], p[0], d[0]), (w, ow, k[1], s[1], p[1], d[1])):
        for o in range(out):
            if not any(0 <= o * si - pb + t * di < size for t in range(ki)):
                raise ShapeError(f"PackedMaxPool pads {list(p)} leave pooling windows with no input pixel")
    return k, s, p, d, (oh, ow)


def packed_maxpool(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    """``PackedMaxPool``: AND of the packed words over each window's valid taps."""
    from tvm import te, tirx

    xs = wl.inputs[0]
    if len(xs.shape) != 4:
        raise UnsupportedError(f"PackedMaxPool needs NHWC words [N, H, W, Cw], got {list(xs.shape)}")
    word_bits_of(xs.dtype)
    n, h, w, cw = (int(v) for v in xs.shape)
    (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw), (oh, ow) = pool_geometry(wl)
    x = te.placeholder(xs.shape, xs.dtype, name="x")
    band = te.comm_reducer(lambda a, b: a & b, lambda t: _all_ones(t), name="bit_and")
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")

    def f(i, y, z, c):
        hh = y * sh - pt + rh * dh
        ww = z * sw - pl + rw * dw
        inside = tirx.all(hh >= 0, hh < h, ww >= 0, ww < w)
        return band(tirx.if_then_else(inside, x[i, hh, ww, c], _all_ones(xs.dtype)), axis=[rh, rw])

    out = te.compute((n, oh, ow, cw), f, name="out")
    return Stages([x, out], {"out": out})
