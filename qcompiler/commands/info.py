"""``qcompiler info``: print a model's graph summary (see :mod:`qcompiler.summary`)."""

from __future__ import annotations

import json
from typing import List

from qcompiler.commands.common import add_model_arguments, parse_input_shapes


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-layers", action="store_true", help="leave out the per-layer table")


def run(args):
    import qcompiler as qc
    from qcompiler.summary import summarize

    graph = qc.from_onnx(args.model, input_shapes=parse_input_shapes(args.input_shape))
    summary = summarize(graph)
    summary["model"] = args.model
    if args.no_layers:
        del summary["layers"]
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print("\n".join(format_summary(summary)))
    return 0


def _count(n: int) -> str:
    """12345678 -> '12,345,678 (12.35M)'."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n:,} ({n / div:.2f}{unit})"
    return f"{n:,}"


def _bytes(n: int) -> str:
    for div, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return f"{n:,} bytes ({n / div:.2f} {unit})"
    return f"{n:,} bytes"


def _shape(shape) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _tensor_line(t: dict) -> str:
    extra = "".join(f"  {t[k]}" for k in ("quant", "packing") if k in t)
    return f"  {t['name']}: {t['dtype']}{_shape(t['shape'])}{extra}"


def format_summary(s: dict) -> List[str]:
    """The human-readable listing of a :func:`~qcompiler.summary.summarize` dict."""
    lines = [f"model {s.get('model', s['name'])} (graph {s['name']!r}, {s['num_nodes']} nodes)", "inputs:"]
    lines += [_tensor_line(t) for t in s["inputs"]]
    lines.append("outputs:")
    lines += [_tensor_line(t) for t in s["outputs"]]
    lines.append("ops: " + ", ".join(f"{op} x{n}" for op, n in s["ops"].items()))
    lines.append(f"parameters: {_count(s['params'])}, {_bytes(s['param_bytes'])}")
    lines.append(f"MACs: {_count(s['macs'])}")
    if "layers" in s:
        lines.append("")
        lines += _layer_table(s["layers"], s["macs"])
    return lines


def _layer_table(layers: List[dict], total_macs: int) -> List[str]:
    rows = [(row["name"], row["op"], f"{row['output_dtype']}{_shape(row['output_shape'])}",
             f"{row['params']:,}", f"{row['macs']:,}",
             f"{100.0 * row['macs'] / total_macs:.1f}" if total_macs else "-") for row in layers]
    header = ("layer", "op", "output", "params", "MACs", "%MACs")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    widths[0] = min(widths[0], 48)  # long exporter names are cut, the JSON keeps them whole

    def line(cells):
        name = cells[0] if len(cells[0]) <= widths[0] else "..." + cells[0][-(widths[0] - 3):]
        cells = (name,) + tuple(cells[1:])
        left = "  ".join(c.ljust(w) for c, w in zip(cells[:3], widths[:3]))
        right = "  ".join(c.rjust(w) for c, w in zip(cells[3:], widths[3:]))
        return f"{left}  {right}".rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out.append(f"total MACs: {total_macs:,}")
    return out
