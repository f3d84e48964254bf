"""ONNX -> IR import.

Import normalises each ONNX node into an IR node of the same op name with every attribute present
(schema defaults filled in, opset differences removed by the op's normaliser in ``normalize.py``),
folds every node whose inputs are all constant with the reference executor (this is what turns the
Shape/Gather/Concat/Cast chains that exporters emit into constants), and infers static shapes.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, QCompilerError, ShapeError, UnsupportedError
from ..ir import Graph, Node, Value
from ..ref import get_op, infer_outputs
from ..ir.types import DTYPES
from .normalize import (NORMALIZERS, REMOVED_OPS, SUPPORTED_ONNX_OPS, attr_dict, const_input,
                        numpy_dtype, with_defaults)

MIN_OPSET = 11
MAX_OPSET = onnx.defs.onnx_opset_version()

ModelLike = Union[str, os.PathLike, bytes, onnx.ModelProto]


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Read an ONNX model, turning every way it can be broken into a ModelError."""
    if isinstance(model, onnx.ModelProto):
        proto = model
        base_dir = None
    elif isinstance(model, (bytes, bytearray)):
        proto = _parse(bytes(model), "<bytes>")
        base_dir = None
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelError(f"model file {path!r} does not exist")
        with open(path, "rb") as f:
            proto = _parse(f.read(), path)
        base_dir = os.path.dirname(os.path.abspath(path))
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelError("the model has no graph (is this an ONNX model file?)")
    if base_dir is not None:
        _load_external(proto, base_dir)
    else:
        for t in _all_initializers(proto):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                raise ModelError(f"initializer {t.name!r} uses external data, but the model was given "
                                 "in memory: pass the .onnx file path so its data file can be found")
    return proto


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError, sometimes RuntimeWarning-ish variants
        raise ModelError(f"{where} is not a valid ONNX model (truncated or not protobuf): {e}") from None
    if not proto.graph.node and not proto.graph.output and not proto.opset_import:
        raise ModelError(f"{where} is not a valid ONNX model (no graph, no opset)")
    return proto


def _all_initializers(proto: onnx.ModelProto):
    yield from proto.graph.initializer
    for n in proto.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def _load_external(proto: onnx.ModelProto, base_dir: str) -> None:
    for t in _all_initializers(proto):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        path = os.path.join(base_dir, loc)
        if not loc or not os.path.isfile(path):
            raise ModelError(f"initializer {t.name!r} stores its data in external file {loc!r}, "
                             f"which is missing (looked in {base_dir})")
        try:
            onnx.external_data_helper.load_external_data_for_tensor(t, base_dir)
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
        except Exception as e:
            raise ModelError(f"initializer {t.name!r}: cannot read external data {loc!r}: {e}") from None


def model_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("the model imports no default-domain ('ai.onnx') opset")


def from_onnx(model: ModelLike, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
              name: Optional[str] = None) -> Graph:
    """Import an ONNX model into a static-shaped :class:`~qcompiler.ir.Graph`.

    ``input_shapes`` fixes dynamic (symbolic or unknown) input dimensions, e.g.
    ``{"input": (1, 3, 224, 224)}``.

    >>> g = from_onnx("model.onnx", input_shapes={"input": (1, 3, 32, 32)})  # doctest: +SKIP
    >>> print(g)                                                              # doctest: +SKIP
    """
    proto = load_model(model)
    opset = model_opset(proto)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedError(f"the model uses opset {opset}; qcompiler supports opsets "
                               f"{MIN_OPSET} to {MAX_OPSET} (upgrade old models with "
                               "onnx.version_converter.convert_version)")
    for imp in proto.opset_import:
        if imp.domain not in ("", "ai.onnx", "ai.onnx.ml", "com.microsoft"):
            pass  # only a problem if a node uses it; reported per node below
    g = proto.graph
    _check_ops(g)
    graph = Graph(name or g.name or "model")
    graph.meta.update(opset=opset, producer=proto.producer_name)
    input_shapes = dict(input_shapes or {})

    init_names = set()
    for t in g.initializer:
        try:
            arr = numpy_helper.to_array(t)
        except Exception as e:
            raise ModelError(f"initializer {t.name!r} cannot be read: {e}") from None
        graph.add_const(t.name, _canonical_array(arr, f"initializer {t.name!r}"))
        init_names.add(t.name)

    known_inputs = {i.name for i in g.input}
    for name in input_shapes:
        if name not in known_inputs or name in init_names:
            raise ShapeError(f"input_shapes names {name!r}, which is not a graph input; inputs are "
                             f"{[i.name for i in g.input if i.name not in init_names]}")
    for vi in g.input:
        if vi.name in init_names:
            continue  # old exporters list initializers as inputs too
        shape, dtype = _value_info_type(vi, input_shapes.get(vi.name))
        graph.add_value(Value(vi.name, shape, dtype))
        graph.inputs.append(vi.name)

    for index, node in enumerate(g.node):
        _import_node(graph, node, opset, index)

    for vo in g.output:
        if vo.name not in graph.values:
            raise ModelError(f"graph output {vo.name!r} is not produced by any node")
        graph.outputs.append(vo.name)
    _remove_identities(graph)
    _materialise_const_outputs(graph)
    graph.prune()
    graph.verify()
    return graph


