"""Kernel selection: ONE table of (predicate, kernel kind) rules, first match wins.

Each rule names a kernel *kind* (see ``impls.KINDS``); the implementation used is the target
family's (``impls.get_impl(kind, target.family)``). Predicates look at the op, dtypes, attributes,
constness of operands and ``target.features`` / ``target.family`` -- never at board names. The
reason for each rule sits next to it; a rule with ``fallback`` set is a slower generic path, and the
lowering logs and records that reason for every layer that takes it.

``LIMITS`` lists what no rule handles on purpose, with the message the user gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from .compute_injective import BINARY, UNARY, UNCHECKED_UNARY, VARIADIC
from .impls import get_impl
from .kernel import KernelImpl, Workload
from .arm import int8 as _arm_int8  # noqa: F401  registers qconv2d_dot / qdense_dot on arm
from .arm import int8_depthwise as _arm_int8_dw  # noqa: F401  registers qdepthwise_rows on arm
from .x86 import int8 as _x86_int8  # noqa: F401  registers qconv2d_dot / qdense_dot on x86
from .x86 import int8_depthwise as _x86_int8_dw  # noqa: F401  registers qdepthwise_rows on x86
from .x86 import int8_depthwise_cl as _x86_int8_dw_cl  # registers qdepthwise_cl on x86
from .compute_pool import supported as _pool_unsupported  # "" when maxpool2d_rows handles the workload
from .compute_pool import avg_supported as _avgpool_unsupported  # "" when avgpool2d_rows handles it
from .compute_bitpack import supported as _bitpack_unsupported  # "" when bitpack_pixels handles it

Pred = Callable[[Workload, object], bool]

FLOATS = ("float32",)
QUANT8 = ("int8", "uint8")


@dataclass(frozen=True)
class Rule:
    kind: str
    when: Pred
    why: str
    fallback: Optional[str] = None


# -- predicates ------------------------------------------------------------------------------------

def op_is(*ops: str) -> Pred:
    return lambda wl, t: wl.op in ops


def all_of(*preds: Pred) -> Pred:
    return lambda wl, t: all(p(wl, t) for p in preds)


def any_of(*preds: Pred) -> Pred:
    return lambda wl, t: any(p(wl, t) for p in preds)


def has_feature(*features: str) -> Pred:
    """The target has every one of ``features`` (``Target.features``: popcnt, avx512, neon, ...)."""
    return lambda wl, t: t is not None and all(t.has(f) for f in features)


def family(*families: str) -> Pred:
    return lambda wl, t: t is not None and t.family in families


def in_dtype(i: int, *dtypes: str) -> Pred:
    return lambda wl, t: wl.input(i) is not None and wl.input(i).dtype in dtypes


def const_input(i: int) -> Pred:
    return lambda wl, t: wl.input(i) is not None and wl.input(i).const


def rank(i: int, *ranks: int) -> Pred:
    return lambda wl, t: wl.input(i) is not None and len(wl.input(i).shape) in ranks


def _groups(wl: Workload) -> int:
    return int(wl.attr("group", wl.attr("groups", 1)))


def depthwise(wl: Workload, t) -> bool:
    """groups == C with one input channel per group (any channel multiplier)."""
    c = wl.inputs[0].shape[1]
    return _groups(wl) == c and wl.inputs[1].shape[1] == 1 and c > 1


def float_io(wl: Workload, t) -> bool:
    return all(s is None or s.dtype in FLOATS for s in wl.inputs[:1]) and wl.outputs[0].dtype in FLOATS


def int8_epilogue(wl: Workload, t) -> bool:
    out = wl.attr("out", "int32")
    return out in ("int32", "float") or (out in QUANT8 and wl.attr("requant") in ("fixed_point", "float"))


def matmul_2d_const_b(wl: Workload, t) -> bool:
    return len(wl.inputs[1].shape) == 2 and wl.inputs[1].const and len(wl.inputs[0].shape) >= 2


def unary_checked(wl: Workload, t) -> bool:
    return wl.op in UNARY and float_io(wl, t)


def scalar_bounds(*idx: int) -> Pred:
    """Inputs ``idx`` are absent or constant scalars (baked into the kernel)."""
    def p(wl, t):
        return all(wl.input(i) is None or wl.scalar(i) is not None for i in idx)
    return p


def quantize_ok(wl: Workload, t) -> bool:
    return (wl.inputs[0].dtype in FLOATS and wl.inputs[1].dtype in FLOATS and not wl.attr("block_size", 0)
            and (wl.attr("precision", "") or "float32") == "float32"
            and wl.outputs[0].dtype in ("int8", "uint8", "int16", "uint16"))


def dequantize_ok(wl: Workload, t) -> bool:
    return (wl.inputs[0].dtype in ("int8", "uint8", "int16", "uint16", "int32")
            and wl.inputs[1].dtype in FLOATS and not wl.attr("block_size", 0) and wl.outputs[0].dtype in FLOATS)


# -- the table -------------------------------------------------------------------------------------

#: targets with a dot-product int8 micro-kernel: x86 AVX2 / AVX-512, every ARM core with NEON
DOT_ISA = any_of(all_of(family("x86"), has_feature("avx2")), all_of(family("arm"), has_feature("neon")))

def consts_from(start: int) -> Pred:
    """Every present input from ``start`` on is a compile-time constant (epilogue vectors)."""
    return lambda wl, t: all(s is None or s.const for s in wl.inputs[start:])


def lowbit_conv_epilogue(wl: Workload, t) -> bool:
    """consts_from(2), but a fused residual (attr ``residual``; the last input, after scale and bias)
    is a runtime float32 tensor of the output's shape (passes/fuse_residual.py)."""
    if not int(wl.attr("residual", 0)):
        return consts_from(2)(wl, t)
    res = wl.inputs[-1]
    return (len(wl.inputs) == 5 and all(s is not None and s.const for s in wl.inputs[2:4])
            and res is not None and res.dtype == "float32" and tuple(res.shape) == tuple(wl.outputs[0].shape))


