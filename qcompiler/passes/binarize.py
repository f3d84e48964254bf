"""Binarize: sign activations and {-1,+1} weights become packed BinaryConv2d / BinaryDense.

Run it on the float graph *before* :func:`~qcompiler.passes.fold_batchnorm.fold_batchnorm`: the
BatchNormalization between a binary layer and the next sign is what
:func:`~qcompiler.passes.bitpack.bitpack` turns into an exact integer threshold.

What it recognises (the forms PyTorch's legacy exporter and Larq-style models produce):

* ``Where(x >= c, 1, -1)``, ``Where(x < c, -1, 1)`` (code -1 iff ``x < c``), ``Where(x > c, 1, -1)``,
  ``Where(x <= c, -1, 1)`` (code -1 iff ``x <= c``, i.e. ``x < nextafter(c, +inf)`` in float32);
* ``Sign(x)``; ONNX gives ``Sign(0) = 0``, which one bit cannot hold. ``sign_of_zero`` decides:
  ``"prove"`` (default) binarizes a Sign only when its input provably never is exactly 0: the input
  must be a monotone per-channel chain of an already binarized layer, and no accumulator value that
  layer can produce (border taps with zero padding included) maps to 0 through the chain. Otherwise
  the Sign stays a float op, logged as a warning and recorded in ``graph.meta["fallbacks"]``.
  ``"plus_one"`` binarizes every Sign with ``Sign(0) -> +1`` (the ``x >= 0`` convention), logged
  and recorded as a semantic change;
* the straight-through estimator ``a + (s - a)`` (``x + (sign(x) - x).detach()`` exports as
  Sign/Sub/Add, the clipped variant as Clip/Where/Sub/Add): it equals ``s`` and is replaced by ``s``.
  (In float32 ``a + (s - a) == s`` whenever ``|a| < 2^23``; hard-tanh STEs clip ``a`` to [-1, 1].)

Each sign activation becomes ``BitPack(x, threshold)`` (+ ``BitUnpack`` for float readers, exact).
A Conv / Gemm / MatMul that reads a sign activation, has constant weights and is not kept (first
and last weight layers when ``keep_first_last``; ``skip`` names) becomes a BinaryConv2d /
BinaryDense on the packed bits with epilogue ``out="float"`` (``scale = alpha``, ``bias``):

* weights already in {-1, +1} (a binary-trained net): ``alpha = 1``, the rewrite is exact;
* other weights (XNOR-Net): ``W ~= alpha[o] * sign(W)``, ``alpha[o] = mean |W[o]|``, ``sign(0) = +1``;
  an approximation, logged.

Zero padding of the float conv is kept exactly (``pad_value = 0``; the kernels correct for it).
MaxPool of a sign activation becomes PackedMaxPool (bitwise AND, exact), and ``Flatten`` of a packed
NCHW activation feeding a binarized dense layer becomes a Reshape of the packed NHWC words with the
dense weights permuted to match (exact; needs an even number of padding bits per pixel, which cancel).

``binarize_all=True`` also binarizes the activations of every other (non-kept) weight layer by
sign (XNOR-Net on a float model: an approximation, logged). Does nothing on a graph with no sign
activations when ``binarize_all`` is False.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from ..ir import Graph, Node
from ..ref.ops.bits import n_words, pack_bits, pack_weight_sign, word_dtype
from .graph_edit import (WEIGHT_OPS, add_const, add_value, drop_unused_values, producer_of, sole_consumer,
                         weight_layout)
from .sign_threshold import binary_acc_counts, chain_function, integer_step, trace_back, zero_reachable

log = logging.getLogger(__name__)

SIGN_OF_ZERO = ("prove", "plus_one")
_COMPARE = {"GreaterOrEqual": (1.0, False), "Less": (-1.0, False), "Greater": (1.0, True),
            "LessOrEqual": (-1.0, True)}


def binarize(graph: Graph, *, word_bits: int = 32, keep_first_last: bool = True, binarize_all: bool = False,
             sign_of_zero: str = "prove", skip: Sequence[str] = ()) -> Graph:
    if sign_of_zero not in SIGN_OF_ZERO:
        raise ConfigError(f"sign_of_zero must be one of {SIGN_OF_ZERO}, got {sign_of_zero!r}")
    word_dtype(word_bits)
    g = graph.copy()
    _collapse_ste(g)
    kept = set(skip) | (first_last_layers(g) if keep_first_last else set())
    unknown = set(skip) - {n.name for n in g.nodes}
    if unknown:
        raise ConfigError(f"binarize: skip names no node: {sorted(unknown)}")
    rw = _Rewriter(g, word_bits, kept, sign_of_zero)
    done = set()
    progress = True
    while progress:
        progress = False
        for node in list(g.nodes):
            if node.name in done:
                continue
            done.add(node.name)
            before = {n.name for n in g.nodes}
            if rw.rewrite(node, binarize_all):
                done.update(n.name for n in g.nodes if n.name not in before)  # created nodes are final
                progress = True
                break
    g.prune()
    drop_unused_values(g)
    g.toposort().verify()
    return g


def first_last_layers(g: Graph) -> set:
    """Names of the first and last weight layers (constant weights), the ones ``keep_first_last`` keeps."""
    layers = [n.name for n in g.nodes if n.op in WEIGHT_OPS and g.const(n.input(1)) is not None]
    return {layers[0], layers[-1]} if layers else set()


def _collapse_ste(g: Graph) -> None:
    """``Add(a, Sub(s, a))`` with ``s`` a sign-like node's output -> ``s`` (the STE forward value)."""
    for add in [n for n in g.nodes if n.op == "Add"]:
        for a, d in (add.inputs, add.inputs[::-1]):
            sub = producer_of(g, d)
            if sub is None or sub.op != "Sub" or sub.inputs[1] != a:
                continue
            s_node = producer_of(g, sub.inputs[0])
            if s_node is None or _sign_like(g, s_node) is None:
                continue
            if g.values[add.outputs[0]].shape != g.values[sub.inputs[0]].shape:
                continue
            out = add.outputs[0]
            g.nodes.remove(add)
            for n in g.nodes:
                n.inputs = [sub.inputs[0] if i == out else i for i in n.inputs]
            if out in g.outputs:  # keep the graph output's name
                g.outputs = [o for o in g.outputs]
                g.add_node(Node("Identity", g.unique_name(add.name), [sub.inputs[0]], [out]))
            else:
                del g.values[out]
            log.info("binarize: straight-through estimator %s == %s", add.name, s_node.name)
            break
    g.toposort()


