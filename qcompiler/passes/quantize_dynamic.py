"""Weights-only (dynamic-range) int8 quantization: the used mode when there is no calibration data.

Before: a float graph. After: every Conv/Gemm/MatMul with constant float32 weights whose node
precision (``QuantConfig.for_node``) has 2..8-bit weights reads them through a
``DequantizeLinear(int8 weights, scale, 0, axis=output channels)``: weights are stored as
integers (symmetric, restricted range, per output channel when ``per_channel``); activations and
the layer's arithmetic stay float32. The outputs differ from the float graph only by the weights'
rounding. Nothing changes when no such layer exists; 1-bit/ternary layers are left to binarize.
"""

from __future__ import annotations

import logging

import numpy as np

from ..ir import Graph, Node, Value
from ..quant.config import QuantConfig
from ..quant.qparams import weight_qparams

log = logging.getLogger(__name__)


def weight_axis(graph: Graph, node: Node):
    """The output-channel axis of ``node``'s constant weights (input 1), or None if not a weight layer."""
    w = graph.values.get(node.input(1) or "")
    if w is None or not w.is_const or w.dtype != "float32":
        return None
    if node.op == "Conv":
        return 0
    if node.op == "Gemm" and w.data.ndim == 2 and not node.attrs.get("transA", 0):
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul" and w.data.ndim == 2:
        return 1
    return None


def quantize_dynamic(graph: Graph, config: QuantConfig) -> Graph:
    """Store weight-layer weights as int8 behind DequantizeLinear (see the module docstring)."""
    g = graph.copy()
    layers = [n for n in g.nodes if n.op in ("Conv", "Gemm", "MatMul") and weight_axis(g, n) is not None]
    ends = {layers[0].name, layers[-1].name} if layers else set()
    nodes = []
    done = 0
    for node in g.nodes:
        prec = config.for_node(node.name, first_or_last=node.name in ends) if node in layers else None
        if prec is None or not (isinstance(prec.weights, int) and 2 <= prec.weights <= 8):
            nodes.append(node)
            continue
        axis = weight_axis(g, node)
        w = g.values[node.inputs[1]].data
        if not prec.symmetric_weights:
            log.info("quantize_dynamic: node %r uses symmetric weights (weights-only mode stores int8 "
                     "with zero point 0)", node.name)
        qp = weight_qparams(w, int(prec.weights), prec.per_channel, True, axis=axis,
                            method="minmax" if prec.weights == 8 else "mse")
        base = g.unique_name(f"{node.name}_w")
        wq, sc, zp = base + "_q", base + "_scale", base + "_zp"
        g.add_const(wq, qp.quantize(w).astype(np.int8))
        g.add_const(sc, np.asarray(qp.scale, np.float32))
        g.add_const(zp, np.zeros(np.shape(qp.scale), np.int8))
        g.add_value(Value(base, w.shape, "float32"))
        nodes.append(Node("DequantizeLinear", f"{node.name}_wdequant", [wq, sc, zp], [base],
                          dict(axis=axis if qp.axis is not None else 0, block_size=0, output_dtype="float32")))
        node.inputs[1] = base
        nodes.append(node)
        done += 1
    g.nodes = nodes
    g.prune()
    g.verify()
    log.info("quantize_dynamic: %d layer(s) got int8 weights; activations stay float32", done)
    return g
