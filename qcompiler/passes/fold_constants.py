"""Evaluate every node whose inputs are all constant with the reference executor.

Before: any graph. After: no node has only constant inputs, except nodes that produce a graph
output directly (a graph output must stay produced by a node). The folded values are exactly what
the reference executor computes, so the graph's outputs do not change at all. Constants that no
longer have a reader are dropped.

Does nothing when no node has only constant inputs (the frontend already folds at import; this
pass matters after rewrites that create constant subgraphs, e.g. sign(W) of a binarized weight).
"""

from __future__ import annotations

import logging

import numpy as np

from ..ir import Graph
from ..ref import get_op
from .graph_edit import drop_unused_values

log = logging.getLogger(__name__)


def fold_constants(graph: Graph) -> Graph:
    g = graph.copy()
    kept = []
    folded = 0
    for n in g.nodes:
        ins = [i for i in n.inputs if i]
        if not ins or not all(g.values[i].is_const for i in ins) or any(o in g.outputs for o in n.outputs):
            kept.append(n)
            continue
        args = [g.values[i].data if i else None for i in n.inputs]
        with np.errstate(all="ignore"):
            results = get_op(n.op).compute(args, n.attrs)
        for name, arr in zip(n.outputs, results):
            v = g.values[name]
            arr = np.ascontiguousarray(np.asarray(arr))
            v.data = arr.astype(v.dtype, copy=False).reshape(v.shape)
        folded += 1
    g.nodes = kept
    drop_unused_values(g)
    if folded:
        log.info("fold_constants: folded %d node(s)", folded)
    g.verify()
    return g
