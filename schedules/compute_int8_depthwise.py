"""The int8 depthwise QConv2d kernel shared by x86 (``schedules/x86/int8_depthwise.py``) and ARM
(``schedules/arm/int8_depthwise.py``): one TIR extern, written with TVMScript's IRBuilder like
``schedules/compute_int8_fast.py`` (contract: ``qcompiler/ref/ops/lowbit.py``, epilogues:
``compute_int8.make_epilogue``).

Depthwise has one input channel per output channel, so the 4-channel dot lanes of the regular
int8 kernel would waste 3/4; here output *columns* are in the vector lanes instead. Parallel jobs,
each a range of (image, output channel) pairs; per pair:

``pack``
    the channel's input rows the conv reads -> a scratch ``[rows, sw, J]`` of ``operands`` (int32 or
    int16) holding ``x - x_zero_point`` with the padding as 0 (exact: a padded pixel is
    ``x = x_zero_point``; |x - zp| <= 255 fits int16), the columns split into ``sw`` phases
    (``col = j * sw + phase``) so that every tap of a stride-``sw`` row is one contiguous vector
    load. Interior columns are converted ``lanes`` at a time (a strided row is one contiguous load
    and a shuffle of its phase's lanes), the borders one by one.
``rows``
    per output row and ``lanes`` columns (the last chunk overlapping, so every store is a full
    vector): ``acc = sum over taps of int32(load(row, phase, j0 + offset)) * int32(w - w_zero_point)``
    (|x - zp| * |w - zp| <= 255 * 255, exact in int32), then the epilogue vectorized over the
    columns, stored as one vector per row chunk. With int32 operands this is ``vpmulld`` + ``vpaddd``
    on x86; with int16 operands the sign-extended int16 product added to int32 is the widening
    multiply-accumulate LLVM selects as ``smlal``/``smlal2`` (AArch64) and ``vmlal.s16`` (armv7).

Knobs: ``DwConfig``; the families choose the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.errors import ConfigError, UnsupportedError

from . import compute_int8_fast as F
from .kernel import Arg, Plan, Stages, TensorSpec, Workload, ceil_div

#: the conv in kernel terms: ``compute_int8_fast.DotShape`` (groups = C, ``og`` the channel multiplier)
DwShape = F.DotShape
dw_shape = F.dot_shape


#: packed row / weight dtypes: |x - zp| and |w - zp| <= 255 fit both
OPERANDS = ("int32", "int16")


@dataclass(frozen=True)
class DwConfig:
    """``lanes``: int32 output columns per chunk (x86: 16 on AVX-512, 8 on AVX2; NEON: 4 per q
    register); ``parallel``: jobs over threads; ``operands``: dtype of the packed rows and weights,
    ``int32`` (x86 ``vpmulld``) or ``int16`` (NEON widening ``smlal`` / ``vmlal.s16``); ``mull``: an
    LLVM intrinsic int16x4 x int16x4 -> int32x4 (``llvm.arm.neon.vmulls``) for each tap's product, 4
    lanes at a time, "" = sign-extended multiply in the IR (armv7 needs it: from sign extensions LLVM
    hoists the widened weight broadcasts as int32 vectors and emits vmovl + vmla.i32); ``chunks``: row
    chunks per loop iteration, accumulated tap by tap (independent chains for in-order cores)."""

    lanes: int
    parallel: bool = True
    operands: str = "int32"
    mull: str = ""
    chunks: int = 1

    def __post_init__(self):
        if self.lanes not in (4, 8, 16):
            raise ConfigError(f"depthwise lanes must be 4, 8 or 16, got {self.lanes}")
        if self.operands not in OPERANDS:
            raise ConfigError(f"depthwise operands must be one of {OPERANDS}, got {self.operands!r}")
        if not 1 <= self.chunks <= 8:
            raise ConfigError(f"depthwise chunks must be 1..8, got {self.chunks}")
        if self.mull and (self.operands != "int16" or self.lanes % 4):
            raise ConfigError(f"depthwise mull {self.mull!r} needs int16 operands and lanes a multiple of 4")

    @staticmethod
    def of(cfg: dict) -> "DwConfig":
        try:
            # configs from before the operands knob (x86 tuning records) meant int32
            return DwConfig(int(cfg["lanes"]), bool(cfg["parallel"]), str(cfg.get("operands", "int32")),
                            str(cfg.get("mull", "")), int(cfg.get("chunks", 1)))
        except KeyError as e:
            raise ConfigError(f"int8 depthwise kernel config lacks knob {e}") from None


#: parallel jobs, each a range of (image, channel) pairs: its scratch rows are one heap workspace
#: (malloc / free), which per channel cost 960-channel 7x7 layers more than their arithmetic
JOBS = 32


def _cols(s: DwShape, L: int) -> int:
    """Packed columns per phase: every chunk of ``L`` output columns plus the taps' reach."""
    return max(s.ow, L) + ((s.kw - 1) * s.dw) // s.sw


