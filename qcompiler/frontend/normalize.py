"""Per-op normalisation of ONNX nodes into IR nodes.

The IR keeps ONNX op names for the ops it imports, with every attribute explicit: schema defaults
are filled in, and opset differences (attributes that became inputs, changed defaults) are removed,
so the reference executor implements each op once. A normaliser is
``fn(graph, inputs, attrs, opset, where) -> (ir_op, inputs, attrs)``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedError
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
