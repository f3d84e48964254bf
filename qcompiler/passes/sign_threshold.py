"""Exact per-channel thresholds for "monotone chain, then sign" (shared by binarize and bitpack).

A binary layer's accumulator ``acc`` is an integer in a known range. When its float output goes
through per-channel monotone ops (the epilogue ``acc * scale + bias``, BatchNormalization,
Mul/Add/Sub/Div by per-channel constants, Relu, Clip, ...) and then a sign, the sign is a step
function of ``acc``: ``-1`` exactly for ``acc < t`` (chain non-decreasing) or ``acc > t``
(non-increasing). Instead of re-deriving ``t`` algebraically (``mean - beta * sqrt(var+eps)/gamma``,
which float rounding makes off by one near ties), we find it by bisection on the *reference
executor's own float arithmetic* evaluated at integer accumulators, so the fused threshold agrees
with the unfused graph bit for bit. (Every op in :data:`MONOTONE_OPS` is monotone in float
arithmetic too: IEEE rounding is monotone, so compositions stay monotone.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..ir import Graph, Node
from ..ref import get_op
from .graph_edit import per_channel, producer_of, sole_consumer

#: Ops that act per channel and monotonically on their one non-constant input.
MONOTONE_OPS = ("BatchNormalization", "Mul", "Div", "Add", "Sub", "Neg", "Relu", "Clip", "LeakyRelu",
                "Identity")


@dataclass
class Chain:
    """Nodes from ``start`` (a value) to ``end`` (a value), in execution order, with per-channel
    direction (+1 non-decreasing, -1 non-increasing, 0 constant)."""

    start: str
    end: str
    nodes: List[Node]
    direction: np.ndarray


def _node_direction(graph: Graph, node: Node, x: str, channels: int, rank: int) -> Optional[np.ndarray]:
    """Per-channel direction of ``node`` as a function of its input ``x`` (None: not monotone)."""
    others = [i for i in node.inputs if i and i != x]
    if node.inputs.count(x) != 1 or any(not graph.values[i].is_const for i in others):
        return None
    one = np.ones(channels)
    if node.op in ("Relu", "Identity"):
        return one
    if node.op == "Clip":
        return one if node.inputs[0] == x else None
    if node.op == "LeakyRelu":
        return one if float(node.attrs.get("alpha", 0.01)) >= 0 else None
    if node.op == "Neg":
        return -one
    if node.op == "BatchNormalization":
        if node.inputs[0] != x or rank < 2:
            return None
        gamma = per_channel(graph.const(node.inputs[1]), channels, 1, axis=0)
        return None if gamma is None else np.sign(gamma)
    c = per_channel(graph.const(others[0]) if others else None, channels, rank)
    if c is None:
        return None
    first = node.inputs[0] == x
    if node.op == "Add":
        return one
    if node.op == "Sub":
        return one if first else -one
    if node.op == "Mul":
        return np.sign(c)
    if node.op == "Div":
        return np.sign(c) if first else None
    return None


def trace_back(graph: Graph, value: str, channels: int, rank: int, fusable: bool) -> Chain:
    """The longest monotone chain ending at ``value`` (possibly empty).

    With ``fusable`` every intermediate value must be read only by the next chain node (so the chain
    can be deleted when its effect moves into a threshold).
    """
    nodes: List[Node] = []
    direction = np.ones(channels)
    cur = value
    while True:
        p = producer_of(graph, cur)
        if p is None or p.op not in MONOTONE_OPS or len(p.outputs) != 1:
            break
        dyn = [i for i in p.inputs if i and not graph.values[i].is_const]
        if len(dyn) != 1:
            break
        d = _node_direction(graph, p, dyn[0], channels, rank)
        if d is None:
            break
        if fusable and nodes and sole_consumer(graph, cur) is not nodes[0]:
            break
        nodes.insert(0, p)
        direction = direction * d
        cur = dyn[0]
    return Chain(cur, value, nodes, direction)


def eval_chain(graph: Graph, chain: Chain, values: np.ndarray, rank: int) -> np.ndarray:
    """Apply the chain to ``values[c, l]`` (channel c, candidate l) with the reference executor."""
    channels, count = values.shape
    t = values.T.reshape((count, channels) + (1,) * (rank - 2)).astype(graph.values[chain.start].dtype)
    cur = chain.start
    for n in chain.nodes:
        args = [t if i == cur else (graph.const(i) if i else None) for i in n.inputs]
        with np.errstate(all="ignore"):
            t = np.asarray(get_op(n.op).compute(args, n.attrs)[0])
        cur = n.outputs[0]
    return t.reshape(count, channels).T


def first_true(pred: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per channel, the smallest integer ``a`` in ``[lo, hi]`` with ``pred(a)`` true, or ``hi + 1``;
    ``pred`` must be false-then-true (monotone) on the range. ``pred`` maps int64[C] -> bool[C]."""
    low, high = lo.astype(np.int64).copy(), hi.astype(np.int64) + 1
    while np.any(low < high):
        mid = (low + high) // 2
        ok = pred(np.minimum(mid, hi))
        active = low < high
        high = np.where(active & ok, mid, high)
        low = np.where(active & ~ok, mid + 1, low)
    return low


