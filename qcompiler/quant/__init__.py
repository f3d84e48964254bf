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


def quantize(graph: Graph, config: Optional[QuantConfig] = None, calibration: Optional[Batches] = None,
             *, target=None) -> Graph:
    """Quantize a float graph as ``config`` says; ``calibration`` is an iterable of
    ``{input_name: ndarray}`` batches (needed for static activation quantization).

    ``target`` (a target name or :class:`~qcompiler.targets.Target`, the one ``qc.compile`` will
    get) sets the packing word width of binary/bitserial/ternary layers
    (:func:`~qcompiler.passes.bitpack.choose_word_bits`: 64 on x86-64/aarch64/riscv64, 32 on armv7;
    64-bit words measured ~8 % faster than 32 on x86 AVX-512). Without a target the words are 32 bits,
    which every target runs.

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
    from ..passes.bitpack import choose_word_bits

    word_bits = choose_word_bits(target)
    if config.weights == 1 and config.activations == 1:
        return _binary(graph, config, word_bits, batches)
    g = fold_batchnorm(graph)
    if config.equalize:
        from ..passes.equalize import equalize

        g = equalize(g)
    if config.bias_correction:
        from ..passes.bias_correction import bias_correction

        g = bias_correction(g, calibration=batches, fake_quant=_weight_fake_quant(g, config))
    lowbit = _lowbit(g, config, batches, word_bits)
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


def _binary(graph: Graph, config: QuantConfig, word_bits: int, batches=None) -> Graph:
    """W1A1: binarize (before BN folding, so BN + sign become exact thresholds), fuse, fold the rest;
    then the kept first/last layers become int8 (``keep_first_last=8``, calibrated on ``batches``)."""
    from ..passes.binarize import binarize
    from ..passes.bitpack import bitpack
    from ..passes.fold_batchnorm import fold_batchnorm
    from ..passes.fuse_residual import fuse_residual
    from .config import FLOAT_LAYER_BITS

    if config.keep_first_last not in (None, 8, FLOAT_LAYER_BITS):   # before any pass runs
        raise ConfigError(f"W1A1 keeps the first and last layers int8 (keep_first_last=8) or float "
                          f"(keep_first_last={FLOAT_LAYER_BITS}), got keep_first_last={config.keep_first_last!r}")
    keep = config.keep_first_last is not None
    # A binary-trained net says where its sign activations are (STE patterns): binarize exactly
    # those layers and leave real-valued ones (e.g. Bi-Real shortcuts) alone. Only a graph with no
    # sign activations at all gets XNOR-Net binarization of every layer (approximate, logged).
    g = binarize(graph, keep_first_last=keep, binarize_all=False, word_bits=word_bits)
    if not any(n.op in ("BinaryConv2d", "BinaryDense") for n in g.nodes):
        log.warning("quantize: the graph has no sign activations; binarizing every weight layer's "
                    "input by sign (XNOR-Net, approximate: retrain with an STE for accuracy)")
        g = binarize(graph, keep_first_last=keep, binarize_all=True, word_bits=word_bits)
    g = fold_batchnorm(bitpack(g, word_bits=word_bits))
    # last: the residual Adds fold into the binary convs' float epilogues (bit-identical); after
    # the int8 ends, whose calibration and rewrites see the plain graph
    return fuse_residual(_binary_ends(g, graph, config, batches))


def _binary_ends(g: Graph, graph: Graph, config: QuantConfig, batches) -> Graph:
    """The real-valued weight layers of a W1A1 graph that become int8 (calibrated on ``batches``):
    the kept first/last layers with ``keep_first_last=8`` (the 7x7 stem of Bi-Real-18 runs 1.8x
    faster than in float on x86 VNNI, 2.2x with its int8 output; ``keep_first_last=32`` keeps them
    float), and float layers an
    override gives 8-bit weights (e.g. ``overrides={"*shortcut*": {"weights": 8}}`` for Bi-Real's
    1x1 shortcut convs)."""
    from ..passes.binarize import first_last_layers
    from ..passes.int8_layers import int8_layers_calibrated

    bits = config.keep_first_last            # None, 8 or FLOAT_LAYER_BITS (checked by _binary)
    real = [n.name for n in g.nodes if n.op in ("Conv", "Gemm", "MatMul")]
    ends = first_last_layers(graph) if bits is not None else set()
    names = sorted(n for n in real if (n in ends and bits == 8)
                   or (n not in ends and config.overrides and config.for_node(n).weights == 8))
    if not names:
        return g
    if batches is None:
        msg = (f"no calibration data: the layers {names} stay float (int8 layers of a W1A1 graph "
               "quantize their inputs from calibrated ranges)")
        log.warning("quantize: %s", msg)
        g.meta.setdefault("fallbacks", []).append({"pass": "quantize", "node": ",".join(names), "reason": msg})
        return g
    # the first layer writes int8 (its max pool then runs on int8): its output is an 8-bit
    # activation like any other of an int8 layer; the last layer keeps float logits
    first = [n for n in real if n in ends and bits == 8][:1]
    return int8_layers_calibrated(g, names, batches, per_channel=config.per_channel, int8_outputs=first)


def _lowbit(g: Graph, config: QuantConfig, batches, word_bits: int) -> Optional[Graph]:
    """Ternary weights, or k-bit weights and activations (<= 2 bits each) as bitserial ops."""
    keep = config.keep_first_last is not None
    if config.weights == "ternary":
        from ..passes.ternarize import ternarize

        return ternarize(g, calibration=batches, act_bits=min(config.activations, 8), keep_first_last=keep,
                         word_bits=word_bits)
    if isinstance(config.weights, int) and config.weights <= 2 and config.activations <= 2:
        from ..passes.quantize_bitserial import quantize_bitserial

        return quantize_bitserial(g, weight_bits=config.weights, act_bits=config.activations,
                                  calibration=batches, keep_first_last=keep, word_bits=word_bits)
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
