"""The model-level IR: a topologically ordered list of nodes over named, statically shaped values.

Values with ``data`` set are constants (weights, folded shape chains). Node attributes are plain
Python values (ints, floats, strings, tuples, numpy arrays) so that graphs copy, print and serialise
without custom code per op. An op's meaning is defined by the reference executor (``qcompiler.ref``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..errors import ModelError, ShapeError
from .types import Packing, QuantInfo, check_dtype


@dataclass
class Value:
    name: str
    shape: Tuple[int, ...]
    dtype: str
    data: Optional[np.ndarray] = None
    quant: Optional[QuantInfo] = None
    packing: Optional[Packing] = None

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)
        self.dtype = check_dtype(self.dtype)
        if self.data is not None:
            self.data = np.asarray(self.data)
            if tuple(self.data.shape) != self.shape or str(self.data.dtype) != self.dtype:
                raise ShapeError(
                    f"constant {self.name!r}: data is {self.data.dtype}{list(self.data.shape)} but the "
                    f"value says {self.dtype}{list(self.shape)}")

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def type_str(self) -> str:
        s = f"{self.dtype}[{','.join(map(str, self.shape))}]"
        if self.quant is not None:
            s += " " + self.quant.describe()
        if self.packing is not None:
            s += " " + self.packing.describe()
        return s


@dataclass
class Node:
    op: str
    name: str
    inputs: List[str]
    outputs: List[str]
    attrs: Dict[str, Any] = field(default_factory=dict)

    def input(self, i: int) -> Optional[str]:
        """The i-th input's value name, or None when absent (optional inputs are '' in ONNX)."""
        return self.inputs[i] if i < len(self.inputs) and self.inputs[i] else None


