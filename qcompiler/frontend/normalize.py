"""Per-op normalisation of ONNX nodes into IR nodes.

The IR keeps ONNX op names for the ops it imports, with every attribute explicit: schema defaults
are filled in, and opset differences (attributes that became inputs, changed defaults) are removed,
so the reference executor implements each op once. A normaliser is
``fn(graph, inputs, attrs, opset, where) -> (ir_op, inputs, attrs)``.

Inputs that decide output shapes (Reshape's shape, Slice's starts/ends, Squeeze's axes, Pad's pads,
...) must be constants -- qcompiler compiles static graphs -- and become attributes here;
``STATIC_INPUTS`` lists them per op. Negative axes are resolved against the input rank.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ShapeError, UnsupportedError
from ..ir import Graph

#: ONNX ops (default domain) that import. Extending this list needs an op in ``qcompiler.ref``.
SUPPORTED_ONNX_OPS = frozenset("""
Conv Gemm MatMul BatchNormalization Relu Clip LeakyRelu PRelu Sigmoid HardSigmoid HardSwish Tanh Sign
Add Sub Mul Div MaxPool AveragePool GlobalAveragePool GlobalMaxPool Flatten Reshape Transpose Concat Pad
Softmax Squeeze Unsqueeze Identity Dropout Constant Shape Gather Cast ConstantOfShape Slice Range
Expand Equal Where Neg Abs Sqrt Exp Log Pow Min Max Sum Mean ReduceMean ReduceSum ReduceMax ReduceMin
ReduceProd Split Floor Ceil Round Erf Greater Less GreaterOrEqual LessOrEqual Not And Or Xor Elu Selu
Softplus Softsign Reciprocal Tile
QuantizeLinear DequantizeLinear QLinearConv QLinearMatMul ConvInteger MatMulInteger
""".split())

#: Ops that vanish at import (they become aliases of their input).
REMOVED_OPS = frozenset({"Identity", "Dropout"})

Normalizer = Callable[[Graph, List[str], Dict, int, str], Tuple[str, List[str], Dict]]
NORMALIZERS: Dict[str, Normalizer] = {}


def attr_dict(node: onnx.NodeProto) -> Dict:
    """Node attributes as Python values (tensors as numpy arrays)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.TENSOR:
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = tuple(x.decode() if isinstance(x, bytes) else x for x in v)
        out[a.name] = v
    return out


def with_defaults(op_type: str, opset: int, attrs: Dict, where: str) -> Dict:
    """Fill schema defaults for attributes that the node leaves out."""
    try:
        schema = onnx.defs.get_schema(op_type, opset)
    except Exception:
        raise UnsupportedError(f"{where}: op {op_type} does not exist in opset {opset}") from None
    full = {}
    for name, a in schema.attributes.items():
        if a.default_value is not None and a.default_value.type != onnx.AttributeProto.UNDEFINED:
            v = helper.get_attribute_value(a.default_value)
            full[name] = v.decode() if isinstance(v, bytes) else (tuple(v) if isinstance(v, list) else v)
    unknown = set(attrs) - set(schema.attributes)
    if unknown:
        raise UnsupportedError(f"{where}: unknown attribute(s) {sorted(unknown)} for {op_type}-{opset}")
    full.update(attrs)
    return full


def normalizer(*op_types: str):
    def deco(fn: Normalizer) -> Normalizer:
        for t in op_types:
            NORMALIZERS[t] = fn
        return fn

    return deco


def const_input(graph: Graph, inputs: List[str], i: int, where: str, what: str):
    """The constant data of input ``i`` (None if absent); a clear error when it is not constant."""
    if i >= len(inputs) or not inputs[i]:
        return None
    data = graph.const(inputs[i])
    if data is None:
        raise UnsupportedError(f"{where}: {what} (input {i}, {inputs[i]!r}) must be a constant, but it "
                               "is computed at run time; qcompiler compiles static graphs")
    return data


def _spatial_defaults(attrs: Dict, rank: int, kernel_shape=None) -> Dict:
    n = rank - 2
    ks = tuple(attrs.get("kernel_shape") or kernel_shape or ())
    attrs["kernel_shape"] = ks
    attrs["strides"] = tuple(attrs.get("strides") or (1,) * n)
    attrs["dilations"] = tuple(attrs.get("dilations") or (1,) * n)
    attrs["pads"] = tuple(attrs.get("pads") or (0,) * (2 * n))
    return attrs


