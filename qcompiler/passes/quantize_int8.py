"""Static full-integer quantization: Conv/Gemm/MatMul become QConv2d/QDense with fixed-point
requantization, so a chain of layers runs on integers only.

Before: a float graph (BatchNorm already folded, if it is to be folded); ``ranges`` holds the
calibrated ``(lo, hi)`` of float activations (``calibrate.calibrate``), at least of every input
and fused output of the layers to quantize and of every Add between them.

After:
* every 2-D Conv (4-D input), every Gemm (transA = 0) and every MatMul with constant 2-D weights
  and a 2-D input, whose node precision (``QuantConfig.for_node``) has weights and activations of
  2..8 bits, is a ``QConv2d``/``QDense`` with ``out`` int8/uint8, ``requant="fixed_point"``
  (``requant.quantize_multiplier`` of ``s_x * s_w[o] / s_y``) and an int32 bias
  ``rint(b / (s_x * s_w[o]))``; a following Relu or Clip (its only consumer) is fused into the
  output clamp;
* weights are quantized symmetric signed (restricted range) to their bits, per output channel when
  ``per_channel``, stored int8 (W4 weights lie on the 4-bit grid [-7, 7]); the scale comes from
  min-max at 8 bits and from MSE-optimal clipping below 8 bits (where clipping pays);
* activations: uint8 (zero point from the range) when the calibrated range is non-negative,
  else asymmetric int8; k < 8 activation bits clamp to the k-bit grid of that type (a Clip after
  each QuantizeLinear, the output clamp of each layer);
* an Add whose two inputs are quantized becomes ``QAdd`` (fixed point), a following Relu fused;
  MaxPool, Flatten and Reshape on a quantized tensor run on the integers (same scale);
* other ops stay float: a ``DequantizeLinear`` materialises a float value where a float op or a
  graph output reads it, and a ``QuantizeLinear`` quantizes a float value where a quantized layer
  reads it. GlobalAveragePool/AveragePool therefore run in float between a DequantizeLinear and the
  next layer's QuantizeLinear (exact in float, and simple).

Nothing changes when no node qualifies. Graph inputs and outputs keep their names and dtypes.
"""

from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from ..errors import ConfigError
from ..ir import Graph, Node, Value
from ..quant.config import LayerQuant, QuantConfig
from ..quant.qparams import QParams, activation_qparams, weight_qparams
from ..ref.ops.requant import quantize_add_multipliers, quantize_multipliers
from .graph_edit import weight_layout

log = logging.getLogger(__name__)

Range = Tuple[np.ndarray, np.ndarray]
#: ops that run unchanged on a quantized (per-tensor) tensor and keep its scale
SCALE_PRESERVING = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity")
INT32_LIMIT = (1 << 31) - 1


def quantizable_layers(graph: Graph) -> list:
    """Nodes this pass can turn into QConv2d/QDense (weights constant, shapes supported)."""
    out = []
    for n in graph.nodes:
        if n.op not in ("Conv", "Gemm", "MatMul"):
            continue
        if n.op == "Conv" and len(graph.values[n.inputs[0]].shape) != 4:
            continue
        if len(n.outputs) != 1 or weight_layout(graph, n) is None:
            continue
        out.append(n)
    return out


def layer_precisions(graph: Graph, config: QuantConfig) -> Dict[str, LayerQuant]:
    """The resolved precision of every weight layer (first and last get ``keep_first_last``)."""
    layers = quantizable_layers(graph)
    ends = {layers[0].name, layers[-1].name} if layers else set()
    return {n.name: config.for_node(n.name, first_or_last=n.name in ends) for n in layers}


