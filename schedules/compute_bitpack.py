"""Fast ``BitPack`` "sign" of a float32 NCHW activation, written directly as TIR.

Meaning: ``compute_packed.bitpack`` / the reference (bit ``c % wb`` of word ``c // wb`` of pixel
``(n, h, w)`` is ``x[n, c, h, w] < threshold[c]``). For float32 ``x`` and threshold the float32
comparison equals the reference's float64 one (both values are exact in float64).

Why: the template (a TE sum over the word's bits, the bit loop unrolled per output word) reads one
channel at a time with a stride of H*W floats; for Bi-Real-18's small late-stage maps (28x28 and
below) it ran at ~0.4 elements/ns. Here the pixels are the vector lanes: for ``V`` = 16 consecutive
pixels of one NCHW channel row, one contiguous load, one compare against the broadcast threshold and
one OR of ``1 << bit`` under the mask per channel, ``wb`` channels accumulated in a register of
``V`` words; the ``V`` words then go to their pixels (a strided store when there are several words
per pixel). The last chunk of pixels overlaps the previous one.

Measured (1 thread, 64-bit words, medians of 20 interleaved runs, shared machine), template ->
this kernel: 64x56x56 13.6 -> 21.1 us (so one word per pixel keeps the template), 128x28x28
40.7 -> 10.7 us, 256x14x14 22.4 -> 2.7 us, 512x7x7 14.7 -> 1.9 us. 64-bit words built from two
32-bit halves: 10-25 % faster than selecting on 64-bit lanes; 4 vectors of pixels per job: slower.
"""

from __future__ import annotations

import numpy as np

from qcompiler.errors import UnsupportedError

from .kernel import Arg, Plan, Stages, Workload, ceil_div

V = 16   # pixels per vector
U = 1    # vectors of pixels per job (4 measured slower: 23 vs 21 us on 64x56x56)


def supported(wl: Workload) -> str:
    """"" when this kernel handles the BitPack workload, else why not."""
    if wl.op != "BitPack" or wl.attr("mode") != "sign":
        return "BitPack mode sign only"
    xs = wl.inputs[0]
    if xs.dtype != "float32" or len(xs.shape) != 4:
        return "a 4-D float32 input only"
    if int(xs.shape[2]) * int(xs.shape[3]) < V:
        return f"fewer than {V} pixels"
    if int(xs.shape[1]) <= int(wl.attr("word_bits")):
        # one word per pixel: the template's loop along the row vectorizes as well, and faster
        return "one word per pixel (the template is faster: 14 vs 21 us on 64x56x56)"
    t = wl.input(1)
    if t is not None and (t.dtype != "float32" or int(np.prod(t.shape)) != int(xs.shape[1])):
        return "threshold not float32[C]"
    return ""


def bitpack_pixels(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    from tvm import te, tirx
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    why = supported(wl)
    if why:
        raise UnsupportedError(f"bitpack_pixels: {why}")
    n, c, h, w = (int(v) for v in wl.inputs[0].shape)
    wb = int(wl.attr("word_bits"))
    wdt = f"uint{wb}"
    cw = ceil_div(c, wb)
    hw = h * w
    unroll = max(1, min(U, hw // V))      # chunks per job: U contiguous cache lines per channel
    chunks = ceil_div(hw, V * unroll)
    out_shape = (n, h, w, cw)
    if tuple(int(s) for s in wl.outputs[0].shape) != out_shape or wl.outputs[0].dtype != wdt:
        raise UnsupportedError(f"bitpack_pixels: output must be {wdt}{list(out_shape)}")
    x_ph = te.placeholder((n, c, h, w), "float32", name="x")
    has_thr = wl.input(1) is not None
    phs = [x_ph]
    if has_thr:
        phs.append(te.placeholder(tuple(wl.inputs[1].shape), "float32", name="threshold"))
    parallel = bool(cfg.get("parallel", True))

    def fcompute(ins, outs):
        loop = T.parallel if parallel else T.serial
        with IRBuilder() as ib, loop(0, n * cw * chunks) as job:
            xf = T.decl_buffer((n * c * hw,), "float32", data=ins[0].data)
            tf = T.decl_buffer((c,), "float32", data=ins[1].data) if has_thr else None
            of = T.decl_buffer((n * hw * cw,), wdt, data=outs[0].data)
            nn = T.bind(job // (cw * chunks))
            word = T.bind(job // chunks % cw)
            p0s = [T.bind(tirx.min((job % chunks * unroll + u) * V, hw - V)) for u in range(unroll)]
            # 64-bit words are built as two 32-bit halves: a select/OR on 16 uint32 lanes is one
            # 512-bit register, on 16 uint64 lanes two
            half = min(wb, 32)
            hdt = f"uint{half}"
            zero = tirx.Broadcast(tirx.const(0, hdt), V)
            parts = [[] for _ in range(unroll)]
            for h0 in range(0, min(wb, c), half):
                accs = [zero] * unroll
                for b in range(h0, min(h0 + half, wb, c)):
                    ch = word * wb + b
                    chc = tirx.min(ch, c - 1) if c % wb else ch
                    t = tirx.Broadcast(tf[chc] if has_thr else tirx.const(0.0, "float32"), V)
                    one = tirx.Broadcast(tirx.const(1 << (b - h0), hdt), V)
                    for u in range(unroll):
                        bit = xf.vload([(nn * c + chc) * hw + p0s[u]], f"float32x{V}") < t
                        if c % wb:
                            bit = tirx.And(bit, tirx.Broadcast(ch < c, V))
                        accs[u] = accs[u] | tirx.Select(bit, one, zero)
                for u in range(unroll):
                    parts[u].append(accs[u])
            for u in range(unroll):
                acc = parts[u][0].astype(f"{wdt}x{V}")
                if len(parts[u]) > 1:
                    acc = acc | (parts[u][1].astype(f"{wdt}x{V}") << tirx.Broadcast(tirx.const(32, wdt), V))
                T.buffer_store(of, acc, [tirx.Ramp((nn * hw + p0s[u]) * cw + word, cw, V)])
        return ib.get()

    out = te.extern(out_shape, phs, fcompute, name="out", dtype=wdt)
    return Stages(phs + [out], {"out": out})


def schedule_pixels(sch, stages: Stages, wl: Workload, target, cfg: dict) -> None:
    """Nothing to do: the loops, vectors and parallel loop are in the generated TIR."""


# -- registration (imported at the bottom of ``impls``) ---------------------------------------------

def _plan(wl: Workload, cfg: dict) -> Plan:
    args = [Arg("input", 0, wl.inputs[0])]
    if wl.input(1) is not None:
        args.append(Arg("input", 1, wl.inputs[1]))
    return Plan(tuple(args + [Arg("output", 0, wl.outputs[0])]))


def _defaults(wl: Workload, target) -> dict:
    """Threads only pay off past a few thousand outputs (the pool's wake-up costs ~us)."""
    elems = int(np.prod(wl.inputs[0].shape))
    return {"parallel": elems >= 65536 and target.cores > 1}


def _register() -> None:
    from .impls import FAMILIES, register
    from .kernel import KernelImpl

    for family in FAMILIES:
        register(KernelImpl(f"bitpack_pixels__{family}", _plan, bitpack_pixels, schedule_pixels, _defaults,
                            "sign bitpack with pixels in the vector lanes (compare + masked OR per channel)"),
                 "bitpack_pixels", family)


_register()