def _scalar_const(g: Graph, name: str) -> Optional[float]:
    d = g.const(name)
    return None if d is None or d.size != 1 else float(d.reshape(-1)[0])


def _all_equal(g: Graph, name: str, value: float) -> bool:
    d = g.const(name)
    return d is not None and d.size >= 1 and bool(np.all(d == value))


def _sign_like(g: Graph, node: Node) -> Optional[Tuple[str, float, str]]:
    """(x, threshold, kind) when ``node`` computes +-1 = sign of ``x`` against a float threshold:
    code -1 iff ``x < threshold``. kind is "where" or "sign" (ONNX Sign, 0 at 0)."""
    if node.op == "Sign":
        x = node.inputs[0]
        return (x, 0.0, "sign") if g.values[x].dtype == "float32" else None
    if node.op != "Where" or len(node.inputs) != 3:
        return None
    cmp = producer_of(g, node.inputs[0])
    if cmp is None or cmp.op not in _COMPARE:
        return None
    x, c = cmp.inputs
    cval = _scalar_const(g, c)
    if cval is None or g.values[x].dtype != "float32" or g.values[node.outputs[0]].shape != g.values[x].shape:
        return None
    true_val, strict = _COMPARE[cmp.op]
    if not (_all_equal(g, node.inputs[1], true_val) and _all_equal(g, node.inputs[2], -true_val)):
        return None
    thr = np.float32(cval)
    if strict:  # code -1 iff x <= c  <=>  x < nextafter(c)
        thr = np.nextafter(thr, np.float32(np.inf))
    return x, float(thr), "where"