@dataclass
class StepFunction:
    """``bit(acc) = acc > threshold if flip else acc < threshold`` (bit 1 = code -1), plus the integers
    where the chain output is exactly zero (``zero_lo..zero_hi``, empty when lo > hi)."""

    threshold: np.ndarray
    flip: np.ndarray
    zero_lo: np.ndarray
    zero_hi: np.ndarray


def integer_step(f: Callable[[np.ndarray], np.ndarray], direction: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray, thr: np.ndarray) -> StepFunction:
    """Exact step function of ``f(acc) < thr`` over integer ``acc`` in ``[lo, hi]`` for a per-channel
    monotone ``f`` (int64[C] -> float[C]) with the given directions."""
    inc = direction >= 0

    def at(a):
        return np.asarray(f(a), np.float64)

    # first acc with code +1 (increasing) / code -1 (decreasing)
    s = first_true(lambda a: np.where(inc, at(a) >= thr, at(a) < thr), lo, hi)
    threshold = np.where(inc, s, s - 1)
    # zero set: increasing [first f >= 0, first f > 0 - 1]; decreasing [first f <= 0, first f < 0 - 1]
    z0 = first_true(lambda a: np.where(inc, at(a) >= 0, at(a) <= 0), lo, hi)
    z1 = first_true(lambda a: np.where(inc, at(a) > 0, at(a) < 0), lo, hi) - 1
    return StepFunction(threshold.astype(np.int64), (~inc).astype(np.uint8), z0, z1)


def binary_acc_counts(node: Node, in_shape: Tuple[int, ...]) -> np.ndarray:
    """For a BinaryConv2d/BinaryDense: the distinct numbers ``n`` of real (non-padded) products in an
    accumulator; ``acc`` then takes the values ``-n, -n + 2, ..., n``."""
    if node.op == "BinaryDense":
        return np.array([int(node.attrs["in_features"])])
    cg = int(node.attrs["in_channels"]) // int(node.attrs["groups"])
    kh, kw = node.attrs["kernel_shape"]
    if int(node.attrs["pad_value"]) != 0:
        return np.array([cg * kh * kw])
    from ..ref.ops.intmath import int_conv

    h, w = in_shape[1], in_shape[2]  # packed NHWC
    ones = np.ones((1, 1, h, w), np.int64)
    counts = int_conv(ones, np.ones((1, 1, kh, kw), np.int64), node.attrs["strides"], node.attrs["pads"],
                      node.attrs["dilations"], 1)
    return np.unique(counts) * cg


def zero_reachable(step: StepFunction, counts: np.ndarray) -> np.ndarray:
    """Per channel: is some achievable accumulator (see :func:`binary_acc_counts`) in the zero set?"""
    hit = np.zeros(step.zero_lo.shape, bool)
    for n in counts:
        n = int(n)
        lo = np.maximum(step.zero_lo, -n)
        hi = np.minimum(step.zero_hi, n)
        # smallest a >= lo with a = n (mod 2)
        first = lo + ((lo - n) % 2)
        hit |= first <= hi
    return hit


def chain_function(graph: Graph, producer: Node, chain: Chain, rank: int) -> Callable[[np.ndarray], np.ndarray]:
    """``acc (int64[C]) -> chain output (float[C])`` for a packed conv/dense ``producer`` whose
    epilogue is ``out="float"`` (or ``"int32"``), evaluated with the reference semantics."""
    from ..ref.ops.lowbit import apply_epilogue

    extra = [graph.const(i) for i in producer.inputs[2:]]
    attrs = dict(producer.attrs)

    def f(acc: np.ndarray) -> np.ndarray:
        y = apply_epilogue(np.asarray(acc, np.int64).reshape(1, -1), extra, attrs)
        return eval_chain(graph, chain, np.asarray(y).reshape(-1, 1), rank)[:, 0]

    return f
