"""Fast int8 depthwise QConv2d on x86 (contract: ``qcompiler/ref/ops/lowbit.py``, epilogues:
``compute_int8.make_epilogue``): one TIR extern, written with TVMScript's IRBuilder like
``schedules/compute_int8_fast.py``.

Depthwise has one input channel per output channel, so the 4-channel dot lanes of the regular
int8 kernel would waste 3/4; here output *columns* are in the vector lanes instead (16 int32 on
AVX-512, 8 on AVX2). One parallel job per (image, output channel):

``pack``
    the channel's input rows the conv reads -> an int32 scratch ``[rows, sw, J]`` holding
    ``x - x_zero_point`` with the padding as 0 (exact: a padded pixel is ``x = x_zero_point``), the
    columns split into ``sw`` phases (``col = j * sw + phase``) so that every tap of a stride-``sw``
    row is one contiguous vector load. Interior columns are converted ``lanes`` at a time (a
    strided row is one contiguous load and a shuffle of its phase's lanes), the borders one by one.
``rows``
    per output row and ``lanes`` columns (the last chunk overlapping, so every store is a full
    vector): ``acc = sum over taps of load(row, phase, j0 + offset) * broadcast(w - w_zero_point)``
    in int32 (``vpmulld`` + ``vpaddd``; |x - zp| * |w - zp| <= 255 * 255, exact), then the
    epilogue vectorized over the columns, stored as one vector per row chunk.

Measured on Zen 4 (1 thread, ``benchmarks/kernels.py``: 144 channels 56x56, 3x3 pad 1, uint8
output with float requantization; medians of 25 single calls, onnxruntime int8 QLinearConv with
``group=144`` in the same run):

==========  ==========  ===========================  ================  ========
stride      this        generic qdepthwise_conv2d    onnxruntime int8  x ORT
==========  ==========  ===========================  ================  ========
1           0.185 ms    0.535 ms                     0.247 ms          1.34
2           0.074 ms    0.425 ms                     0.089 ms          1.20
==========  ==========  ===========================  ================  ========

Stride 2 first loaded its rows' phases as 31-byte vectors, which LLVM split into byte inserts
(0.146 ms, 0.61x ORT); whole 32-byte loads (shifted back by one byte at a row's end) fixed it.
No knob but ``lanes`` (the vector width) is exposed: each job holds one channel's rows in L1.

Smaller MobileNet layers (medians of 25 single calls, same run; ``lanes`` 16 / 8 / 4):

=================  ==============================  ========  ======
layer              ms                              ORT int8  x ORT
=================  ==============================  ========  ======
576x14x14 s1       16: 0.108, **8: 0.051**         0.063     1.23
576x14x14 s2       8: 0.036, 4: 0.031              0.030     0.83-0.97
960x7x7 s1         8: 0.047, 4: 0.045              0.031     0.66
144x56x56 s1       **16: 0.181**, 8: 0.175         0.245     1.36
=================  ==============================  ========  ======

Before the jobs ran several channels each, 576x14x14 took 0.076 ms and 960x7x7 0.083 ms. So
``lanes`` is 16 on AVX-512 rows of >= 32 outputs, else 8 on rows of >= 8, else 4 (a row narrower
than the vector stores through a lane mask, which TVM scalarizes). The 7-wide layers stay below
onnxruntime: ~170 cycles per channel of fixed work (9 packed rows, 7 output rows) against its ~110.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.errors import ConfigError, UnsupportedError

from .. import compute_int8_fast as F
from ..impls import register
from ..kernel import Arg, KernelImpl, Plan, Stages, TensorSpec, Workload, ceil_div

@dataclass(frozen=True)
class DwShape:
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    oh: int
    ow: int
    x_dtype: str
    x_zero_point: int
    w_zero_point: int

    @property
    def mult(self) -> int:
        return self.o // self.c

    @property
    def rows(self) -> int:
        """Padded input rows the conv reads."""
        return (self.oh - 1) * self.sh + (self.kh - 1) * self.dh + 1


def dw_shape(wl: Workload) -> DwShape:
    x, w = wl.inputs[0], wl.inputs[1]
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    st, dl, pads = wl.attr("strides"), wl.attr("dilations"), wl.attr("pads")
    oh, ow = wl.outputs[0].shape[2:]
    return DwShape(n, c, h, wd, o, kh, kw, st[0], st[1], dl[0], dl[1], pads[0], pads[1], oh, ow, x.dtype,
                   int(wl.attr("x_zero_point", 0)), int(wl.attr("w_zero_point", 0)))


@dataclass(frozen=True)
class DwConfig:
    """``lanes``: int32 output columns per vector (16: AVX-512, 8: AVX2); ``parallel``: jobs
    (image, channel) over threads."""

    lanes: int
    parallel: bool = True

    def __post_init__(self):
        if self.lanes not in (4, 8, 16):
            raise ConfigError(f"depthwise lanes must be 4, 8 or 16, got {self.lanes}")

    @staticmethod
    def of(cfg: dict) -> "DwConfig":
        try:
            return DwConfig(int(cfg["lanes"]), bool(cfg["parallel"]))
        except KeyError as e:
            raise ConfigError(f"int8 depthwise kernel config lacks knob {e}") from None


#: parallel jobs, each a range of (image, channel) pairs: its scratch rows are one heap workspace
#: (malloc / free), which per channel cost 960-channel 7x7 layers more than their arithmetic
JOBS = 32


def _cols(s: DwShape, L: int) -> int:
    """Packed columns per phase: every chunk of ``L`` output columns plus the taps' reach."""
    return max(s.ow, L) + ((s.kw - 1) * s.dw) // s.sw


