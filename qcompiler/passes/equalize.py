"""Cross-layer equalization and bias absorption (Nagel et al. 2019, "Data-Free Quantization").

Before: a float graph, BatchNormalization already folded (:mod:`.fold_batchnorm`, whose recorded
``graph.meta["bn_stats"]`` bias absorption uses). Pairs ``L1 -> [ops] -> L2`` are equalized where
L1, L2 are Conv / Gemm / MatMul with constant weights (any groups, depthwise included), L1's output
is read only along the path, and ``[ops]`` are positively homogeneous per-channel ops (Relu,
LeakyRelu, MaxPool, AveragePool, GlobalAveragePool, Identity; a Flatten right before a dense L2).

After: for each such channel ``i``, ``W1[i] /= s_i``, ``b1[i] /= s_i``, ``W2[:, i] *= s_i`` with
``s_i = sqrt(r1_i / r2_i)`` (``r`` = max |w| of the channel in each layer), iterated over all pairs
until the scales settle, so both layers' per-channel weight ranges become ``sqrt(r1 * r2)``. Since
``relu(x / s) = relu(x) / s`` for ``s > 0`` the float output is unchanged up to rounding.

Bias absorption (``absorb_bias=True``): where the path is a single Relu (or nothing), L1's output
has BN statistics (mean ``beta``, std ``|gamma|``) and L2 is dense or an unpadded conv,
``c = max(0, beta - 3 |gamma|)`` moves from L1's bias into L2's bias (``b2 += W2 c``). This is exact
for pre-activations ``>= c``, i.e. for ~99.9 % of values under the BN statistics; it shrinks L1's
output range for activation quantization.

Does nothing when no such pair exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..ir import Graph, Node
from .graph_edit import WEIGHT_OPS, sole_consumer, weight_layout, write_weights

log = logging.getLogger(__name__)

HOMOGENEOUS_OPS = ("Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "Identity")


@dataclass
class Pair:
    first: Node
    second: Node
    path: List[Node]
    spatial: int  # features per channel after a Flatten (1 otherwise)


def find_pairs(g: Graph) -> List[Pair]:
    pairs = []
    for n in g.nodes:
        if n.op not in WEIGHT_OPS or weight_layout(g, n) is None:
            continue
        path: List[Node] = []
        cur = n.outputs[0]
        spatial = 1
        while True:
            nxt = sole_consumer(g, cur)
            if nxt is None or nxt.inputs[0] != cur:
                break
            if nxt.op in WEIGHT_OPS:
                lay = weight_layout(g, nxt)
                if lay is not None and (spatial == 1 or lay["kind"] == "dense"):
                    pairs.append(Pair(n, nxt, path, spatial))
                break
            if nxt.op in HOMOGENEOUS_OPS and spatial == 1:
                if nxt.op == "LeakyRelu" and float(nxt.attrs.get("alpha", 0.01)) < 0:
                    break
                path.append(nxt)
            elif nxt.op == "Flatten" and int(nxt.attrs.get("axis", 1)) == 1 and spatial == 1:
                shape = g.values[cur].shape
                spatial = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
                path.append(nxt)
            else:
                break
            cur = nxt.outputs[0]
    return pairs


def _input_columns(lay: dict, channels: int, spatial: int):
    """For each input channel ``i`` of a layer: an index expression selecting its weights."""
    w = lay["w"]
    if lay["kind"] == "dense":
        return [(slice(None), slice(i * spatial, (i + 1) * spatial)) for i in range(channels)]
    g = lay["groups"]
    cg, og = w.shape[1], w.shape[0] // g
    return [(slice((i // cg) * og, (i // cg + 1) * og), i % cg) for i in range(channels)]


def _equalize_pair(g: Graph, pair: Pair) -> float:
    l1, l2 = weight_layout(g, pair.first), weight_layout(g, pair.second)
    w1, w2 = l1["w"], l2["w"]
    c = w1.shape[0]
    cols = _input_columns(l2, c, pair.spatial)
    r1 = np.abs(w1.reshape(c, -1)).max(axis=1)
    r2 = np.array([np.abs(w2[idx]).max() if w2[idx].size else 0.0 for idx in cols])
    s = np.ones(c)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    w1 = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
    b1 = None if l1["bias"] is None else l1["bias"] / s
    w2 = w2.copy()
    for i, idx in enumerate(cols):
        w2[idx] *= s[i]
    write_weights(g, pair.first, w1, b1)
    write_weights(g, pair.second, w2, l2["bias"])
    stats = g.meta.get("bn_stats", {}).get(pair.first.outputs[0])
    if stats is not None:
        stats["mean"] = (np.asarray(stats["mean"]) / s).tolist()
        stats["std"] = (np.asarray(stats["std"]) / s).tolist()
    return float(np.max(np.abs(np.log(s)))) if c else 0.0


def _absorb_bias(g: Graph, pair: Pair) -> bool:
    stats = g.meta.get("bn_stats", {}).get(pair.first.outputs[0])
    if stats is None or any(n.op != "Relu" for n in pair.path) or len(pair.path) > 1 or pair.spatial != 1:
        return False
    l1, l2 = weight_layout(g, pair.first), weight_layout(g, pair.second)
    if l2["kind"] == "conv" and any(int(p) for p in pair.second.attrs.get("pads", ())):
        return False
    if l1["bias"] is None:
        return False
    cvec = np.maximum(0.0, np.asarray(stats["mean"]) - 3.0 * np.asarray(stats["std"]))
    if not np.any(cvec > 0):
        return False
    w2 = l2["w"]
    cols = _input_columns(l2, len(cvec), 1)
    b2 = np.zeros(w2.shape[0]) if l2["bias"] is None else l2["bias"].copy()
    for i, idx in enumerate(cols):
        rows = idx[0]
        block = w2[idx]
        b2[rows] += cvec[i] * block.reshape(block.shape[0], -1).sum(axis=1)
    write_weights(g, pair.first, l1["w"], l1["bias"] - cvec)
    write_weights(g, pair.second, w2, b2)
    stats["mean"] = (np.asarray(stats["mean"]) - cvec).tolist()
    return True


def equalize(graph: Graph, *, max_iterations: int = 20, tolerance: float = 1e-3, absorb_bias: bool = True) -> Graph:
    g = graph.copy()
    pairs = find_pairs(g)
    if not pairs:
        return g
    for it in range(max_iterations):
        change = max(_equalize_pair(g, p) for p in pairs)
        if change < tolerance:
            break
    absorbed = sum(_absorb_bias(g, p) for p in pairs) if absorb_bias else 0
    log.info("equalize: %d layer pair(s) equalized in %d sweep(s); bias absorbed in %d", len(pairs), it + 1,
             absorbed)
    g.verify()
    return g
