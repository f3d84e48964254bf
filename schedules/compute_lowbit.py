"""TE computes of the binary and bitserial ops (the contract is ``qcompiler/ref/ops/lowbit.py``).

Compute apart from schedule: this module states *what* the kernels compute, in the layouts the
kernels use; ``schedules/<family>/binary.py`` say *how* (tiles, vector width, unroll, threads).

Kernel layouts (chosen here, produced at compile time by :func:`prepare_constants`):
* activations stay in the IR layout: packed NHWC ``[N, H, W, Cw]`` (bitserial ``[N, H, W, A, Cw]``),
  dense ``[M, Kw]`` (``[M, A, Kw]``);
* weights are blocked along the output channels so that ``ov`` consecutive output channels are
  adjacent words (one vector register): conv ``[O/ov, KH, KW, Cw, ov]`` (bitserial
  ``[O/ov, KH, KW, B, Cw, ov]``), dense ``[N/ov, Kw, ov]`` (``[N/ov, B, Kw, ov]``); O is padded to
  a multiple of ``ov`` with zero words; padded channels are never stored.

Binary zero padding (``pad_value`` 0 or -1) is done exactly: the padded input holds bit 0 (+1), and a
correction computed at compile time from the weights removes what the padded taps added,
``acc = base[rc(oh), cc(ow), o] - 2 * popcount_sum`` where ``base`` already folds the constant
``taps * C`` and the correction of the border class ``(rc, cc)`` of the output pixel. Border classes:
rows ``0..T-1`` have their own class, interior rows share class ``T``, the last ``B`` rows their own
(same for columns), so the table is ``[T+1+B, L+1+R, O]`` and small.

Fused residual add (conv ``out="float"`` with ``residual=1``): the residual is a runtime input
(``ep_residual``, NCHW float32, node input 4), added after the epilogue's rounding in a stage of its
own (``out = out_epi + residual``) that the schedule stages or inlines (``lowbit_tiling``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from qcompiler.errors import ShapeError, UnsupportedError

WORD_BITS = (8, 16, 32, 64)
EPILOGUES = ("int32", "float", "int8", "uint8", "packed")
REQUANTS = ("fixed_point", "float")


def _ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


# ----------------------------------------------------------------------------------------------
# workloads
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Epilogue:
    """The ``out`` attribute of a conv/dense op and its attributes (see the contract)."""

    kind: str = "int32"
    out_word_bits: int = 64          # "packed" only
    out_zero_point: int = 0          # "int8"/"uint8" only
    out_min: int = -128
    out_max: int = 127
    requant: str = "fixed_point"     # "int8"/"uint8" only
    residual: bool = False           # "float" only: + a float NCHW input of the output's shape

    def __post_init__(self):
        if self.kind not in EPILOGUES:
            raise UnsupportedError(f"epilogue out={self.kind!r} is not one of {EPILOGUES}")
        if self.residual and self.kind != "float":
            raise UnsupportedError(f"the fused residual add needs the float epilogue, got out={self.kind!r}")
        if self.kind == "packed" and self.out_word_bits not in WORD_BITS:
            raise ShapeError(f"out_word_bits must be one of {WORD_BITS}, got {self.out_word_bits}")
        if self.kind in ("int8", "uint8"):
            if self.requant not in REQUANTS:
                raise UnsupportedError(f"requant={self.requant!r} is not one of {REQUANTS}")
            lo, hi = (-128, 127) if self.kind == "int8" else (0, 255)
            if not lo <= self.out_min <= self.out_max <= hi:
                raise ShapeError(f"clamp range [{self.out_min}, {self.out_max}] does not fit {self.kind}")

    @property
    def n_inputs(self) -> int:
        """How many extra node inputs (after the weights) the epilogue takes."""
        if self.kind == "int32":
            return 0
        if self.kind in ("int8", "uint8") and self.requant == "float":
            return 1
        return 3 if self.residual else 2

    @staticmethod
    def from_attrs(attrs: dict) -> "Epilogue":
        kind = attrs.get("out", "int32")
        if kind in ("int8", "uint8"):
            lo, hi = (-128, 127) if kind == "int8" else (0, 255)
            return Epilogue(kind, out_zero_point=int(attrs.get("out_zero_point", 0)),
                            out_min=int(attrs.get("out_min", lo)), out_max=int(attrs.get("out_max", hi)),
                            requant=str(attrs.get("requant", "fixed_point")))
        if kind == "packed":
            return Epilogue(kind, out_word_bits=int(attrs.get("out_word_bits", 64)))
        return Epilogue(kind, residual=bool(int(attrs.get("residual", 0))))


@dataclass(frozen=True)
class ConvGeometry:
    n: int
    c: int                            # logical input channels
    h: int
    w: int
    o: int
    kh: int
    kw: int
    strides: Tuple[int, int] = (1, 1)
    pads: Tuple[int, int, int, int] = (0, 0, 0, 0)   # top, left, bottom, right
    dilations: Tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self):
        if min(self.n, self.c, self.h, self.w, self.o, self.kh, self.kw, self.groups) < 1:
            raise ShapeError(f"conv sizes must be >= 1: {self}")
        if min(self.strides) < 1 or min(self.dilations) < 1 or min(self.pads) < 0:
            raise ShapeError(f"strides/dilations must be >= 1 and pads >= 0: {self}")
        if self.c % self.groups or self.o % self.groups:
            raise ShapeError(f"{self.c} input / {self.o} output channels do not split into "
                             f"{self.groups} groups")
        if self.oh < 1 or self.ow < 1:
            raise ShapeError(f"the kernel {self.kh}x{self.kw} does not fit the padded input {self}")

    @property
    def oh(self) -> int:
        return (self.h + self.pads[0] + self.pads[2] - self.dilations[0] * (self.kh - 1) - 1) // self.strides[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pads[1] + self.pads[3] - self.dilations[1] * (self.kw - 1) - 1) // self.strides[1] + 1

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def og(self) -> int:
        return self.o // self.groups

    @property
    def padded_hw(self) -> Tuple[int, int]:
        """Rows/columns of the padded input that the taps can reach."""
        hp = (self.oh - 1) * self.strides[0] + self.dilations[0] * (self.kh - 1) + 1
        wp = (self.ow - 1) * self.strides[1] + self.dilations[1] * (self.kw - 1) + 1
        return hp, wp

    @property
    def macs(self) -> int:
        return self.n * self.o * self.oh * self.ow * self.kh * self.kw * self.cg


@dataclass(frozen=True)
class LowbitConvWorkload:
    """BinaryConv2d (``act_bits == weight_bits == 0``) or BitserialConv2d."""

    geom: ConvGeometry
    word_bits: int
    epilogue: Epilogue = Epilogue()
    pad_value: int = 0                # binary only: 0, 1 or -1
    act_bits: int = 0                 # bitserial only (0 = binary op)
    weight_bits: int = 0
    w_mult: int = 1
    w_offset: int = 0

    def __post_init__(self):
        if self.word_bits not in WORD_BITS:
            raise ShapeError(f"word_bits must be one of {WORD_BITS}, got {self.word_bits}")
        if self.pad_value not in (0, 1, -1):
            raise ShapeError(f"pad_value must be 0, 1 or -1, got {self.pad_value}")
        if self.binary != (self.weight_bits == 0):
            raise ShapeError("act_bits and weight_bits are both 0 (binary) or both >= 1 (bitserial)")
        if not self.binary and not (1 <= self.act_bits <= 8 and 1 <= self.weight_bits <= 8):
            raise UnsupportedError(f"bitserial kernels take 1..8 bits, got A{self.act_bits}W{self.weight_bits}")
        if self.geom.groups > 1 and self.geom.cg % self.word_bits:
            raise UnsupportedError(
                f"grouped low-bit conv needs channels per group ({self.geom.cg}) to be a multiple of the "
                f"packing word ({self.word_bits} bits); pack with a smaller word_bits")

    @property
    def binary(self) -> bool:
        return self.act_bits == 0

    @property
    def cw(self) -> int:
        """Words per pixel of the input (all groups)."""
        return _ceil_div(self.geom.c, self.word_bits)

    @property
    def cgw(self) -> int:
        """Words per pixel of one group (the weights' packed axis)."""
        return _ceil_div(self.geom.cg, self.word_bits)

    @property
    def op(self) -> str:
        return "BinaryConv2d" if self.binary else "BitserialConv2d"


@dataclass(frozen=True)
class LowbitDenseWorkload:
    """BinaryDense (``act_bits == 0``) or BitserialDense: x ``[M, K]`` times w ``[N, K]``."""

    m: int
    k: int
    n: int
    word_bits: int
    epilogue: Epilogue = Epilogue()
    act_bits: int = 0
    weight_bits: int = 0
    w_mult: int = 1
    w_offset: int = 0

    def __post_init__(self):
        if min(self.m, self.k, self.n) < 1:
            raise ShapeError(f"dense sizes must be >= 1: {self}")
        if self.word_bits not in WORD_BITS:
            raise ShapeError(f"word_bits must be one of {WORD_BITS}, got {self.word_bits}")
        if (self.act_bits == 0) != (self.weight_bits == 0):
            raise ShapeError("act_bits and weight_bits are both 0 (binary) or both >= 1 (bitserial)")
        if self.act_bits and not (1 <= self.act_bits <= 8 and 1 <= self.weight_bits <= 8):
            raise UnsupportedError(f"bitserial kernels take 1..8 bits, got A{self.act_bits}W{self.weight_bits}")

    @property
    def binary(self) -> bool:
        return self.act_bits == 0

    @property
    def kw(self) -> int:
        return _ceil_div(self.k, self.word_bits)

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    @property
    def op(self) -> str:
        return "BinaryDense" if self.binary else "BitserialDense"


# ----------------------------------------------------------------------------------------------
# compile-time constants (weight blocking, padding correction, epilogue vectors)
# ----------------------------------------------------------------------------------------------


def padded_channels(o: int, ov: int, ep: Epilogue) -> int:
    """Output channels the kernel computes: a multiple of the block ``ov`` and, for the packed
    epilogue, of the output word (so every output word's bits are all computed in one tile)."""
    blk = int(np.lcm(ov, ep.out_word_bits)) if ep.kind == "packed" else ov
    return _ceil_div(o, blk) * blk


def _block_out_channels(w: np.ndarray, ov: int, o_pad: int) -> np.ndarray:
    """``[O, ...]`` -> ``[O_pad/ov, ..., ov]`` with zero words for the padded channels."""
    o = w.shape[0]
    padded = np.zeros((o_pad,) + w.shape[1:], w.dtype)
    padded[:o] = w
    blocked = padded.reshape((o_pad // ov, ov) + w.shape[1:])
    return np.ascontiguousarray(np.moveaxis(blocked, 1, -1))


def _pad_vec(v: np.ndarray, o_pad: int, dtype) -> np.ndarray:
    out = np.zeros(o_pad, dtype)
    out[: v.shape[0]] = v
    return out


def border_classes(out_size: int, in_size: int, k: int, stride: int, pad_begin: int, dilation: int):
    """``(T, B)``: the first T and last B output rows have taps in the padding (others have none)."""
    def any_invalid(r):
        return any(not 0 <= r * stride - pad_begin + t * dilation < in_size for t in range(k))

    top = 0
    while top < out_size and any_invalid(top):
        top += 1
    bottom = 0
    while bottom < out_size - top and any_invalid(out_size - 1 - bottom):
        bottom += 1
    if any(any_invalid(r) for r in range(top, out_size - bottom)):
        return out_size, 0            # invalid taps in the middle (tiny image): every row its own class
    return top, bottom


def _class_rows(out_size, top, bottom):
    """Representative output index of every class ``0..top+bottom``."""
    reps = list(range(top)) + [top] + list(range(out_size - bottom, out_size))
    if top == out_size:
        reps = list(range(out_size))
    return reps


def binary_conv_base_table(wl: LowbitConvWorkload, w_words: np.ndarray) -> np.ndarray:
    """int32 ``[O, T+1+B, L+1+R]``: ``taps*Cg`` minus the padded taps' contribution per border class.

    A padded tap holds bit 0 (+1) in the kernel, so it adds ``wsum = Cg - 2 popcount(w)`` where the
    true value is ``pad_value * wsum``; ``(1 - pad_value) * wsum`` is removed for each padded tap.
    """
    from qcompiler.ref.ops.bits import unpack_bits

    g = wl.geom
    bits = unpack_bits(w_words, g.cg).astype(np.int64)            # [O, KH, KW, Cg]
    wsum = g.cg - 2 * bits.sum(-1)                                # [O, KH, KW]
    t, b = border_classes(g.oh, g.h, g.kh, g.strides[0], g.pads[0], g.dilations[0])
    l, r = border_classes(g.ow, g.w, g.kw, g.strides[1], g.pads[1], g.dilations[1])
    rows = _class_rows(g.oh, t, b)
    cols = _class_rows(g.ow, l, r)
    table = np.zeros((g.o, len(rows), len(cols)), np.int64)
    for i, oh in enumerate(rows):
        rv = np.array([0 <= oh * g.strides[0] - g.pads[0] + k * g.dilations[0] < g.h for k in range(g.kh)])
        for j, ow in enumerate(cols):
            cv = np.array([0 <= ow * g.strides[1] - g.pads[1] + k * g.dilations[1] < g.w for k in range(g.kw)])
            padded = ~(rv[:, None] & cv[None, :])
            table[:, i, j] = g.kh * g.kw * g.cg - (1 - wl.pad_value) * (wsum * padded[None]).sum((1, 2))
    return table.astype(np.int32)


def class_index(expr_index, out_size: int, top: int, bottom: int):
    """TE expression of the border class of output row ``expr_index`` (see the module docstring)."""
    from tvm import te

    if top == out_size:
        return expr_index
    first_bottom = out_size - bottom
    return te.min(expr_index, top) + te.max(expr_index - (first_bottom - 1), 0)


@dataclass
class KernelParam:
    """One argument of a kernel's PrimFunc, in order.

    ``source``: ``"input"`` (the node's runtime input ``index``), ``"const"`` (``data`` computed at
    compile time from the node's constant inputs) or ``"output"`` (the node's output ``index``).
    """

    name: str
    source: str
    index: int = 0
    shape: Tuple[int, ...] = ()
    dtype: str = ""
    data: Optional[np.ndarray] = None


@dataclass
class LowbitKernel:
    """A scheduled kernel: PrimFunc + how to feed it (constants prepared at compile time)."""

    impl: str                          # e.g. "bconv2d_nhwc__x86_avx512"
    func: object                       # tvm PrimFunc (scheduled)
    params: List[KernelParam]
    config: Dict[str, object]
    macs: int = 0
    notes: List[str] = field(default_factory=list)


def conv_weight_constant(wl: LowbitConvWorkload, ov: int, weights: np.ndarray) -> np.ndarray:
    """Conv weights in the kernel layout ``[O_pad/ov, KH, KW, (planes,) Cgw, ov]``."""
    g = wl.geom
    wdt = np.dtype(f"uint{wl.word_bits}")
    expect = ((g.o, g.kh, g.kw, wl.cgw) if wl.binary else (g.o, g.kh, g.kw, wl.weight_bits, wl.cgw))
    weights = np.asarray(weights)
    if weights.shape != expect or weights.dtype != wdt:
        raise ShapeError(f"{wl.op}: weights must be {wdt}{list(expect)}, got {weights.dtype}{list(weights.shape)}")
    return _block_out_channels(weights, ov, padded_channels(g.o, ov, wl.epilogue))


def conv_base_constant(wl: LowbitConvWorkload, ov: int, weights: np.ndarray, by_column: bool = False
                       ) -> np.ndarray:
    """Binary conv: the int32 ``[rows, cols, O_pad]`` base/padding-correction table (o contiguous), or
    with ``by_column`` ``[rows, O_pad, OW]`` (one entry per output column, ow contiguous: the
    epilogue of the pixel-vector layout reads it as vectors along ow instead of gathering classes)."""
    g = wl.geom
    table = binary_conv_base_table(wl, np.asarray(weights))           # [O, rows, cols]
    o_pad = padded_channels(g.o, ov, wl.epilogue)
    if by_column:
        l, r = border_classes(g.ow, g.w, g.kw, g.strides[1], g.pads[1], g.dilations[1])
        cls = [min(c, l) + max(c - (g.ow - r - 1), 0) if l != g.ow else c for c in range(g.ow)]
        out = np.zeros((table.shape[1], o_pad, g.ow), np.int32)
        out[:, : g.o] = np.moveaxis(table[:, :, cls], 1, 0)
        return out
    padded = np.zeros(table.shape[1:] + (o_pad,), np.int32)
    padded[..., : g.o] = np.moveaxis(table, 0, -1)
    return padded


def prepare_conv_constants(wl: LowbitConvWorkload, ov: int, weights: np.ndarray,
                           epilogue_inputs: Sequence[np.ndarray], base_by_column: bool = False
                           ) -> Dict[str, np.ndarray]:
    """Kernel-layout constants from the node's constant inputs (weights and epilogue vectors)."""
    g = wl.geom
    out = {"w": conv_weight_constant(wl, ov, weights)}
    if wl.binary:
        out["base"] = conv_base_constant(wl, ov, weights, base_by_column)
    out.update(_prepare_epilogue(wl.epilogue, g.o, padded_channels(g.o, ov, wl.epilogue), epilogue_inputs,
                                 wl.op))
    return out


def dense_weight_constant(wl: LowbitDenseWorkload, ov: int, weights: np.ndarray) -> np.ndarray:
    """Dense weights in the kernel layout ``[N_pad/ov, (planes,) Kw, ov]``."""
    wdt = np.dtype(f"uint{wl.word_bits}")
    expect = (wl.n, wl.kw) if wl.binary else (wl.n, wl.weight_bits, wl.kw)
    weights = np.asarray(weights)
    if weights.shape != expect or weights.dtype != wdt:
        raise ShapeError(f"{wl.op}: weights must be {wdt}{list(expect)}, got {weights.dtype}{list(weights.shape)}")
    return _block_out_channels(weights, ov, padded_channels(wl.n, ov, wl.epilogue))


def prepare_dense_constants(wl: LowbitDenseWorkload, ov: int, weights: np.ndarray,
                            epilogue_inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
    out = {"w": dense_weight_constant(wl, ov, weights)}
    out.update(_prepare_epilogue(wl.epilogue, wl.n, padded_channels(wl.n, ov, wl.epilogue), epilogue_inputs,
                                 wl.op))
    return out


def epilogue_vector_names(ep: Epilogue) -> Tuple[str, ...]:
    """Names (``ep_<name>`` in the kernels) of the epilogue's per-channel inputs, in node order."""
    return tuple(s[0] for s in _epilogue_vector_spec(ep))


def epilogue_vector_constant(ep: Epilogue, index: int, o: int, o_pad: int, arr: np.ndarray, opname: str
                             ) -> np.ndarray:
    """Epilogue input ``index`` checked and padded to ``o_pad`` channels (the kernel's layout)."""
    spec = _epilogue_vector_spec(ep)
    inputs: List[Optional[np.ndarray]] = [np.zeros(o, dt) if i != index else arr for i, (_, dt) in enumerate(spec)]
    if spec[index][0] != "shift" and any(n == "shift" for n, _ in spec):
        inputs = [np.ones(o, dt) if n == "shift" else v for (n, dt), v in zip(spec, inputs)]
    return _prepare_epilogue(ep, o, o_pad, inputs, opname)["ep_" + spec[index][0]]


_EPILOGUE_VECTORS = {
    "float": (("scale", np.float32), ("bias", np.float32)),
    "fixed_point": (("multiplier", np.int32), ("shift", np.int32)),
    "requant_float": (("scale", np.float32),),
    "packed": (("threshold", np.int32), ("flip", np.uint8)),
}


def _epilogue_vector_spec(ep: Epilogue):
    if ep.kind == "int32":
        return ()
    if ep.kind in ("int8", "uint8"):
        return _EPILOGUE_VECTORS["fixed_point" if ep.requant == "fixed_point" else "requant_float"]
    return _EPILOGUE_VECTORS[ep.kind]


def _prepare_epilogue(ep: Epilogue, o: int, o_pad: int, inputs: Sequence[np.ndarray], opname: str):
    spec = _epilogue_vector_spec(ep)
    if len(inputs) != len(spec):
        raise ShapeError(f"{opname} out={ep.kind!r} takes {len(spec)} epilogue inputs "
                         f"({', '.join(s[0] for s in spec)}), got {len(inputs)}")
    out = {}
    for (name, dt), arr in zip(spec, inputs):
        if arr is None:
            raise UnsupportedError(f"{opname}: the epilogue input {name!r} must be a compile-time constant")
        arr = np.asarray(arr).reshape(-1)
        if arr.shape[0] != o:
            raise ShapeError(f"{opname}: epilogue input {name!r} has {arr.shape[0]} entries for {o} channels")
        if arr.dtype != np.dtype(dt):
            raise ShapeError(f"{opname}: epilogue input {name!r} must be {np.dtype(dt)}, got {arr.dtype}")
        if name == "shift" and (arr.min() < 1 or arr.max() > 63):
            raise ShapeError(f"{opname}: shift must lie in [1, 63]")
        pad = np.ones(o_pad, dt) if name == "shift" else np.zeros(o_pad, dt)
        pad[:o] = arr
        out["ep_" + name] = pad
    return out


# ----------------------------------------------------------------------------------------------
# TE computes
# ----------------------------------------------------------------------------------------------


def plane_shifted(pop_expr, ri, rj, w_mult: int, acc_t: str):
    """``w_mult * popcount(x_i & u_j) << (i + j)``: the plane loops are unrolled by the schedules, so
    this is a shift by an immediate (a power-of-two ``w_mult`` folds into it). Accumulated modulo the
    lane width (unsigned lanes): the final int32 is exact."""
    from tvm import tirx

    log2 = {1: 0, 2: 1, 4: 2, 8: 3}.get(int(w_mult))
    if log2 is not None:
        return pop_expr.astype(acc_t) << (ri + rj + log2).astype(acc_t)
    return (pop_expr.astype(acc_t) << (ri + rj).astype(acc_t)) * tirx.const(w_mult, acc_t)


def neg_offset(w_offset: int, acc_t: str):
    """``-w_offset`` as a constant of the accumulator type (modulo 2^64 / 2^32 for unsigned lanes)."""
    from tvm import tirx

    bits = int(acc_t[4:]) if acc_t.startswith("uint") else 0
    return tirx.const(((1 << bits) - w_offset) if bits else -w_offset, acc_t)


def _popcount_acc_dtype(word_bits: int) -> str:
    """Popcounts accumulate in lanes of the word's width (no widening in the inner loop) where that
    cannot overflow: 64/32-bit words; narrower words widen to int32."""
    return {64: "uint64", 32: "uint32"}.get(word_bits, "int32")


def no_contract(x):  # float32 only
    """``x`` behind ``llvm.arithmetic.fence``: TVM builds with FP-op fusion on, and the fence stops
    LLVM from fusing the product into an FMA with its consumer."""
    from tvm import tirx

    return tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", x)


def _epilogue(ep: Epilogue, acc_fn: Callable, out_shape, o_axis_of, o_count: int, params: Dict[str, object],
              name: str):
    """Epilogue tensor for non-packed outputs; ``acc_fn(*idx)`` is the int32 accumulator expression."""
    from tvm import te, tirx

    if ep.kind == "int32":
        return te.compute(out_shape, lambda *i: acc_fn(*i), name=name)
    if ep.kind == "float":
        scale = te.placeholder((o_count,), "float32", name="ep_scale")
        bias = te.placeholder((o_count,), "float32", name="ep_bias")
        params.update(ep_scale=scale, ep_bias=bias)
        if ep.residual:
            # fused residual Add: ((acc * scale) + bias) + residual, three roundings in the unfused
            # graph's order (only the product is fenced: no other term can contract into an FMA).
            # Two stages, so a schedule can stage the tile's epilogue (``<name>_epi``) before the add
            # (see lowbit_tiling.apply_conv_schedule) or inline it.
            res = te.placeholder(tuple(out_shape), "float32", name="ep_residual")
            params.update(ep_residual=res)
            epi = te.compute(out_shape, lambda *i: no_contract(acc_fn(*i).astype("float32") * scale[o_axis_of(i)])
                             + bias[o_axis_of(i)], name=name + "_epi")
            params.update(epi_stage=epi)
            return te.compute(out_shape, lambda *i: epi[i] + res[i], name=name)
        # multiply, then add: two roundings as the contract says, never one FMA
        return te.compute(out_shape, lambda *i: no_contract(acc_fn(*i).astype("float32") * scale[o_axis_of(i)])
                          + bias[o_axis_of(i)], name=name)
    odt = ep.kind
    if ep.requant == "fixed_point":
        mult = te.placeholder((o_count,), "int32", name="ep_multiplier")
        shift = te.placeholder((o_count,), "int32", name="ep_shift")
        params.update(ep_multiplier=mult, ep_shift=shift)

        def fixed(*i):
            o = o_axis_of(i)
            s = shift[o].astype("int64")
            prod = acc_fn(*i).astype("int64") * mult[o].astype("int64") + (tirx.const(1, "int64") << (s - 1))
            y = (prod >> s) + tirx.const(ep.out_zero_point, "int64")
            y = te.max(te.min(y, tirx.const(ep.out_max, "int64")), tirx.const(ep.out_min, "int64"))
            return y.astype(odt)

        return te.compute(out_shape, fixed, name=name)
    scale = te.placeholder((o_count,), "float32", name="ep_scale")
    params.update(ep_scale=scale)

    def requant_float(*i):
        y = tirx.nearbyint(acc_fn(*i).astype("float32") * scale[o_axis_of(i)])
        lo = tirx.const(float(ep.out_min - ep.out_zero_point), "float32")
        hi = tirx.const(float(ep.out_max - ep.out_zero_point), "float32")
        y = te.max(te.min(y, hi), lo)
        return (y.astype("int32") + ep.out_zero_point).astype(odt)

    return te.compute(out_shape, requant_float, name=name)


def _packed_epilogue(ep: Epilogue, acc_fn: Callable, lead_shape, o_count: int, params, name: str):
    """Fused threshold + bitpack: bit ``o`` = ``acc > thr`` if flip else ``acc < thr``, packed along O."""
    from tvm import te, tirx

    wb = ep.out_word_bits
    wdt = f"uint{wb}"
    thr = te.placeholder((params["o_pad"],), "int32", name="ep_threshold")
    flip = te.placeholder((params["o_pad"],), "uint8", name="ep_flip")
    params.update(ep_threshold=thr, ep_flip=flip)
    b = te.reduce_axis((0, wb), name="bit")
    nwords = _ceil_div(o_count, wb)

    def word(*idx):
        lead, wo = idx[:-1], idx[-1]
        o = wo * wb + b
        acc = acc_fn(*lead, o)
        on = tirx.Select(flip[o] != 0, acc > thr[o], acc < thr[o])
        # bits are disjoint, so their sum is their OR
        bit = tirx.Select(tirx.all(on, o < o_count), tirx.const(1, wdt) << b.astype(wdt), tirx.const(0, wdt))
        return te.sum(bit, axis=b)

    return te.compute(tuple(lead_shape) + (nwords,), word, name=name)


@dataclass
class ConvStages:
    """The TE tensors of a low-bit conv, passed to the schedule explicitly (no tag matching)."""

    params: List[object]              # PrimFunc arguments in order (te placeholders, then output)
    param_names: List[str]
    pad: object                       # padded input (materialized)
    pop: object                       # reduction over taps/channels (int sums)
    out: object                       # epilogue (the output)
    o_pad: int
    ov: int
    extra: Dict[str, object] = field(default_factory=dict)


def lowbit_conv_compute(wl: LowbitConvWorkload, ov: int, ow_tile: int = 1, base_by_column: bool = False,
                        planes_outer: bool = False) -> ConvStages:
    """TE compute of BinaryConv2d/BitserialConv2d with output channels blocked by ``ov``.

    The popcount stage covers ``ow`` rounded up to ``ow_tile`` columns (the extra columns read zero
    padding and are never stored), so register tiles need no bounds checks. ``base_by_column``: the
    binary conv's correction table in the ``[rows, O_pad, OW]`` layout (:func:`conv_base_constant`).
    Bitserial reduction order: ``(rh, rw, ri, rj, rc)``, or with ``planes_outer`` (for schedules that
    unroll the taps) ``(ri, rj, rh, rw, rc)``: every plane pair's terms of the whole window are
    summed before its one shift.
    """
    from tvm import te, tirx

    g = wl.geom
    if g.groups > 1 and g.og % ov:
        raise ShapeError(f"output-channel block {ov} must divide the {g.og} channels per group")
    wdt = f"uint{wl.word_bits}"
    o_pad = padded_channels(g.o, ov, wl.epilogue)
    hp, wp = g.padded_hw
    ow_pad = _ceil_div(g.ow, ow_tile) * ow_tile
    wp += (ow_pad - g.ow) * g.strides[1]
    sh, sw = g.strides
    dh, dw = g.dilations
    pt, pl = g.pads[0], g.pads[1]
    cw, cgw = wl.cw, wl.cgw
    planes = () if wl.binary else (wl.act_bits,)
    x = te.placeholder((g.n, g.h, g.w) + planes + (cw,), wdt, name="x")
    params: Dict[str, object] = {"o_pad": o_pad}
    extra_stages: Dict[str, object] = {}

    def pad_fn(n, h, w, *rest):
        inside = tirx.all(h >= pt, h < pt + g.h, w >= pl, w < pl + g.w)
        return tirx.if_then_else(inside, x[(n, h - pt, w - pl) + tuple(rest)], tirx.const(0, wdt))

    xp = te.compute((g.n, hp, wp) + planes + (cw,), pad_fn, name="pad")
    acc_t = _popcount_acc_dtype(wl.word_bits)
    rh = te.reduce_axis((0, g.kh), name="rh")
    rw = te.reduce_axis((0, g.kw), name="rw")
    rc = te.reduce_axis((0, cgw), name="rc")

    def in_word(o):
        # input word index of group word rc for output channel o
        return rc if g.groups == 1 else (o // g.og) * cgw + rc

    if wl.binary:
        w = te.placeholder((o_pad // ov, g.kh, g.kw, cgw, ov), wdt, name="w")
        pop = te.compute(
            (g.n, o_pad, g.oh, ow_pad),
            lambda n, o, oh, ow: te.sum(
                tirx.popcount(xp[n, oh * sh + rh * dh, ow * sw + rw * dw, in_word(o)]
                              ^ w[o // ov, rh, rw, rc, o % ov]).astype(acc_t),
                axis=[rh, rw, rc]),
            name="pop")
        t, b = border_classes(g.oh, g.h, g.kh, sh, pt, dh)
        l, r = border_classes(g.ow, g.w, g.kw, sw, pl, dw)
        rows, cols = len(_class_rows(g.oh, t, b)), len(_class_rows(g.ow, l, r))
        if base_by_column:
            base = te.placeholder((rows, o_pad, g.ow), "int32", name="base")

            def base_at(oh, ow, o):
                return base[class_index(oh, g.oh, t, b), o, ow]
        else:
            base = te.placeholder((rows, cols, o_pad), "int32", name="base")

            def base_at(oh, ow, o):
                return base[class_index(oh, g.oh, t, b), class_index(ow, g.ow, l, r), o]
        names = ["x", "w", "base"]
        tensors = [x, w, base]

        def acc_fn(n, o, oh, ow):
            return base_at(oh, ow, o) - 2 * pop[n, o, oh, ow].astype("int32")
    else:
        ab = wl.act_bits
        w = te.placeholder((o_pad // ov, g.kh, g.kw, wl.weight_bits, cgw, ov), wdt, name="w")
        ri = te.reduce_axis((0, ab), name="ri")
        rj = te.reduce_axis((0, wl.weight_bits), name="rj")
        gid = (lambda o: 0) if g.groups == 1 else (lambda o: o // g.og)
        xsum = None
        if wl.w_offset:
            # offset term: -w_offset * sum_i 2^i popcount(x_i), per padded input pixel and group (not
            # per output channel), added once per tap by the first (unrolled) plane/word iteration
            xc, xi = te.reduce_axis((0, cgw), name="xc"), te.reduce_axis((0, ab), name="xi")
            xsum = te.compute(
                (g.n, hp, wp, g.groups),
                lambda n, h, w_, gi: te.sum(
                    (tirx.popcount(xp[n, h, w_, xi, gi * cgw + xc]).astype(acc_t) << xi.astype(acc_t))
                    * neg_offset(wl.w_offset, acc_t), axis=[xc, xi]),
                name="xsum")
            extra_stages["xsum"] = xsum

        def offset_term(n, o, oh, ow):
            if xsum is None:
                return tirx.const(0, acc_t)
            first = tirx.all(rc == 0, ri == 0, rj == 0)
            return tirx.Select(first, xsum[n, oh * sh + rh * dh, ow * sw + rw * dw, gid(o)], tirx.const(0, acc_t))

        pop = te.compute(
            (g.n, o_pad, g.oh, ow_pad),
            lambda n, o, oh, ow: te.sum(
                plane_shifted(tirx.popcount(xp[n, oh * sh + rh * dh, ow * sw + rw * dw, ri, in_word(o)]
                                            & w[o // ov, rh, rw, rj, rc, o % ov]), ri, rj, wl.w_mult, acc_t)
                + offset_term(n, o, oh, ow),
                # planes outside the words of a tap (or of the window): the (unrolled) words of one
                # plane pair share its shift, which LLVM then applies once to their sum (A2W2 conv
                # 256x14x14: 0.501 -> 0.431 ms on Zen 4 with the w_mult fold of plane_shifted)
                axis=[ri, rj, rh, rw, rc] if planes_outer else [rh, rw, ri, rj, rc]),
            name="pop")
        names = ["x", "w"]
        tensors = [x, w]

        def acc_fn(n, o, oh, ow):
            return pop[n, o, oh, ow].astype("int32")

    ep = wl.epilogue
    if ep.kind == "packed":
        out = _packed_epilogue(ep, lambda n, oh, ow, o: acc_fn(n, o, oh, ow), (g.n, g.oh, g.ow), g.o,
                               params, "out")
    else:
        out = _epilogue(ep, acc_fn, (g.n, g.o, g.oh, g.ow), lambda i: i[1], o_pad, params, "out")
    ep_names = [s[0] for s in _epilogue_vector_spec(ep)]
    for nm in ep_names:
        names.append("ep_" + nm)
        tensors.append(params["ep_" + nm])
    if ep.residual:                   # a runtime input (node input 2 + len(ep_names)), not a constant
        names.append("ep_residual")
        tensors.append(params["ep_residual"])
        extra_stages["epi"] = params["epi_stage"]
    names.append("out")
    tensors.append(out)
    return ConvStages(tensors, names, xp, pop, out, o_pad, ov, extra_stages)


@dataclass
class DenseStages:
    params: List[object]
    param_names: List[str]
    pad: object
    pop: object
    out: object
    n_pad: int
    ov: int
    extra: Dict[str, object] = field(default_factory=dict)


def lowbit_dense_compute(wl: LowbitDenseWorkload, ov: int, m_tile: int = 1) -> DenseStages:
    """TE compute of BinaryDense/BitserialDense with output features blocked by ``ov``.

    Rows are padded to a multiple of ``m_tile`` through a zero-padded copy of x (stage ``pad``).
    """
    from tvm import te, tirx

    if wl.epilogue.residual:
        raise UnsupportedError(f"{wl.op}: the fused residual epilogue is defined for convs only")
    wdt = f"uint{wl.word_bits}"
    n_pad = padded_channels(wl.n, ov, wl.epilogue)
    m_pad = _ceil_div(wl.m, m_tile) * m_tile
    kw = wl.kw
    acc_t = _popcount_acc_dtype(wl.word_bits)
    rk = te.reduce_axis((0, kw), name="rk")
    params: Dict[str, object] = {"o_pad": n_pad}
    extra_stages: Dict[str, object] = {}
    if wl.binary:
        x = te.placeholder((wl.m, kw), wdt, name="x")
        xp = _pad_rows(x, m_pad, wdt)
        w = te.placeholder((n_pad // ov, kw, ov), wdt, name="w")
        pop = te.compute((m_pad, n_pad), lambda m, n: te.sum(
            tirx.popcount(xp[m, rk] ^ w[n // ov, rk, n % ov]).astype(acc_t), axis=rk), name="pop")

        def acc_fn(m, n):
            return tirx.const(wl.k, "int32") - 2 * pop[m, n].astype("int32")
        xsum = None
    else:
        ab = wl.act_bits
        x = te.placeholder((wl.m, ab, kw), wdt, name="x")
        xp = _pad_rows(x, m_pad, wdt)
        w = te.placeholder((n_pad // ov, wl.weight_bits, kw, ov), wdt, name="w")
        ri = te.reduce_axis((0, ab), name="ri")
        rj = te.reduce_axis((0, wl.weight_bits), name="rj")
        xsum = None
        if wl.w_offset:
            sk, si = te.reduce_axis((0, kw), name="xk"), te.reduce_axis((0, ab), name="xi")
            xsum = te.compute((m_pad,), lambda m: te.sum(
                (tirx.popcount(xp[m, si, sk]).astype(acc_t) << si.astype(acc_t)) * neg_offset(wl.w_offset, acc_t),
                axis=[sk, si]), name="xsum")
            extra_stages["xsum"] = xsum

        def offset_term(m):
            if xsum is None:
                return tirx.const(0, acc_t)
            return tirx.Select(tirx.all(rk == 0, ri == 0, rj == 0), xsum[m], tirx.const(0, acc_t))

        pop = te.compute((m_pad, n_pad), lambda m, n: te.sum(
            plane_shifted(tirx.popcount(xp[m, ri, rk] & w[n // ov, rj, rk, n % ov]), ri, rj, wl.w_mult, acc_t)
            + offset_term(m), axis=[rk, ri, rj]), name="pop")

        def acc_fn(m, n):
            return pop[m, n].astype("int32")

    ep = wl.epilogue
    if ep.kind == "packed":
        out = _packed_epilogue(ep, acc_fn, (wl.m,), wl.n, params, "out")
    else:
        out = _epilogue(ep, acc_fn, (wl.m, wl.n), lambda i: i[1], n_pad, params, "out")
    names = ["x", "w"]
    tensors = [x, w]
    for nm in (s[0] for s in _epilogue_vector_spec(ep)):
        names.append("ep_" + nm)
        tensors.append(params["ep_" + nm])
    names.append("out")
    tensors.append(out)
    return DenseStages(tensors, names, xp, pop, out, n_pad, ov, extra_stages)


def _pad_rows(x, m_pad: int, wdt: str):
    from tvm import te, tirx

    m = int(x.shape[0])
    return te.compute((m_pad,) + tuple(x.shape[1:]), lambda i, *r: tirx.if_then_else(
        i < m, x[(i,) + tuple(r)], tirx.const(0, wdt)), name="pad")


def kernel_params(names: Sequence[str], tensors: Sequence[object], consts: Dict[str, np.ndarray]
                  ) -> List[KernelParam]:
    """Describe the PrimFunc arguments: x is node input 0, constants are prepared, out is output 0;
    the fused residual (``ep_residual``) is node input 4 (after x, w, scale, bias)."""
    out = []
    for name, t in zip(names, tensors):
        shape = tuple(int(s) for s in t.shape)
        if name == "x":
            out.append(KernelParam(name, "input", 0, shape, str(t.dtype)))
        elif name == "ep_residual":
            out.append(KernelParam(name, "input", 4, shape, str(t.dtype)))
        elif name == "out":
            out.append(KernelParam(name, "output", 0, shape, str(t.dtype)))
        else:
            data = consts[name]
            if tuple(data.shape) != shape or str(data.dtype) != str(t.dtype):
                raise ShapeError(f"internal: constant {name} is {data.dtype}{list(data.shape)}, kernel "
                                 f"expects {t.dtype}{list(shape)}")
            out.append(KernelParam(name, "const", 0, shape, str(t.dtype), data))
    return out


# ----------------------------------------------------------------------------------------------
# workloads from IR nodes
# ----------------------------------------------------------------------------------------------


def conv_workload_from_attrs(op: str, x_shape, x_dtype: str, w_shape, attrs: dict) -> LowbitConvWorkload:
    """The workload of a BinaryConv2d/BitserialConv2d node from its input shapes and attributes."""
    word_bits = np.dtype(x_dtype).itemsize * 8
    kh, kw = (int(v) for v in attrs["kernel_shape"])
    geom = ConvGeometry(int(x_shape[0]), int(attrs["in_channels"]), int(x_shape[1]), int(x_shape[2]),
                        int(w_shape[0]), kh, kw, tuple(int(v) for v in attrs.get("strides", (1, 1))),
                        tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0))),
                        tuple(int(v) for v in attrs.get("dilations", (1, 1))), int(attrs.get("groups", 1)))
    ep = Epilogue.from_attrs(attrs)
    if op == "BinaryConv2d":
        return LowbitConvWorkload(geom, word_bits, ep, pad_value=int(attrs.get("pad_value", 0)))
    if op == "BitserialConv2d":
        return LowbitConvWorkload(geom, word_bits, ep, act_bits=int(attrs["act_bits"]),
                                  weight_bits=int(attrs["weight_bits"]), w_mult=int(attrs["w_mult"]),
                                  w_offset=int(attrs["w_offset"]))
    raise UnsupportedError(f"{op} is not a low-bit conv")


def dense_workload_from_attrs(op: str, x_shape, x_dtype: str, w_shape, attrs: dict) -> LowbitDenseWorkload:
    """The workload of a BinaryDense/BitserialDense node."""
    word_bits = np.dtype(x_dtype).itemsize * 8
    ep = Epilogue.from_attrs(attrs)
    m, n, k = int(x_shape[0]), int(w_shape[0]), int(attrs["in_features"])
    if op == "BinaryDense":
        return LowbitDenseWorkload(m, k, n, word_bits, ep)
    if op == "BitserialDense":
        return LowbitDenseWorkload(m, k, n, word_bits, ep, act_bits=int(attrs["act_bits"]),
                                   weight_bits=int(attrs["weight_bits"]), w_mult=int(attrs["w_mult"]),
                                   w_offset=int(attrs["w_offset"]))
    raise UnsupportedError(f"{op} is not a low-bit dense")
