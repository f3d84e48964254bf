"""Small graph-editing helpers shared by the rewriting passes (fold, equalize, binarize, bitpack).

Passes work on a copy of the input graph; these helpers keep the copy consistent (value names,
consumers, constants) so each pass reads as its rewrite rule rather than as bookkeeping.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from ..ir import Graph, Node, Value

#: Ops whose weights are a constant second input and whose output channels are axis 1.
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


def consumers_of(graph: Graph, value: str) -> List[Node]:
    return [n for n in graph.nodes if value in n.inputs]


def sole_consumer(graph: Graph, value: str) -> Optional[Node]:
    """The only node reading ``value`` (None if several, none, or the value is a graph output)."""
    if value in graph.outputs:
        return None
    users = consumers_of(graph, value)
    return users[0] if len(users) == 1 else None


def producer_of(graph: Graph, value: str) -> Optional[Node]:
    for n in graph.nodes:
        if value in n.outputs:
            return n
    return None


def replace_uses(graph: Graph, old: str, new: str) -> None:
    """Every reader of ``old`` (nodes and graph outputs) reads ``new`` instead."""
    for n in graph.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
    graph.outputs = [new if o == old else o for o in graph.outputs]


def add_const(graph: Graph, base: str, data: np.ndarray) -> str:
    name = graph.unique_name(base)
    graph.add_const(name, np.array(data, order="C"))  # keeps 0-d arrays 0-d
    return name


def add_value(graph: Graph, base: str, shape: Sequence[int], dtype: str) -> str:
    name = graph.unique_name(base)
    graph.add_value(Value(name, tuple(shape), dtype))
    return name


def set_const(graph: Graph, name: str, data: np.ndarray) -> None:
    """Replace a constant's data in place (same name), keeping shape/dtype consistent."""
    data = np.array(data, order="C")
    graph.values[name] = Value(name, data.shape, str(data.dtype), data=data)


def private_const(graph: Graph, node: Node, index: int, data: np.ndarray) -> None:
    """Give ``node`` input ``index`` the constant ``data``, under a fresh name if the old constant is
    shared with other nodes (so rewriting one layer never changes another)."""
    old = node.inputs[index] if index < len(node.inputs) else ""
    if old and sum(i == old for n in graph.nodes for i in n.inputs) == 1 and graph.values[old].is_const:
        set_const(graph, old, data)
        return
    name = add_const(graph, f"{node.name}_in{index}", data)
    while len(node.inputs) <= index:
        node.inputs.append("")
    node.inputs[index] = name


def per_channel(data: Optional[np.ndarray], channels: int, rank: int, axis: int = 1) -> Optional[np.ndarray]:
    """``data`` as a float64 vector of ``channels`` entries if it broadcasts against a rank-``rank``
    tensor along ``axis`` only (scalars broadcast to every channel); None otherwise."""
    if data is None:
        return None
    arr = np.asarray(data)
    if arr.ndim > rank:
        return None
    full = (1,) * (rank - arr.ndim) + arr.shape
    if any(d != 1 for i, d in enumerate(full) if i != axis) or full[axis] not in (1, channels):
        return None
    return np.broadcast_to(arr.reshape(-1).astype(np.float64), (channels,)).copy()


def remove_nodes(graph: Graph, names: Sequence[str]) -> None:
    drop = set(names)
    graph.nodes = [n for n in graph.nodes if n.name not in drop]


def drop_unused_values(graph: Graph) -> None:
    """Forget values (mostly replaced constants) that no node, input or output refers to."""
    used = set(graph.inputs) | set(graph.outputs)
    for n in graph.nodes:
        used.update(i for i in n.inputs if i)
        used.update(n.outputs)
    graph.values = {k: v for k, v in graph.values.items() if k in used}


def weight_layout(graph: Graph, node: Node) -> Optional[Dict]:
    """Describe a Conv/Gemm/MatMul with constant weights as per-channel matrices.

    Returns ``{"w": float64 weights as [O, C_in/groups, *K] (dense: [O, K]), "groups": g,
    "bias": float64[O] or None, "kind": "conv" | "dense"}`` or None when the node is not a plain
    weight layer (non-constant weights, transposed activations, a 2-D bias, ...).
    """
    w = graph.const(node.input(1))
    if w is None:
        return None
    if node.op == "Conv":
        b = graph.const(node.input(2))
        return {"w": w.astype(np.float64), "groups": int(node.attrs.get("group", 1)),
                "bias": None if b is None else b.astype(np.float64), "kind": "conv"}
    if node.op == "Gemm":
        if node.attrs.get("transA", 0) or w.ndim != 2:
            return None
        wm = w if node.attrs.get("transB", 0) else w.T
        wm = wm.astype(np.float64) * float(node.attrs.get("alpha", 1.0))
        c = graph.const(node.input(2))
        bias = None
        if node.input(2):
            bias = per_channel(c, wm.shape[0], 2, axis=1)
            if bias is None:
                return None
            bias = bias * float(node.attrs.get("beta", 1.0))
        return {"w": wm, "groups": 1, "bias": bias, "kind": "dense"}
    if node.op == "MatMul":
        x = graph.values[node.inputs[0]]
        if w.ndim != 2 or len(x.shape) != 2:
            return None
        return {"w": w.T.astype(np.float64), "groups": 1, "bias": None, "kind": "dense"}
    return None


def write_weights(graph: Graph, node: Node, w: np.ndarray, bias: Optional[np.ndarray]) -> None:
    """Store per-channel weights/bias (in :func:`weight_layout`'s form) back into ``node``,
    converting MatMul to Gemm when a bias appears."""
    dtype = graph.values[node.inputs[1]].dtype
    if node.op == "Conv":
        private_const(graph, node, 1, w.astype(dtype))
        if bias is not None:
            private_const(graph, node, 2, bias.astype(dtype))
        return
    if node.op == "MatMul" and bias is None:
        private_const(graph, node, 1, w.T.astype(dtype))
        return
    # Gemm (or MatMul that gains a bias): canonical form Y = A @ B^T + C, alpha = beta = 1
    node.op = "Gemm"
    node.attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}
    private_const(graph, node, 1, w.astype(dtype))
    if bias is not None:
        private_const(graph, node, 2, bias.astype(dtype))
    elif len(node.inputs) > 2:
        node.inputs = node.inputs[:2]
