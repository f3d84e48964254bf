"""Multiply-accumulate counts per node (for kernel records, ``qcompiler info`` and reports).

One MAC is one product added to an accumulator of the *logical* op: a binary or bitserial layer
counts its logical (unpacked) products, so MACs compare across bit-widths. Ops without a
reduction (elementwise, pooling, data movement) count 0.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir import Graph, Node


def _prod(shape) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) if len(shape) else 1


def _shape(graph: Graph, name: Optional[str]):
    if not name or name not in graph.values:
        return None
    return graph.values[name].shape


def node_macs(graph: Graph, node: Node) -> int:
    """MACs of ``node`` (0 for ops without a multiply-accumulate reduction)."""
    op = node.op
    out = _shape(graph, node.outputs[0]) if node.outputs else None
    if out is None:
        return 0
    x = _shape(graph, node.input(0))
    if op in ("Conv", "QConv2d", "ConvInteger", "QLinearConv", "BinaryConv2d", "BitserialConv2d"):
        return _conv_macs(graph, node, out)
    if op in ("BinaryDense", "BitserialDense"):
        m = int(out[0])
        v = graph.values[node.outputs[0]]
        # w is [N, Kw] / [N, k, Kw]: N from it, since a packed output's out[1] counts words
        w = _shape(graph, node.input(1))
        n = int(v.packing.logical_shape[1]) if v.packing else int(w[0]) if w is not None else int(out[1])
        return m * n * int(node.attrs.get("in_features", 0))
    if op == "Gemm" and x is not None:
        k = x[0] if node.attrs.get("transA", 0) else x[1]
        return _prod(out) * int(k)
    if op in ("QDense",) and x is not None:
        return _prod(out) * int(x[1])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul") and x is not None:
        k = x[-1]
        return _prod(out) * int(k)
    return 0


def _conv_macs(graph: Graph, node: Node, out) -> int:
    """N * O * prod(output spatial) * (C/groups) * prod(kernel), from logical shapes."""
    v = graph.values[node.outputs[0]]
    logical = v.packing.logical_shape if v.packing is not None and v.packing.logical_shape else None
    if node.op in ("BinaryConv2d", "BitserialConv2d"):
        c = int(node.attrs.get("in_channels", 0))
        groups = max(1, int(node.attrs.get("groups", 1)))
        ks = node.attrs.get("kernel_shape", (1, 1))
        per_out = (c // groups) * _prod(ks)
        # logical output [N, O, OH, OW]; packed NHWC when the epilogue packs
        if logical is not None:
            return _prod(logical) * per_out
        if v.dtype.startswith("uint") and len(out) == 4 and "out_word_bits" in node.attrs:
            # packed NHWC output [N, OH, OW, words]: O from the weights [O, KH, KW, (k,) Cw]
            w = _shape(graph, node.input(1))
            return int(out[0]) * int(w[0]) * int(out[1]) * int(out[2]) * per_out if w is not None else 0
        return _prod(out) * per_out
    w = _shape(graph, node.input(3 if node.op == "QLinearConv" else 1))
    if w is None:
        return 0
    if logical is not None:
        return _prod(logical) * _prod(w[1:])
    if node.attrs.get("out") == "packed":
        n, oh, ow = out[0], out[1], out[2]
        return int(n) * int(w[0]) * int(oh) * int(ow) * _prod(w[1:])
    return _prod(out) * _prod(w[1:])


def graph_macs(graph: Graph) -> int:
    return sum(node_macs(graph, n) for n in graph.nodes)
