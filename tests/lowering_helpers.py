"""Helpers for the lowering/kernel tests: one-node graphs, and running a lowered graph against the
reference executor (the compiled objects of the LoweredGraph, linked and loaded on the host)."""

from __future__ import annotations

import itertools
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from qcompiler import ref
from qcompiler.codegen.hostrun import run_lowered
from qcompiler.codegen.lower import lower_graph
from qcompiler.ir import Graph, Node, Value
from qcompiler.ref import infer_outputs

_counter = itertools.count()


def single_node_graph(op: str, inputs: Sequence[Tuple[Optional[np.ndarray], bool]], attrs: dict,
                      n_outputs: Optional[int] = None) -> Graph:
    """A graph of one ``op`` node; ``inputs`` are (array, is_constant) pairs (array None = absent)."""
    g = Graph(op)
    names = []
    for i, (arr, const) in enumerate(inputs):
        if arr is None:
            names.append("")
            continue
        name = f"in{i}"
        if const:
            g.add_const(name, arr)
        else:
            g.add_value(Value(name, arr.shape, str(arr.dtype)))
            g.inputs.append(name)
        names.append(name)
    specs = [None if a is None else (a.shape, str(a.dtype), a if c else None) for a, c in inputs]
    outs = infer_outputs(op, specs, attrs)
    if n_outputs is not None:
        outs = outs[:n_outputs]
    onames = []
    for j, (shape, dtype) in enumerate(outs):
        g.add_value(Value(f"out{j}", shape, dtype))
        onames.append(f"out{j}")
    g.add_node(Node(op, "n0", names, onames, dict(attrs)))
    g.outputs = onames
    return g


def feeds_of(g: Graph, inputs) -> Dict[str, np.ndarray]:
    return {f"in{i}": a for i, (a, c) in enumerate(inputs) if a is not None and not c}


def run_both(g: Graph, feeds: Dict[str, np.ndarray], tmp_path, target="host"):
    lowered = lower_graph(g, target)
    got = run_lowered(lowered, feeds, str(tmp_path / f"k{next(_counter)}"))
    exp = ref.run(g, feeds)
    return lowered, got, exp


def assert_close(got: Dict[str, np.ndarray], exp: Dict[str, np.ndarray], rtol=1e-5, what=""):
    for name in exp:
        e, a = exp[name], got[name]
        assert a.shape == e.shape and a.dtype == e.dtype, f"{what} {name}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
        if e.dtype.kind == "f":
            scale = float(np.max(np.abs(e))) if e.size else 1.0
            np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * max(scale, 1e-30), err_msg=f"{what} {name}")
        else:
            np.testing.assert_array_equal(a, e, err_msg=f"{what} {name}")


def check_op(op: str, inputs, attrs: dict, tmp_path, rtol=1e-5, n_outputs=None, target="host"):
    g = single_node_graph(op, inputs, attrs, n_outputs)
    lowered, got, exp = run_both(g, feeds_of(g, inputs), tmp_path, target)
    assert_close(got, exp, rtol, what=f"{op} {attrs}")
    return lowered
