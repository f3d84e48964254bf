"""Save and load IR graphs as ``.qir`` files: an exact round trip.

A ``.qir`` file is a zip archive holding ``graph.json`` (structure, attributes, quantization and
packing facts) and ``arrays.npz`` (every constant and every array-valued attribute, bit for bit).
Python values JSON cannot tell apart are tagged: tuples ``{"__tuple__": [...]}``, arrays
``{"__array__": key}``, numpy scalars ``{"__scalar__": dtype, "value": ...}``; floats are written
with ``repr`` precision, so they come back identical.

>>> from qcompiler.ir.serialize import save, load   # doctest: +SKIP
>>> save(qgraph, "q.qir"); same = load("q.qir")
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, Dict, Union

import numpy as np

from ..errors import ModelError
from .graph import Graph, Node, Value
from .types import Packing, QuantInfo

FORMAT = "qcompiler-qir"
VERSION = 1

PathLike = Union[str, os.PathLike]


class _Encoder:
    def __init__(self):
        self.arrays: Dict[str, np.ndarray] = {}

    def array(self, arr: np.ndarray) -> str:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.ascontiguousarray(arr) if arr.ndim else np.array(arr)
        return key

    def value(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return {"__array__": self.array(obj)}
        if isinstance(obj, np.generic):
            return {"__scalar__": str(obj.dtype), "value": obj.item()}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.value(x) for x in obj]}
        if isinstance(obj, list):
            return [self.value(x) for x in obj]
        if isinstance(obj, dict):
            if not all(isinstance(k, str) for k in obj):
                raise ModelError(f"cannot serialise a dict with non-string keys: {list(obj)[:5]}")
            return {"__dict__": {k: self.value(v) for k, v in obj.items()}}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise ModelError(f"cannot serialise attribute value of type {type(obj).__name__}: {obj!r}")


def _decode(obj: Any, arrays) -> Any:
    if isinstance(obj, list):
        return [_decode(x, arrays) for x in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__scalar__" in obj:
            return np.dtype(obj["__scalar__"]).type(obj["value"])
        if "__tuple__" in obj:
            return tuple(_decode(x, arrays) for x in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: _decode(v, arrays) for k, v in obj["__dict__"].items()}
        raise ModelError(f"unknown tagged object in .qir: {sorted(obj)}")
    return obj


def _dataclass(obj) -> Dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


def save(graph: Graph, path: PathLike) -> None:
    """Write ``graph`` to ``path`` (a ``.qir`` zip: graph.json + arrays.npz)."""
    enc = _Encoder()
    values = []
    for v in graph.values.values():
        values.append({
            "name": v.name, "shape": list(v.shape), "dtype": v.dtype,
            "data": enc.array(v.data) if v.is_const else None,
            "quant": enc.value(_dataclass(v.quant)) if v.quant is not None else None,
            "packing": enc.value(_dataclass(v.packing)) if v.packing is not None else None,
        })
    doc = {
        "format": FORMAT, "version": VERSION, "name": graph.name,
        "inputs": list(graph.inputs), "outputs": list(graph.outputs),
        "meta": enc.value(dict(graph.meta)),
        "values": values,
        "nodes": [{"op": n.op, "name": n.name, "inputs": list(n.inputs), "outputs": list(n.outputs),
                   "attrs": enc.value(dict(n.attrs))} for n in graph.nodes],
    }
    text = json.dumps(doc, indent=1, allow_nan=True)
    buf = io.BytesIO()
    np.savez(buf, **enc.arrays)
    tmp = f"{os.fspath(path)}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("graph.json", text)
        z.writestr("arrays.npz", buf.getvalue())
    os.replace(tmp, path)


def load(path: PathLike) -> Graph:
    """Read a ``.qir`` file written by :func:`save`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f".qir file {path!r} does not exist")
    try:
        with zipfile.ZipFile(path) as z:
            doc = json.loads(z.read("graph.json"))
            arrays = dict(np.load(io.BytesIO(z.read("arrays.npz")), allow_pickle=False))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise ModelError(f"{path!r} is not a readable .qir file: {e}") from None
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ModelError(f"{path!r}: expected {FORMAT} version {VERSION}, got {doc.get('format')} "
                         f"version {doc.get('version')}")
    g = Graph(doc["name"])
    for v in doc["values"]:
        quant = QuantInfo(**_decode(v["quant"], arrays)) if v["quant"] is not None else None
        packing = Packing(**_decode(v["packing"], arrays)) if v["packing"] is not None else None
        data = arrays[v["data"]] if v["data"] is not None else None
        g.add_value(Value(v["name"], tuple(v["shape"]), v["dtype"], data=data, quant=quant, packing=packing))
    for n in doc["nodes"]:
        g.add_node(Node(n["op"], n["name"], list(n["inputs"]), list(n["outputs"]), _decode(n["attrs"], arrays)))
    g.inputs = list(doc["inputs"])
    g.outputs = list(doc["outputs"])
    g.meta = _decode(doc["meta"], arrays)
    g.verify()
    return g