def _check_ops(g: onnx.GraphProto) -> None:
    bad = []
    for i, n in enumerate(g.node):
        if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_ONNX_OPS:
            dom = f"{n.domain}." if n.domain not in ("", "ai.onnx") else ""
            bad.append(f"{dom}{n.op_type} (node {n.name or '#' + str(i)!r})")
    if bad:
        raise UnsupportedError(f"{len(bad)} node(s) use ops qcompiler does not support: "
                               + ", ".join(bad))


def _value_info_type(vi: onnx.ValueInfoProto, override: Optional[Sequence[int]]) -> Tuple[tuple, str]:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedError(f"input {vi.name!r} is not a tensor (sequences/maps are not supported)")
    dtype = _onnx_dtype(tt.elem_type, f"input {vi.name!r}")
    if override is not None:
        shape = tuple(int(d) for d in override)
        if tt.HasField("shape") and len(tt.shape.dim) != len(shape):
            raise ShapeError(f"input {vi.name!r} has rank {len(tt.shape.dim)}, but input_shapes gives "
                             f"{list(shape)}")
        for d, s in zip(tt.shape.dim if tt.HasField("shape") else [], shape):
            if d.HasField("dim_value") and d.dim_value != s:
                raise ShapeError(f"input {vi.name!r}: input_shapes gives {list(shape)} but the model "
                                 f"fixes a dimension to {d.dim_value}")
        if any(s < 0 for s in shape):
            raise ShapeError(f"input {vi.name!r}: dimensions must be >= 0, got {list(shape)}")
        return shape, dtype
    if not tt.HasField("shape"):
        raise ShapeError(f"input {vi.name!r} has no shape in the model; give it with "
                         f"input_shapes={{{vi.name!r}: (...)}} (CLI: --input-shape {vi.name}=1,3,224,224)")
    shape = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            shape.append(d.dim_value)
        else:
            dims = [x.dim_value if x.HasField("dim_value") else (x.dim_param or "?") for x in tt.shape.dim]
            raise ShapeError(f"input {vi.name!r} has dynamic shape {dims}; qcompiler compiles static "
                             f"shapes: give input_shapes={{{vi.name!r}: (...)}} "
                             f"(CLI: --input-shape {vi.name}=...)")
    return tuple(shape), dtype


def _onnx_dtype(elem_type: int, where: str) -> str:
    return numpy_dtype(elem_type, where)