class _Rewriter:
    def __init__(self, g: Graph, word_bits: int, kept: set, sign_of_zero: str):
        self.g = g
        self.wb = word_bits
        self.kept = kept
        self.sign_of_zero = sign_of_zero
        self.fallbacks: List[dict] = g.meta.setdefault("fallbacks", [])

    # -- helpers ---------------------------------------------------------------------------------
    def _insert(self, before: Node, nodes: List[Node]) -> None:
        i = self.g.nodes.index(before)
        self.g.nodes[i:i] = nodes

    def _unpacked(self, value: str) -> Optional[Node]:
        """The BitUnpack (mode sign) that produces ``value``, if any."""
        p = producer_of(self.g, value)
        return p if p is not None and p.op == "BitUnpack" and p.attrs.get("mode") == "sign" else None

    def _pack(self, before: Node, x: str, threshold: Optional[np.ndarray], base: str) -> str:
        g = self.g
        shape = g.values[x].shape
        if len(shape) == 4:
            pshape = (shape[0], shape[2], shape[3], n_words(shape[1], self.wb))
        else:
            pshape = (shape[0], n_words(shape[1], self.wb))
        packed = add_value(g, base + "_packed", pshape, f"uint{self.wb}")
        inputs = [x]
        if threshold is not None and np.any(threshold != 0):
            inputs.append(add_const(g, base + "_threshold", threshold.astype(np.float32)))
        self._insert(before, [Node("BitPack", g.unique_name(base + "_pack"), inputs, [packed],
                                   {"mode": "sign", "word_bits": self.wb})])
        return packed

    def _unpack_to(self, before: Node, packed: str, out: str, channels: int, base: str) -> None:
        self._insert(before, [Node("BitUnpack", self.g.unique_name(base + "_unpack"), [packed], [out],
                                   {"mode": "sign", "channels": channels, "bits": 1})])

    # -- rules -----------------------------------------------------------------------------------
    def rewrite(self, node: Node, binarize_all: bool) -> bool:
        g = self.g
        spec = _sign_like(g, node)
        if spec is not None:
            return self._sign(node, *spec)
        if node.op == "MaxPool":
            return self._maxpool(node)
        if node.op == "Flatten":
            return self._flatten_dense(node)
        if node.op in WEIGHT_OPS and node.name not in self.kept:
            if self._unpacked(node.inputs[0]) is not None:
                return self._layer(node, self._unpacked(node.inputs[0]).inputs[0], exact_input=True)
            if binarize_all and g.const(node.input(1)) is not None and weight_layout(g, node) is not None:
                x = g.values[node.inputs[0]]
                if x.dtype == "float32" and len(x.shape) in (2, 4):
                    log.warning("binarize: %s: activations binarized by sign(x) (XNOR-Net; approximate)",
                                node.name)
                    packed = self._pack(node, node.inputs[0], None, node.name + "_x")
                    return self._layer(node, packed, exact_input=False)
        return False

    def _sign(self, node: Node, x: str, thr: float, kind: str) -> bool:
        g = self.g
        shape = g.values[x].shape
        if len(shape) not in (2, 4):
            return False
        if kind == "sign" and not self._sign_nonzero(node, x):
            if self.sign_of_zero == "prove":
                msg = (f"Sign node {node.name!r} kept in float: its input may be exactly 0 and ONNX "
                       "Sign(0) = 0 has no binary code (pass sign_of_zero='plus_one' to map 0 to +1)")
                log.warning("binarize: %s", msg)
                self.fallbacks.append({"pass": "binarize", "node": node.name, "reason": msg})
                return False
            msg = f"Sign node {node.name!r}: Sign(0) mapped to +1 (sign_of_zero='plus_one')"
            log.warning("binarize: %s", msg)
            self.fallbacks.append({"pass": "binarize", "node": node.name, "reason": msg})
        channels = shape[1]
        packed = self._pack(node, x, np.full(channels, thr, np.float32), node.name)
        self._unpack_to(node, packed, node.outputs[0], channels, node.name)
        g.nodes.remove(node)
        return True

    def _sign_nonzero(self, node: Node, x: str) -> bool:
        """Is the input of Sign ``node`` provably never exactly 0 (see the module docstring)?"""
        g = self.g
        shape = g.values[x].shape
        chain = trace_back(g, x, shape[1], len(shape), fusable=False)
        src = producer_of(g, chain.start)
        if src is None or src.op not in ("BinaryConv2d", "BinaryDense") or src.attrs.get("out") != "float":
            return False
        counts = binary_acc_counts(src, g.values[src.inputs[0]].shape)
        n = int(counts.max())
        c = shape[1]
        f = chain_function(g, src, chain, len(shape))
        step = integer_step(f, chain.direction, np.full(c, -n), np.full(c, n), np.zeros(c))
        return not np.any(zero_reachable(step, counts))

    def _maxpool(self, node: Node) -> bool:
        u = self._unpacked(node.inputs[0])
        a = node.attrs
        if u is None or len(self.g.values[node.inputs[0]].shape) != 4 or a.get("ceil_mode", 0) \
                or len(node.outputs) != 1:
            return False
        g = self.g
        packed_in = u.inputs[0]
        out_shape = g.values[node.outputs[0]].shape
        pshape = (out_shape[0], out_shape[2], out_shape[3], g.values[packed_in].shape[3])
        packed = add_value(g, node.name + "_packed", pshape, g.values[packed_in].dtype)
        attrs = {k: tuple(a[k]) for k in ("kernel_shape", "strides", "pads", "dilations")}
        self._insert(node, [Node("PackedMaxPool", g.unique_name(node.name + "_packed"), [packed_in], [packed],
                                 attrs)])
        self._unpack_to(node, packed, node.outputs[0], out_shape[1], node.name)
        g.nodes.remove(node)
        return True

    def _flatten_dense(self, node: Node) -> bool:
        g = self.g
        u = self._unpacked(node.inputs[0])
        dense = sole_consumer(g, node.outputs[0])
        if u is None or dense is None or dense.op not in ("Gemm", "MatMul") or dense.name in self.kept \
                or dense.inputs[0] != node.outputs[0] or int(node.attrs.get("axis", 1)) != 1:
            return False
        lay = weight_layout(g, dense)
        packed = u.inputs[0]
        n, h, w, cw = g.values[packed].shape
        c = int(u.attrs["channels"])
        pad = cw * self.wb - c
        if lay is None or len(g.values[node.inputs[0]].shape) != 4 or pad % 2:
            return False
        wmat = lay["w"]  # [O, C*H*W] in CHW order
        o = wmat.shape[0]
        w_hwc = wmat.reshape(o, c, h, w).transpose(0, 2, 3, 1)  # [O, H, W, C]
        alpha, signs, exact = _binary_weights(w_hwc.reshape(o, -1))
        bits = (signs.reshape(o, h, w, c) < 0)
        pad_bits = np.zeros((o, h, w, pad), bool)
        pad_bits[..., : pad // 2] = True  # half -1, half +1 against x's +1 padding: they cancel
        words = pack_bits(np.concatenate([bits, pad_bits], axis=-1), self.wb).reshape(o, h * w * cw)
        flat = add_value(g, node.name + "_packed", (n, h * w * cw), g.values[packed].dtype)
        reshape = Node("Reshape", g.unique_name(node.name + "_packed"), [packed], [flat],
                       {"shape": (n, h * w * cw)})
        self._insert(node, [reshape])
        g.nodes.remove(node)
        self._emit_dense(dense, flat, words, h * w * cw * self.wb, alpha, lay["bias"], exact)
        return True

    def _layer(self, node: Node, packed: str, exact_input: bool) -> bool:
        g = self.g
        lay = weight_layout(g, node)
        if lay is None:
            return False
        w = lay["w"]
        if lay["kind"] == "dense":
            alpha, signs, exact = _binary_weights(w)
            words = pack_weight_sign(signs.astype(np.float32), self.wb)
            self._emit_dense(node, packed, words, w.shape[1], alpha, lay["bias"], exact and exact_input)
            return True
        if len(w.shape) != 4:
            return False
        o = w.shape[0]
        alpha, signs, exact = _binary_weights(w.reshape(o, -1))
        words = pack_weight_sign(signs.reshape(w.shape).astype(np.float32), self.wb)
        a = node.attrs
        attrs = {"in_channels": int(g.values[node.inputs[0]].shape[1]), "groups": lay["groups"],
                 "kernel_shape": tuple(w.shape[2:]), "strides": tuple(a["strides"]), "pads": tuple(a["pads"]),
                 "dilations": tuple(a["dilations"]), "pad_value": 0, "out": "float"}
        self._emit(node, "BinaryConv2d", packed, words, attrs, alpha, lay["bias"], exact and exact_input)
        return True

    def _emit_dense(self, node, packed, words, in_features, alpha, bias, exact) -> None:
        self._emit(node, "BinaryDense", packed, words, {"in_features": int(in_features), "out": "float"},
                   alpha, bias, exact)

    def _emit(self, node: Node, op: str, packed: str, words: np.ndarray, attrs: Dict, alpha: np.ndarray,
              bias: Optional[np.ndarray], exact: bool) -> None:
        g = self.g
        o = words.shape[0]
        scale = alpha  # Gemm's alpha is already in the weights (weight_layout)
        bias = np.zeros(o) if bias is None else bias
        ins = [packed, add_const(g, node.name + "_wbits", words),
               add_const(g, node.name + "_scale", scale.astype(np.float32)),
               add_const(g, node.name + "_bias", bias.astype(np.float32))]
        new = Node(op, node.name, ins, list(node.outputs), attrs)
        g.nodes[g.nodes.index(node)] = new
        if not exact:
            log.info("binarize: %s: weights approximated as alpha * sign(W) (XNOR-Net)", node.name)
        else:
            log.info("binarize: %s -> %s (exact)", node.name, op)


def _binary_weights(w: np.ndarray) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Rows of ``w`` as ``alpha[o] * signs`` (XNOR-Net). Weights already in {-1, +1} (up to the
    float32 rounding of an exported STE, |1 - |w|| <= 1e-6) give ``alpha = 1`` exactly."""
    signs = np.where(w >= 0, 1.0, -1.0)
    if np.all(np.abs(np.abs(w) - 1.0) <= 1e-6):
        return np.ones(w.shape[0]), signs, True
    return np.abs(w).mean(axis=1), signs, False