RULES: List[Rule] = [
    # low-bit ops on packed words (schedules/lowbit_impls.py)
    Rule("bconv2d_nhwc", all_of(op_is("BinaryConv2d"), const_input(1), lowbit_conv_epilogue),
         "XOR+popcount register tile, weights blocked per output-channel vector at compile time, "
         "zero padding exact through a compile-time correction table"),
    Rule("bsconv2d_nhwc", all_of(op_is("BitserialConv2d"), const_input(1), lowbit_conv_epilogue),
         "AND+popcount over bit planes, plane weights folded into immediates"),
    Rule("bdense", all_of(op_is("BinaryDense"), const_input(1), consts_from(2)),
         "XOR+popcount register tile over rows x output-feature vectors"),
    Rule("bsdense", all_of(op_is("BitserialDense"), const_input(1), consts_from(2)),
         "AND+popcount over bit planes"),
    Rule("packed_maxpool", op_is("PackedMaxPool"), "max of sign codes = AND of the packed words"),
    Rule("bitpack_pixels", lambda wl, t: not _bitpack_unsupported(wl),
         "float32 NCHW sign pack: pixels in the vector lanes, compare + masked OR per channel "
         "(schedules/compute_bitpack.py)"),
    Rule("bitpack", op_is("BitPack"), "threshold compare packed into words along the channels"),
    Rule("bitunpack", op_is("BitUnpack"), "packed words back to +-1 / integer codes"),
    # convolution
    Rule("depthwise_conv2d_nchw", all_of(op_is("Conv"), rank(0, 4), float_io, depthwise),
         "depthwise: one input channel per output, so vectorise along output columns"),
    Rule("conv2d_nchw_ocvec", all_of(op_is("Conv"), rank(0, 4), float_io, const_input(1)),
         "direct conv, output channels in the vector lanes, weights pre-packed at compile time"),
    Rule("qconv2d_dot", all_of(op_is("QConv2d"), DOT_ISA, rank(0, 4),
                               in_dtype(0, *QUANT8), in_dtype(1, "int8"), int8_epilogue, consts_from(1),
                               lambda wl, t: not depthwise(wl, t)),
         "int8 conv as a dot-product register tile (schedules/x86/int8.py, schedules/arm/int8.py): "
         "vpdpbusd on VNNI / sdot on ARM dotprod with the zero-point term folded into a compile-time "
         "per-channel constant, else exact int16 vpmaddwd (x86) / smlal, vmlal.s16 (NEON); "
         "weights blocked at compile time; 4-5x the generic int8 conv on x86; on ARM 2x (smlal, "
         "cortex-a72) to 10x (sdot, cortex-a76) fewer cycles per MAC (llvm-mca, benchmarks/mca.py)"),
    Rule("qdepthwise_cl", all_of(op_is("QConv2d"), family("x86"), has_feature("avx2"), rank(0, 4),
                                 in_dtype(0, *QUANT8), in_dtype(1, "int8"), int8_epilogue, const_input(1),
                                 depthwise, _x86_int8_dw_cl.preferred),
         "int8 depthwise on x86 with <= 8x8 output pixels per channel (<= 28x28 with AVX-512 VNNI "
         "vpdpwssd taps): channels in int32 lanes, NCHW transposed in the pack and the store "
         "(schedules/x86/int8_depthwise_cl.py); VNNI: 960x7x7 s1 2.1x, 576x14x14 s2 1.6x, s1 1.2x the "
         "row kernel; AVX2: 1.4x / 1.2x / 0.94x (so AVX2 stops at 8x8)"),
    Rule("qdepthwise_rows", all_of(op_is("QConv2d"), DOT_ISA, rank(0, 4), in_dtype(0, *QUANT8),
                                   in_dtype(1, "int8"), int8_epilogue, const_input(1), depthwise),
         "int8 depthwise: output columns in int32 lanes over a zero-point-free padded copy of the "
         "channel, stride phases split (schedules/compute_int8_depthwise.py); x86 (int32 vpmulld) "
         "144x56x56 3x3: 2.9x (s1) / 5.6x (s2) the generic kernel, 1.3x / 1.2x onnxruntime int8; ARM "
         "(int16 smlal / vmlal.s16, schedules/arm/int8_depthwise.py), llvm-mca cycles per MAC of the inner "
         "loop vs the generic kernel (benchmarks/mca.py): s1 / s2 2.0x / 5.1x cortex-a72, 4.2x / 6.6x "
         "cortex-a53, 1.15x / 6.4x armv7 (cortex-a57 model)"),
    Rule("qdepthwise_conv2d_nchw", all_of(op_is("QConv2d"), in_dtype(0, *QUANT8), int8_epilogue, depthwise),
         "int8 depthwise: int32 accumulation vectorised along output columns"),
    Rule("qconv2d_nchw_ocvec", all_of(op_is("QConv2d"), in_dtype(0, *QUANT8), int8_epilogue, const_input(1)),
         "int8 direct conv with exact int32 accumulation (a fast int8 kernel goes above this rule)"),
    # dense
    Rule("dense_nvec", all_of(op_is("Gemm"), float_io),
         "Gemm: B packed [N/vn, K, vn] (constant: at compile time; else in the kernel)"),
    Rule("dense_nvec", all_of(op_is("MatMul"), float_io, matmul_2d_const_b),
         "MatMul with constant 2-D weights is a dense layer over the flattened rows of A"),
    Rule("batch_matmul", all_of(op_is("MatMul"), float_io),
         "general batched/broadcast MatMul", fallback="MatMul without constant 2-D weights uses the "
         "generic batched matmul kernel"),
    Rule("qdense_dot", all_of(op_is("QDense"), DOT_ISA, rank(0, 2),
                              in_dtype(0, *QUANT8), in_dtype(1, "int8"), int8_epilogue, consts_from(1),
                              lambda wl, t: t.family == "arm" or t.has("vnni") or wl.inputs[0].shape[0] > 1),
         "int8 dense as the same dot-product register tile (rows x output-channel vectors); one row "
         "on x86 without VNNI stays generic: its int16 weights double the bytes of a weight-bound "
         "layer; on ARM one row takes it too (llvm-mca, M1 K1024 N64: 0.38 vs 0.75 cycles per MAC on "
         "cortex-a72 with smlal, whose int16 weights double the bytes read; 0.13 vs 0.75 with sdot)"),
    Rule("qdense_nvec", all_of(op_is("QDense"), in_dtype(0, *QUANT8), int8_epilogue, const_input(1)),
         "int8 dense with exact int32 accumulation, weights packed [N/vn, K, vn]"),
    # pooling, normalisation
    Rule("maxpool2d_rows", lambda wl, t: not _pool_unsupported(wl),
         "strides 1/2, dilation 1: row-wise vertical max + shuffled contiguous taps (schedules/compute_pool.py)"),
    Rule("maxpool2d", all_of(op_is("MaxPool"), rank(0, 4), lambda wl, t: len(wl.outputs) == 1),
         "2-D max pool (padded taps skipped)"),
    Rule("avgpool2d_rows", lambda wl, t: not _avgpool_unsupported(wl),
         "unpadded float average pool, strides 1/2: contiguous / shuffled taps in the template's order "
         "(schedules/compute_pool.py)"),
    Rule("avgpool2d", all_of(op_is("AveragePool"), rank(0, 4), float_io), "2-D average pool"),
    Rule("global_avgpool", all_of(op_is("GlobalAveragePool"), float_io), "mean over the spatial dims"),
    Rule("global_maxpool", op_is("GlobalMaxPool"), "max over the spatial dims"),
    Rule("softmax", all_of(op_is("Softmax"), float_io), "max, exp, sum, divide"),
    Rule("batch_norm", all_of(op_is("BatchNormalization"), float_io, const_input(1), const_input(4),
                              lambda wl, t: not wl.attr("training_mode", 0)),
         "inference batch norm with scale/sqrt(var+eps) folded at compile time"),
    # elementwise
    Rule("elementwise", unary_checked, "float unary elementwise"),
    Rule("elementwise", all_of(op_is(*BINARY), lambda wl, t: wl.op != "PRelu" or float_io(wl, t)),
         "binary elementwise with numpy broadcasting"),
    Rule("elementwise", op_is(*VARIADIC, "Where", "Not", "Cast"), "elementwise with broadcasting"),
    Rule("elementwise", all_of(op_is("Clip"), scalar_bounds(1, 2)), "Clip with constant bounds baked in"),
    Rule("elementwise", all_of(op_is("Pow"), float_io), "float Pow"),
    # data movement, reductions
    Rule("transpose", op_is("Transpose"), "permuted copy"),
    Rule("concat", op_is("Concat"), "select the source by position"),
    Rule("pad", all_of(op_is("Pad"), scalar_bounds(1)), "Pad with a constant (baked) value"),
    Rule("slice", op_is("Slice"), "strided copy"),
    Rule("gather", op_is("Gather"), "indexed copy"),
    Rule("expand", op_is("Expand"), "broadcast copy"),
    Rule("tile", op_is("Tile"), "modular copy"),
    Rule("split", op_is("Split"), "one copy per output"),
    Rule("reduce", op_is("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"),
         "reduction over constant axes"),
    # quantization
    Rule("qadd", all_of(op_is("QAdd"), lambda wl, t: wl.attr("requant") in ("fixed_point", "float")),
         "int8 residual add"),
    Rule("quantize_linear", all_of(op_is("QuantizeLinear"), quantize_ok), "float -> int8 quantization"),
    Rule("dequantize_linear", all_of(op_is("DequantizeLinear"), dequantize_ok), "int8 -> float"),
]

