"""Fold inference-mode BatchNormalization into the preceding Conv / Gemm / MatMul.

Before: ``y = BN(layer(x, W, b))`` where ``layer`` is a Conv, a Gemm (``transA=0``, 1-D bias) or a
2-D MatMul with constant weights whose output is read only by the BatchNormalization.
After: ``y = layer(x, W', b')`` with ``s = gamma / sqrt(var + eps)``, ``W'[o] = s[o] * W[o]`` and
``b' = s * (b - mean) + beta`` (computed in float64, stored in the weights' dtype), so the output
is the same up to float rounding. A MatMul becomes a Gemm (it gains a bias). A packed low-bit
layer (BinaryConv2d / BinaryDense / Bitserial*) with the ``out="float"`` epilogue absorbs the BN
into its epilogue vectors instead: ``scale' = s * scale``, ``bias' = s * bias + beta - s * mean``.

The distribution each folded BatchNormalization promised for its output (per channel mean
``beta`` and standard deviation ``|gamma|``) is recorded in ``graph.meta["bn_stats"][value]`` for
the data-free passes that run later (bias absorption in :mod:`.equalize`, analytic
:mod:`.bias_correction`).

Does nothing when no BatchNormalization follows such a layer (a BN after an Add, or after a layer
whose output has other readers, stays as it is).
"""

from __future__ import annotations

import logging

import numpy as np

from ..ir import Graph
from .graph_edit import (drop_unused_values, private_const, producer_of, sole_consumer, weight_layout,
                         write_weights)

log = logging.getLogger(__name__)


#: packed low-bit ops whose ``out="float"`` epilogue (``acc * scale[o] + bias[o]``) absorbs a BN
_FLOAT_EPILOGUE_OPS = ("BinaryConv2d", "BinaryDense", "BitserialConv2d", "BitserialDense")


def _fold_into_epilogue(g: Graph, layer, s: np.ndarray, t: np.ndarray) -> bool:
    """``BN(acc * scale + bias) = acc * (scale * s) + (bias * s + t)``: rewrite the epilogue vectors."""
    if layer.attrs.get("out") != "float" or len(layer.inputs) < 4 or int(layer.attrs.get("residual", 0)):
        return False                  # (a fused residual add is not per-channel affine)
    scale, bias = g.const(layer.input(2)), g.const(layer.input(3))
    if scale is None or bias is None or scale.shape != s.shape or bias.shape != s.shape:
        return False
    private_const(g, layer, 2, (scale.astype(np.float64) * s).astype(np.float32))
    private_const(g, layer, 3, (bias.astype(np.float64) * s + t).astype(np.float32))
    return True


def fold_batchnorm(graph: Graph) -> Graph:
    g = graph.copy()
    folded = []
    for bn in [n for n in g.nodes if n.op == "BatchNormalization"]:
        layer = producer_of(g, bn.inputs[0])
        if layer is None or sole_consumer(g, bn.inputs[0]) is not bn or len(bn.outputs) != 1:
            continue
        params = [g.const(bn.input(i)) for i in range(1, 5)]
        if any(p is None for p in params):
            continue
        gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
        eps = float(bn.attrs.get("epsilon", 1e-5))
        s = gamma / np.sqrt(var + eps)
        if layer.op in _FLOAT_EPILOGUE_OPS:
            if not _fold_into_epilogue(g, layer, s, beta - s * mean):
                continue
        else:
            lay = weight_layout(g, layer)
            if lay is None or s.shape[0] != lay["w"].shape[0]:
                continue
            w = lay["w"]
            bias = lay["bias"] if lay["bias"] is not None else np.zeros(w.shape[0])
            w_new = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
            b_new = s * (bias - mean) + beta
            write_weights(g, layer, w_new, b_new)
        old_out = layer.outputs[0]
        layer.outputs = [bn.outputs[0]]
        g.nodes.remove(bn)
        del g.values[old_out]
        g.meta.setdefault("bn_stats", {})[bn.outputs[0]] = {"mean": beta.tolist(), "std": np.abs(gamma).tolist()}
        folded.append(bn.name)
    drop_unused_values(g)
    if folded:
        log.info("fold_batchnorm: folded %d BatchNormalization node(s) into their producers", len(folded))
    g.verify()
    return g

