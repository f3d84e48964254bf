"""Fold imported pre-quantized models (QDQ and QLinear ops) into integer QConv2d/QDense/QAdd nodes.

Before: a graph imported from a QDQ model (``onnxruntime.quantization.quantize_static``) or one with
QLinearConv/QLinearMatMul nodes. DequantizeLinear of constant weights must still be nodes (the
frontend keeps them: ``onnx_import.NEVER_FOLDED_OPS``).

After, with ``requant="float"`` (onnxruntime's arithmetic: multiplier ``float32(s_x * s_w[o]) / s_y``,
``rint`` half to even), which makes the folded graph bit-exact with onnxruntime's fused integer
kernels (QLinearConv / QLinearMatMul / QGemm) on the same model:

* ``Q(y) <- [Relu] <- Conv|Gemm|MatMul(DQ(x_q), DQ(w_q), [DQ(b_q int32)])`` becomes
  ``QConv2d``/``QDense(x_q, w_q, b_q)`` writing Q's output (a Relu becomes the clamp's lower
  bound, which is exact: ``Q(max(v, 0)) = max(Q(v), zp)``). Conditions: per-tensor activations,
  one weight zero point (uint8 weights shift to int8, exact), a bias whose scale is
  ``s_x * s_w`` and zero point 0, and intermediate values read only along the chain.
* ``QLinearConv``/``QLinearMatMul`` (2-D) become the same QConv2d/QDense (identical arithmetic).
* ``Q(y) <- MaxPool(DQ(x_q))`` with Q and DQ sharing scale and zero point: MaxPool on x_q (exact).
* ``Q(y) <- [Relu] <- Add(DQ(a_q), DQ(b_q))`` of equal shapes: ``QAdd`` with ``requant="float"``,
  which is the ONNX meaning of that chain (and onnxruntime's scalar QLinearAdd; its vector kernels
  use their own fixed point and may differ by one step).
* ``Q(DQ(x_q))`` with equal scale and zero point: ``x_q`` itself (exact: ``rint`` undoes the
  float32 round trip for |q| < 2^16).

Patterns that do not match stay as they are (they still run in the reference executor with ONNX
semantics); the log lists how many of each were folded. Does nothing on a graph without
QuantizeLinear/QLinear nodes.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import numpy as np

from ..ir import Graph, Node
from ..ref.ops.quant import output_multiplier

log = logging.getLogger(__name__)


class _Folder:
    def __init__(self, graph: Graph):
        self.g = graph.copy()
        self.producers = self.g.producers()
        self.consumers = self.g.consumers()
        self.counts = {"layers": 0, "qlinear": 0, "maxpool": 0, "add": 0, "requantize_pairs": 0}
        self.skipped: Dict[str, str] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def prod(self, value: str, op: str) -> Optional[Node]:
        n = self.producers.get(value)
        return n if n is not None and n.op == op else None

    def only_reader(self, value: str, node: Node) -> bool:
        return value not in self.g.outputs and [c.name for c in self.consumers.get(value, [])] == [node.name]

    def dq_params(self, dq: Node, per_tensor: bool = True) -> Optional[Tuple[str, np.ndarray, np.ndarray]]:
        """(quantized input, scale, zero point) of a DequantizeLinear with constant parameters."""
        s = self.g.const(dq.input(1))
        z = self.g.const(dq.input(2)) if dq.input(2) else np.zeros((), self.g.values[dq.inputs[0]].dtype)
        if s is None or z is None or dq.attrs.get("block_size", 0):
            return None
        if per_tensor and (s.size != 1 or z.size != 1):
            return None
        return dq.inputs[0], s.astype(np.float32), z

    def q_params(self, q: Node) -> Optional[Tuple[np.ndarray, np.ndarray, str]]:
        s = self.g.const(q.input(1))
        z = self.g.const(q.input(2)) if q.input(2) else None
        out = self.g.values[q.outputs[0]].dtype
        if s is None or s.size != 1 or (q.input(2) and (z is None or z.size != 1)) or out not in ("int8", "uint8"):
            return None
        return s.astype(np.float32), (z if z is not None else np.zeros((), out)), out

    @staticmethod
    def same(a: Tuple, b: Tuple) -> bool:
        return all(np.array_equal(np.asarray(x).reshape(-1), np.asarray(y).reshape(-1)) for x, y in zip(a, b))

    # -- patterns ---------------------------------------------------------------------------------
    def int_weights(self, w_value: str, out_axis: int) -> Optional[Tuple[np.ndarray, int, np.ndarray]]:
        """(int8 weights, one zero point, per-output-channel float32 scales) behind a DequantizeLinear."""
        dq = self.prod(w_value, "DequantizeLinear")
        if dq is None:
            return None
        p = self.dq_params(dq, per_tensor=False)
        if p is None:
            return None
        wq = self.g.const(p[0])
        if wq is None or str(wq.dtype) not in ("int8", "uint8"):
            return None
        scale, zp = p[1].reshape(-1), p[2].reshape(-1)
        if scale.size > 1 and int(dq.attrs.get("axis", 1)) != out_axis:
            return None
        if len(set(zp.tolist())) != 1:
            return None  # QConv2d/QDense take one weight zero point
        z = int(zp[0])
        if wq.dtype == np.uint8:  # shift to int8: (w - z) is unchanged
            wq, z = (wq.astype(np.int16) - 128).astype(np.int8), z - 128
        channels = wq.shape[out_axis]
        return wq, z, np.broadcast_to(scale, (channels,)).astype(np.float32)

    def int_bias(self, b_value: Optional[str], acc_scale: np.ndarray) -> Tuple[bool, Optional[np.ndarray]]:
        if not b_value:
            return True, None
        dq = self.prod(b_value, "DequantizeLinear")
        p = self.dq_params(dq, per_tensor=False) if dq is not None else None
        bq = self.g.const(p[0]) if p is not None else None
        if bq is None or bq.dtype != np.int32 or np.any(p[2] != 0):
            return False, None
        if not np.allclose(np.broadcast_to(p[1].reshape(-1), acc_scale.shape), acc_scale, rtol=1e-6, atol=0):
            return False, None
        return True, bq.reshape(-1)

    def layer(self, q: Node) -> Optional[Node]:
        qp = self.q_params(q)
        if qp is None:
            return None
        y = q.inputs[0]
        relu = self.prod(y, "Relu")
        if relu is not None and self.only_reader(y, q):
            y = relu.inputs[0]
        layer = self.producers.get(y)
        if layer is None or layer.op not in ("Conv", "Gemm", "MatMul") or not self.only_reader(y, relu or q):
            return None
        dx = self.prod(layer.inputs[0], "DequantizeLinear")
        xp = self.dq_params(dx) if dx is not None else None
        if xp is None or self.g.values[xp[0]].dtype not in ("int8", "uint8"):
            return None
        if layer.op == "Conv":
            if len(self.g.values[layer.inputs[0]].shape) != 4:
                return None
            w = self.int_weights(layer.inputs[1], 0)
        elif layer.op == "Gemm":
            if layer.attrs.get("transA", 0) or layer.attrs.get("alpha", 1.0) != 1.0 or layer.attrs.get("beta", 1.0) != 1.0:
                return None
            w = self.int_weights(layer.inputs[1], 0 if layer.attrs.get("transB", 0) else 1)
            if w is not None and not layer.attrs.get("transB", 0):
                w = (w[0].T.copy(), w[1], w[2])
        else:
            w = self.int_weights(layer.inputs[1], 1)
            if w is not None:
                w = (w[0].T.copy(), w[1], w[2])
        if w is None or (layer.op != "Conv" and len(self.g.values[layer.inputs[0]].shape) != 2):
            return None
        wq, wz, ws = w
        ok, bias = self.int_bias(layer.input(2), (xp[1].reshape(()) * ws).astype(np.float32))
        if not ok:
            self.skipped[layer.name] = "its bias is not int32 at scale s_x * s_w"
            return None
        return self.build(layer, q, relu, xp, (wq, wz, ws), bias, qp)

    def build(self, layer: Node, q: Node, relu: Optional[Node], xp, w, bias, qp) -> Node:
        x_q, xs, xz = xp
        wq, wz, ws = w
        ys, yz, out = qp
        info = np.iinfo(out)
        lo = max(info.min, int(yz)) if relu is not None else info.min
        inputs = [x_q, self.const(f"{layer.name}_wq", wq),
                  self.const(f"{layer.name}_bq", bias.astype(np.int32)) if bias is not None else "",
                  self.const(f"{layer.name}_requant", output_multiplier(xs, ws, ys, wq.shape[0]))]
        attrs = dict(x_zero_point=int(np.asarray(xz).reshape(-1)[0]), w_zero_point=int(wz), out=out,
                     out_zero_point=int(np.asarray(yz).reshape(-1)[0]), out_min=lo, out_max=int(info.max),
                     requant="float")
        if layer.op in ("Conv", "QLinearConv"):
            attrs.update(strides=tuple(layer.attrs["strides"]), pads=tuple(layer.attrs["pads"]),
                         dilations=tuple(layer.attrs["dilations"]), groups=int(layer.attrs.get("group", 1)))
            return Node("QConv2d", layer.name, inputs, [q.outputs[0]], attrs)
        return Node("QDense", layer.name, inputs, [q.outputs[0]], attrs)

    def const(self, base: str, data: np.ndarray) -> str:
        name = self.g.unique_name(base)
        self.g.add_const(name, np.array(data, order="C"))
        return name

    def qlinear(self, n: Node) -> Optional[Node]:
        """QLinearConv / QLinearMatMul (2-D, constant parameters) as QConv2d / QDense."""
        c = [self.g.const(i) if i else None for i in n.inputs]
        if any(c[i] is None for i in (1, 2, 3, 4, 5, 6, 7)) or any(c[i].size != 1 for i in (1, 2, 6, 7)):
            return None
        wq = c[3]
        zp = c[5].reshape(-1)
        if len(set(zp.tolist())) != 1:
            return None
        wz = int(zp[0])
        if wq.dtype == np.uint8:
            wq, wz = (wq.astype(np.int16) - 128).astype(np.int8), wz - 128
        if n.op == "QLinearMatMul":
            if len(self.g.values[n.inputs[0]].shape) != 2 or wq.ndim != 2:
                return None
            wq = wq.T.copy()
        elif len(self.g.values[n.inputs[0]].shape) != 4:
            return None
        ws = np.broadcast_to(c[4].reshape(-1).astype(np.float32), (wq.shape[0],))
        bias = c[8] if len(c) > 8 and n.input(8) else None
        if n.input(8) and bias is None:
            return None
        q = Node("QuantizeLinear", n.name, [], [n.outputs[0]])
        return self.build(n, q, None, (n.inputs[0], c[1].astype(np.float32), c[2]), (wq, wz, ws), bias,
                          (c[6].astype(np.float32), c[7], str(c[7].dtype)))

    def maxpool(self, q: Node) -> Optional[Node]:
        qp = self.q_params(q)
        pool = self.prod(q.inputs[0], "MaxPool")
        if qp is None or pool is None or len(pool.outputs) != 1 or not self.only_reader(q.inputs[0], q):
            return None
        dq = self.prod(pool.inputs[0], "DequantizeLinear")
        xp = self.dq_params(dq) if dq is not None else None
        if xp is None or not self.same((xp[1], xp[2]), (qp[0], qp[1])) or self.g.values[xp[0]].dtype != qp[2]:
            return None
        return Node("MaxPool", pool.name, [xp[0]], [q.outputs[0]], dict(pool.attrs))

    def add(self, q: Node) -> Optional[Node]:
        qp = self.q_params(q)
        if qp is None:
            return None
        y = q.inputs[0]
        relu = self.prod(y, "Relu")
        if relu is not None and self.only_reader(y, q):
            y = relu.inputs[0]
        add = self.prod(y, "Add")
        if add is None or not self.only_reader(y, relu or q):
            return None
        ps = [self.dq_params(d) if d is not None else None
              for d in (self.prod(i, "DequantizeLinear") for i in add.inputs)]
        if any(p is None or self.g.values[p[0]].dtype not in ("int8", "uint8") for p in ps):
            return None
        if self.g.values[ps[0][0]].shape != self.g.values[ps[1][0]].shape:
            return None
        ys, yz, out = qp
        info = np.iinfo(out)
        zy = int(np.asarray(yz).reshape(-1)[0])
        return Node("QAdd", add.name, [ps[0][0], ps[1][0]], [q.outputs[0]],
                    dict(a_zero_point=int(ps[0][2].reshape(-1)[0]), b_zero_point=int(ps[1][2].reshape(-1)[0]),
                         out=out, out_zero_point=zy, out_min=max(info.min, zy) if relu is not None else info.min,
                         out_max=int(info.max), requant="float", a_scale=float(ps[0][1].reshape(-1)[0]),
                         b_scale=float(ps[1][1].reshape(-1)[0]), out_scale=float(ys.reshape(-1)[0])))

    def requantize_pair(self, q: Node) -> Optional[str]:
        """Q(DQ(x)) with equal parameters: the value x to use instead of Q's output."""
        qp = self.q_params(q)
        dq = self.prod(q.inputs[0], "DequantizeLinear")
        xp = self.dq_params(dq) if dq is not None and qp is not None else None
        if xp is None or self.g.values[xp[0]].dtype != qp[2] or not self.same((xp[1], xp[2]), (qp[0], qp[1])):
            return None
        return xp[0]

    # -- driver -----------------------------------------------------------------------------------
    def run(self) -> Graph:
        replaced: Dict[str, Node] = {}
        alias: Dict[str, str] = {}
        for n in list(self.g.nodes):
            if n.op in ("QLinearConv", "QLinearMatMul"):
                new = self.qlinear(n)
                if new is not None:
                    replaced[n.name] = new
                    self.counts["qlinear"] += 1
                continue
            if n.op != "QuantizeLinear":
                continue
            for kind, rule in (("layers", self.layer), ("maxpool", self.maxpool), ("add", self.add)):
                new = rule(n)
                if new is not None:
                    replaced[n.name] = new
                    self.counts[kind] += 1
                    break
            else:
                src = self.requantize_pair(n)
                if src is not None:
                    alias[n.outputs[0]] = src
                    self.counts["requantize_pairs"] += 1
        nodes = []
        for n in self.g.nodes:
            if n.outputs and n.outputs[0] in alias:
                continue
            n = replaced.get(n.name, n)
            n.inputs = [_resolve(alias, i) for i in n.inputs]
            nodes.append(n)
        self.g.nodes = nodes
        self.g.outputs = [_keep_output(self.g, alias, o, nodes) for o in self.g.outputs]
        self.g.prune()
        self.g.verify()
        for name, why in self.skipped.items():
            log.info("fold_qdq: %s not folded: %s", name, why)
        log.info("fold_qdq: folded %(layers)d conv/dense, %(qlinear)d QLinear ops, %(add)d adds, "
                 "%(maxpool)d max-pools, %(requantize_pairs)d Q(DQ) pairs", self.counts)
        return self.g


def _resolve(alias: Dict[str, str], name: str) -> str:
    while name in alias:
        name = alias[name]
    return name


def _keep_output(graph: Graph, alias: Dict[str, str], out: str, nodes) -> str:
    """A graph output that was a Q(DQ) pair's result keeps its name through an Identity."""
    if out not in alias:
        return out
    nodes.append(Node("Identity", graph.unique_name(f"{out}_id"), [_resolve(alias, out)], [out]))
    return out


def fold_qdq(graph: Graph) -> Graph:
    """Fold DequantizeLinear -> op -> QuantizeLinear chains into integer ops (module docstring)."""
    return _Folder(graph).run()