class _Rewriter:
    def __init__(self, graph: Graph, config: QuantConfig, ranges: Mapping[str, Range]):
        self.src = graph
        self.g = graph.copy()
        self.g.nodes = []
        self.config = config
        self.ranges = ranges
        self.twins: Dict[str, Tuple[str, QParams]] = {}   # float value -> (int value, qparams)
        self.have_float = set(graph.inputs) | {k for k, v in graph.values.items() if v.is_const}
        self.consumers = graph.consumers()
        self.producers = graph.producers()
        self.counts = {"layers": 0, "adds": 0, "int_ops": 0, "quantize": 0, "dequantize": 0}

    # -- helpers -----------------------------------------------------------------------------------
    def act_qparams(self, value: str, bits: int) -> QParams:
        if value not in self.ranges:
            raise ConfigError(f"no calibrated range for activation {value!r}; calibrate the graph first")
        lo, hi = self.ranges[value]
        return activation_qparams(lo, hi, bits)

    def const(self, base: str, data: np.ndarray) -> str:
        name = self.g.unique_name(base)
        self.g.add_const(name, np.array(data, order="C"))  # (ascontiguousarray makes scalars 1-D)
        return name

    def new_value(self, base: str, shape, dtype: str) -> str:
        name = self.g.unique_name(base)
        self.g.add_value(Value(name, tuple(shape), dtype))
        return name

    def emit(self, op: str, base: str, inputs, outputs, attrs, replaces: bool = False) -> None:
        """Add a node; ``replaces``: it stands for the source node ``base`` and keeps its name."""
        name = base
        taken = {n.name for n in self.g.nodes} | ({n.name for n in self.src.nodes} if not replaces else set())
        i = 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        self.g.add_node(Node(op, name, list(inputs), list(outputs), dict(attrs)))

    def need_float(self, value: str) -> str:
        """The float value ``value``, dequantizing its integer twin if it is not materialised yet."""
        if value in self.have_float or not value:
            return value
        q, qp = self.twins[value]
        self.emit("DequantizeLinear", f"{value}_dequant",
                  [q, self.const(f"{value}_scale", qp.scale), self.const(f"{value}_zp", qp.zero_point.astype(qp.dtype))],
                  [value], dict(axis=1, block_size=0, output_dtype="float32"))
        self.have_float.add(value)
        self.counts["dequantize"] += 1
        return value

    def need_int(self, value: str, bits: int) -> Tuple[str, QParams]:
        """The integer twin of ``value``, quantizing the float value if it has none."""
        if value in self.twins:
            return self.twins[value]
        qp = self.act_qparams(value, bits)
        src = self.need_float(value)
        q = self.new_value(f"{value}_q", self.src.values[value].shape, qp.dtype)
        self.emit("QuantizeLinear", f"{value}_quant",
                  [src, self.const(f"{value}_scale", qp.scale), self.const(f"{value}_zp", qp.zero_point.astype(qp.dtype))],
                  [q], dict(axis=1, block_size=0, output_dtype=qp.dtype))
        info = np.iinfo(qp.dtype)
        if (qp.qmin, qp.qmax) != (info.min, info.max):  # k < 8 bits: saturate to the k-bit grid
            clipped = self.new_value(f"{value}_q{qp.qmax - qp.qmin + 1}", self.src.values[value].shape, qp.dtype)
            self.emit("Clip", f"{value}_saturate", [q, self.const(f"{value}_qmin", np.array(qp.qmin, qp.dtype)),
                                                    self.const(f"{value}_qmax", np.array(qp.qmax, qp.dtype))],
                      [clipped], {})
            q = clipped
        self.twins[value] = (q, qp)
        self.counts["quantize"] += 1
        return q, qp

    def fusable_activation(self, value: str) -> Optional[Node]:
        """The Relu/Clip (constant bounds) that is ``value``'s only reader, if any."""
        users = self.consumers.get(value, [])
        if value in self.src.outputs or len(users) != 1:
            return None
        act = users[0]
        if act.op == "Relu":
            return act
        if act.op == "Clip" and all(not i or self.src.const(i) is not None for i in act.inputs[1:]):
            return act
        return None

    def clamp(self, act: Optional[Node], qp: QParams) -> Tuple[int, int]:
        lo, hi = qp.qmin, qp.qmax
        zp, s = int(qp.zero_point), float(qp.scale)
        if act is None:
            return lo, hi
        if act.op == "Relu":
            return max(lo, zp), hi
        bounds = [self.src.const(i) if i else None for i in act.inputs[1:3]] + [None, None]
        if bounds[0] is not None:
            lo = max(lo, min(hi, zp + int(np.rint(float(bounds[0].reshape(-1)[0]) / s))))
        if bounds[1] is not None:
            hi = min(hi, max(lo, zp + int(np.rint(float(bounds[1].reshape(-1)[0]) / s))))
        return lo, hi

    # -- rewrites ------------------------------------------------------------------------------------
    def layer(self, node: Node, prec: LayerQuant) -> None:
        lay = weight_layout(self.src, node)
        x_name = node.inputs[0]
        xq, xqp = self.need_int(x_name, prec.activations)
        act = self.fusable_activation(node.outputs[0])
        y_name = act.outputs[0] if act is not None else node.outputs[0]
        yqp = self.act_qparams(y_name, prec.activations)
        if not prec.symmetric_weights and prec.per_channel:
            raise ConfigError(f"node {node.name!r}: asymmetric weights need per_channel=False "
                              "(QConv2d/QDense take one weight zero point)")
        w = lay["w"].astype(np.float32)
        method = "minmax" if prec.weights == 8 else "mse"
        wqp = weight_qparams(w, int(prec.weights), prec.per_channel, prec.symmetric_weights, axis=0,
                             method=method)
        o = w.shape[0]
        w_scale = np.broadcast_to(wqp.scale, (o,)).astype(np.float64)
        wq = wqp.quantize(w)
        w_zp = int(np.asarray(wqp.zero_point).reshape(-1)[0])
        if wq.dtype != np.int8:  # asymmetric per-tensor weights land in [-128, 127] too
            wq = wq.astype(np.int8)
        acc_scale = float(xqp.scale) * w_scale
        bias = None
        bq = np.zeros(o)
        if lay["bias"] is not None:
            bq = np.rint(lay["bias"] / acc_scale)
            bias = np.clip(bq, -INT32_LIMIT, INT32_LIMIT).astype(np.int32)
        # worst case |acc| per output channel: |x - x_zp| <= 255 at every tap
        worst = 255 * np.abs(wq.astype(np.int64) - w_zp).reshape(o, -1).sum(axis=1) + np.abs(bq)
        if worst.max() > INT32_LIMIT:
            raise ConfigError(f"node {node.name!r}: the int32 accumulator could overflow (worst case "
                              f"{int(worst.max())}); quantize this layer with fewer weight bits or keep it float")
        mult, shift = quantize_multipliers(acc_scale / float(yqp.scale))
        lo, hi = self.clamp(act, yqp)
        yq = self.new_value(f"{y_name}_q", self.src.values[y_name].shape, yqp.dtype)
        attrs = dict(x_zero_point=int(xqp.zero_point), w_zero_point=w_zp, out=yqp.dtype,
                     out_zero_point=int(yqp.zero_point), out_min=lo, out_max=hi, requant="fixed_point")
        inputs = [xq, self.const(f"{node.name}_wq", wq),
                  self.const(f"{node.name}_bq", bias) if bias is not None else "",
                  self.const(f"{node.name}_mult", mult), self.const(f"{node.name}_shift", shift)]
        if lay["kind"] == "conv":
            attrs.update(strides=tuple(node.attrs["strides"]), pads=tuple(node.attrs["pads"]),
                         dilations=tuple(node.attrs["dilations"]), groups=int(node.attrs.get("group", 1)))
            self.emit("QConv2d", node.name, inputs, [yq], attrs, replaces=True)
        else:
            self.emit("QDense", node.name, inputs, [yq], attrs, replaces=True)
        self.twins[y_name] = (yq, yqp)
        if act is not None:
            self.fused.add(act.name)
        self.counts["layers"] += 1

    def add(self, node: Node, bits: int) -> bool:
        a, b = node.inputs
        sa, sb = self.src.values[a], self.src.values[b]
        if a not in self.twins or b not in self.twins or sa.shape != sb.shape:
            return False
        aq, aqp = self.twins[a]
        bq, bqp = self.twins[b]
        act = self.fusable_activation(node.outputs[0])
        if act is not None and act.op != "Relu":
            act = None
        y_name = act.outputs[0] if act is not None else node.outputs[0]
        yqp = self.act_qparams(y_name, bits)
        ma, mb, shift = quantize_add_multipliers(float(aqp.scale) / float(yqp.scale),
                                                 float(bqp.scale) / float(yqp.scale))
        lo, hi = self.clamp(act, yqp)
        yq = self.new_value(f"{y_name}_q", self.src.values[y_name].shape, yqp.dtype)
        self.emit("QAdd", node.name, [aq, bq], [yq],
                  dict(a_zero_point=int(aqp.zero_point), b_zero_point=int(bqp.zero_point), out=yqp.dtype,
                       out_zero_point=int(yqp.zero_point), out_min=lo, out_max=hi, requant="fixed_point",
                       a_multiplier=ma, b_multiplier=mb, shift=shift), replaces=True)
        self.twins[y_name] = (yq, yqp)
        if act is not None:
            self.fused.add(act.name)
        self.counts["adds"] += 1
        return True

    def scale_preserving(self, node: Node) -> bool:
        x = node.inputs[0]
        if x not in self.twins or len([o for o in node.outputs if o]) != 1:
            return False
        if any(i and self.src.values[i].is_const is False for i in node.inputs[1:]):
            return False
        xq, qp = self.twins[x]
        y = node.outputs[0]
        yq = self.new_value(f"{y}_q", self.src.values[y].shape, qp.dtype)
        self.emit(node.op, node.name, [xq] + node.inputs[1:], [yq], node.attrs, replaces=True)
        self.twins[y] = (yq, qp)
        self.counts["int_ops"] += 1
        return True

    def run(self, precisions: Mapping[str, LayerQuant]) -> Graph:
        self.fused = set()
        for node in self.src.nodes:
            if node.name in self.fused:
                continue
            prec = precisions.get(node.name)
            if prec is not None and _integer_precision(prec):
                self.layer(node, prec)
                continue
            if node.op == "Add" and self.add(node, self.config.activations if self.config.activations <= 8 else 8):
                continue
            if node.op in SCALE_PRESERVING and self.scale_preserving(node):
                continue
            ins = [self.need_float(i) for i in node.inputs]
            self.g.add_node(Node(node.op, node.name, ins, list(node.outputs), dict(node.attrs)))
            self.have_float.update(node.outputs)
        for o in self.src.outputs:
            self.need_float(o)
        self.g.prune()
        self.g.verify()
        return self.g


def _integer_precision(prec: LayerQuant) -> bool:
    return isinstance(prec.weights, int) and 2 <= prec.weights <= 8 and 2 <= prec.activations <= 8


def quantize_int8(graph: Graph, config: QuantConfig, ranges: Mapping[str, Range]) -> Graph:
    """Rewrite weight layers into integer QConv2d/QDense (see the module docstring)."""
    precisions = layer_precisions(graph, config)
    skipped = [n for n, p in precisions.items() if not _integer_precision(p)]
    if skipped:
        log.info("quantize_int8: %d layer(s) keep their ops (1-bit/ternary weights are the binarize "
                 "pass's, float activations the weights-only pass's): %s", len(skipped), skipped[:10])
    rw = _Rewriter(graph, config, ranges)
    out = rw.run(precisions)
    log.info("quantize_int8: %(layers)d integer layers, %(adds)d QAdd, %(int_ops)d integer pool/reshape "
             "ops, %(quantize)d QuantizeLinear, %(dequantize)d DequantizeLinear", rw.counts)
    return out
