"""Fast int8 depthwise QConv2d on x86, channels in the vector lanes (contract:
``qcompiler/ref/ops/lowbit.py``, epilogues: ``compute_int8.make_epilogue``): one TIR extern like
``schedules/x86/int8_depthwise.py``, whose row kernel (output columns in the lanes) pays a fixed
cost per channel (its packed rows, its per-row vectors) that small late layers (7x7, 14x14) cannot
hide. Here ``lanes`` consecutive channels share every instruction instead, so nothing is per channel.

One parallel job runs a range of (image, channel block) pairs; a block is ``lanes`` channels (the
last block of a channel count that is not a multiple overlaps the one before it):

``zero``
    once per job: the padding cells of the int32 scratch ``[rows, cols, lanes]`` (channels last,
    NHWC-like) are set to 0; the blocks write the interior cells only, so the border stays 0.
``pack``
    the block's input pixels -> scratch as ``x - x_zero_point`` in int32: the NCHW input is
    transposed here, ``Q = 4`` pixels of a row per channel at a time (one 32-bit load per channel,
    one byte shuffle -- ``vpermt2b`` on AVX-512 VBMI -- to [pixel][channel], then widened per pixel;
    a row's last chunk overlaps the one before it).
``taps``
    per output pixel: ``acc = sum over taps of scratch[pixel + tap] * w[tap]``, the weights
    ``[KH, KW, C]`` blocked at compile time; with AVX-512 VNNI (knob ``vnni``) one ``vpdpwssd`` per
    tap, the int32 scratch read as int16 pairs (``x - zp``, its sign) against weight pairs
    ``(w - zp, 0)``, the bias as the accumulator's start; else ``vpmulld`` + ``vpaddd`` (exact:
    |x - zp| * |w - zp| <= 255 * 255). The epilogue is vectorized over the channels into a
    [pixel][channel] stage of ``P`` pixels of the *flattened* output plane (16 bytes per channel:
    16 pixels of int8 / uint8 output, 4 of int32 / float), which one shuffle turns into
    [channel][pixel]: ``P`` consecutive NCHW outputs per channel, one 16-byte store each (a channel's
    output plane is contiguous, so a chunk may cross rows; the last chunk overlaps the one before).

Only channel multiplier 1 (each input channel is one output channel's lane), at least ``lanes``
channels and input rows of at least ``Q = 4`` pixels (``supported``).

Measured on Zen 4 at 2.6 GHz (1 thread, 3x3 pad 1, uint8 output with float requantization as in
``benchmarks/kernels.py``; both kernels compiled once, minimum over 5 alternating rounds of medians
of 25 single calls; ``rows`` = ``schedules/x86/int8_depthwise.py``), the AVX-512 VNNI target
(16 lanes, ``vpdpwssd``) and the AVX2 target (8 lanes, ``vpmulld``) each from one run:

================  ========  ========  =======  ========  ========  =======
layer             VNNI      this ms   rows /   AVX2      this ms   rows /
                  rows ms             this     rows ms             this
================  ========  ========  =======  ========  ========  =======
960x7x7 s1        0.0460    0.0215    2.14     0.0530    0.0391    1.36
576x14x14 s2      0.0308    0.0190    1.62     0.0369    0.0300    1.23
48x13x13 s1       0.0078    0.0041    1.90     0.0075    0.0059    1.26
576x14x14 s1      0.0511    0.0424    1.21     0.0717    0.0764    0.94
384x14x14 s1      0.0351    0.0287    1.22
192x28x28 s2      0.0280    0.0214    1.31     0.0364    0.0372    0.98
192x28x28 s1      0.0692    0.0610    1.13     0.0927    0.1118    0.83
144x56x56 s2      0.0756    0.0675    1.12     0.0945    0.1107    0.85
144x56x56 s1      0.1788    0.1807    0.99
96x112x112 s2     0.1991    0.1851    1.08
================  ========  ========  =======  ========  ========  =======

So the selection rule (``preferred``, ``select.py``) takes this kernel for outputs of at most
``MAX_OUT_PIXELS = 64`` per channel (8x8; MobileNet's 7x7 layers), where it wins by 1.2-2x on both
paths, and with VNNI up to ``MAX_OUT_PIXELS_VNNI = 28 * 28`` (1.1-1.3x); 56x56 stride 1 is a tie and
keeps the row kernel. History (960x7x7 s1, ms, AVX-512): strided byte loads and stores for the
transposes (16 ``vpinsrb`` / ``vpextrb`` per pixel) 0.034; 4-pixel words per channel in the pack
and the store 0.026; 16-pixel stores over the flattened plane 0.025; ``vpdpwssd`` taps 0.022
(576x14x14 s1: 0.057 -> 0.042). Loading 8 / 16 pixels per channel in the pack gained <= 3 % (kept
at 4). ``JOBS = 8``: each job allocates and borders its scratch; 16 jobs cost 3-10 % against 2-8 on
one thread, and 8 still spread over 2 threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.errors import ConfigError, UnsupportedError

from .. import compute_int8_fast as F
from ..impls import register
from ..kernel import Arg, KernelImpl, Plan, Stages, TensorSpec, Workload, ceil_div
from ..compute_int8_depthwise import DwShape, dw_shape, epilogue_and_bias, extern_stages, weights_plan


@dataclass(frozen=True)
class ClConfig:
    """``lanes``: channels per vector (16: AVX-512, 8: AVX2); ``vnni``: taps as AVX-512 VNNI
    ``vpdpwssd`` (multiply-accumulate in one instruction) instead of ``vpmulld`` + ``vpaddd``;
    ``parallel``: jobs over threads."""

    lanes: int
    parallel: bool = True
    vnni: bool = False

    def __post_init__(self):
        if self.lanes not in (8, 16):
            raise ConfigError(f"channels-in-lanes depthwise lanes must be 8 or 16, got {self.lanes}")
        if self.vnni and self.lanes != 16:
            raise ConfigError("channels-in-lanes depthwise: vnni (vpdpwssd.512) needs 16 lanes")

    @staticmethod
    def of(cfg: dict) -> "ClConfig":
        try:
            return ClConfig(int(cfg["lanes"]), bool(cfg["parallel"]), bool(cfg["vnni"]))
        except KeyError as e:
            raise ConfigError(f"int8 channels-in-lanes depthwise kernel config lacks knob {e}") from None


#: pixels per transposing load / store (one 32-bit word of a uint8 row per channel)
Q = 4

#: parallel jobs, each a range of (image, channel block) pairs sharing one zeroed scratch
JOBS = 8


def supported(s: DwShape, lanes: int) -> str:
    """'' when the kernel handles the shape, else why not."""
    if s.og != 1:
        return f"channel multiplier {s.og} (only 1: one output channel per lane)"
    if s.c < lanes:
        return f"{s.c} channels, fewer than the {lanes} lanes"
    if min(s.w, s.cols - s.pl) - max(0, -s.pl) < Q:
        return f"input rows read narrower than {Q} pixels (input width {s.w})"
    return ""


#: the selection rule's bounds on output pixels per channel (select.py; measured in the docstring):
#: with vpmulld taps (AVX2, AVX-512 without VNNI) / with VNNI vpdpwssd taps
MAX_OUT_PIXELS = 64
MAX_OUT_PIXELS_VNNI = 28 * 28


def preferred(wl: Workload, target) -> bool:
    """The selection predicate: outputs of at most 8x8 pixels per channel (a 7x7 late layer, a
    14x14 -> 7x7 stride-2 one), where the row kernel's fixed work per channel dominates, or at most
    28x28 with VNNI taps; and the kernel handles the shape on ``target``."""
    s = dw_shape(wl)
    vnni = default_config(wl, target)["vnni"]
    return (s.oh * s.ow <= (MAX_OUT_PIXELS_VNNI if vnni else MAX_OUT_PIXELS)
            and not supported(s, default_lanes(target)))


def _out_pixels(s: DwShape, odt: str) -> int:
    """Flattened output pixels per transposed store: 16 bytes per channel, at most the plane."""
    p = 16 // np.dtype(odt).itemsize
    while p > s.oh * s.ow:
        p //= 2
    return p


def pack_weights(w: np.ndarray, s: DwShape, vnni: bool) -> np.ndarray:
    """``w - w_zero_point`` as int32 ``[KH, KW, C]``: one tap's channels are one vector load. For
    ``vpdpwssd`` (int16 pairs: lo * lo + hi * hi) the high half is 0, so the activation's high half,
    the sign of its int32 ``x - zp``, drops out: the pair product is ``(x - zp) * (w - zp)``."""
    w = np.asarray(w).reshape(s.o, s.kh, s.kw).astype(np.int32) - np.int32(s.w_zero_point)
    if vnni:
        w = w & np.int32(0xFFFF)
    return np.ascontiguousarray(w.transpose(1, 2, 0))


def plan(wl: Workload, cfg: dict) -> Plan:
    s = dw_shape(wl)
    return weights_plan(wl, Arg("const", 1, TensorSpec((s.kh, s.kw, s.o), "int32", True),
                                f"dwcl_z{s.w_zero_point}_{'pair' if cfg['vnni'] else 'i32'}",
                                lambda ins, s=s, v=bool(cfg["vnni"]): pack_weights(ins[1], s, v)))


def _kernel(wl: Workload, plan_: Plan, s: DwShape, dc: ClConfig):
    from tvm import tirx
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    L = dc.lanes
    why = supported(s, L)
    if why:
        raise UnsupportedError(f"QConv2d depthwise (channels in lanes): {why}")
    rows, cols = s.rows, s.cols
    n_cb = ceil_div(s.c, L)
    blocks = s.n * n_cb
    per_job = ceil_div(blocks, JOBS)
    n_jobs = ceil_div(blocks, per_job)
    hw, ohw = s.h * s.w, s.oh * s.ow
    zp = tirx.const(s.x_zero_point, "int32")
    # input pixels the conv reads: rows [y_lo, y_hi) and columns [x_lo, x_hi)
    y_lo, y_hi = max(0, -s.pt), min(s.h, rows - s.pt)
    x_lo, x_hi = max(0, -s.pl), min(s.w, cols - s.pl)
    nx = x_hi - x_lo
    odt = wl.outputs[0].dtype
    P = _out_pixels(s, odt)
    border = [(r, c) for r in range(rows) for c in range(cols)
              if not (y_lo <= r - s.pt < y_hi and x_lo <= c - s.pl < x_hi)]

    def fcompute(ins, outs):
        epi, bias = epilogue_and_bias(wl, plan_, ins)
        x, wt = ins[0], ins[1]
        loop = T.parallel if dc.parallel else T.serial
        with IRBuilder() as ib, loop(0, n_jobs) as job:
            out = F._flat(outs[0])
            xf = F._flat(x)
            wf = F._flat(wt)
            pad = T.decl_buffer((rows * cols * L,), "int32", scope="local")
            acc = T.decl_buffer((L,), "int32", scope="local")
            xst = T.decl_buffer((Q * L,), s.x_dtype, scope="local")
            ost = T.decl_buffer((P * L,), odt, scope="local")
            # -- zero: the border cells, once per job (the blocks overwrite the interior only)
            for r, c in border:
                T.buffer_store(pad, tirx.Broadcast(tirx.const(0, "int32"), L), [tirx.Ramp((r * cols + c) * L, 1, L)])
            with T.serial(0, per_job) as k:
                blk = T.bind(job * per_job + k)
                with T.If(blk < blocks):
                    with T.Then():
                        nn = T.bind(blk // n_cb)
                        c0 = T.bind(tirx.min((blk % n_cb) * L, s.c - L))
                        xbase = T.bind((nn * s.c + c0) * hw)
                        # -- pack: the block's channels transposed into the scratch's lanes, Q pixels
                        # of a row per channel load (the last chunk of a row overlaps the one before)
                        with T.serial(y_lo, y_hi) as iy:
                            with T.serial(0, ceil_div(nx, Q)) as q:
                                ix0 = T.bind(x_lo + tirx.min(q * Q, nx - Q))
                                src = T.bind(xbase + iy * s.w + ix0)
                                loads = [xf.vload([src + c * hw], f"{s.x_dtype}x{Q}") for c in range(L)]
                                # [pixel][channel] bytes: the transpose as one shuffle of the Q-byte loads
                                T.buffer_store(xst, tirx.Shuffle(loads, [tirx.const(c * Q + p, "int32")
                                                                         for p in range(Q) for c in range(L)]),
                                               [tirx.Ramp(0, 1, Q * L)])
                                cell = T.bind(((iy + s.pt) * cols + ix0 + s.pl) * L)
                                for p in range(Q):
                                    v = xst.vload([p * L], f"{s.x_dtype}x{L}").astype(f"int32x{L}") - tirx.Broadcast(zp, L)
                                    T.buffer_store(pad, v, [tirx.Ramp(cell + p * L, 1, L)])
                        # -- taps: one vector of channels per output pixel and the epilogue, P pixels
                        # of the flattened output plane staged [pixel][channel], then stored transposed:
                        # P consecutive outputs per channel (a channel's NCHW plane is contiguous)
                        with T.serial(0, ceil_div(ohw, P)) as q:
                            f0 = T.bind(tirx.min(q * P, ohw - P))
                            for p in range(P):
                                y = T.bind((f0 + p) // s.ow)
                                xo = T.bind((f0 + p) % s.ow)
                                if dc.vnni:   # the bias is the accumulator's start
                                    total = (bias.vload([c0], f"int32x{L}") if bias is not None
                                             else tirx.Broadcast(tirx.const(0, "int32"), L))
                                else:
                                    total = None
                                for ky in range(s.kh):
                                    for kx in range(s.kw):
                                        cell = ((y * s.sh + ky * s.dh) * cols + xo * s.sw + kx * s.dw) * L
                                        a = pad.vload([cell], f"int32x{L}")
                                        wv = wf.vload([(ky * s.kw + kx) * s.o + c0], f"int32x{L}")
                                        if dc.vnni:
                                            total = tirx.call_llvm_pure_intrin(
                                                f"int32x{L}", "llvm.x86.avx512.vpdpwssd.512", total,
                                                tirx.reinterpret(f"int16x{2 * L}", a), tirx.reinterpret(f"int16x{2 * L}", wv))
                                        else:
                                            total = a * wv if total is None else total + a * wv
                                T.buffer_store(acc, total, [tirx.Ramp(0, 1, L)])
                                with T.vectorized(0, L) as lane:
                                    oc = c0 + lane
                                    v = acc[lane] + bias[oc] if bias is not None and not dc.vnni else acc[lane]
                                    T.buffer_store(ost, F._vectorizable(epi(v, oc)), [p * L + lane])
                            obase = T.bind((nn * s.o + c0) * ohw + f0)
                            # [channel][pixel]: one shuffle, then one P-element store per channel
                            T.buffer_store(ost, tirx.Shuffle([ost.vload([0], f"{odt}x{P * L}")],
                                                             [tirx.const(p * L + c, "int32") for c in range(L) for p in range(P)]),
                                           [tirx.Ramp(0, 1, P * L)])
                            for c in range(L):
                                T.buffer_store(out, ost.vload([c * P], f"{odt}x{P}"), [tirx.Ramp(obase + c * ohw, 1, P)])
        return ib.get()

    return fcompute


def compute(wl: Workload, plan_: Plan, cfg: dict) -> Stages:
    return extern_stages(wl, plan_, _kernel(wl, plan_, dw_shape(wl), ClConfig.of(cfg)), "dwcl")


def default_lanes(target) -> int:
    return 16 if target.has("avx512") else 8


def default_config(wl: Workload, target) -> dict:
    if not (target.has("avx512") or target.has("avx2")):
        raise UnsupportedError(f"target {target.name!r} has neither AVX2 nor AVX-512 for the int8 depthwise kernel")
    lanes = default_lanes(target)
    return {"lanes": lanes, "parallel": True, "vnni": lanes == 16 and target.has("vnni")}


def schedule(sch, stages: Stages, wl: Workload, target, cfg: dict) -> None:
    """Nothing to do: the loops, vectors and parallel jobs are in the generated TIR."""


register(KernelImpl("qdepthwise_cl__x86", plan, compute, schedule, default_config,
                    "int8 depthwise conv, channels in int32 vector lanes (vpmulld), NCHW transposed in/out"),
         "qdepthwise_cl", "x86")
