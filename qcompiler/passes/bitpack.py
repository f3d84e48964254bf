"""Bit-packing clean-up: fuse sign + pack into the producer's epilogue, pool in the bit domain.

Before: a graph from :mod:`.binarize` / :mod:`.quantize_bitserial` / :mod:`.ternarize`, where every
packed layer has a float epilogue and every sign activation is an explicit ``BitPack`` (+
``BitUnpack`` for float readers). After (all rewrites exact, so the outputs are bit-identical):

* ``BitPack(BitUnpack(p))`` with a zero threshold is ``p``;
* ``BitPack(MaxPool(v), t) == PackedMaxPool(BitPack(v, t))`` (``max < t`` iff every tap ``< t``:
  the AND of the bits), so pooling happens on packed words;
* a BinaryConv2d / BinaryDense / BitserialConv2d / BitserialDense whose float output goes only
  through a per-channel monotone chain (BatchNormalization, Mul/Add/Sub/Div by per-channel
  constants, Relu, Clip, ...) into a sign ``BitPack`` gets the ``"packed"`` epilogue: per-channel
  integer ``threshold`` and ``flip`` found by bisection over the accumulator's range on the
  reference executor's own float arithmetic (:mod:`.sign_threshold`), so consecutive binary layers
  exchange packed bits and activations never round-trip through float.

Word width: packed layouts are fixed when layers are packed; pick it with :func:`choose_word_bits`
(from the target) and hand it to the packing passes. ``bitpack(graph, word_bits=...)`` checks
that every packed tensor uses that width. Does nothing on a graph without packed ops.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from ..errors import ConfigError
from ..ir import Graph, Node
from ..ref.ops.bits import unpack_planes, word_bits_of
from .graph_edit import add_const, add_value, drop_unused_values, producer_of, replace_uses, sole_consumer
from .sign_threshold import binary_acc_counts, chain_function, integer_step, trace_back

log = logging.getLogger(__name__)

PACKED_PRODUCERS = ("BinaryConv2d", "BinaryDense", "BitserialConv2d", "BitserialDense")


def choose_word_bits(target=None) -> int:
    """Packing word width for a target: 64 on 64-bit CPUs (x86-64, aarch64, riscv64, where a
    64-bit popcount is one instruction or a short vector sequence), 32 on 32-bit ARM; 32 without
    a target. ``target`` is a :class:`qcompiler.targets.Target` or a target name."""
    if target is None:
        return 32
    if isinstance(target, str):
        from ..targets import resolve

        target = resolve(target)
    return 64 if target.arch in ("x86_64", "aarch64", "riscv64") else 32


def bitpack(graph: Graph, *, word_bits: Optional[int] = None) -> Graph:
    g = graph.copy()
    if word_bits is not None:
        _check_word_bits(g, word_bits)
    changed = True
    while changed:
        changed = _drop_roundtrip(g) or _pool_in_bits(g) or _fuse_epilogue(g)
    g.prune()
    drop_unused_values(g)
    g.toposort().verify()
    return g


def _check_word_bits(g: Graph, word_bits: int) -> None:
    for n in g.nodes:
        for o in n.outputs:
            v = g.values[o]
            if n.op in ("BitPack", "PackedMaxPool") or n.attrs.get("out") == "packed":
                if word_bits_of(v.dtype) != word_bits:
                    raise ConfigError(f"bitpack: {n.name!r} packs into {v.dtype} words but word_bits="
                                      f"{word_bits}; pass the same word_bits to the packing passes")


def _zero_threshold(g: Graph, pack: Node) -> bool:
    t = g.const(pack.input(1))
    return pack.input(1) is None or (t is not None and not np.any(t))


def _drop_roundtrip(g: Graph) -> bool:
    for pack in g.nodes:
        if pack.op != "BitPack" or pack.attrs.get("mode") != "sign" or not _zero_threshold(g, pack):
            continue
        u = producer_of(g, pack.inputs[0])
        if u is None or u.op != "BitUnpack" or u.attrs.get("mode") != "sign":
            continue
        if g.values[u.inputs[0]].dtype != g.values[pack.outputs[0]].dtype:
            continue
        if pack.outputs[0] in g.outputs:
            continue
        replace_uses(g, pack.outputs[0], u.inputs[0])
        g.nodes.remove(pack)
        return True
    return False


def _pool_in_bits(g: Graph) -> bool:
    for pack in g.nodes:
        if pack.op != "BitPack" or pack.attrs.get("mode") != "sign":
            continue
        pool = producer_of(g, pack.inputs[0])
        if pool is None or pool.op != "MaxPool" or pool.attrs.get("ceil_mode", 0) \
                or sole_consumer(g, pool.outputs[0]) is not pack or len(g.values[pool.inputs[0]].shape) != 4:
            continue
        v = g.values[pool.inputs[0]]
        out = g.values[pack.outputs[0]]
        inner = add_value(g, pool.name + "_bits", (v.shape[0], v.shape[2], v.shape[3], out.shape[3]), out.dtype)
        new_pack = Node("BitPack", g.unique_name(pack.name + "_pre"), [pool.inputs[0]] + pack.inputs[1:],
                        [inner], dict(pack.attrs))
        attrs = {k: tuple(pool.attrs[k]) for k in ("kernel_shape", "strides", "pads", "dilations")}
        packed_pool = Node("PackedMaxPool", g.unique_name(pool.name + "_packed"), [inner], list(pack.outputs), attrs)
        i = g.nodes.index(pool)
        g.nodes[i:i + 1] = [new_pack, packed_pool]
        g.nodes.remove(pack)
        log.info("bitpack: %s now pools packed bits", pool.name)
        return True
    return False


def _acc_range(g: Graph, prod: Node, channels: int):
    """Per-channel [lo, hi] bounds of the integer accumulator, and the achievable counts for binary."""
    if prod.op in ("BinaryConv2d", "BinaryDense"):
        counts = binary_acc_counts(prod, g.values[prod.inputs[0]].shape)
        n = int(counts.max())
        return np.full(channels, -n), np.full(channels, n)
    a = prod.attrs
    k = int(a["in_channels"]) // int(a["groups"]) if prod.op == "BitserialConv2d" else int(a["in_features"])
    u = unpack_planes(g.const(prod.inputs[1]), k).astype(np.int64)
    w = (int(a["w_mult"]) * u - int(a["w_offset"])).reshape(channels, -1)
    qmax = (1 << int(a["act_bits"])) - 1
    return np.minimum(w, 0).sum(1) * qmax, np.maximum(w, 0).sum(1) * qmax


def _fuse_epilogue(g: Graph) -> bool:
    for pack in g.nodes:
        if pack.op != "BitPack" or pack.attrs.get("mode") != "sign":
            continue
        x = g.values[pack.inputs[0]]
        channels, rank = x.shape[1], len(x.shape)
        chain = trace_back(g, pack.inputs[0], channels, rank, fusable=True)
        prod = producer_of(g, chain.start)
        if (prod is None or prod.op not in PACKED_PRODUCERS or prod.attrs.get("out") not in ("float", "int32")
                or int(prod.attrs.get("residual", 0))):   # a fused residual is no per-channel threshold
            continue
        if sole_consumer(g, chain.start) is not (chain.nodes[0] if chain.nodes else pack):
            continue
        thr_data = g.const(pack.input(1))
        if pack.input(1) and thr_data is None:
            continue
        thr = np.zeros(channels) if thr_data is None else thr_data.astype(np.float64).reshape(-1)
        lo, hi = _acc_range(g, prod, channels)
        f = chain_function(g, prod, chain, rank)
        step = integer_step(f, chain.direction, lo, hi, thr)
        if np.any(step.threshold < -(1 << 31)) or np.any(step.threshold > (1 << 31) - 1):
            continue
        prod.inputs = prod.inputs[:2] + [add_const(g, prod.name + "_threshold", step.threshold.astype(np.int32)),
                                         add_const(g, prod.name + "_flip", step.flip)]
        prod.attrs = dict(prod.attrs, out="packed", out_word_bits=int(pack.attrs["word_bits"]))
        old = prod.outputs[0]
        prod.outputs = list(pack.outputs)
        for n in chain.nodes + [pack]:
            g.nodes.remove(n)
        del g.values[old]
        log.info("bitpack: %s writes packed bits (fused %s)", prod.name,
                 ", ".join(n.op for n in chain.nodes) or "sign")
        return True
    return False
