"""Ternary weights (TWN, Li & Liu 2016) on bit-plane ops.

Each output channel's weights become ``alpha[o] * t`` with ``t`` in {-1, 0, +1}: ``t = sign(w)`` where
``|w| > delta[o] = threshold_ratio * mean|w[o]|`` (0.7 in the paper), else 0, and ``alpha[o]`` =
mean of ``|w|`` over the kept weights (the least-squares scale for that support). The ternary codes
``u = t + 1`` in {0, 1, 2} are stored as 2 bit-planes (``w_mult = 1``, ``w_offset = 1``) of a
BitserialConv2d / BitserialDense; activations are unipolar ``act_bits`` codes, exactly as in
:mod:`.quantize_bitserial` (same pre/post conditions: float graph with BatchNorm folded, layers with
provably non-negative inputs, first/last kept with ``keep_first_last``, calibration batches needed
for the activation scales). Does nothing when no layer qualifies.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ..errors import ConfigError
from ..ir import Graph
from .quantize_bitserial import bitserial_rewrite


def ternary_codes(rows: np.ndarray, threshold_ratio: float = 0.7):
    """TWN: rows ``[O, K]`` -> (codes u in {0, 1, 2}, alpha [O], w_mult 1, w_offset 1)."""
    absw = np.abs(rows)
    delta = threshold_ratio * absw.mean(axis=1, keepdims=True)
    keep = absw > delta
    counts = keep.sum(axis=1)
    alpha = np.where(counts > 0, (absw * keep).sum(axis=1) / np.maximum(counts, 1), 1.0)
    t = np.where(keep, np.sign(rows), 0).astype(np.int64)
    return t + 1, alpha, 1, 1


def ternarize(graph: Graph, *, calibration: Iterable[Mapping[str, np.ndarray]], act_bits: int = 8,
              threshold_ratio: float = 0.7, word_bits: int = 32, keep_first_last: bool = True,
              skip: Iterable[str] = ()) -> Graph:
    if not 0 < threshold_ratio < 1.5:
        raise ConfigError(f"ternarize: threshold_ratio must be in (0, 1.5), got {threshold_ratio}")
    return bitserial_rewrite(graph, act_bits=act_bits, weight_coder=lambda rows: ternary_codes(rows, threshold_ratio),
                             weight_bits=2, calibration=calibration, word_bits=word_bits,
                             keep_first_last=keep_first_last, skip=skip, what="ternarize")
