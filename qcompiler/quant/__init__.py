"""Quantization: configuration, calibration, and the ordered list of passes ``quantize`` runs.

>>> import qcompiler as qc                                                       # doctest: +SKIP
>>> qgraph = qc.quantize(graph, qc.QuantConfig(weights=4, activations=8), calibration=batches)
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Optional

import numpy as np

from ..errors import ConfigError
from ..ir import Graph
from .config import LayerQuant, QuantConfig

log = logging.getLogger(__name__)

__all__ = ["QuantConfig", "LayerQuant", "quantize"]

Batches = Iterable[Mapping[str, np.ndarray]]


def quantize(graph: Graph, config: Optional[QuantConfig] = None, calibration: Optional[Batches] = None) -> Graph:
    """Quantize a float graph as ``config`` says; ``calibration`` is an iterable of
    ``{input_name: ndarray}`` batches (needed for static activation quantization).

    Without calibration data, a static config falls back to weights-only int8 (activations stay
    float); the log says so.
    """
    from ..passes.fold_batchnorm import fold_batchnorm
    from ..passes.quantize_dynamic import quantize_dynamic
    from ..passes.quantize_fp16 import quantize_fp16
    from ..passes.quantize_int8 import quantize_int8
    from .calibrate import calibrate

    config = config or QuantConfig()
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"config must be a QuantConfig, got {type(config).__name__}")
    config.check_overrides(n.name for n in graph.nodes)
    batches = list(calibration) if calibration is not None else None  # iterated by several passes

    # -- low-bit and data-free passes (issue 5 part B) --------------------------------------
    if config.weights == 1 and config.activations == 1:
        return _binary(graph, config)
    g = fold_batchnorm(graph)
    if config.equalize:
        from ..passes.equalize import equalize

        g = equalize(g)
    if config.bias_correction:
        from ..passes.bias_correction import bias_correction

        g = bias_correction(g, calibration=batches, fake_quant=_weight_fake_quant(g, config))
    lowbit = _lowbit(g, config, batches)
    if lowbit is not None:
        return lowbit
    # -----------------------------------------------------------------------------------------
    if config.mode == "float16":
        return quantize_fp16(g)
    if config.weights_only or batches is None:
        if batches is None and not config.weights_only:
            log.warning("quantize: no calibration data, so activations stay float: weights-only int8 "
                        "(dynamic-range) quantization instead of static full-integer")
        return quantize_dynamic(g, config)
    observers = calibrate(g, batches, config)
    ranges = {name: obs.range() for name, obs in observers.items()}
    g = quantize_int8(g, config, ranges)
    return g


def _binary(graph: Graph, config: QuantConfig) -> Graph:
    """W1A1: binarize (before BN folding, so BN + sign become exact thresholds), fuse, fold the rest."""
    from ..passes.binarize import binarize
    from ..passes.bitpack import bitpack
    from ..passes.fold_batchnorm import fold_batchnorm

    keep = config.keep_first_last is not None
    # A binary-trained net says where its sign activations are (STE patterns): binarize exactly
    # those layers and leave real-valued ones (e.g. Bi-Real shortcuts) alone. Only a graph with no
    # sign activations at all gets XNOR-Net binarization of every layer (approximate, logged).
    g = binarize(graph, keep_first_last=keep, binarize_all=False)
    if not any(n.op in ("BinaryConv2d", "BinaryDense") for n in g.nodes):
        log.warning("quantize: the graph has no sign activations; binarizing every weight layer's "
                    "input by sign (XNOR-Net, approximate: retrain with an STE for accuracy)")
        g = binarize(graph, keep_first_last=keep, binarize_all=True)
    return fold_batchnorm(bitpack(g))


def _lowbit(g: Graph, config: QuantConfig, batches) -> Optional[Graph]:
    """Ternary weights, or k-bit weights and activations (<= 2 bits each) as bitserial ops."""
    keep = config.keep_first_last is not None
    if config.weights == "ternary":
        from ..passes.ternarize import ternarize

        return ternarize(g, calibration=batches, act_bits=min(config.activations, 8), keep_first_last=keep)
    if isinstance(config.weights, int) and config.weights <= 2 and config.activations <= 2:
        from ..passes.quantize_bitserial import quantize_bitserial

        return quantize_bitserial(g, weight_bits=config.weights, act_bits=config.activations,
                                  calibration=batches, keep_first_last=keep)
    return None


def _weight_fake_quant(graph: Graph, config: QuantConfig):
    """The weight rounding quantize_int8 will apply to a node, for bias correction."""
    from ..passes.quantize_int8 import layer_precisions
    from .qparams import weight_qparams

    precisions = layer_precisions(graph, config)

    def fake_quant(w: np.ndarray, node) -> np.ndarray:
        prec = precisions.get(node.name)
        if prec is None or not isinstance(prec.weights, int) or not 2 <= prec.weights <= 8:
            return w
        method = "minmax" if prec.weights == 8 else "mse"
        qp = weight_qparams(w.astype(np.float32), int(prec.weights), prec.per_channel, prec.symmetric_weights,
                            axis=0, method=method)
        return qp.dequantize(qp.quantize(w)).astype(np.float64)

    return fake_quant