def pack_weights(w: np.ndarray, s: DwShape, operands: str = "int32") -> np.ndarray:
    """``w - w_zero_point`` as ``operands`` ``[O, KH, KW]`` (broadcast per tap)."""
    return (np.asarray(w).reshape(s.o, s.kh, s.kw).astype(np.int32) - np.int32(s.w_zero_point)).astype(operands)


def plan(wl: Workload, cfg: dict) -> Plan:
    s = dw_shape(wl)
    op = DwConfig.of(cfg).operands
    if op == "int16":
        xi = np.iinfo(s.x_dtype)
        big = max(abs(xi.min - s.x_zero_point), abs(xi.max - s.x_zero_point), 128 + abs(s.w_zero_point))
        if big > np.iinfo(np.int16).max:
            raise UnsupportedError(f"int8 depthwise with int16 operands: x_zero_point {s.x_zero_point} / "
                                   f"w_zero_point {s.w_zero_point} put x - zp or w - zp outside int16")
    name = f"dww_z{s.w_zero_point}" if op == "int32" else f"dww_{op}_z{s.w_zero_point}"
    return weights_plan(wl, Arg("const", 1, TensorSpec((s.o, s.kh, s.kw), op, True), name,
                                lambda ins, s=s, op=op: pack_weights(ins[1], s, op)))


def weights_plan(wl: Workload, weights: Arg) -> Plan:
    """The input, the packed ``weights``, the bias / epilogue inputs, the output (the depthwise
    kernels here and in x86/int8_depthwise_cl.py)."""
    args = [Arg("input", 0, wl.inputs[0]), weights]
    args += [Arg("input", i, spec) for i, spec in enumerate(wl.inputs) if i >= 2 and spec is not None]
    args.append(Arg("output", 0, wl.outputs[0]))
    return Plan(tuple(args))


def epilogue_and_bias(wl: Workload, plan_: Plan, ins):
    """In an extern's ``fcompute``: the requantization epilogue over the extern's inputs ``ins``
    and the bias buffer (None without a bias)."""
    from .compute_int8 import make_epilogue

    by_pos = {pos: ins[k] for k, pos in enumerate(p for p, a in enumerate(plan_.args) if a.kind != "output")}
    bias = next((by_pos[p] for p, a in enumerate(plan_.args) if a.kind == "input" and a.index == 2), None)
    return make_epilogue(wl, plan_, by_pos), bias


def extern_stages(wl: Workload, plan_: Plan, fcompute, name: str) -> Stages:
    """The kernel as one ``te.extern`` stage ``name`` over the plan's inputs and consts."""
    from tvm import te

    ph = {pos: te.placeholder(a.spec.shape, a.spec.dtype, name=f"arg{pos}")
          for pos, a in enumerate(plan_.args) if a.kind != "output"}
    inputs = [ph[pos] for pos in sorted(ph)]
    out = te.extern(wl.outputs[0].shape, inputs, fcompute, name=name, dtype=wl.outputs[0].dtype)
    args = [ph[pos] if a.kind != "output" else out for pos, a in enumerate(plan_.args)]
    return Stages(args, {"out": out})