def resolve_auto_pad(attrs: Dict, in_spatial, where: str) -> Dict:
    """Turn auto_pad SAME_UPPER/SAME_LOWER/VALID into explicit pads (begin..., end...)."""
    mode = attrs.pop("auto_pad", "NOTSET") or "NOTSET"
    n = len(in_spatial)
    if mode == "NOTSET":
        return attrs
    if mode == "VALID":
        attrs["pads"] = (0,) * (2 * n)
        return attrs
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedError(f"{where}: auto_pad={mode!r} is not supported")
    begin, end = [], []
    for d in range(n):
        s, k, dil = attrs["strides"][d], attrs["kernel_shape"][d], attrs["dilations"][d]
        out = -(-in_spatial[d] // s)
        total = max(0, (out - 1) * s + (k - 1) * dil + 1 - in_spatial[d])
        small, big = total // 2, total - total // 2
        if mode == "SAME_UPPER":
            begin.append(small), end.append(big)
        else:
            begin.append(big), end.append(small)
    attrs["pads"] = tuple(begin + end)
    return attrs


# -- dtypes ---------------------------------------------------------------------------------------

#: ONNX element types the IR holds, as numpy dtype names. Others (string, bfloat16, float8, int4,
#: complex, ...) are refused with an UnsupportedError naming the node or value.
ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT16: "int16", onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT32: "uint32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
}


def onnx_dtype_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"element type {elem_type}"


def numpy_dtype(elem_type: int, where: str) -> str:
    """The IR dtype of ONNX element type ``elem_type``; UnsupportedError naming ``where`` if none."""
    try:
        return ONNX_TO_NUMPY[elem_type]
    except KeyError:
        raise UnsupportedError(f"{where} uses dtype {onnx_dtype_name(elem_type)}, which qcompiler does "
                               f"not support (supported: {sorted(set(ONNX_TO_NUMPY.values()))})") from None


#: (op -> input positions) that must be constant at import: they decide output shapes (or, for
#: Dropout, whether the op is the identity).
STATIC_INPUTS: Dict[str, Tuple[int, ...]] = {
    "Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 3),
    "Split": (1,), "Tile": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "Dropout": (1, 2),
}


# -- helpers --------------------------------------------------------------------------------------

def _shape(graph: Graph, name: str) -> Tuple[int, ...]:
    return graph.value(name).shape


def _axis(axis: int, rank: int, where: str, what: str = "axis") -> int:
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ShapeError(f"{where}: {what} {axis} is out of range for rank {rank}")
    return axis % rank


def _axes(axes, rank: int, where: str, what: str = "axes") -> Tuple[int, ...]:
    out = tuple(_axis(a, rank, where, what) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"{where}: {what} {list(axes)} repeat an axis")
    return out


def _ints(data) -> Tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(data).reshape(-1))


def _const_ints(graph, inputs, i, where, what):
    data = const_input(graph, inputs, i, where, what)
    return None if data is None else _ints(data)


# -- convolution and pooling ----------------------------------------------------------------------

def _window_attrs(graph, inputs, attrs, where, kernel_shape=None, keep=()):
    x_shape = _shape(graph, inputs[0])
    if len(x_shape) < 3:
        raise ShapeError(f"{where}: input must be [N, C, spatial...], got shape {list(x_shape)}")
    attrs = _spatial_defaults(dict(attrs), len(x_shape), kernel_shape)
    n = len(x_shape) - 2
    for key, length in (("kernel_shape", n), ("strides", n), ("dilations", n), ("pads", 2 * n)):
        if len(attrs[key]) != length:
            raise ShapeError(f"{where}: {key}={list(attrs[key])} does not fit a {n}-D spatial input")
    attrs = resolve_auto_pad(attrs, x_shape[2:], where)
    names = ("kernel_shape", "strides", "dilations", "pads") + tuple(keep)
    return {k: attrs[k] for k in names}


