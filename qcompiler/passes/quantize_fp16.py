"""float16 mode: weights stored as float16, arithmetic in float32.

Before: a float graph. After: every float32 constant weight of a Conv/Gemm/MatMul (input 1) and
its bias (input 2) is stored as float16 and read through a ``Cast(to=float32)``; activations stay
float32, so the outputs differ from the float graph only by the weights' rounding to float16
(relative 2^-11). Nothing changes when there are no such constants.
"""

from __future__ import annotations

import logging

import numpy as np

from ..ir import Graph, Node, Value

log = logging.getLogger(__name__)


def quantize_fp16(graph: Graph) -> Graph:
    """Store weight-layer constants as float16 (see the module docstring)."""
    g = graph.copy()
    nodes = []
    count = 0
    for node in g.nodes:
        if node.op in ("Conv", "Gemm", "MatMul"):
            for idx in (1, 2):
                name = node.input(idx)
                v = g.values.get(name) if name else None
                if v is None or not v.is_const or v.dtype != "float32":
                    continue
                half = g.unique_name(f"{name}_fp16")
                g.add_const(half, v.data.astype(np.float16))
                wide = g.unique_name(f"{name}_fp32")
                g.add_value(Value(wide, v.shape, "float32"))
                nodes.append(Node("Cast", g.unique_name(f"{node.name}_in{idx}_cast"), [half], [wide],
                                  {"to": "float32"}))
                node.inputs[idx] = wide
                count += 1
        nodes.append(node)
    g.nodes = nodes
    g.prune()
    g.verify()
    log.info("quantize_fp16: %d weight tensor(s) stored as float16", count)
    return g