def pack_weights(w: np.ndarray, s: DwShape) -> np.ndarray:
    """``w - w_zero_point`` as int32 ``[O, KH, KW]`` (broadcast per tap)."""
    return (np.asarray(w).reshape(s.o, s.kh, s.kw).astype(np.int32) - np.int32(s.w_zero_point))


def plan(wl: Workload, cfg: dict) -> Plan:
    s = dw_shape(wl)
    args = [Arg("input", 0, wl.inputs[0]),
            Arg("const", 1, TensorSpec((s.o, s.kh, s.kw), "int32", True), f"dww_z{s.w_zero_point}",
                lambda ins, s=s: pack_weights(ins[1], s))]
    args += [Arg("input", i, spec) for i, spec in enumerate(wl.inputs) if i >= 2 and spec is not None]
    args.append(Arg("output", 0, wl.outputs[0]))
    return Plan(tuple(args))


def _kernel(wl: Workload, plan_: Plan, s: DwShape, dc: DwConfig):
    from tvm import tirx
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    from ..compute_int8 import make_epilogue

    L = dc.lanes
    J = _cols(s, L)
    rows, sw = s.rows, s.sw
    n_xc = ceil_div(s.ow, L)
    per_job = ceil_div(s.n * s.o, JOBS)
    n_jobs = ceil_div(s.n * s.o, per_job)
    zp = tirx.const(s.x_zero_point, "int32")

    def fcompute(ins, outs):
        by_pos = {pos: ins[k] for k, pos in enumerate(p for p, a in enumerate(plan_.args) if a.kind != "output")}
        epi = make_epilogue(wl, plan_, by_pos)
        bias = next((by_pos[p] for p, a in enumerate(plan_.args) if a.kind == "input" and a.index == 2), None)
        x, wt = ins[0], ins[1]
        loop = T.parallel if dc.parallel else T.serial
        with IRBuilder() as ib, loop(0, n_jobs) as job:
            out = F._flat(outs[0])
            xf = F._flat(x)
            wf = F._flat(wt)
            # per job, inside the parallel loop (a block-level buffer would be shared by threads);
            # TVM makes them heap workspaces, so a job runs several channels
            prow = T.decl_buffer((rows * sw * J,), "int32", scope="local")
            acc = T.decl_buffer((L,), "int32", scope="local")
            with T.serial(0, per_job) as k:
                chan = T.bind(job * per_job + k)
                with T.If(chan < s.n * s.o):
                    with T.Then():
                        nn = T.bind(chan // s.o)
                        oc = T.bind(chan % s.o)
                        ci = T.bind(oc // s.mult)
                        xrow0 = (nn * s.c + ci) * s.h
                        # -- pack: rows x phases, interior columns `L` at a time, borders one by one
                        for ph in range(sw):
                            j_lo = max(0, ceil_div(s.pl - ph, sw))
                            j_hi = min(J, (s.w - 1 + s.pl - ph) // sw + 1)
                            n_int = max(0, j_hi - j_lo)
                            # a shifted-back load of a strided row stays in the row when it is this wide
                            vec = n_int >= L and (sw == 1 or s.w >= (L + 1) * sw)
                            with T.serial(0, rows) as r:
                                yin = r - s.pt
                                base = T.bind((r * sw + ph) * J)
                                inside = tirx.all(yin >= 0, yin < s.h)

                                def one_by_one(lo, hi):
                                    with T.serial(lo, hi) as j:
                                        xin = j * sw + ph - s.pl
                                        ok = tirx.all(xin >= 0, xin < s.w)
                                        src = xf[(xrow0 + yin) * s.w + tirx.min(tirx.max(xin, 0), s.w - 1)]
                                        T.buffer_store(prow, tirx.Select(ok, src.astype("int32") - zp, tirx.const(0, "int32")),
                                                       [base + j])

                                with T.If(tirx.Not(inside)):
                                    with T.Then():
                                        with T.serial(0, J) as j:
                                            T.buffer_store(prow, tirx.const(0, "int32"), [base + j])
                                with T.If(inside):
                                    with T.Then():
                                        if not vec:
                                            one_by_one(0, J)
                                        else:
                                            one_by_one(0, j_lo)
                                            one_by_one(j_hi, J)
                                            with T.serial(0, ceil_div(n_int, L)) as k:
                                                j0 = T.bind(j_lo + tirx.min(k * L, n_int - L))
                                                c0 = T.bind((xrow0 + yin) * s.w + j0 * sw + ph - s.pl)

                                                def convert(v, first):
                                                    if sw > 1:   # the phase's lanes of L * sw bytes
                                                        v = tirx.Shuffle([v], [tirx.const(first + i * sw, "int32") for i in range(L)])
                                                    val = v.astype(f"int32x{L}") - tirx.Broadcast(zp, L)
                                                    T.buffer_store(prow, val, [tirx.Ramp(base + j0, 1, L)])

                                                if sw == 1:
                                                    convert(xf.vload([c0], f"{s.x_dtype}x{L}"), 0)
                                                else:
                                                    # whole L * sw byte loads (an odd length splits into byte
                                                    # inserts), shifted back by sw - 1 at the row's end
                                                    span = L * sw
                                                    with T.If(j0 * sw + ph - s.pl + span <= s.w):
                                                        with T.Then():
                                                            convert(xf.vload([c0], f"{s.x_dtype}x{span}"), 0)
                                                        with T.Else():
                                                            convert(xf.vload([c0 - (sw - 1)], f"{s.x_dtype}x{span}"), sw - 1)
                        # -- rows: taps accumulated in int32 registers, epilogue, one vector store per chunk
                        with T.serial(0, s.oh) as y:
                            with T.serial(0, n_xc) as xc:
                                x0 = T.bind(tirx.min(xc * L, s.ow - L)) if s.ow >= L else 0
                                total = None
                                for ky in range(s.kh):
                                    for kx in range(s.kw):
                                        ph, off = (kx * s.dw) % sw, (kx * s.dw) // sw
                                        a = prow.vload([((y * s.sh + ky * s.dh) * sw + ph) * J + x0 + off], f"int32x{L}")
                                        wv = tirx.Broadcast(wf[(oc * s.kh + ky) * s.kw + kx], L)
                                        total = a * wv if total is None else total + a * wv
                                T.buffer_store(acc, total, [tirx.Ramp(0, 1, L)])
                                obase = T.bind(((nn * s.o + oc) * s.oh + y) * s.ow + x0)
                                with T.vectorized(0, L) as lane:
                                    v = acc[lane] + bias[oc] if bias is not None else acc[lane]
                                    value = F._vectorizable(epi(v, oc))
                                    if s.ow >= L:
                                        T.buffer_store(out, value, [obase + lane])
                                    else:
                                        with T.If(lane < s.ow):
                                            with T.Then():
                                                T.buffer_store(out, value, [obase + lane])
        return ib.get()

    return fcompute


def compute(wl: Workload, plan_: Plan, cfg: dict) -> Stages:
    from tvm import te

    s = dw_shape(wl)
    dc = DwConfig.of(cfg)
    ph = {pos: te.placeholder(a.spec.shape, a.spec.dtype, name=f"arg{pos}")
          for pos, a in enumerate(plan_.args) if a.kind != "output"}
    inputs = [ph[pos] for pos in sorted(ph)]
    out = te.extern(wl.outputs[0].shape, inputs, _kernel(wl, plan_, s, dc), name="dw", dtype=wl.outputs[0].dtype)
    args = [ph[pos] if a.kind != "output" else out for pos, a in enumerate(plan_.args)]
    return Stages(args, {"out": out})


def default_config(wl: Workload, target) -> dict:
    if not (target.has("avx512") or target.has("avx2")):
        raise UnsupportedError(f"target {target.name!r} has neither AVX2 nor AVX-512 for the int8 depthwise kernel")
    # no wider than the row: a row narrower than the vector stores through a lane mask (scalar)
    ow = dw_shape(wl).ow
    lanes = 16 if target.has("avx512") and ow >= 32 else 8 if ow >= 8 else 4
    return {"lanes": lanes, "parallel": True}


def schedule(sch, stages: Stages, wl: Workload, target, cfg: dict) -> None:
    """Nothing to do: the loops, vectors and parallel jobs are in the generated TIR."""


register(KernelImpl("qdepthwise_rows__x86", plan, compute, schedule, default_config,
                    "int8 depthwise conv, output columns in int32 vector lanes (vpmulld)"),
         "qdepthwise_rows", "x86")