def _kernel(wl: Workload, plan_: Plan, s: DwShape, dc: DwConfig):
    from tvm import tirx
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    L = dc.lanes
    J = _cols(s, L)
    rows, sw = s.rows, s.sw
    n_xc = ceil_div(s.ow, L)
    U = min(dc.chunks, n_xc)
    # int32 accumulators of `V` lanes: all L at once, or 4 per widening intrinsic
    V = 4 if dc.mull else L
    per_job = ceil_div(s.n * s.o, JOBS)
    n_jobs = ceil_div(s.n * s.o, per_job)
    od = dc.operands
    zp = tirx.const(s.x_zero_point, od)

    def fcompute(ins, outs):
        epi, bias = epilogue_and_bias(wl, plan_, ins)
        x, wt = ins[0], ins[1]
        loop = T.parallel if dc.parallel else T.serial
        with IRBuilder() as ib, loop(0, n_jobs) as job:
            out = F._flat(outs[0])
            xf = F._flat(x)
            wf = F._flat(wt)
            # per job, inside the parallel loop (a block-level buffer would be shared by threads);
            # TVM makes them heap workspaces, so a job runs several channels
            prow = T.decl_buffer((rows * sw * J,), od, scope="local")
            acc = T.decl_buffer((U * L,), "int32", scope="local")
            with T.serial(0, per_job) as k:
                chan = T.bind(job * per_job + k)
                with T.If(chan < s.n * s.o):
                    with T.Then():
                        nn = T.bind(chan // s.o)
                        oc = T.bind(chan % s.o)
                        ci = T.bind(oc // s.og)
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
                                        T.buffer_store(prow, tirx.Select(ok, src.astype(od) - zp, tirx.const(0, od)),
                                                       [base + j])

                                with T.If(tirx.Not(inside)):
                                    with T.Then():
                                        with T.serial(0, J) as j:
                                            T.buffer_store(prow, tirx.const(0, od), [base + j])
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
                                                    val = v.astype(f"{od}x{L}") - tirx.Broadcast(zp, L)
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
                        # -- rows: taps accumulated in int32 registers (int16 operands sign-extended: the
                        # widening multiply-accumulate), epilogue, one vector store per chunk
                        with T.serial(0, s.oh) as y:
                            with T.serial(0, ceil_div(n_xc, U)) as xc:
                                # U chunks per iteration, tap by tap: U * L / V independent accumulator
                                # chains for in-order cores (a clamped extra chunk recomputes the last one)
                                x0s = [T.bind(tirx.min((xc * U + u) * L, s.ow - L)) if s.ow >= L else 0
                                       for u in range(U)]
                                totals = {}
                                for ky in range(s.kh):
                                    for kx in range(s.kw):
                                        ph, off = (kx * s.dw) % sw, (kx * s.dw) // sw
                                        wv = tirx.Broadcast(wf[(oc * s.kh + ky) * s.kw + kx], V)
                                        for u in range(U):
                                            for h in range(0, L, V):
                                                a = prow.vload([((y * s.sh + ky * s.dh) * sw + ph) * J + x0s[u] + off + h],
                                                               f"{od}x{V}")
                                                if dc.mull:
                                                    prod = tirx.call_llvm_pure_intrin(f"int32x{V}", dc.mull, a, wv)
                                                elif od != "int32":
                                                    prod = a.astype(f"int32x{V}") * wv.astype(f"int32x{V}")
                                                else:
                                                    prod = a * wv
                                                totals[u, h] = prod if (u, h) not in totals else totals[u, h] + prod
                                for (u, h), total in totals.items():
                                    T.buffer_store(acc, total, [tirx.Ramp(u * L + h, 1, V)])
                                for u in range(U):
                                    obase = T.bind(((nn * s.o + oc) * s.oh + y) * s.ow + x0s[u])
                                    with T.vectorized(0, L) as lane:
                                        v = acc[u * L + lane] + bias[oc] if bias is not None else acc[u * L + lane]
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
    return extern_stages(wl, plan_, _kernel(wl, plan_, dw_shape(wl), DwConfig.of(cfg)), "dw")
