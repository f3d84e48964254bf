"""Package a lowered graph into a native module: executor + runtime shim + kernels + weights, linked.

``build_module(lowered, name=..., weights="embedded"|"blob")`` compiles and links everything in a
temporary directory with the target's toolchain (``toolchain.py``) and returns a
:class:`~qcompiler.codegen.module.CompiledModule` holding the artifacts' bytes:

    lib<name>.so        shared library (Linux targets); exports only qc_<name>_* entry points
    lib<name>.a         static archive of one pre-linked object (same exports, no symbol clashes)
    <name>.h            the C header: entry points, signature, thread safety
    objects/*.o         the parts: kernels, runtime shim, executor, embedded weights
    weights.bin         the weights blob (weights="blob" only)
    manifest.json       target, signature, weights, memory plan, per-layer records, versions

Everything is a pure function of the lowered graph and the options: no timestamps or temporary
paths reach the artifacts, so two builds give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from importlib import metadata
from typing import Dict, Optional

import numpy as np

from ..errors import ConfigError, ModelError
from .aot import ERROR_CODES, generate
from .lowered import LoweredGraph
from .module import MANIFEST_FORMAT, MANIFEST_VERSION, CompiledModule
from .cross import board_files
from .toolchain import toolchain_for
from ..runtime.loader import TensorSpec
from .weights import blob_bytes, incbin_assembly

log = logging.getLogger(__name__)

_RUNTIME_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime")
_RUNTIME_SOURCES = ("shim.c", "qc_runtime.h")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def build_module(lowered: LoweredGraph, name: str, weights: str = "embedded", target=None) -> CompiledModule:
    """Build the native module for ``lowered``.

    ``target`` defaults to ``lowered.target_name`` looked up in the target registry. Raises
    :class:`ConfigError` for a bad name or weights mode, :class:`ModelError` for an inconsistent
    lowered graph, :class:`TargetError` when the toolchain is missing or a build step fails.
    """
    from ..targets import resolve

    if not _NAME.match(name or ""):
        raise ConfigError(f"module name {name!r} must be a C identifier of at most 64 characters")
    if weights not in ("embedded", "blob"):
        raise ConfigError(f"weights must be 'embedded' or 'blob', got {weights!r}")
    tgt = resolve(target if target is not None else lowered.target_name)
    for symbol in lowered.objects:
        if not _SYMBOL.match(symbol):
            raise ModelError(f"kernel symbol {symbol!r} is not a C identifier")
    tc = toolchain_for(tgt)
    src = generate(lowered, name, weights)

    files: Dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="qc_build_") as tmp:
        def put(rel: str, data) -> str:
            with open(os.path.join(tmp, rel), "wb" if isinstance(data, bytes) else "w") as f:
                f.write(data)
            return rel

        for fname in _RUNTIME_SOURCES:
            with open(os.path.join(_RUNTIME_DIR, fname), "rb") as f:
                put(fname, f.read())
        put(f"{name}.h", src.header)
        put(f"{name}_executor.c", src.executor_c)

        objects = []
        for symbol in sorted(lowered.objects):
            objects.append(put(f"kernel_{symbol}.o", bytes(lowered.objects[symbol])))
        tc.compile(tmp, "shim.c", "qc_runtime.o")
        tc.compile(tmp, f"{name}_executor.c", f"{name}_executor.o")
        objects += ["qc_runtime.o", f"{name}_executor.o"]
        if weights == "embedded" and src.weights.nbytes:
            put(f"{name}_weights.bin", src.weights.payload)
            put(f"{name}_weights.s", incbin_assembly(src.weights_symbol, f"{name}_weights.bin"))
            tc.compile(tmp, f"{name}_weights.s", f"{name}_weights.o")
            objects.append(f"{name}_weights.o")

        tc.prelink(tmp, objects, f"{name}.o", src.api_symbols)
        tc.archive(tmp, [f"{name}.o"], f"lib{name}.a")
        if tc.links_binaries:
            tc.link_shared(tmp, [f"{name}.o"], f"lib{name}.so")
            files[f"lib{name}.so"] = _read(tmp, f"lib{name}.so")
        else:
            log.info("target %s: no shared library (final link happens in the app's toolchain)", tgt.name)
        files[f"lib{name}.a"] = _read(tmp, f"lib{name}.a")
        files[f"{name}.h"] = src.header.encode()
        for obj in objects:
            files[f"objects/{obj}"] = _read(tmp, obj)
        # board extras (cross.py): runner executable, README.md, Android NDK kit
        ins, outs = ([TensorSpec(n, tuple(src.plan.slots[n].shape), src.plan.slots[n].dtype) for n in names]
                     for names in (lowered.graph.inputs, lowered.graph.outputs))
        libc_free = [o for o in objects if o not in ("qc_runtime.o", f"{name}_executor.o")]
        files.update(board_files(tc, tmp, name, tgt, ins, outs, weights, libc_free))
    if weights == "blob":
        files["weights.bin"] = blob_bytes(src.weights, name)

    manifest = _manifest(lowered, name, weights, tgt, src, tc, files)
    files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    log.info("built module %s for %s: %d kernels, arena %d bytes (intermediates %d), weights %d bytes (%s)",
             name, tgt.name, len(lowered.objects), src.plan.arena_bytes, src.plan.intermediate_bytes,
             src.weights.nbytes, weights)
    return CompiledModule(name=name, target=tgt, manifest=manifest, files=files, plan=src.plan)


def _read(d: str, rel: str) -> bytes:
    with open(os.path.join(d, rel), "rb") as f:
        return f.read()


def _manifest(lowered: LoweredGraph, name: str, weights: str, tgt, src, tc, files: Dict[str, bytes]) -> dict:
    from .. import __version__

    plan = src.plan

    def sig(names):
        return [{"name": n, "shape": list(plan.slots[n].shape), "dtype": plan.slots[n].dtype,
                 "nbytes": plan.slots[n].nbytes} for n in names]

    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "name": name,
        "target": tgt.summary(),
        "inputs": sig(lowered.graph.inputs),
        "outputs": sig(lowered.graph.outputs),
        "library": {
            "shared": f"lib{name}.so" if f"lib{name}.so" in files else None,
            "static": f"lib{name}.a",
            "header": f"{name}.h",
            "symbol_prefix": f"qc_{name}_",
            "link_libs": list(tc.link_libs),
            "error_codes": {c: v for c, v, _ in ERROR_CODES},
        },
        "weights": {"mode": weights, "file": "weights.bin" if weights == "blob" else None,
                    "nbytes": src.weights.nbytes, "crc32": f"{src.weights.crc32:08x}"},
        "memory": {"arena_bytes": plan.arena_bytes, "intermediate_bytes": plan.intermediate_bytes,
                   "alignment": 64},
        "kernels": sorted(lowered.objects),
        "layers": [_jsonable(dataclasses.asdict(r)) for r in lowered.records],
        "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in sorted(files.items())},
        "versions": {"qcompiler": __version__, "tvm": _version("apache-tvm")},
    }


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
