"""The op registry: the one place where each IR op's meaning (numpy semantics) is defined.

An op is registered with ``@op("Name")`` on a function ``compute(inputs, attrs) -> list[ndarray]``.
``inputs`` holds numpy arrays in node-input order (``None`` for an absent optional input); ``attrs``
is the node's attribute dict, already normalised by the frontend or the pass that built the node.
Shape/dtype inference defaults to running ``compute`` on zero-filled inputs (constants use their
data), so inference can never disagree with execution; ops whose compute is expensive register a
cheap ``infer`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import QCompilerError, ShapeError, UnsupportedError

Compute = Callable[[List[Optional[np.ndarray]], dict], List[np.ndarray]]
#: infer(input (shape, dtype, const-data-or-None) triples, attrs) -> [(shape, dtype), ...]
Infer = Callable[[List[Optional[Tuple[tuple, str, Optional[np.ndarray]]]], dict], List[Tuple[tuple, str]]]


@dataclass(frozen=True)
class OpDef:
    name: str
    compute: Compute
    infer: Optional[Infer] = None
    doc: str = ""


_OPS: Dict[str, OpDef] = {}


def op(name: str, infer: Optional[Infer] = None):
    """Register ``compute`` as the meaning of IR op ``name``."""

    def deco(fn: Compute) -> Compute:
        if name in _OPS:
            raise RuntimeError(f"op {name} registered twice")
        _OPS[name] = OpDef(name, fn, infer, (fn.__doc__ or "").strip())
        return fn

    return deco


def get_op(name: str) -> OpDef:
    _load()
    try:
        return _OPS[name]
    except KeyError:
        raise UnsupportedError(f"the reference executor has no op {name!r}") from None


def has_op(name: str) -> bool:
    _load()
    return name in _OPS


def registered_ops() -> List[str]:
    _load()
    return sorted(_OPS)


def infer_outputs(op_name: str, inputs: Sequence[Optional[Tuple[tuple, str, Optional[np.ndarray]]]],
                  attrs: dict, node_name: str = "?") -> List[Tuple[tuple, str]]:
    """Output (shape, dtype) pairs of ``op_name`` applied to inputs described by (shape, dtype, data)."""
    d = get_op(op_name)
    try:
        if d.infer is not None:
            return [(tuple(int(x) for x in s), str(np.dtype(t))) for s, t in d.infer(list(inputs), attrs)]
        arrays = [None if i is None else (i[2] if i[2] is not None else np.zeros(i[0], i[1]))
                  for i in inputs]
        with np.errstate(all="ignore"):
            outs = d.compute(arrays, attrs)
        return [(tuple(o.shape), str(o.dtype)) for o in outs]
    except QCompilerError as e:
        raise type(e)(f"node {node_name!r} ({op_name}): {e}") from None
    except (ValueError, IndexError, TypeError) as e:
        shapes = [None if i is None else f"{i[1]}{list(i[0])}" for i in inputs]
        raise ShapeError(f"node {node_name!r} ({op_name}): inputs {shapes} do not fit: {e}") from None


_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import ops  # noqa: F401  (registers every op)
