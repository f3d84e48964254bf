"""A graph's summary: inputs/outputs, op histogram, parameters and MACs per layer and in total.

``qcompiler info`` prints it; the module manifest and reports reuse the same dict, so the numbers a
user reads before compiling are the ones recorded after.

Conventions:
- *parameters* are the elements of the constant tensors that nodes read: weights, biases, BN
  statistics, quantization scales/zero points and small constants such as Clip bounds or Reshape
  shapes. A bit-packed constant whose value carries a :class:`~qcompiler.ir.Packing` with a
  logical shape counts its logical elements (one per weight); without one, its stored words. Bytes
  are always what the constant occupies as stored. A constant read by several nodes appears in each
  node's row but once in the total.
- *MACs* come from :func:`qcompiler.codegen.macs.node_macs` (logical products, so they compare
  across bit-widths).
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, List

from .codegen.macs import node_macs
from .ir import Graph, Value


def _param_elements(v: Value) -> int:
    """Logical element count of a constant (unpacked count for a bit-packed one)."""
    if v.packing is not None and v.packing.logical_shape:
        n = 1
        for d in v.packing.logical_shape:
            n *= int(d)
        return n
    return v.size


def _tensor(v: Value) -> dict:
    d = {"name": v.name, "shape": list(v.shape), "dtype": v.dtype}
    if v.quant is not None:
        d["quant"] = v.quant.describe()
    if v.packing is not None:
        d["packing"] = v.packing.describe()
    return d


def summarize(graph: Graph) -> dict:
    """A JSON-ready summary of ``graph``.

    Keys: ``name``, ``inputs``/``outputs`` (each ``{name, shape, dtype}`` plus ``quant``/``packing``
    descriptions when set), ``num_nodes``, ``ops`` (op -> count, most frequent first), ``params`` and
    ``param_bytes`` (totals over distinct constants), ``macs`` (total), and ``layers``: one row per
    node in execution order with ``name``, ``op``, ``output_shape`` (first output),
    ``output_dtype``, ``params``, ``param_bytes`` and ``macs``.

    >>> s = summarize(qc.from_onnx("model.onnx"))     # doctest: +SKIP
    >>> s["macs"], s["params"]                        # doctest: +SKIP
    """
    layers: List[dict] = []
    used_consts: Dict[str, Value] = {}
    for node in graph.nodes:
        consts = [graph.values[i] for i in dict.fromkeys(node.inputs) if i and graph.values[i].is_const]
        used_consts.update((c.name, c) for c in consts)
        out = graph.values[node.outputs[0]] if node.outputs else None
        layers.append({
            "name": node.name,
            "op": node.op,
            "output_shape": list(out.shape) if out is not None else [],
            "output_dtype": out.dtype if out is not None else None,
            "params": sum(_param_elements(c) for c in consts),
            "param_bytes": sum(c.nbytes for c in consts),
            "macs": int(node_macs(graph, node)),
        })
    ops = Counter(n.op for n in graph.nodes)
    return {
        "name": graph.name,
        "inputs": [_tensor(graph.values[i]) for i in graph.inputs],
        "outputs": [_tensor(graph.values[o]) for o in graph.outputs],
        "num_nodes": len(graph.nodes),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "params": sum(_param_elements(c) for c in used_consts.values()),
        "param_bytes": sum(c.nbytes for c in used_consts.values()),
        "macs": sum(row["macs"] for row in layers),
        "layers": layers,
    }