#: Known limits: (predicate, message) checked when no rule matches, for a precise error.
LIMITS: List[Tuple[Pred, str]] = [
    (op_is(*UNCHECKED_UNARY), "{op}: " + "; ".join(UNCHECKED_UNARY.values())),
    (all_of(op_is("Conv", "QConv2d"), lambda wl, t: len(wl.inputs[0].shape) != 4),
     "only 2-D convolutions have kernels (input rank {rank0})"),
    (all_of(op_is("Conv", "QConv2d", "QDense"), lambda wl, t: not wl.inputs[1].const),
     "{op} weights computed at run time have no kernel; the weights must be constant"),
    (all_of(op_is("MaxPool"), lambda wl, t: len(wl.outputs) > 1), "MaxPool's Indices output has no kernel"),
    (all_of(op_is("QConv2d", "QDense"), lambda wl, t: wl.attr("out") == "packed"),
     "the fused bit-packing epilogue (out='packed') has no int8 kernel yet"),
    (all_of(op_is("BinaryConv2d", "BitserialConv2d", "BinaryDense", "BitserialDense"),
            lambda wl, t: not all(s is None or s.const
                                  for s in wl.inputs[1:4 if int(wl.attr("residual", 0)) else None])),
     "{op}: the packed weights and the epilogue vectors must be compile-time constants"),
    (all_of(op_is("BinaryConv2d", "BitserialConv2d"), lambda wl, t: int(wl.attr("residual", 0))),
     "{op}: the fused residual must be float32 of the output's shape with the float epilogue"),
    (op_is("BatchNormalization"), "BatchNormalization needs constant scale/var and training_mode=0"),
]


@dataclass(frozen=True)
class Selection:
    impl: KernelImpl
    kind: str
    why: str
    fallback: Optional[str]


def select(wl: Workload, target) -> Selection:
    """The first rule that matches ``wl`` on ``target``; raises LookupError with the reason if none."""
    for rule in RULES:
        if rule.when(wl, target):
            return Selection(get_impl(rule.kind, target.family), rule.kind, rule.why, rule.fallback)
    raise LookupError(explain(wl))


def explain(wl: Workload) -> str:
    fields = {"op": wl.op, "rank0": len(wl.inputs[0].shape) if wl.inputs and wl.inputs[0] else 0}
    for pred, msg in LIMITS:
        try:
            if pred(wl, None):
                return msg.format(**fields)
        except (IndexError, AttributeError, TypeError):
            continue
    dtypes = [None if s is None else s.dtype for s in wl.inputs]
    return f"no kernel implements {wl.op} with input dtypes {dtypes} and these attributes"
