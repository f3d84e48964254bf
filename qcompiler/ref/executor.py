"""The numpy reference executor: runs an IR graph node by node with the registry's semantics."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from ..errors import QCompilerError, RuntimeInputError
from ..ir import Graph
from .registry import get_op


def check_feeds(graph: Graph, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Validate names, shapes and dtypes of ``feeds`` against the graph's inputs."""
    unknown = sorted(set(feeds) - set(graph.inputs))
    missing = [i for i in graph.inputs if i not in feeds]
    if unknown or missing:
        raise RuntimeInputError(
            f"inputs do not match graph {graph.name!r}: expected {graph.inputs}"
            + (f", missing {missing}" if missing else "") + (f", unknown {unknown}" if unknown else ""))
    env = {}
    for name in graph.inputs:
        v = graph.values[name]
        x = np.asarray(feeds[name])
        if tuple(x.shape) != v.shape:
            raise RuntimeInputError(f"input {name!r}: expected shape {list(v.shape)}, got {list(x.shape)}")
        if str(x.dtype) != v.dtype:
            raise RuntimeInputError(f"input {name!r}: expected dtype {v.dtype}, got {x.dtype}")
        env[name] = x
    return env


def run(graph: Graph, feeds: Mapping[str, np.ndarray], keep_all: bool = False) -> Dict[str, np.ndarray]:
    """Execute ``graph`` on ``feeds``; returns the outputs (every value when ``keep_all``)."""
    env = check_feeds(graph, feeds)
    for name, v in graph.values.items():
        if v.is_const:
            env[name] = v.data
    for node in graph.nodes:
        args = [env[i] if i else None for i in node.inputs]
        try:
            with np.errstate(all="ignore"):
                outs = get_op(node.op).compute(args, node.attrs)
        except QCompilerError as e:
            raise type(e)(f"node {node.name!r} ({node.op}): {e}") from None
        for name, arr in zip(node.outputs, outs):
            v = graph.values[name]
            arr = np.asarray(arr)
            if tuple(arr.shape) != v.shape or str(arr.dtype) != v.dtype:
                raise QCompilerError(
                    f"internal: node {node.name!r} ({node.op}) produced {arr.dtype}{list(arr.shape)} "
                    f"for {name!r}, declared {v.dtype}{list(v.shape)}")
            env[name] = arr
    if keep_all:
        return env
    return {o: env[o] for o in graph.outputs}


def run_single(op_name: str, inputs, attrs: Optional[dict] = None):
    """Run one op on arrays (handy in tests)."""
    return get_op(op_name).compute(list(inputs), dict(attrs or {}))