def _canonical_array(arr: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(arr)
    if str(arr.dtype) not in DTYPES:
        raise UnsupportedError(f"{where} uses dtype {arr.dtype}, which qcompiler does not support "
                               f"(supported: {', '.join(DTYPES)})")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def _import_node(graph: Graph, node: onnx.NodeProto, opset: int, index: int) -> None:
    name = node.name or f"{node.op_type}_{index}"
    if any(n.name == name for n in graph.nodes):
        name = graph.unique_name(name)
    for i in node.input:
        if i and i not in graph.values:
            raise ModelError(f"node {name!r} ({node.op_type}) uses {i!r}, which no earlier node, input "
                             "or initializer defines (is the graph topologically sorted?)")
    attrs = attr_dict(node)
    inputs = list(node.input)
    outputs = list(node.output)
    while inputs and not inputs[-1]:
        inputs.pop()
    where = f"node {name!r} ({node.op_type})"

    if node.op_type == "Constant":
        graph.add_const(outputs[0], _canonical_array(_constant_value(attrs, where), where))
        return
    if node.op_type in REMOVED_OPS:  # Identity, Dropout (inference): alias the output
        if node.op_type == "Dropout":
            _check_dropout_inference(graph, inputs, attrs, where)
        src = graph.values[inputs[0]]
        if src.is_const:
            graph.add_const(outputs[0], src.data)
        else:
            graph.add_value(Value(outputs[0], src.shape, src.dtype))
            graph.add_node(Node("Identity", name, [inputs[0]], [outputs[0]]))
        for extra in outputs[1:]:  # Dropout's mask output: all True in inference
            if extra:
                graph.add_const(extra, np.ones(src.shape, bool))
        return

    normalize = NORMALIZERS.get(node.op_type)
    in_descr = [None if not i else _describe(graph.values[i]) for i in inputs]
    try:
        attrs = with_defaults(node.op_type, opset, attrs, where)
        if node.op_type == "Split" and attrs.get("num_outputs") is None:
            attrs["num_outputs"] = len(outputs)  # before opset 18 the node's outputs say how many
        if normalize is not None:
            ir_op, inputs, attrs = normalize(graph, inputs, attrs, opset, where)
        else:
            ir_op = node.op_type
        in_descr = [None if not i else _describe(graph.values[i]) for i in inputs]
        out_types = infer_outputs(ir_op, in_descr, attrs, name)
    except QCompilerError:
        raise
    except Exception as e:
        raise ModelError(f"{where}: cannot import: {type(e).__name__}: {e}") from None
    extra = [o for o in outputs[len(out_types):] if o]
    if extra:
        raise UnsupportedError(f"{where}: outputs {extra} are not supported (qcompiler's {ir_op} "
                               f"gives {len(out_types)} output(s); training-only outputs are not "
                               "computed)")
    outputs = outputs[: len(out_types)]

    all_const = all(d is None or d[2] is not None for d in in_descr) and ir_op not in NEVER_FOLDED_OPS
    if ir_op in SHAPE_ONLY_OPS or (all_const and inputs):
        # fold: either every input is constant, or the result depends on input shapes only
        arrays = [None if d is None else (d[2] if d[2] is not None else
                                          np.broadcast_to(np.zeros((), d[1]), d[0])) for d in in_descr]
        with np.errstate(all="ignore"):
            results = _compute(ir_op, arrays, attrs, where)
        for o, arr in zip(outputs, results):
            if o:
                graph.add_const(o, _canonical_array(arr, f"{where} output {o!r}"))
        return
    for o, (shape, dtype) in zip(outputs, out_types):
        if o:
            graph.add_value(Value(o, shape, dtype))
    graph.add_node(Node(ir_op, name, inputs, [o for o in outputs], attrs))


#: IR ops whose result depends only on the shapes of their inputs: always folded at import.
SHAPE_ONLY_OPS = frozenset({"Shape"})

#: IR ops kept as nodes even on constant inputs: DequantizeLinear of pre-quantized weights keeps the
#: integer weights visible to ``passes/fold_qdq.py`` (folded, they would become float constants).
NEVER_FOLDED_OPS = frozenset({"DequantizeLinear"})


def _compute(ir_op: str, arrays, attrs: Dict, where: str):
    """Constant-fold one node with the reference executor, with errors that name the node."""
    try:
        return get_op(ir_op).compute(arrays, attrs)
    except QCompilerError as e:
        raise type(e)(f"{where}: {e}") from None
    except (ValueError, IndexError, TypeError) as e:
        raise ShapeError(f"{where}: cannot fold constant inputs: {e}") from None


def _check_dropout_inference(graph: Graph, inputs: List[str], attrs: Dict, where: str) -> None:
    """Dropout imports as Identity only in inference mode (training_mode absent or constant False)
    or when its ratio is a constant 0."""
    training = const_input(graph, inputs, 2, where, "training_mode")
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        ratio = const_input(graph, inputs, 1, where, "ratio")
        if ratio is not None and float(np.asarray(ratio).reshape(-1)[0]) == 0.0:
            return  # dropping nothing: the identity even in training mode
        raise UnsupportedError(f"{where}: Dropout in training mode (random masks) is not supported; "
                               "export the model in eval mode")


def _describe(v: Value):
    return (v.shape, v.dtype, v.data)


def _constant_value(attrs: Dict, where: str) -> np.ndarray:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            val = attrs[key]
            if key == "value":
                return val
            dtype = np.float32 if "float" in key else np.int64
            return np.asarray(val, dtype)
    raise UnsupportedError(f"{where}: only tensor/float/int Constant values are supported "
                           f"(got {sorted(attrs)})")


def _materialise_const_outputs(graph: Graph) -> None:
    """A graph output that folded to a constant still needs a producing node for the executor."""
    producers = graph.producers()
    for i, o in enumerate(graph.outputs):
        v = graph.values[o]
        if o not in producers and o not in graph.inputs:
            if v.is_const:
                alias = graph.unique_name(o + "_const")
                graph.values[alias] = Value(alias, v.shape, v.dtype, data=v.data)
                graph.values[o] = Value(o, v.shape, v.dtype)
                graph.add_node(Node("Identity", graph.unique_name(o + "_out"), [alias], [o]))
        elif o in graph.inputs:
            alias = graph.unique_name(o + "_out")
            graph.add_value(Value(alias, v.shape, v.dtype))
            graph.add_node(Node("Identity", graph.unique_name(o + "_id"), [o], [alias]))
            graph.outputs[i] = alias


def _remove_identities(graph: Graph) -> None:
    """Identity/Dropout nodes become aliases, except where they feed a graph output directly."""
    rename: Dict[str, str] = {}
    kept = []
    outputs = set(graph.outputs)
    for n in graph.nodes:
        n.inputs = [rename.get(i, i) for i in n.inputs]
        if n.op == "Identity" and n.outputs[0] not in outputs:
            rename[n.outputs[0]] = n.inputs[0]
            del graph.values[n.outputs[0]]
            continue
        kept.append(n)
    graph.nodes = kept
