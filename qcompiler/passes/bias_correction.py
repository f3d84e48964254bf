"""Bias correction for weight quantization (Nagel et al. 2019, DFQ, section 4.2).

Quantizing weights ``W -> Wq = W + eps`` shifts the expected output of a layer by ``eps E[x]``.
This pass subtracts that shift from the float bias, so the layer quantized later by the
quantization pass (which rounds the same weights the same way) is unbiased. Weights are left
untouched; only biases change (a layer without bias gains one; a MatMul becomes a Gemm).

* ``calibration`` given (empirical): layers are corrected in order; ``E[x]`` is the per-channel mean
  of the layer's input measured with the reference executor on the calibration batches, in the
  graph whose earlier layers already have quantized weights and corrected biases (so errors that
  propagate from upstream are corrected too).
* ``calibration=None`` (analytic, data-free): ``E[x]`` comes from the BatchNormalization statistics
  that :mod:`.fold_batchnorm` recorded for the producing layer (``N(beta, gamma^2)``, through a ReLU
  ``E = mu * Phi(mu/sigma) + sigma * phi(mu/sigma)``). Layers whose input has no statistics are
  skipped (logged).

Before: float graph (BatchNorm folded, optionally equalized). ``fake_quant(w, node) -> Wq`` must be
the weight rounding the quantization pass will use; the default is :func:`symmetric_weight_quant`
(``weight_bits``, per output channel, restricted signed range). Conv corrections use the interior
(non-padded) expectation. Does nothing when no layer has constant weights.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Dict, Iterable, Mapping, Optional

import numpy as np

from ..errors import ConfigError
from ..ir import Graph, Node
from .. import ref
from .graph_edit import WEIGHT_OPS, producer_of, weight_layout, write_weights

log = logging.getLogger(__name__)


def symmetric_weight_quant(w: np.ndarray, bits: int, per_channel: bool = True) -> np.ndarray:
    """Fake-quantize rows ``w[o]`` symmetrically to ``bits`` (range ``[-(2^(b-1)-1), 2^(b-1)-1]``)."""
    if not 2 <= bits <= 8:
        raise ConfigError(f"weight bits must be in 2..8, got {bits}")
    qmax = (1 << (bits - 1)) - 1
    flat = w.reshape(w.shape[0], -1)
    r = np.abs(flat).max(axis=1) if per_channel else np.full(w.shape[0], np.abs(flat).max())
    s = np.where(r > 0, r / qmax, 1.0)
    q = np.clip(np.round(flat / s[:, None]), -qmax, qmax)
    return (q * s[:, None]).reshape(w.shape)


def _layer_mean_effect(lay: dict, eps: np.ndarray, ex: np.ndarray) -> np.ndarray:
    """``E[layer(x; eps)]`` per output channel for per-input-channel means ``ex``."""
    if lay["kind"] == "dense":
        return eps @ ex
    o, cg = eps.shape[:2]
    g = lay["groups"]
    og = o // g
    per_tap = eps.reshape(o, cg, -1).sum(axis=2)  # [O, C/g]
    out = np.empty(o)
    for gi in range(g):
        rows = slice(gi * og, (gi + 1) * og)
        out[rows] = per_tap[rows] @ ex[gi * cg:(gi + 1) * cg]
    return out


def _analytic_input_mean(g: Graph, node: Node) -> Optional[np.ndarray]:
    stats = g.meta.get("bn_stats", {})
    v = node.inputs[0]
    spatial = 1
    p = producer_of(g, v)
    if p is not None and p.op == "Flatten":
        shape = g.values[p.inputs[0]].shape
        spatial = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
        v = p.inputs[0]
        p = producer_of(g, v)
    relu = p is not None and p.op == "Relu"
    if relu:
        v = p.inputs[0]
    if v not in stats:
        return None
    mu, sigma = np.asarray(stats[v]["mean"]), np.asarray(stats[v]["std"])
    if relu:
        with np.errstate(all="ignore"):
            z = np.where(sigma > 0, mu / np.where(sigma > 0, sigma, 1), np.sign(mu) * np.inf)
        cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
        pdf = np.where(np.isfinite(z), np.exp(-0.5 * np.where(np.isfinite(z), z, 0) ** 2) / math.sqrt(2 * math.pi), 0)
        mean = np.where(sigma > 0, mu * cdf + sigma * pdf, np.maximum(mu, 0))
    else:
        mean = mu
    return np.repeat(mean, spatial)


def _empirical_input_mean(g: Graph, node: Node, batches) -> np.ndarray:
    total, count = None, 0
    for feeds in batches:
        x = ref.run(g, feeds, keep_all=True)[node.inputs[0]].astype(np.float64)
        axes = tuple(i for i in range(x.ndim) if i != 1) if x.ndim > 2 else (0,)
        s = x.sum(axis=axes)
        n = x.size // x.shape[1]
        total = s if total is None else total + s
        count += n
    return total / max(count, 1)


def bias_correction(graph: Graph, *, weight_bits: int = 8, calibration: Optional[Iterable[Mapping[str, np.ndarray]]] = None,
                    per_channel: bool = True, skip: Iterable[str] = (),
                    fake_quant: Optional[Callable[[np.ndarray, Node], np.ndarray]] = None) -> Graph:
    g = graph.copy()
    if fake_quant is None:
        def fake_quant(w, node):
            return symmetric_weight_quant(w, weight_bits, per_channel)
    batches = None if calibration is None else list(calibration)
    if batches is not None and not batches:
        raise ConfigError("bias_correction: calibration is empty")
    work = g.copy() if batches is not None else None  # graph with quantized weights, used for E[x]
    skip = set(skip)
    corrected: Dict[str, float] = {}
    for node in [n for n in g.nodes if n.op in WEIGHT_OPS and n.name not in skip]:
        lay = weight_layout(g, node)
        if lay is None:
            continue
        w = lay["w"]
        eps = fake_quant(w, node) - w
        if batches is not None:
            ex = _empirical_input_mean(work, work.node(node.name), batches)
        else:
            ex = _analytic_input_mean(g, node)
            if ex is None:
                log.info("bias_correction: %s skipped (no BatchNorm statistics for its input)", node.name)
                continue
        delta = _layer_mean_effect(lay, eps, ex)
        bias = (np.zeros(w.shape[0]) if lay["bias"] is None else lay["bias"]) - delta
        write_weights(g, node, w, bias)
        if work is not None:
            wn = work.node(node.name)
            write_weights(work, wn, w + eps, bias)
        corrected[node.name] = float(np.max(np.abs(delta))) if delta.size else 0.0
    log.info("bias_correction (%s): corrected %d layer(s)", "empirical" if batches else "analytic", len(corrected))
    g.verify()
    return g