@normalizer("Conv")
def _conv(graph, inputs, attrs, opset, where):
    w_shape = _shape(graph, inputs[1])
    out = _window_attrs(graph, inputs, attrs, where, kernel_shape=w_shape[2:], keep=("group",))
    return "Conv", inputs, out


@normalizer("MaxPool")
def _max_pool(graph, inputs, attrs, opset, where):
    return "MaxPool", inputs, _window_attrs(graph, inputs, attrs, where,
                                            keep=("ceil_mode", "storage_order"))


@normalizer("AveragePool")
def _average_pool(graph, inputs, attrs, opset, where):
    return "AveragePool", inputs, _window_attrs(graph, inputs, attrs, where,
                                                keep=("ceil_mode", "count_include_pad"))


@normalizer("BatchNormalization")
def _batch_norm(graph, inputs, attrs, opset, where):
    out = {"epsilon": float(attrs["epsilon"]), "momentum": float(attrs["momentum"]),
           "training_mode": int(attrs.get("training_mode", 0))}
    return "BatchNormalization", inputs, out


@normalizer("Softmax")
def _softmax(graph, inputs, attrs, opset, where):
    rank = len(_shape(graph, inputs[0]))
    axis = _axis(attrs["axis"], rank, where)
    # before opset 13, Softmax flattened the input to 2-D at `axis`; the same as per-axis when
    # axis is the last dim
    return "Softmax", inputs, {"axis": axis, "coerce_2d": opset < 13 and axis != rank - 1}


# -- shape ops ------------------------------------------------------------------------------------

@normalizer("Reshape")
def _reshape(graph, inputs, attrs, opset, where):
    x_shape = _shape(graph, inputs[0])
    target = list(_const_ints(graph, inputs, 1, where, "the target shape"))
    allowzero = int(attrs.get("allowzero", 0))
    if not allowzero:
        for i, d in enumerate(target):
            if d == 0:
                if i >= len(x_shape):
                    raise ShapeError(f"{where}: shape {target} copies dim {i}, which the input "
                                     f"{list(x_shape)} does not have")
                target[i] = x_shape[i]
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise ShapeError(f"{where}: invalid target shape {target}")
    size = int(np.prod(x_shape, dtype=np.int64))
    if -1 in target:
        rest = int(np.prod([d for d in target if d != -1], dtype=np.int64))
        if rest == 0 or size % rest:
            raise ShapeError(f"{where}: cannot reshape {list(x_shape)} into {target}")
        target[target.index(-1)] = size // rest
    if int(np.prod(target, dtype=np.int64)) != size:
        raise ShapeError(f"{where}: cannot reshape {list(x_shape)} ({size} elements) into {target}")
    return "Reshape", inputs[:1], {"shape": tuple(target)}


@normalizer("Flatten")
def _flatten(graph, inputs, attrs, opset, where):
    rank = len(_shape(graph, inputs[0]))
    axis = int(attrs["axis"])
    if not -rank <= axis <= rank:
        raise ShapeError(f"{where}: axis {axis} is out of range for rank {rank}")
    return "Flatten", inputs, {"axis": axis % rank if axis < 0 else axis}


@normalizer("Transpose")
def _transpose(graph, inputs, attrs, opset, where):
    rank = len(_shape(graph, inputs[0]))
    perm = attrs.get("perm")
    perm = tuple(reversed(range(rank))) if not perm else _axes(perm, rank, where, "perm")
    if len(perm) != rank:
        raise ShapeError(f"{where}: perm {list(perm)} is not a permutation of {rank} axes")
    return "Transpose", inputs, {"perm": perm}


@normalizer("Concat")
def _concat(graph, inputs, attrs, opset, where):
    rank = len(_shape(graph, inputs[0]))
    return "Concat", inputs, {"axis": _axis(attrs["axis"], rank, where)}


@normalizer("Gather")
def _gather(graph, inputs, attrs, opset, where):
    rank = len(_shape(graph, inputs[0]))
    return "Gather", inputs, {"axis": _axis(attrs["axis"], rank, where)}


@normalizer("Squeeze")
def _squeeze(graph, inputs, attrs, opset, where):
    shape = _shape(graph, inputs[0])
    axes = attrs.get("axes")
    if axes is None:
        axes = _const_ints(graph, inputs, 1, where, "axes")
    if axes is None:  # no axes: every size-1 dim
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
    return "Squeeze", inputs[:1], {"axes": _axes(axes, len(shape), where)}


