"""int8 layers in an otherwise float (or binary) graph: named Conv / Gemm / MatMul layers become
``QuantizeLinear -> QConv2d / QDense`` with a float epilogue (the layer's output stays float32).

For the first and last layers of a binary net (Bi-Real, XNOR-Net: "first conv and last dense in
int8"): their inputs and outputs are float (the image; the residual stream; the logits), so the
int8 layer reads a quantized copy of its float input and writes float again:

* activations: per-tensor, asymmetric 8-bit from the calibrated range of the layer's input
  (``qparams.activation_qparams``: uint8 when the range is non-negative, else int8);
* weights: symmetric int8 (restricted range, zero point 0), per output channel when
  ``per_channel``, min-max scales;
* epilogue ``out="float"``: ``y = float32(acc) * (s_x * s_w[o]) + b[o]`` with the layer's float bias
  ``b`` (not rounded to int32: the float epilogue adds it exactly as the float layer did).

The result differs from the float layer only by the rounding of the input and weights to 8 bits.
Layers that are not plain weight layers (non-constant weights, 1-D/3-D convs, ...) raise.

``int8_outputs`` (a subset of ``layers``, with calibrated ranges of their outputs): those layers
write int8 instead (``out`` int8/uint8, fixed-point requantization, int32 bias
``rint(b / (s_x * s_w[o]))``, as ``quantize_int8`` does), and a MaxPool that is the output's only
reader runs on the integers; a ``DequantizeLinear`` gives the float value back. For Bi-Real-18's
stem this is what int8 inference engines do (LCE/TFLite int8: conv and max pool in int8), and it
measured 0.93 vs 1.16 ms for the conv and 0.04 vs 0.07 ms for the pool (+0.02 ms dequantize),
at the price of rounding the stem's output to 8 bits.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, UnsupportedError
from ..ir import Graph, Node
from ..quant.qparams import activation_qparams, weight_qparams
from ..ref.ops.requant import quantize_multipliers
from .graph_edit import add_const, add_value, drop_unused_values, sole_consumer, weight_layout
from .quantize_int8 import INT32_LIMIT

log = logging.getLogger(__name__)

Range = Tuple[np.ndarray, np.ndarray]


def int8_layers(graph: Graph, layers: Sequence[str], ranges: Mapping[str, Range], *,
                per_channel: bool = True, int8_outputs: Sequence[str] = ()) -> Graph:
    """Rewrite the weight layers named ``layers`` as int8 (see the module docstring); ``ranges``
    holds the calibrated ``(lo, hi)`` of each layer's input, and of the output of each layer in
    ``int8_outputs`` (``quant.calibrate``)."""
    g = graph.copy()
    by_name = {n.name: n for n in g.nodes}
    unknown = [n for n in list(layers) + list(int8_outputs) if n not in by_name]
    if unknown:
        raise ConfigError(f"int8_layers: no node named {unknown}")
    stray = sorted(set(int8_outputs) - set(layers))
    if stray:
        raise ConfigError(f"int8_layers: int8_outputs {stray} are not among the layers to rewrite")
    for name in layers:
        _rewrite(g, by_name[name], ranges, per_channel, name in set(int8_outputs))
    drop_unused_values(g)
    g.toposort().verify()
    return g


def int8_layers_calibrated(graph: Graph, layers: Sequence[str], batches, *, per_channel: bool = True,
                           int8_outputs: Sequence[str] = ()) -> Graph:
    """:func:`int8_layers` with the input ranges observed (min-max) by running ``graph`` on the
    calibration ``batches``. Named layers this pass cannot quantize stay float; each is logged and
    recorded in ``graph.meta["fallbacks"]``."""
    from ..quant.calibrate import calibrate
    from ..quant.config import QuantConfig

    nodes = {n.name: n for n in graph.nodes}
    ok, fallbacks = [], []
    for name in layers:
        node = nodes.get(name)
        reason = _unsupported(graph, node) if node is not None else "no such node"
        if reason:
            fallbacks.append({"pass": "int8_layers", "node": name, "reason": f"kept float: {reason}"})
            log.warning("int8_layers: %s kept float: %s", name, reason)
        else:
            ok.append(name)
    out = graph
    if ok:
        outs = [n for n in int8_outputs if n in ok and nodes[n].outputs[0] not in graph.outputs]
        values = sorted({nodes[n].inputs[0] for n in ok} | {nodes[n].outputs[0] for n in outs})
        observers = calibrate(graph, batches, QuantConfig(calibration="minmax"), values=values)
        out = int8_layers(graph, ok, {v: obs.range() for v, obs in observers.items()}, per_channel=per_channel,
                          int8_outputs=outs)
    if fallbacks:
        out = out if out is not graph else graph.copy()
        out.meta.setdefault("fallbacks", []).extend(fallbacks)
    return out


def _unsupported(g: Graph, node: Node) -> str:
    """Why ``node`` cannot become an int8 layer ("" if it can)."""
    if node.op not in ("Conv", "Gemm", "MatMul") or weight_layout(g, node) is None:
        return f"{node.op} is not a weight layer with constant weights"
    x = g.values[node.inputs[0]]
    if len(node.outputs) != 1:
        return f"{len(node.outputs)} outputs"
    if x.dtype != "float32":
        return f"input is {x.dtype}, not float32"
    if len(x.shape) != (4 if node.op == "Conv" else 2):
        return f"input shape {list(x.shape)} (2-D convs and 2-D dense inputs only)"
    return ""


def _rewrite(g: Graph, node: Node, ranges: Mapping[str, Range], per_channel: bool, int8_out: bool) -> None:
    why = _unsupported(g, node)
    if why:
        raise UnsupportedError(f"int8_layers: node {node.name!r} cannot become an int8 layer: {why} "
                               f"(int8_layers_calibrated keeps such layers float)")
    lay = weight_layout(g, node)
    x = node.inputs[0]
    xv = g.values[x]
    y = node.outputs[0]
    for v in [x] + ([y] if int8_out else []):
        if v not in ranges:
            raise ConfigError(f"int8_layers: no calibrated range for {v!r} of {node.name!r}")
    if int8_out and y in g.outputs:
        raise ConfigError(f"int8_layers: {node.name!r}: a graph output keeps the float epilogue")
    lo, hi = ranges[x]
    xqp = activation_qparams(lo, hi, 8)
    w = lay["w"].astype(np.float32)
    o = w.shape[0]
    wqp = weight_qparams(w, 8, per_channel, True, axis=0, method="minmax")
    wq = wqp.quantize(w).astype(np.int8)
    w_scale = np.broadcast_to(np.asarray(wqp.scale, np.float32), (o,))
    scale = (np.float32(xqp.scale) * w_scale).astype(np.float32)
    bias = np.zeros(o, np.float32) if lay["bias"] is None else lay["bias"].astype(np.float32)
    bq = np.rint(bias.astype(np.float64) / scale.astype(np.float64)) if int8_out else np.zeros(o)
    # |acc| <= 255 * sum |w| (+ |bias|) per output channel (|x - zp| <= 255)
    worst = 255 * np.abs(wq.astype(np.int64)).reshape(o, -1).sum(axis=1) + np.abs(bq)
    if worst.max() > INT32_LIMIT:
        raise UnsupportedError(f"int8_layers: node {node.name!r}: the int32 accumulator could overflow")

    base = node.name
    xq = add_value(g, f"{x}_q8", xv.shape, xqp.dtype)
    new_nodes = [Node("QuantizeLinear", g.unique_name(f"{base}_quant"),
                      [x, add_const(g, f"{base}_x_scale", np.array(xqp.scale, np.float32)),
                       add_const(g, f"{base}_x_zp", np.array(xqp.zero_point, xqp.dtype))],
                      [xq], dict(axis=1, block_size=0, output_dtype=xqp.dtype))]
    attrs = dict(x_zero_point=int(xqp.zero_point), w_zero_point=0)
    if int8_out:
        yqp = activation_qparams(*ranges[y], 8)
        mult, shift = quantize_multipliers(scale.astype(np.float64) / float(yqp.scale))
        ins = [xq, add_const(g, f"{base}_wq", wq), add_const(g, f"{base}_bq", bq.astype(np.int32)),
               add_const(g, f"{base}_mult", mult), add_const(g, f"{base}_shift", shift)]
        attrs.update(out=yqp.dtype, out_zero_point=int(yqp.zero_point), out_min=yqp.qmin, out_max=yqp.qmax,
                     requant="fixed_point")
        outs = [add_value(g, f"{y}_q8", g.values[y].shape, yqp.dtype)]
    else:
        ins = [xq, add_const(g, f"{base}_wq", wq), "", add_const(g, f"{base}_scale", scale),
               add_const(g, f"{base}_bias", bias)]
        attrs.update(out="float")
        outs = [y]
    if lay["kind"] == "conv":
        attrs.update(strides=tuple(node.attrs["strides"]), pads=tuple(node.attrs["pads"]),
                     dilations=tuple(node.attrs["dilations"]), groups=int(node.attrs.get("group", 1)))
        new = Node("QConv2d", node.name, ins, outs, attrs)
    else:
        new = Node("QDense", node.name, ins, outs, attrs)
    new_nodes.append(new)
    i = g.nodes.index(node)
    g.nodes[i:i + 1] = new_nodes
    if int8_out:
        _dequantize_after(g, new, y, yqp)
    log.info("int8_layers: %s -> %s (input %s, scale %.3g, zero point %d%s)", node.name, new.op, xqp.dtype,
             float(xqp.scale), int(xqp.zero_point), "; int8 output" if int8_out else "")


def _dequantize_after(g: Graph, layer: Node, y: str, qp) -> None:
    """``y`` (float) from the layer's int8 output: a MaxPool that is ``y``'s only reader runs on the
    integers first (max commutes with the increasing dequantization), then DequantizeLinear."""
    yq = layer.outputs[0]
    pool = sole_consumer(g, y)
    if pool is not None and pool.op == "MaxPool" and len(pool.outputs) == 1 and pool.inputs[0] == y:
        pooled = pool.outputs[0]
        pq = add_value(g, f"{pooled}_q8", g.values[pooled].shape, g.values[yq].dtype)
        pool.inputs = [yq] + pool.inputs[1:]
        pool.outputs = [pq]
        del g.values[y]
        yq, y, after = pq, pooled, pool
    else:
        after = layer
    deq = Node("DequantizeLinear", g.unique_name(f"{y}_dequant"),
               [yq, add_const(g, f"{y}_scale", np.array(qp.scale, np.float32)),
                add_const(g, f"{y}_zp", np.array(qp.zero_point, qp.dtype))],
               [y], dict(axis=1, block_size=0, output_dtype="float32"))
    g.nodes.insert(g.nodes.index(after) + 1, deq)