class Graph:
    """A static-shaped dataflow graph; ``nodes`` is kept in topological order."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.values: Dict[str, Value] = {}
        self.nodes: List[Node] = []
        self.inputs: List[str] = []
        self.outputs: List[str] = []
        self.meta: Dict[str, Any] = {}

    # -- construction -------------------------------------------------------------------------
    def add_value(self, value: Value) -> Value:
        if value.name in self.values:
            raise ModelError(f"value {value.name!r} defined twice")
        self.values[value.name] = value
        return value

    def add_const(self, name: str, data: np.ndarray, **kw) -> Value:
        data = np.asarray(data)
        return self.add_value(Value(name, data.shape, str(data.dtype), data=data, **kw))

    def add_node(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def unique_name(self, base: str) -> str:
        if base not in self.values and all(n.name != base for n in self.nodes):
            return base
        i = 1
        taken = set(self.values) | {n.name for n in self.nodes}
        while f"{base}_{i}" in taken:
            i += 1
        return f"{base}_{i}"

    # -- queries ------------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        try:
            return self.values[name]
        except KeyError:
            raise ModelError(f"graph {self.name!r} has no value {name!r}") from None

    def const(self, name: Optional[str]) -> Optional[np.ndarray]:
        """The constant data of value ``name``, or None if absent or not constant."""
        if not name:
            return None
        v = self.values.get(name)
        return None if v is None else v.data

    def producers(self) -> Dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> Dict[str, List[Node]]:
        cons: Dict[str, List[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    cons.setdefault(i, []).append(n)
        return cons

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ModelError(f"graph {self.name!r} has no node {name!r}")

    def initializers(self) -> List[Value]:
        return [v for v in self.values.values() if v.is_const]

    # -- maintenance --------------------------------------------------------------------------
    def toposort(self) -> "Graph":
        """Order nodes so that every input is produced before it is used (stable, Kahn)."""
        produced = {n for n in self.inputs} | {k for k, v in self.values.items() if v.is_const}
        pending = list(self.nodes)
        ordered: List[Node] = []
        while pending:
            rest = []
            for n in pending:
                if all((not i) or i in produced for i in n.inputs):
                    ordered.append(n)
                    produced.update(n.outputs)
                else:
                    rest.append(n)
            if len(rest) == len(pending):
                missing = sorted({i for n in rest for i in n.inputs if i and i not in produced})
                raise ModelError(f"graph {self.name!r} has a cycle or undefined inputs: {missing[:10]}")
            pending = rest
        self.nodes = ordered
        return self

    def prune(self) -> "Graph":
        """Drop nodes and values that do not contribute to the outputs."""
        live = set(self.outputs)
        kept: List[Node] = []
        for n in reversed(self.nodes):
            if any(o in live for o in n.outputs):
                kept.append(n)
                live.update(i for i in n.inputs if i)
        self.nodes = list(reversed(kept))
        live.update(self.inputs)
        self.values = {k: v for k, v in self.values.items() if k in live}
        return self

    def copy(self) -> "Graph":
        g = Graph(self.name)
        g.values = {k: replace(v) for k, v in self.values.items()}  # arrays shared: treat as immutable
        g.nodes = [Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in self.nodes]
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        g.meta = copy.deepcopy(self.meta)
        return g

    def verify(self) -> None:
        """Cheap structural checks, run between passes in tests (tinygrad's spec idea)."""
        defined = set(self.inputs) | {k for k, v in self.values.items() if v.is_const}
        names = set()
        for n in self.nodes:
            if n.name in names:
                raise ModelError(f"node name {n.name!r} used twice")
            names.add(n.name)
            for i in n.inputs:
                if i and i not in defined:
                    raise ModelError(f"node {n.name!r} ({n.op}) uses {i!r} before it is defined")
                if i and i not in self.values:
                    raise ModelError(f"node {n.name!r} ({n.op}) uses {i!r}, which has no Value")
            for o in n.outputs:
                if o in defined:
                    raise ModelError(f"value {o!r} is produced twice (node {n.name!r})")
                if o not in self.values:
                    raise ModelError(f"node {n.name!r} ({n.op}) output {o!r} has no Value")
                defined.add(o)
        for o in self.outputs:
            if o not in defined:
                raise ModelError(f"graph output {o!r} is never produced")

    # -- presentation -------------------------------------------------------------------------
    def __str__(self) -> str:
        lines = [f"graph {self.name} ("]
        for i in self.inputs:
            lines.append(f"  %{i}: {self.values[i].type_str()}")
        lines.append(") {")
        n_const = sum(1 for v in self.values.values() if v.is_const)
        n_params = sum(v.size for v in self.values.values() if v.is_const)
        lines.append(f"  # {len(self.nodes)} nodes, {n_const} constants ({n_params} elements)")
        for n in self.nodes:
            outs = ", ".join(f"%{o}: {self.values[o].type_str()}" for o in n.outputs)
            args = ", ".join(self._arg_str(i) for i in n.inputs)
            attrs = ", ".join(f"{k}={_attr_str(v)}" for k, v in sorted(n.attrs.items()))
            lines.append(f"  {outs} = {n.op}({args}){' {' + attrs + '}' if attrs else ''}  # {n.name}")
        lines.append(f"  return {', '.join('%' + o for o in self.outputs)}")
        lines.append("}")
        return "\n".join(lines)

    def _arg_str(self, name: str) -> str:
        if not name:
            return "_"
        v = self.values.get(name)
        if v is not None and v.is_const:
            if v.size <= 4:
                return f"const({v.data.reshape(-1).tolist()})"
            return f"@{name}:{v.dtype}[{','.join(map(str, v.shape))}]"
        return f"%{name}"

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.nodes)} nodes, inputs={self.inputs}, outputs={self.outputs}>"

    def to_dict(self, with_data: bool = False) -> dict:
        """A JSON-friendly description (constants summarised unless ``with_data``)."""

        def val(v: Value) -> dict:
            d = {"shape": list(v.shape), "dtype": v.dtype}
            if v.quant is not None:
                d["quant"] = _dataclass_dict(v.quant)
            if v.packing is not None:
                d["packing"] = _dataclass_dict(v.packing)
            if v.is_const:
                d["const"] = v.data.tolist() if with_data else True
            return d

        return {
            "name": self.name,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "values": {k: val(v) for k, v in self.values.items()},
            "nodes": [{"op": n.op, "name": n.name, "inputs": n.inputs, "outputs": n.outputs,
                       "attrs": {k: _jsonable(a) for k, a in n.attrs.items()}} for n in self.nodes],
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(**kw), indent=1)


def _dataclass_dict(obj) -> dict:
    return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}


def _jsonable(a):
    if isinstance(a, np.ndarray):
        return {"ndarray": a.tolist(), "dtype": str(a.dtype)} if a.size <= 64 else f"ndarray{list(a.shape)}"
    if isinstance(a, (tuple, list)):
        return [_jsonable(x) for x in a]
    if isinstance(a, (np.integer,)):
        return int(a)
    if isinstance(a, (np.floating,)):
        return float(a)
    if isinstance(a, dict):
        return {str(k): _jsonable(v) for k, v in a.items()}
    return a


def _attr_str(v) -> str:
    if isinstance(v, np.ndarray):
        return f"array{list(v.shape)}" if v.size > 8 else str(v.tolist())
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v) if not isinstance(v, str) else repr(v)


def iter_ops(graph: Graph) -> Iterable[str]:
    return (n.op for n in graph.nodes)
