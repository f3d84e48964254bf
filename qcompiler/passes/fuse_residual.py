"""Fuse a residual ``Add`` into the float epilogue of the packed conv that feeds it.

Before: ``y = Add(conv_out, r)`` (either operand order) where ``conv_out`` is the ``out="float"``
output of a BinaryConv2d / BitserialConv2d read only by that Add, and ``r`` is a float32 tensor of
the same shape (a Bi-Real block's shortcut: the block input itself, or an AveragePool / 1x1 conv
of it). After: one conv node with attr ``residual=1`` and ``r`` as its fifth input, writing ``y``:
``y = (acc * scale + bias) + r`` in float32, the same roundings in the same order as the pair
(the contract in ``qcompiler/ref/ops/lowbit.py``), so the result is bit-identical. The fused
kernel saves the Add's separate pass over memory (reading two tensors, writing one).

The conv node moves to the Add's place in the node order (``r`` may be computed after the conv).
Adds with broadcasting, other dtypes, a shared conv output or a graph-output conv are left alone.
"""

from __future__ import annotations

import logging

from ..ir import Graph
from ..ref.ops.lowbit import RESIDUAL_OPS
from .graph_edit import drop_unused_values, producer_of, sole_consumer

log = logging.getLogger(__name__)


def _fusable_conv(g: Graph, add, i: int):
    """The conv producing ``add``'s operand ``i`` if the Add can fold into it, else None."""
    a, r = add.inputs[i], add.inputs[1 - i]
    conv = producer_of(g, a)
    if conv is None or conv.op not in RESIDUAL_OPS or len(conv.outputs) != 1:
        return None
    if conv.attrs.get("out") != "float" or int(conv.attrs.get("residual", 0)) or len(conv.inputs) != 4:
        return None
    if a == r or sole_consumer(g, a) is not add:
        return None
    va, vr, vy = g.value(a), g.value(r), g.value(add.outputs[0])
    if not (va.dtype == vr.dtype == vy.dtype == "float32" and va.shape == vr.shape == vy.shape):
        return None
    return conv


def fuse_residual(graph: Graph) -> Graph:
    g = graph.copy()
    fused = []
    for add in [n for n in g.nodes if n.op == "Add"]:
        if len(add.inputs) != 2 or len(add.outputs) != 1:
            continue
        for i in (0, 1):
            conv = _fusable_conv(g, add, i)
            if conv is None:
                continue
            old_out = conv.outputs[0]
            conv.inputs = list(conv.inputs) + [add.inputs[1 - i]]
            conv.attrs = dict(conv.attrs, residual=1)
            conv.outputs = [add.outputs[0]]
            g.nodes.remove(conv)
            g.nodes[g.nodes.index(add)] = conv
            del g.values[old_out]
            g.meta.get("bn_stats", {}).pop(old_out, None)
            fused.append(conv.name)
            break
    drop_unused_values(g)
    if fused:
        log.info("fuse_residual: fused %d residual Add(s) into %s", len(fused), ", ".join(fused))
    g.verify()
    return g