@normalizer("Unsqueeze")
def _unsqueeze(graph, inputs, attrs, opset, where):
    shape = _shape(graph, inputs[0])
    axes = attrs.get("axes")
    if axes is None:
        axes = _const_ints(graph, inputs, 1, where, "axes")
    if axes is None:
        raise ShapeError(f"{where}: Unsqueeze needs axes")
    return "Unsqueeze", inputs[:1], {"axes": tuple(sorted(_axes(axes, len(shape) + len(axes), where)))}


@normalizer("Shape")
def _shape_op(graph, inputs, attrs, opset, where):
    rank = len(_shape(graph, inputs[0]))
    start = int(attrs.get("start", 0))
    end = attrs.get("end")
    end = rank if end is None else int(end)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return "Shape", inputs, {"start": start, "end": max(end, start)}


@normalizer("Cast")
def _cast(graph, inputs, attrs, opset, where):
    to = numpy_dtype(int(attrs["to"]), where)
    return "Cast", inputs, {"to": to}


@normalizer("ConstantOfShape")
def _constant_of_shape(graph, inputs, attrs, opset, where):
    const_input(graph, inputs, 0, where, "the shape")
    value = attrs.get("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if value.size != 1:
        raise ShapeError(f"{where}: value must hold one element, got {value.size}")
    if str(value.dtype) not in ONNX_TO_NUMPY.values():
        raise UnsupportedError(f"{where} uses dtype {value.dtype}, which qcompiler does not support")
    return "ConstantOfShape", inputs, {"value": value}


@normalizer("Slice")
def _slice(graph, inputs, attrs, opset, where):
    rank = len(_shape(graph, inputs[0]))
    starts = _const_ints(graph, inputs, 1, where, "starts")
    ends = _const_ints(graph, inputs, 2, where, "ends")
    axes = _const_ints(graph, inputs, 3, where, "axes")
    steps = _const_ints(graph, inputs, 4, where, "steps")
    axes = tuple(range(len(starts))) if axes is None else _axes(axes, rank, where)
    steps = (1,) * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError(f"{where}: starts/ends/axes/steps lengths differ")
    if 0 in steps:
        raise ShapeError(f"{where}: steps must not be 0")
    return "Slice", inputs[:1], {"starts": starts, "ends": ends, "axes": axes, "steps": steps}


@normalizer("Range")
def _range(graph, inputs, attrs, opset, where):
    for i, what in enumerate(("start", "limit", "delta")):
        const_input(graph, inputs, i, where, what)
    return "Range", inputs, {}


@normalizer("Expand")
def _expand(graph, inputs, attrs, opset, where):
    return "Expand", inputs[:1], {"shape": _const_ints(graph, inputs, 1, where, "the shape")}


@normalizer("Tile")
def _tile(graph, inputs, attrs, opset, where):
    repeats = _const_ints(graph, inputs, 1, where, "repeats")
    if len(repeats) != len(_shape(graph, inputs[0])) or any(r < 0 for r in repeats):
        raise ShapeError(f"{where}: repeats {list(repeats)} must give one count >= 0 per input dim")
    return "Tile", inputs[:1], {"repeats": repeats}


@normalizer("Split")
def _split(graph, inputs, attrs, opset, where):
    shape = _shape(graph, inputs[0])
    axis = _axis(attrs["axis"], len(shape), where)
    dim = shape[axis]
    sizes = attrs.get("split") or _const_ints(graph, inputs, 1, where, "split")
    n = attrs.get("num_outputs")
    if sizes:
        sizes = tuple(int(s) for s in sizes)
        if sum(sizes) != dim or any(s < 0 for s in sizes):
            raise ShapeError(f"{where}: split {list(sizes)} does not add up to dim {axis} ({dim})")
    elif n is None:
        raise ShapeError(f"{where}: Split needs split sizes or num_outputs")
    elif opset >= 18:  # num_outputs may split unevenly: the last piece is smaller
        step = -(-dim // n)
        sizes = tuple(min(step, dim - i * step) for i in range(n))
    else:
        if dim % n:
            raise ShapeError(f"{where}: dim {axis} ({dim}) does not split into {n} equal parts")
        sizes = (dim // n,) * n
    return "Split", inputs[:1], {"axis": axis, "split": sizes}


@normalizer("Pad")
def _pad(graph, inputs, attrs, opset, where):
    rank = len(_shape(graph, inputs[0]))
    pads = _const_ints(graph, inputs, 1, where, "pads")
    axes = _const_ints(graph, inputs, 3, where, "axes")
    axes = tuple(range(rank)) if axes is None else _axes(axes, rank, where)
    if len(pads) != 2 * len(axes):
        raise ShapeError(f"{where}: pads {list(pads)} need 2 entries per padded axis ({len(axes)})")
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[rank + a] = pads[i], pads[len(axes) + i]
    mode = attrs["mode"]
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise UnsupportedError(f"{where}: Pad mode {mode!r} is not supported")
    return "Pad", inputs[:1] + inputs[2:3], {"pads": tuple(full), "mode": mode}


def _reduction(op_type: str) -> Normalizer:
    """Axes from the attribute (old opsets) or the input (ReduceSum 13+, the others 18+)."""

    def normalize(graph, inputs, attrs, opset, where):
        rank = len(_shape(graph, inputs[0]))
        axes = attrs.get("axes")
        if axes is None:
            axes = _const_ints(graph, inputs, 1, where, "axes")
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return "Identity", inputs[:1], {}
            axes = tuple(range(rank))
        return op_type, inputs[:1], {"axes": tuple(sorted(_axes(axes, rank, where))),
                                     "keepdims": int(attrs["keepdims"])}

    return normalize


for _op_type in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"):
    NORMALIZERS[_op_type] = _reduction(_op_type)



# -- quantization ops (issue 5; semantics in qcompiler/ref/ops/quant.py) -------------------------

def _qdq_attrs(graph, inputs, attrs, where) -> Dict:
    rank = len(_shape(graph, inputs[0]))
    block = int(attrs.get("block_size", 0) or 0)
    per_tensor = graph.value(inputs[1]).size == 1 and not block  # the axis plays no part
    axis = attrs.get("axis", 1)
    out = {"axis": 0 if per_tensor and not -rank <= axis < rank else _axis(axis, rank, where),
           "block_size": block}
    if int(attrs.get("output_dtype", 0) or 0):
        out["output_dtype"] = numpy_dtype(int(attrs["output_dtype"]), f"{where} output_dtype")
    return out


@normalizer("QuantizeLinear")
def _quantize_linear(graph, inputs, attrs, opset, where):
    """Explicit output dtype (output_dtype, else the zero point's, else uint8) and precision.
    ``saturate`` only concerns float8 outputs, which the IR does not hold."""
    out = _qdq_attrs(graph, inputs, attrs, where)
    if "output_dtype" not in out:
        zp = inputs[2] if len(inputs) > 2 and inputs[2] else None
        out["output_dtype"] = graph.value(zp).dtype if zp else "uint8"
    if int(attrs.get("precision", 0) or 0):
        out["precision"] = numpy_dtype(int(attrs["precision"]), f"{where} precision")
    return "QuantizeLinear", inputs, out


@normalizer("DequantizeLinear")
def _dequantize_linear(graph, inputs, attrs, opset, where):
    """Explicit output dtype (output_dtype, else the scale's)."""
    out = _qdq_attrs(graph, inputs, attrs, where)
    out.setdefault("output_dtype", graph.value(inputs[1]).dtype)
    return "DequantizeLinear", inputs, out


@normalizer("QLinearConv")
def _qlinear_conv(graph, inputs, attrs, opset, where):
    w_shape = _shape(graph, inputs[3])
    return "QLinearConv", inputs, _window_attrs(graph, inputs, attrs, where, kernel_shape=w_shape[2:],
                                                keep=("group",))


@normalizer("ConvInteger")
def _conv_integer(graph, inputs, attrs, opset, where):
    w_shape = _shape(graph, inputs[1])
    return "ConvInteger", inputs, _window_attrs(graph, inputs, attrs, where, kernel_shape=w_shape[2:],
                                                keep=("group",))
