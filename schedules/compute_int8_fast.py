"""Fast int8 QConv2d / QDense: a register-tiled micro-kernel over 32-bit dot-product lanes, written
directly as TIR (contract: ``qcompiler/ref/ops/lowbit.py``; epilogues: ``compute_int8.make_epilogue``).

Why TIR and not a TE reduction + tensorize: ``sch.tensorize`` crashes in TVM 0.27 (even with TVM's
own ``dot_16x4_vnni``), and a TE reduction cannot carry the 4-byte vector operands the dot-product
instructions take. So each kernel is two ``te.extern`` stages whose bodies are built with TVMScript's
IRBuilder, with explicit vector loads, broadcasts and ``call_llvm_pure_intrin``:

``pack``
    activations -> NCHW{g}c: ``xw[n, plane, row, col, e]`` with the spatial padding materialised,
    ``g`` = the ISA's group (4 bytes for u8 x s8, 2 int16 for i16 x i16) consecutive input channels
    of one pixel in one 32-bit lane (channels padded per conv group to a multiple of ``g``). For
    QDense this is just the rows of x with K padded. Interior pixels are converted 16 (or 8) at a
    time: ``g`` contiguous channel-row loads interleaved by one shuffle. With ``lane_over="kc"``
    (few input channels, e.g. a 7x7 C=3 stem) it is the padded image in NHWC instead, and a lane is
    ``g`` consecutive (kx, c) elements of a window row, read unaligned straight from it: 21 values
    of a 7x3 row in 6 lanes instead of 7 taps x 1 padded lane. With ``lane_over="window"`` it is,
    per output row, the KH input rows it reads interleaved per column, so that an output pixel's
    whole window (kx, ky, c) is contiguous: the stem's 147 values in 37 lanes instead of 49.
``dot``
    output channels in the vector lanes, ``tile_p`` output pixels (conv: flattened n, oh, ow; dense:
    rows) x ``vectors`` vectors of ``lanes`` channels accumulated in registers; each reduction step
    broadcasts one 32-bit activation lane per pixel and multiplies it with ``vectors`` weight
    vectors, laid out ``[OB, CW, KH, KW, vectors, lanes, g]`` at compile time (kc:
    ``[OB, KH, CW, vectors, lanes, g]``, the row's (kx, c) zero-padded; window:
    ``[OB, CW, vectors, lanes, g]``, the window's (kx, ky, c) zero-padded). The epilogue runs on
    the registers and stores straight into the NCHW / [M, N] output.

Arithmetic (exact; int32 wraps like two's complement, so a partial sum that leaves int32 still ends
at the true accumulator whenever that fits int32, which the contract requires):

* ``u8s8`` (VNNI ``vpdpbusd``, ARM ``udot``-style): activations as unsigned bytes ``xu = x`` (uint8)
  or ``x ^ 0x80`` (int8, i.e. ``x + 128``), ``zu`` the zero point in that domain; symmetric weights
  (``w_zero_point == 0``). ``acc = sum xu * w + corr[o] + bias[o]`` with the compile-time
  ``corr[o] = -zu * sum(w[o])``; padded pixels hold ``zu`` (a real zero), padded channels 0.
* ``s16`` (``vpmaddwd``): activations ``x - x_zero_point`` and weights ``w - w_zero_point`` as int16
  (any zero points), pairs summed exactly into int32; padding is 0; ``acc = sum + bias[o]``.
* ``s8s8`` (ARM ``sdot``): like ``u8s8`` in the signed byte domain: ``xs = x`` (int8) or ``x ^ 0x80``
  (uint8, i.e. ``x - 128``), ``zs`` the zero point there, ``corr[o] = -zs * sum(w[o])``.
* ``s16mla`` (NEON ``smlal``/``smlal2``, armv7 ``vmlal.s16``): the ``s16`` operands with one int16 per
  lane (``group`` 1): ``acc += sext(x) * sext(w)`` written as plain IR, which LLVM selects as the
  widening multiply-accumulate (NEON has no pair-summing ``vpmaddwd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from qcompiler.errors import ConfigError, UnsupportedError

from .kernel import Arg, Plan, Stages, TensorSpec, Workload, ceil_div


# -- ISA description -----------------------------------------------------------------------------

#: reduction elements per 32-bit lane of each scheme
_GROUP = {"u8s8": 4, "s8s8": 4, "s16": 2, "s16mla": 1}

#: ``FastConfig.lane_over`` values
LANE_OVER = ("c", "kc", "window")

#: the largest input channels per group the ``kc`` / ``window`` lanes take (they exist for few
#: channels: from ``group`` channels on, ``c`` lanes waste nothing, and the packs' interleave
#: shuffles grow with C)
KC_MAX_CHANNELS = 16

#: the largest KH * C the ``window`` pack takes (its interior interleaves KH * C channel rows in one
#: shuffle of 16 * KH * C bytes; the stem needs 21)
WINDOW_MAX_COLUMN = 32


@dataclass(frozen=True)
class DotIsa:
    """One 32-bit-lane dot-product instruction as the micro-kernel uses it.

    ``scheme``: ``"u8s8"`` / ``"s8s8"`` (4 unsigned / signed x signed bytes per lane, accumulating
    intrinsic ``acc' = f(acc, a, b)``), ``"s16"`` (2 int16 per lane, ``acc' = acc + f(a, b)``) or
    ``"s16mla"`` (1 int16 per lane, ``acc' = acc + a * b`` widened; ``intrinsic`` unused).
    ``lanes``: int32 lanes per vector register. ``intrinsic``: the LLVM intrinsic name.
    """

    name: str
    scheme: str
    lanes: int
    intrinsic: str

    def __post_init__(self):
        if self.scheme not in _GROUP:
            raise ConfigError(f"DotIsa {self.name}: scheme must be one of {sorted(_GROUP)}, got {self.scheme!r}")
        if self.lanes not in (4, 8, 16):
            raise ConfigError(f"DotIsa {self.name}: lanes must be 4, 8 or 16, got {self.lanes}")

    @property
    def group(self) -> int:
        """Reduction elements per 32-bit lane."""
        return _GROUP[self.scheme]

    @property
    def bytes(self) -> bool:
        """Byte operands: symmetric weights, the zero-point term a compile-time constant."""
        return self.scheme in ("u8s8", "s8s8")

    @property
    def x_dtype(self) -> str:
        return {"u8s8": "uint8", "s8s8": "int8"}.get(self.scheme, "int16")

    @property
    def w_dtype(self) -> str:
        return "int8" if self.bytes else "int16"

    def operand(self, dtype: str) -> str:
        """The vector type of one full operand register of ``dtype`` elements."""
        return f"{dtype}x{self.lanes * self.group}"


@dataclass(frozen=True)
class FastConfig:
    """Knobs of the micro-kernel. ``isa``: a name of the family's ISA table; ``tile_p``: output
    pixels (conv) / rows (dense) per register tile; ``vectors``: accumulator vectors per pixel
    (``vectors * lanes`` output channels per tile); ``parallel``: spread the tiles over threads;
    ``lane_over``: what one 32-bit lane groups, ``"c"`` (``group`` input channels of one tap) or
    ``"kc"`` (``group`` consecutive (kx, c) elements of one window row: convs with few input
    channels, see ``_pack_conv_kc``) or ``"window"`` (consecutive (kx, ky, c) of the whole window,
    ``_pack_conv_window``)."""

    isa: str
    tile_p: int
    vectors: int
    parallel: bool = True
    lane_over: str = "c"

    def __post_init__(self):
        if self.lane_over not in LANE_OVER:
            raise ConfigError(f"lane_over must be one of {LANE_OVER}, got {self.lane_over!r}")
        if not 1 <= self.tile_p <= 32:
            raise ConfigError(f"tile_p must be in [1, 32], got {self.tile_p}")
        if not 1 <= self.vectors <= 16:
            raise ConfigError(f"vectors must be in [1, 16], got {self.vectors}")
        if self.tile_p * self.vectors > 32:
            raise ConfigError(f"tile_p * vectors = {self.tile_p * self.vectors} accumulators do not fit in "
                              f"32 vector registers")

    @staticmethod
    def of(cfg: dict) -> "FastConfig":
        try:
            return FastConfig(str(cfg["isa"]), int(cfg["tile_p"]), int(cfg["vectors"]), bool(cfg["parallel"]),
                              str(cfg.get("lane_over", "c")))
        except KeyError as e:
            raise ConfigError(f"fast int8 kernel config lacks knob {e}") from None


# -- geometry ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DotShape:
    """QConv2d (or QDense as a 1x1 conv over a 1x1 image with batch M) in kernel terms."""

    n: int
    c: int
    h: int
    w: int
    o: int
    groups: int
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
    dense: bool

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def og(self) -> int:
        return self.o // self.groups

    @property
    def rows(self) -> int:
        """Padded input rows the conv reads."""
        return (self.oh - 1) * self.sh + (self.kh - 1) * self.dh + 1

    @property
    def cols(self) -> int:
        return (self.ow - 1) * self.sw + (self.kw - 1) * self.dw + 1

    @property
    def pixels(self) -> int:
        return self.n * self.oh * self.ow


def dot_shape(wl: Workload) -> DotShape:
    x, w = wl.inputs[0], wl.inputs[1]
    common = dict(x_dtype=x.dtype, x_zero_point=int(wl.attr("x_zero_point", 0)),
                  w_zero_point=int(wl.attr("w_zero_point", 0)))
    if wl.op == "QDense":
        m, k = x.shape
        return DotShape(m, k, 1, 1, w.shape[0], 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, dense=True, **common)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    st, dl, pads = wl.attr("strides"), wl.attr("dilations"), wl.attr("pads")
    oh, ow = wl.outputs[0].shape[2:]
    groups = int(wl.attr("groups", wl.attr("group", 1)))
    return DotShape(n, c, h, wd, o, groups, kh, kw, st[0], st[1], dl[0], dl[1], pads[0], pads[1], oh, ow,
                    dense=False, **common)


@dataclass(frozen=True)
class Blocking:
    """How channels are blocked for one (shape, isa, config)."""

    cw: int        # 32-bit lanes per pixel per conv group (ceil(C/g / group)); kc: per window row
                   # (ceil(KW * C / group)); window: per window (ceil(KH * KW * C / group))
    ob_g: int      # output-channel blocks per conv group
    block: int     # output channels per block (vectors * lanes)
    lanes_over: str = "c"   # FastConfig.lane_over

    @property
    def kc(self) -> bool:
        return self.lanes_over == "kc"

    @property
    def window(self) -> bool:
        return self.lanes_over == "window"

    def o_pad(self, groups: int) -> int:
        return groups * self.ob_g * self.block

    def weight_shape(self, s: DotShape, isa: DotIsa, fc: FastConfig) -> tuple:
        """The packed weights' shape: ``[OB, CW, KH, KW, vectors, lanes, group]``, kc
        ``[OB, KH, CW, vectors, lanes, group]``, window ``[OB, CW, vectors, lanes, group]``."""
        taps = (s.kh, self.cw) if self.kc else (self.cw,) if self.window else (self.cw, s.kh, s.kw)
        return (s.groups * self.ob_g,) + taps + (fc.vectors, isa.lanes, isa.group)


def blocking(s: DotShape, isa: DotIsa, fc: FastConfig) -> Blocking:
    block = fc.vectors * isa.lanes
    if fc.lane_over in ("kc", "window"):
        why = ("a dense layer" if s.dense else f"{s.groups} groups" if s.groups != 1 else
               f"horizontal dilation {s.dw}" if s.dw != 1 else
               f"{s.cg} input channels (at most {KC_MAX_CHANNELS})" if s.cg > KC_MAX_CHANNELS else
               f"KH * C = {s.kh * s.cg} (at most {WINDOW_MAX_COLUMN})"
               if fc.lane_over == "window" and s.kh * s.cg > WINDOW_MAX_COLUMN else "")
        if why:
            raise UnsupportedError(f"int8 dot kernel lane_over={fc.lane_over!r} (lanes over a window's "
                                   f"(kx, c), contiguous in the pack) does not take {why}")
        per = s.kw * s.cg * (s.kh if fc.lane_over == "window" else 1)
        return Blocking(ceil_div(per, isa.group), ceil_div(s.og, block), block, fc.lane_over)
    return Blocking(ceil_div(s.cg, isa.group), ceil_div(s.og, block), block)


def check_supported(s: DotShape, isa: DotIsa) -> None:
    if isa.bytes and s.w_zero_point != 0:
        raise UnsupportedError(f"{'QDense' if s.dense else 'QConv2d'}: the {isa.name} ({isa.scheme}) byte "
                               f"dot-product kernel needs symmetric weights, got w_zero_point {s.w_zero_point}")
    if s.c % s.groups or s.o % s.groups:
        raise UnsupportedError(f"QConv2d int8 dot kernel: channels {s.c}->{s.o} are not divisible by groups {s.groups}")


def reduction_steps(s: DotShape, isa: DotIsa, lanes_over: str) -> int:
    """32-bit lanes per output pixel (the dot stage's reduction steps) of each ``lane_over``."""
    if lanes_over == "window":
        return ceil_div(s.kh * s.kw * s.cg, isa.group)
    if lanes_over == "kc":
        return s.kh * ceil_div(s.kw * s.cg, isa.group)
    return s.kh * s.kw * ceil_div(s.cg, isa.group)


def default_lane_over(s: DotShape, isa: DotIsa) -> str:
    """The ``lane_over`` with the fewest reduction steps, ties to the smaller pack (c, kc, window):
    with 4 bytes per lane the 7x7 C=3 stem takes ``"window"`` (37 steps vs kc 42, c 49), 3x3 C=3
    ``"window"`` (7 vs 9, 9), 3x3 C=1 ``"kc"`` (3, tied with window; c 9); many channels, groups,
    horizontal dilation, dense and one element per lane (``s16mla``: every choice ties) ``"c"``
    (measurements in ``schedules/x86/int8.py`` and ``schedules/arm/int8.py``)."""
    if s.dense or s.groups != 1 or s.dw != 1 or s.cg > KC_MAX_CHANNELS:
        return "c"
    candidates = ("c", "kc", "window") if s.kh * s.cg <= WINDOW_MAX_COLUMN else ("c", "kc")
    return min(candidates, key=lambda lo: reduction_steps(s, isa, lo))


def x_zero_domain(s: DotShape, isa: DotIsa) -> int:
    """The activation zero point in ``isa``'s activation domain (byte schemes: signed / unsigned
    bytes; padded pixels hold it)."""
    if isa.scheme == "s8s8":
        return s.x_zero_point - (128 if s.x_dtype == "uint8" else 0)
    return s.x_zero_point + (128 if s.x_dtype == "int8" else 0)


# -- compile-time constants ------------------------------------------------------------------------

def pack_weights(w: np.ndarray, s: DotShape, isa: DotIsa, fc: FastConfig) -> np.ndarray:
    """``w`` ([O, C/g, KH, KW] or [N, K]) -> ``[OB, CW, KH, KW, vectors, lanes, group]`` (minus the
    weight zero point for s16), zero output channels / input channels appended per conv group;
    kc: ``[OB, KH, CW, vectors, lanes, group]``, a window row's (kx, c) zero-padded to ``CW * group``
    (the pack's reads past the row's end, the next pixel's values, meet these zeros); window:
    ``[OB, CW, vectors, lanes, group]`` over the window's (kx, ky, c), zero-padded likewise."""
    b = blocking(s, isa, fc)
    g, L, V = isa.group, isa.lanes, fc.vectors
    w4 = np.asarray(w).reshape(s.o, s.cg, s.kh, s.kw).astype(np.int16)
    if not isa.bytes:
        w4 = w4 - np.int16(s.w_zero_point)
    if b.window:
        full = np.zeros((b.ob_g * b.block, b.cw * g), np.int16)
        full[:s.o, :s.kw * s.kh * s.cg] = w4.transpose(0, 3, 2, 1).reshape(s.o, -1)
        full = full.reshape(b.ob_g, V, L, b.cw, g)
        return np.ascontiguousarray(full.transpose(0, 3, 1, 2, 4)).astype(isa.w_dtype)
    if b.kc:
        full = np.zeros((b.ob_g * b.block, s.kh, b.cw * g), np.int16)
        full[:s.o, :, :s.kw * s.cg] = w4.transpose(0, 2, 3, 1).reshape(s.o, s.kh, s.kw * s.cg)
        full = full.reshape(b.ob_g, V, L, s.kh, b.cw, g)
        return np.ascontiguousarray(full.transpose(0, 3, 4, 1, 2, 5)).astype(isa.w_dtype)
    full = np.zeros((s.groups, b.ob_g * b.block, b.cw * g, s.kh, s.kw), np.int16)
    full[:, :s.og, :s.cg] = w4.reshape(s.groups, s.og, s.cg, s.kh, s.kw)
    full = full.reshape(s.groups * b.ob_g, V, L, b.cw, g, s.kh, s.kw)
    out = np.ascontiguousarray(full.transpose(0, 3, 5, 6, 1, 2, 4))
    return out.astype(isa.w_dtype)


def channel_index(s: DotShape, b: Blocking) -> np.ndarray:
    """For every padded channel, its real output channel or -1."""
    idx = np.full(s.groups * b.ob_g * b.block, -1, np.int64)
    for gi in range(s.groups):
        base = gi * b.ob_g * b.block
        idx[base: base + s.og] = np.arange(gi * s.og, (gi + 1) * s.og)
    return idx


def weight_correction(w: np.ndarray, s: DotShape, isa: DotIsa, fc: FastConfig) -> np.ndarray:
    """``corr[o_pad]`` int32: the byte schemes' zero-point term ``-zu * sum(w[o])`` (0 in the padding)."""
    b = blocking(s, isa, fc)
    corr = -x_zero_domain(s, isa) * np.asarray(w).reshape(s.o, -1).astype(np.int64).sum(axis=1)
    # |zu * sum(w)| <= 383 * 128 * C*KH*KW; int32 wrap-around is exact anyway (module docstring)
    return pad_channels((corr & 0xFFFFFFFF).astype(np.uint32).view(np.int32), s, b, 0)


def pad_channels(v: np.ndarray, s: DotShape, b: Blocking, fill) -> np.ndarray:
    """A per-output-channel vector laid out over the padded channels (``fill`` in the padding)."""
    idx = channel_index(s, b)
    v = np.asarray(v)
    out = np.full(idx.shape, fill, v.dtype)
    out[idx >= 0] = v[idx[idx >= 0]]
    return out


#: a harmless value for padded channels of each epilogue vector (never stored)
EPILOGUE_FILL = {"int32": 0, "float32": 0.0}


# -- plan ------------------------------------------------------------------------------------------

def plan(wl: Workload, cfg: dict, isa: DotIsa) -> Plan:
    """x as is; packed weights, per-channel offsets and padded epilogue vectors as new constants."""
    from .compute_int8 import epilogue_inputs

    s = dot_shape(wl)
    check_supported(s, isa)
    fc = FastConfig.of(cfg)
    b = blocking(s, isa, fc)
    o_pad = b.o_pad(s.groups)
    layout = f"{isa.scheme}l{isa.lanes}v{fc.vectors}g{s.groups}o{o_pad}" + ("" if b.lanes_over == "c" else b.lanes_over)
    wshape = b.weight_shape(s, isa, fc)
    vec = TensorSpec((o_pad,), "int32", True)
    args = [Arg("input", 0, wl.inputs[0]),
            Arg("const", 1, TensorSpec(wshape, isa.w_dtype, True), f"dotw_{layout}",
                lambda ins, s=s, fc=fc: pack_weights(ins[1], s, isa, fc))]
    if isa.bytes:
        zu = x_zero_domain(s, isa)
        args.append(Arg("const", 1, vec, f"dotcorr_{layout}_z{zu}",
                        lambda ins, s=s, fc=fc: weight_correction(ins[1], s, isa, fc)))
    if wl.input(2) is not None:
        args.append(Arg("const", 2, vec, f"dotbias_{layout}",
                        lambda ins, b=b, s=s: pad_channels(ins[2], s, b, 0)))
    for i in range(epilogue_inputs(wl), len(wl.inputs)):
        spec = wl.inputs[i]
        fill = EPILOGUE_FILL.get(spec.dtype, 1)
        args.append(Arg("const", i, TensorSpec((o_pad,), spec.dtype, True), f"dotep_{layout}",
                        lambda ins, i=i, s=s, b=b, fill=fill: pad_channels(ins[i], s, b, fill)))
    args.append(Arg("output", 0, wl.outputs[0]))
    return Plan(tuple(args))


# -- TIR helpers -----------------------------------------------------------------------------------

def _flat(buf):
    """A 1-D view of ``buf``'s data, declared in the current IRBuilder frame (kernels index with
    precomputed flat offsets)."""
    from tvm.script import tirx as T

    size = 1
    for d in buf.shape:
        size *= int(d)
    return T.decl_buffer((size,), buf.dtype, data=buf.data)


def _bcast32(buf, offset, isa: DotIsa, elem: str):
    """The 32-bit lane of ``group`` ``elem`` values at ``offset``, broadcast to a full operand."""
    from tvm import tirx

    if isa.group == 1:
        return tirx.Broadcast(buf[offset], isa.lanes)
    word = tirx.reinterpret("int32", buf.vload([offset], f"{elem}x{isa.group}"))
    return tirx.reinterpret(isa.operand(elem), tirx.Broadcast(word, isa.lanes))


def _dot(isa: DotIsa, acc, a, w):
    from tvm import tirx

    acc_t = f"int32x{isa.lanes}"
    if isa.bytes:
        return tirx.call_llvm_pure_intrin(acc_t, isa.intrinsic, acc, a, w)
    if isa.scheme == "s16mla":
        return acc + a.astype(acc_t) * w.astype(acc_t)
    return acc + tirx.call_llvm_pure_intrin(acc_t, isa.intrinsic, a, w)


def _scalar_epilogue(wl: Workload, plan_: Plan, bufs: Dict[int, object]):
    """``fn(acc, padded_channel) -> output`` from ``compute_int8.make_epilogue`` (the one TE
    definition of the epilogue arithmetic) over the padded epilogue buffers; the kernel applies it
    in a vectorized loop over the lanes."""
    from .compute_int8 import make_epilogue

    view = Plan(tuple(Arg("input", a.index, a.spec) if a.kind == "const" and a.tag.startswith("dotep_") else a
                      for a in plan_.args))
    return make_epilogue(wl, view, bufs)


def _to_signed_bytes(v, s: DotShape, lanes: int):
    """x -> the s8s8 domain: int8 as is, uint8 ``x ^ 0x80`` (= ``x - 128``); ``lanes`` = 1: a scalar."""
    from tvm import tirx

    if s.x_dtype == "int8":
        return v
    if lanes == 1:
        return (v.astype("int32") - 128).astype("int8")
    return tirx.reinterpret(f"int8x{lanes}", v ^ tirx.Broadcast(tirx.const(128, "uint8"), lanes))


def _vectorizable(expr):
    """``expr`` with each ``nearbyint`` as the LLVM intrinsic it lowers to anyway (same rounding):
    TVM's vectorizer keeps a loop holding a ``tirx.nearbyint`` call scalar, and LLVM then vectorized
    the float epilogue 8 lanes wide, storing the bytes through extracted 64-bit addresses. Rebuilds
    casts, binary ops, selects and calls; any other node is kept as it is."""
    from tvm import tirx
    from tvm.ir import Call, Op
    from tvm.tirx import expr as E

    nearbyint = Op.get("tirx.nearbyint")

    def walk(e):
        if isinstance(e, Call):
            args = [walk(a) for a in e.args]
            if e.op.same_as(nearbyint):
                return tirx.call_llvm_pure_intrin(str(e.ty.dtype), "llvm.nearbyint", *args)
            if all(x.same_as(y) for x, y in zip(args, e.args)):
                return e
            return Call(e.op, args, attrs=e.attrs, ret_ty=e.ty)
        if isinstance(e, E.Cast):
            return E.Cast(str(e.ty.dtype), walk(e.value))
        if isinstance(e, E.Select):
            return E.Select(walk(e.condition), walk(e.true_value), walk(e.false_value))
        if isinstance(e, (E.BinaryOpExpr, E.CmpExpr)):
            return type(e)(walk(e.a), walk(e.b))
        return e

    return walk(expr)


def _x_domain(v, s: DotShape, isa: DotIsa, lanes: int):
    """x -> the kernel's activation domain (``lanes`` = 1: a scalar)."""
    from tvm import tirx

    if isa.scheme == "s8s8":
        return _to_signed_bytes(v, s, lanes)
    if isa.scheme == "u8s8":
        if s.x_dtype != "int8":
            return v
        if lanes == 1:
            return (v.astype("int32") + 128).astype("uint8")
        return tirx.reinterpret(f"uint8x{lanes}", v) ^ tirx.Broadcast(tirx.const(128, "uint8"), lanes)
    if lanes == 1:
        return (v.astype("int32") - s.x_zero_point).astype("int16")
    return v.astype(f"int16x{lanes}") - tirx.Broadcast(tirx.const(s.x_zero_point, "int16"), lanes)


# -- the stages ------------------------------------------------------------------------------------

def _pack_conv(s: DotShape, isa: DotIsa, b: Blocking, fc: FastConfig):
    """fcompute of the ``pack`` stage (conv): x NCHW -> xw NCHW{g}c with the padding."""
    from tvm import tirx
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    g = isa.group
    planes = s.groups * b.cw
    rows, cols = s.rows, s.cols
    # input columns the conv reads: fewer than s.w when a stride skips the last ones (1x1 stride 2
    # on an even width); the packed row has room for these only, so the chunks must not pass them
    # (they did: the spill raced with the next plane's job and wrote past the buffer's end)
    wi = max(0, min(s.w, cols - s.pl))
    chunk = 16 if wi >= 16 else 8 if wi >= 8 else 0
    pad_val = x_zero_domain(s, isa) if isa.bytes else 0
    xd = isa.x_dtype

    def fcompute(ins, outs):
        x = ins[0]
        loop = T.parallel if fc.parallel else T.serial
        with IRBuilder() as ib, loop(0, s.n * planes) as job:
            xw = _flat(outs[0])
            nn = T.bind(job // planes)
            plane = T.bind(job % planes)
            gi = T.bind(plane // b.cw)
            cb = T.bind(plane % b.cw)
            with T.serial(0, rows) as r:
                row0 = T.bind(((nn * planes + plane) * rows + r) * cols * g)
                yin = T.bind(r - s.pt)
                inside = tirx.all(yin >= 0, yin < s.h)
                with T.If(tirx.Not(inside)):
                    with T.Then():
                        with T.serial(0, cols * g) as i:
                            T.buffer_store(xw, tirx.const(pad_val, xd), [row0 + i])
                with T.If(inside):
                    with T.Then():
                        # left / right padding and, for narrow rows, every pixel one by one
                        first = s.pl + (wi if chunk else 0)
                        with T.serial(0, cols) as col:
                            xin = col - s.pl
                            is_pad = tirx.any(xin < 0, xin >= s.w)
                            with T.If(tirx.any(col < s.pl, col >= first)):
                                with T.Then():
                                    for e in range(g):
                                        ch = cb * g + e
                                        val = _x_domain(x[nn, tirx.min(gi * s.cg + ch, s.c - 1), yin,
                                                          tirx.max(tirx.min(xin, s.w - 1), 0)], s, isa, 1)
                                        val = tirx.Select(ch < s.cg, val, tirx.const(0, xd))
                                        val = tirx.Select(is_pad, tirx.const(pad_val, xd), val)
                                        T.buffer_store(xw, val, [row0 + col * g + e])
                        if chunk:
                            # interior: `chunk` pixels at a time, the last chunk overlapping
                            n_chunks = ceil_div(wi, chunk)
                            with T.serial(0, n_chunks) as ci:
                                x0 = T.bind(tirx.min(ci * chunk, wi - chunk))
                                vecs = []
                                for e in range(g):
                                    ch = cb * g + e
                                    v = x.vload([nn, tirx.min(gi * s.cg + ch, s.c - 1), yin, x0],
                                                f"{s.x_dtype}x{chunk}")
                                    v = _x_domain(v, s, isa, chunk)
                                    zero = tirx.Broadcast(tirx.const(0, xd), chunk)
                                    vecs.append(tirx.Select(tirx.Broadcast(ch < s.cg, chunk), v, zero))
                                idx = [e * chunk + i for i in range(chunk) for e in range(g)]
                                inter = tirx.Shuffle(vecs, [tirx.const(i, "int32") for i in idx])
                                T.buffer_store(xw, inter, [tirx.Ramp(row0 + (s.pl + x0) * g, 1, chunk * g)])
        return ib.get()

    return fcompute


def kc_pack_size(s: DotShape, isa: DotIsa) -> int:
    """Elements of the kc pack: the padded NHWC image plus ``group`` elements that the last
    pixel's last lane may read past the end (their weights are 0)."""
    return s.n * s.rows * s.cols * s.c + isa.group


def _pack_conv_kc(s: DotShape, isa: DotIsa, b: Blocking, fc: FastConfig):
    """fcompute of the ``pack`` stage for ``lane_over="kc"``: x NCHW -> the padded image in NHWC,
    ``xw[((n * rows + row) * cols + col) * C + c]``. A window row of an output pixel, its KW * C
    values (kx, c), is then contiguous (horizontal dilation 1), so the dot stage reads its lanes
    straight from here: ``group`` consecutive (kx, c) elements, the last lane running into the next
    pixel's values, which meet zero weights. Padded pixels hold the zero point as in ``_pack_conv``."""
    from tvm import tirx
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    C, rows, cols = s.c, s.rows, s.cols
    wi = max(0, min(s.w, cols - s.pl))      # input columns the conv reads (see _pack_conv)
    chunk = 16 if wi >= 16 else 8 if wi >= 8 else 0
    pad_val = tirx.const(x_zero_domain(s, isa) if isa.bytes else 0, isa.x_dtype)
    jobs = s.n * rows

    def fcompute(ins, outs):
        x = ins[0]
        loop = T.parallel if fc.parallel else T.serial
        with IRBuilder() as ib, loop(0, jobs) as job:
            xw = _flat(outs[0])
            nn = T.bind(job // rows)
            r = T.bind(job % rows)
            row0 = T.bind(job * cols * C)
            yin = T.bind(r - s.pt)
            inside = tirx.all(yin >= 0, yin < s.h)
            with T.If(job == jobs - 1):
                with T.Then():
                    for e in range(isa.group):
                        T.buffer_store(xw, tirx.const(0, isa.x_dtype), [jobs * cols * C + e])
            with T.If(tirx.Not(inside)):
                with T.Then():
                    with T.serial(0, cols * C) as i:
                        T.buffer_store(xw, pad_val, [row0 + i])
            with T.If(inside):
                with T.Then():
                    # the borders and, for narrow rows, every pixel one by one
                    first = s.pl + (wi if chunk else 0)
                    with T.serial(0, cols) as col:
                        xin = col - s.pl
                        is_pad = tirx.any(xin < 0, xin >= s.w)
                        with T.If(tirx.any(col < s.pl, col >= first)):
                            with T.Then():
                                for c in range(C):
                                    val = _x_domain(x[nn, c, yin, tirx.max(tirx.min(xin, s.w - 1), 0)], s, isa, 1)
                                    T.buffer_store(xw, tirx.Select(is_pad, pad_val, val), [row0 + col * C + c])
                    if chunk:
                        # interior: `chunk` pixels of the C channel rows interleaved by one shuffle,
                        # the last chunk overlapping
                        with T.serial(0, ceil_div(wi, chunk)) as ci:
                            x0 = T.bind(tirx.min(ci * chunk, wi - chunk))
                            vecs = [_x_domain(x.vload([nn, c, yin, x0], f"{s.x_dtype}x{chunk}"), s, isa, chunk)
                                    for c in range(C)]
                            idx = [c * chunk + i for i in range(chunk) for c in range(C)]
                            inter = tirx.Shuffle(vecs, [tirx.const(i, "int32") for i in idx])
                            T.buffer_store(xw, inter, [tirx.Ramp(row0 + (s.pl + x0) * C, 1, chunk * C)])
        return ib.get()

    return fcompute


#: input columns the window pack's interior interleaves per shuffle (the stem's pack, 1 thread:
#: 8 0.038 ms, 16 0.035, 32 0.049)
WINDOW_CHUNK = 16


def window_pack_size(s: DotShape, isa: DotIsa) -> int:
    """Elements of the window pack (and ``group`` read past the end, as in ``kc_pack_size``)."""
    return s.n * s.oh * s.cols * s.kh * s.c + isa.group


def _pack_conv_window(s: DotShape, isa: DotIsa, b: Blocking, fc: FastConfig):
    """fcompute of the ``pack`` stage for ``lane_over="window"``: per output row, the KH input
    rows it reads interleaved per column, ``xw[(((n * OH + oy) * cols + col) * KH + ky) * C + c]``
    (KH / stride copies of the image). An output pixel's whole window, (kx, ky, c), is then
    contiguous: KW * KH * C values in ``ceil(. / group)`` lanes (the 7x7 C=3 stem: 37)."""
    from tvm import tirx
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    C, KH, cols = s.c, s.kh, s.cols
    wi = max(0, min(s.w, cols - s.pl))
    chunk = WINDOW_CHUNK if wi >= WINDOW_CHUNK else 8 if wi >= 8 else 0
    pad_val = tirx.const(x_zero_domain(s, isa) if isa.bytes else 0, isa.x_dtype)
    jobs = s.n * s.oh
    per_col = KH * C

    def fcompute(ins, outs):
        x = ins[0]
        loop = T.parallel if fc.parallel else T.serial
        with IRBuilder() as ib, loop(0, jobs) as job:
            xw = _flat(outs[0])
            nn = T.bind(job // s.oh)
            oy = T.bind(job % s.oh)
            row0 = T.bind(job * cols * per_col)
            yins = [T.bind(oy * s.sh + ky * s.dh - s.pt) for ky in range(KH)]
            inside = [tirx.all(y >= 0, y < s.h) for y in yins]
            ys = [tirx.max(tirx.min(y, s.h - 1), 0) for y in yins]
            with T.If(job == jobs - 1):
                with T.Then():
                    for e in range(isa.group):
                        T.buffer_store(xw, tirx.const(0, isa.x_dtype), [jobs * cols * per_col + e])
            first = s.pl + (wi if chunk else 0)
            with T.serial(0, cols) as col:
                xin = col - s.pl
                x_pad = tirx.any(xin < 0, xin >= s.w)
                with T.If(tirx.any(col < s.pl, col >= first)):
                    with T.Then():
                        for ky in range(KH):
                            for c in range(C):
                                val = _x_domain(x[nn, c, ys[ky], tirx.max(tirx.min(xin, s.w - 1), 0)], s, isa, 1)
                                val = tirx.Select(tirx.any(x_pad, tirx.Not(inside[ky])), pad_val, val)
                                T.buffer_store(xw, val, [row0 + col * per_col + ky * C + c])
            if chunk:
                with T.serial(0, ceil_div(wi, chunk)) as ci:
                    x0 = T.bind(tirx.min(ci * chunk, wi - chunk))
                    vecs = []
                    for ky in range(KH):
                        for c in range(C):
                            v = _x_domain(x.vload([nn, c, ys[ky], x0], f"{s.x_dtype}x{chunk}"), s, isa, chunk)
                            vecs.append(tirx.Select(tirx.Broadcast(inside[ky], chunk), v,
                                                    tirx.Broadcast(pad_val, chunk)))
                    idx = [j * chunk + i for i in range(chunk) for j in range(per_col)]
                    inter = tirx.Shuffle(vecs, [tirx.const(i, "int32") for i in idx])
                    T.buffer_store(xw, inter, [tirx.Ramp(row0 + (s.pl + x0) * per_col, 1, chunk * per_col)])
        return ib.get()

    return fcompute


def _pack_dense(s: DotShape, isa: DotIsa, b: Blocking, fc: FastConfig):
    """fcompute of the ``pack`` stage (dense): rows of x converted, K padded to ``cw * group``."""
    from tvm import tirx
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    kp = b.cw * isa.group
    vec = 32
    xd = isa.x_dtype

    def fcompute(ins, outs):
        with IRBuilder() as ib, T.serial(0, s.n) as m:
            x = _flat(ins[0])
            xw = _flat(outs[0])
            with T.serial(0, s.c // vec) as ci:
                T.buffer_store(xw, _x_domain(x.vload([m * s.c + ci * vec], f"{s.x_dtype}x{vec}"), s, isa, vec),
                               [tirx.Ramp(m * kp + ci * vec, 1, vec)])
            with T.serial(s.c // vec * vec, kp) as k:
                val = _x_domain(x[m * s.c + tirx.min(k, s.c - 1)], s, isa, 1)
                T.buffer_store(xw, tirx.Select(k < s.c, val, tirx.const(0, xd)), [m * kp + k])
        return ib.get()

    return fcompute


#: parallel jobs the dot stage aims at, each a contiguous range of one block's pixel tiles: TVM
#: makes the per-job register-tile buffers heap workspaces (malloc / free per job), which cost
#: ~4 % of conv3x3 64x56x56->64 at one tile per job (x86, 524 jobs); 32 jobs still spread well
JOBS = 32


def _dot_kernel(wl: Workload, plan_: Plan, s: DotShape, isa: DotIsa, b: Blocking, fc: FastConfig,
                extra: List[str], ep_positions: List[int]):
    """fcompute of the ``dot`` stage: register-tiled accumulation, epilogue, stores. ``extra``
    names the per-channel int32 vectors after the weights ("corr", "bias"). Jobs run block-major
    (each a range of pixel tiles of one output-channel block), so a block's weights stay in cache."""
    from tvm import tirx
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder

    g, L, V, TP = isa.group, isa.lanes, fc.vectors, fc.tile_p
    planes = s.groups * b.cw
    rows, cols = s.rows, s.cols
    if s.dense:
        rows = cols = 1
    ohw = s.oh * s.ow
    tiles = ceil_div(s.pixels, TP)
    n_ob = s.groups * b.ob_g
    acc_t = f"int32x{L}"
    full_vectors = s.og % L == 0
    od = wl.outputs[0].dtype
    byte_out = full_vectors and od in ("int8", "uint8")
    # jobs per output-channel block (JOBS)
    per_ob = min(tiles, max(1, ceil_div(JOBS, n_ob)))
    span = ceil_div(tiles, per_ob)

    def fcompute(ins, outs):
        adds = ins[2: 2 + len(extra)]
        first_ep = 2 + len(extra)
        epi = _scalar_epilogue(wl, plan_, {pos: ins[k] for k, pos in enumerate(ep_positions, start=first_ep)})
        loop = T.parallel if fc.parallel else T.serial
        with IRBuilder() as ib, loop(0, n_ob * per_ob) as job:
            xw = _flat(ins[0])
            wt = _flat(ins[1])
            out = _flat(outs[0])
            ob = T.bind(job // per_ob)
            gi = T.bind(ob // b.ob_g)
            local0 = T.bind(ob % b.ob_g * b.block)          # first channel of the block in its group
            # declared here, inside the job loop (T.alloc_buffer would hoist them to the block, shared
            # by all the threads of the parallel loop); TVM makes them heap workspaces, so a job
            # runs several tiles
            acc = T.decl_buffer((TP * V * L,), "int32", scope="local")
            if byte_out:
                stage = T.decl_buffer((TP * V * L,), od, scope="local")
            with T.serial(0, span) as ti:
                tile = T.bind(job % per_ob * span + ti)
                with T.If(tile < tiles):
                    with T.Then():
                        p0 = T.bind(tile * TP)
                        bases, pix = [], []
                        for t in range(TP):
                            p = T.bind(tirx.min(p0 + t, s.pixels - 1))
                            nn = T.bind(p // ohw)
                            q = T.bind(p % ohw)
                            y, xx = q // s.ow, q % s.ow
                            if b.window:
                                bases.append(T.bind(((nn * s.oh + y) * cols + xx * s.sw) * s.kh * s.c))
                            elif b.kc:
                                bases.append(T.bind(((nn * rows + y * s.sh) * cols + xx * s.sw) * s.c))
                            else:
                                bases.append(T.bind((((nn * planes + gi * b.cw) * rows + y * s.sh) * cols + xx * s.sw) * g))
                            pix.append((nn, q))
                        for i in range(TP * V):
                            T.buffer_store(acc, tirx.Broadcast(tirx.const(0, "int32"), L), [tirx.Ramp(i * L, 1, L)])

                        def step(xoff, woff):
                            """One reduction step: a 32-bit activation lane per pixel x ``V`` weight vectors."""
                            wv = [wt.vload([woff + v * L * g], isa.operand(isa.w_dtype)) for v in range(V)]
                            for t in range(TP):
                                a = _bcast32(xw, bases[t] + xoff, isa, isa.x_dtype)
                                for v in range(V):
                                    i = (t * V + v) * L
                                    cur = acc.vload([i], acc_t)
                                    T.buffer_store(acc, _dot(isa, cur, a, wv[v]), [tirx.Ramp(i, 1, L)])

                        if b.window:
                            with T.serial(0, b.cw) as lane_k:
                                step(T.bind(lane_k * g), T.bind((ob * b.cw + lane_k) * V * L * g))
                        elif b.kc:
                            # per window row, its (kx, c) lanes: contiguous in the NHWC pack
                            with T.serial(0, s.kh) as ky:
                                with T.serial(0, b.cw) as lane_k:
                                    step(T.bind(ky * s.dh * cols * s.c + lane_k * g),
                                         T.bind(((ob * s.kh + ky) * b.cw + lane_k) * V * L * g))
                        else:
                            with T.serial(0, b.cw) as cb:
                                with T.serial(0, s.kh) as ky:
                                    with T.serial(0, s.kw) as kx:
                                        step(T.bind(((cb * rows + ky * s.dh) * cols + kx * s.dw) * g),
                                             T.bind((((ob * b.cw + cb) * s.kh + ky) * s.kw + kx) * V * L * g))
                        # epilogue and stores
                        def value(t, v, lane):
                            opad = ob * b.block + v * L + lane
                            total = acc[(t * V + v) * L + lane]
                            for vecbuf in adds:
                                total = total + vecbuf[opad]
                            return _vectorizable(epi(total, opad))

                        def store_pixel(t, src):
                            """Pixel ``t``'s channels, ``src(t, v, lane)``, stored ``ohw`` apart."""
                            nn, q = pix[t]
                            with T.If(p0 + t < s.pixels):
                                with T.Then():
                                    for v in range(V):
                                        local = local0 + v * L
                                        obase = (nn * s.o + gi * s.og + local) * ohw + q
                                        lane_loop = T.vectorized if full_vectors else T.serial
                                        with lane_loop(0, L) as lane:
                                            # whole vectors past the group's channels are skipped; partial
                                            # vectors (og % lanes != 0) test each lane in a serial loop
                                            valid = local < s.og if full_vectors else local + lane < s.og
                                            with T.If(valid):
                                                with T.Then():
                                                    T.buffer_store(out, src(t, v, lane), [obase + lane * ohw])

                        if not byte_out:
                            for t in range(TP):
                                store_pixel(t, value)
                        else:
                            # byte outputs: requantized vectors staged, then transposed in registers in groups
                            # of 4 (2) pixels, so that each channel gets one 4 (2) byte store of consecutive
                            # pixels instead of one byte store per pixel
                            for t in range(TP):
                                for v in range(V):
                                    with T.vectorized(0, L) as lane:
                                        T.buffer_store(stage, value(t, v, lane), [(t * V + v) * L + lane])

                            def staged(t, v, lane):
                                return stage[(t * V + v) * L + lane]

                            t0 = 0
                            while t0 < TP:
                                n_g = 4 if TP - t0 >= 4 else 2 if TP - t0 >= 2 else 1
                                if n_g == 1:
                                    store_pixel(t0, staged)
                                    break
                                nn, q = pix[t0]
                                # the group's pixels exist and are consecutive in one image
                                with T.If(tirx.all(p0 + t0 + n_g - 1 < s.pixels, q + (n_g - 1) < ohw)):
                                    with T.Then():
                                        for v in range(V):
                                            with T.If(local0 + v * L < s.og):
                                                with T.Then():
                                                    vecs = [stage.vload([((t0 + k) * V + v) * L], f"{od}x{L}") for k in range(n_g)]
                                                    tr = T.bind(tirx.Shuffle(vecs, [tirx.const(k * L + c, "int32")
                                                                                    for c in range(L) for k in range(n_g)]))
                                                    for c in range(L):
                                                        obase = (nn * s.o + gi * s.og + local0 + v * L + c) * ohw + q
                                                        chunk = tirx.Shuffle([tr], [tirx.const(c * n_g + k, "int32") for k in range(n_g)])
                                                        T.buffer_store(out, chunk, [tirx.Ramp(obase, 1, n_g)])
                                    with T.Else():
                                        for k in range(n_g):
                                            store_pixel(t0 + k, staged)
                                t0 += n_g
        return ib.get()

    return fcompute


def compute(wl: Workload, plan_: Plan, cfg: dict, isa: DotIsa) -> Stages:
    """The two stages (``pack``, ``dot``) as TE externs over the plan's arguments."""
    from tvm import te

    s = dot_shape(wl)
    fc = FastConfig.of(cfg)
    b = blocking(s, isa, fc)
    ph = {}
    for pos, a in enumerate(plan_.args):
        if a.kind != "output":
            ph[pos] = te.placeholder(a.spec.shape, a.spec.dtype, name=f"arg{pos}")
    x = ph[0]
    if s.dense:
        pack_shape = (s.n, b.cw * isa.group)
        pack_fn = _pack_dense(s, isa, b, fc)
    elif b.kc:
        pack_shape = (kc_pack_size(s, isa),)
        pack_fn = _pack_conv_kc(s, isa, b, fc)
    elif b.window:
        pack_shape = (window_pack_size(s, isa),)
        pack_fn = _pack_conv_window(s, isa, b, fc)
    else:
        pack_shape = (s.n, s.groups * b.cw, s.rows, s.cols, isa.group)
        pack_fn = _pack_conv(s, isa, b, fc)
    xw = te.extern(pack_shape, [x], pack_fn, name="pack", dtype=isa.x_dtype)
    ep_positions = [pos for pos, a in enumerate(plan_.args) if a.kind == "const" and a.tag.startswith("dotep_")]
    extra = [(pos, a.tag.split("_")[0][3:]) for pos, a in enumerate(plan_.args)
             if a.kind == "const" and a.tag.startswith(("dotcorr_", "dotbias_"))]
    inputs = [xw, ph[1]] + [ph[p] for p, _ in extra] + [ph[p] for p in ep_positions]
    fn = _dot_kernel(wl, plan_, s, isa, b, fc, [name for _, name in extra], ep_positions)
    out = te.extern(wl.outputs[0].shape, inputs, fn,
                    name="dot", dtype=wl.outputs[0].dtype)
    args = [ph[pos] if a.kind != "output" else out for pos, a in enumerate(plan_.args)]
    return Stages(args, {"pack": xw, "out": out})


def schedule(sch, stages: Stages, wl: Workload, target, cfg: dict) -> None:
    """Nothing to do: the tiling, vectorization and parallel loops are in the generated TIR."""


def register_dot_kernels(family: str, isas: Dict[str, DotIsa], isa_schedule, default_config,
                         instructions: str, isa_label: str = "") -> None:
    """Register ``qconv2d_dot`` / ``qdense_dot`` for ``family`` (x86 and ARM share this glue):
    plan and compute here with the ISA named by the config's ``isa`` among ``isas``;
    ``isa_schedule`` checks that ISA against the target."""
    from .impls import register
    from .kernel import KernelImpl

    def isa_of(cfg: dict) -> DotIsa:
        try:
            return isas[cfg["isa"]]
        except KeyError:
            raise UnsupportedError(f"unknown {isa_label}int8 dot ISA {cfg.get('isa')!r}; known: {sorted(isas)}") from None

    def dot_plan(wl: Workload, cfg: dict) -> Plan:
        return plan(wl, cfg, isa_of(cfg))

    def dot_compute(wl: Workload, plan_: Plan, cfg: dict) -> Stages:
        return compute(wl, plan_, cfg, isa_of(cfg))

    for kind, what in (("qconv2d_dot", "int8 conv"), ("qdense_dot", "int8 dense")):
        register(KernelImpl(f"{kind}__{family}", dot_plan, dot_compute, isa_schedule, default_config,
                            f"{what}, dot-product register tile ({instructions})"), kind, family)
