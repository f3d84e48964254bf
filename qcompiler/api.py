"""The public compile/load entry points (``qc.compile``, ``qc.load``).

``compile`` reads as the pipeline it runs: lower every node to a TVM kernel for the target, then
build the module (AOT executor, runtime shim, weights, link). TVM is imported only here, lazily, so
that ``qc.load`` works on machines without TVM.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Optional, Union

from .errors import ConfigError
from .ir import Graph

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def compile(graph: Union[Graph, str, os.PathLike], target="host", name: Optional[str] = None,
            weights: str = "embedded", tuning: Optional[str] = None, schedule_config: Optional[dict] = None):
    """Compile a (quantized) graph into a native module for ``target``.

    >>> import qcompiler as qc                                   # doctest: +SKIP
    >>> module = qc.compile(qc.from_onnx("model.onnx"), target="x86-avx2")
    >>> module.export("build/net")
    """
    from .codegen.lower import lower_graph
    from .codegen.package import build_module
    from .targets import resolve

    if not isinstance(graph, Graph):
        from .frontend import from_onnx

        graph = from_onnx(graph)
    name = name or _module_name(graph.name)
    if not _NAME.match(name):
        raise ConfigError(f"module name {name!r} must be a C identifier (letters, digits, _)")
    if weights not in ("embedded", "blob"):
        raise ConfigError(f"weights must be 'embedded' or 'blob', got {weights!r}")
    tgt = resolve(target)
    log.info("compiling %s for %s (%s)", name, tgt.name, tgt.mtriple)
    _hint_word_bits(graph, tgt)
    lowered = lower_graph(graph, tgt, config=schedule_config, tuning=tuning)
    return build_module(lowered, name=name, weights=weights, target=tgt)


def _hint_word_bits(graph: Graph, tgt) -> None:
    """Packed layouts are fixed at quantize time: say so when they are narrower than the target's."""
    from .passes.bitpack import choose_word_bits

    want = choose_word_bits(tgt)
    narrow = sorted({graph.value(n.inputs[0]).dtype for n in graph.nodes
                     if n.op in ("BinaryConv2d", "BinaryDense", "BitserialConv2d", "BitserialDense")
                     and int(graph.value(n.inputs[0]).dtype[4:]) < want})
    if narrow:
        log.warning("the graph's low-bit layers read %s words; %s runs %d-bit words faster (measured ~8 %% "
                    "on x86 AVX-512): quantize with qc.quantize(..., target=%r) or `qcompiler quantize --target "
                    "%s`", "/".join(narrow), tgt.name, want, tgt.name, tgt.name)


def load(path: Union[str, os.PathLike], num_threads: Optional[int] = None):
    """Load an exported module directory (ctypes only; no TVM needed)."""
    from .runtime.loader import load as _load

    return _load(path, num_threads=num_threads)


def _module_name(graph_name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", graph_name or "net").strip("_") or "net"
    if s[0].isdigit():
        s = "m_" + s
    return s[:48]
