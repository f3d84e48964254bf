"""Load an exported module directory and run it, with ctypes only (no TVM needed).

>>> import qcompiler as qc                                   # doctest: +SKIP
>>> net = qc.load("build/net", num_threads=2)
>>> net.inputs                                               # [TensorSpec(name='input', shape=(1, 64), dtype='float32')]
>>> outputs = net.run({"input": x})                          # {output name: ndarray}

``run`` checks names, shapes and dtypes and raises :class:`RuntimeInputError` naming the input and
what was expected; the library's own entry point checks counts and byte sizes again. This module
imports only the standard library, numpy and ``qcompiler.errors``/``qcompiler.targets``.

Lifetimes and threads: a loaded library is never unloaded (ctypes does not dlclose), so a model can
always be destroyed, even at interpreter shutdown. Runs of one module from several threads take
turns (a lock; the C entry point itself refuses overlapping runs), and ``close`` waits for a run in
progress. A module survives ``fork()``: in the child its first run starts new pool threads.
Re-exporting a different module into a directory already loaded in this process loads the new
library (the dynamic loader would otherwise hand back the old one, found by its path).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Sequence

import numpy as np

from ..errors import ModelError, RuntimeInputError, TargetError

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "qcompiler-module"
MANIFEST_VERSION = 1
_ALIGN = 64
QC_ERR_BUSY = 7          # run overlapped another run of the same model (see codegen/aot.py ERROR_CODES)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @classmethod
    def from_manifest(cls, d: dict) -> "TensorSpec":
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{','.join(map(str, self.shape))}]"


def read_manifest(path) -> dict:
    """The manifest of module directory ``path``, checked for format and version."""
    path = os.fspath(path)
    mpath = os.path.join(path, "manifest.json")
    if not os.path.isdir(path):
        raise ModelError(f"module directory {path!r} does not exist")
    if not os.path.isfile(mpath):
        raise ModelError(f"{path!r} is not a qcompiler module directory (no manifest.json)")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f"{mpath}: unreadable manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(f"{mpath} is not a qcompiler module manifest")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ModelError(f"{mpath}: manifest format version {manifest.get('format_version')} is not supported "
                         f"by this qcompiler (expects {MANIFEST_VERSION}); rebuild the module")
    return manifest


def manifest_target(manifest: dict):
    """The :class:`~qcompiler.targets.Target` a module was built for, rebuilt from its manifest
    (``host`` modules are described by what the building machine was, not by this machine)."""
    from ..targets import Target

    t = manifest.get("target", {})
    try:
        return Target(name=t["name"], description=t.get("description", ""), family=t["family"],
                      mtriple=t["triple"], mcpu=t.get("mcpu", "generic"), mattr=tuple(t.get("mattr", ())),
                      features=tuple(t.get("features", ())), vector_bits=int(t.get("vector_bits", 128)),
                      os=t.get("os", "linux"), cores=int(t.get("cores", 1)))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"module manifest has a malformed target description ({e})") from None


def check_runs_here(target) -> None:
    """The one place that decides whether a module's code can run in this process.

    Raises :class:`TargetError` when it cannot. (Running foreign-ISA modules under qemu through a
    runner binary belongs here too, as an alternative to the in-process ctypes path.)
    """
    if not target.runs_natively():
        raise TargetError(
            f"this module was built for target {target.name!r} ({target.mtriple}, features "
            f"{', '.join(target.features) or 'none'}), which cannot run on this machine "
            f"({platform.machine()}): copy the module directory to a matching board, or build it for "
            f"target 'host'")


def load(path, num_threads: Optional[int] = None) -> "NativeModule":
    """Load module directory ``path``. ``num_threads``: threads of the module's pool (default: every
    online CPU)."""
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise RuntimeInputError(f"num_threads must be a positive integer, got {num_threads!r}")
    path = os.fspath(path)
    manifest = read_manifest(path)
    target = manifest_target(manifest)
    if not target.runs_natively():
        from .emulate import load_emulated   # qemu-user through the module's runner; logs that it does

        return load_emulated(path, manifest, target, num_threads)
    return NativeModule(path, manifest, num_threads)


class NativeModule:
    """A loaded module: ``run(feeds)``, its signature (``inputs``/``outputs``) and ``num_threads``.

    One instance is one model (one arena, one thread pool): call ``run`` from one thread at a time.
    """

    emulated = False   # see runtime/emulate.py for modules of targets this machine cannot run

    def __init__(self, path: str, manifest: dict, num_threads: Optional[int] = None):
        self.path = path
        self.manifest = manifest
        self.name = manifest["name"]
        self.inputs: List[TensorSpec] = [TensorSpec.from_manifest(d) for d in manifest["inputs"]]
        self.outputs: List[TensorSpec] = [TensorSpec.from_manifest(d) for d in manifest["outputs"]]
        lib_name = manifest.get("library", {}).get("shared")
        if not lib_name:
            raise TargetError(f"module {self.name!r} in {path!r} has no shared library (target "
                              f"{manifest['target']['name']!r} links into an app): it cannot be loaded here")
        lib_path = os.path.join(path, lib_name)
        if not os.path.isfile(lib_path):
            raise ModelError(f"module {self.name!r}: library {lib_path!r} is missing")
        self._lock = threading.Lock()     # one run at a time; close waits for a run in progress
        self._lib = _open_library(os.path.abspath(lib_path), self.name)
        self._fn = self._bind(self._lib, f"qc_{self.name}_")
        self._check_signature()
        self._handle = self._create(path, num_threads)
        _LIVE_MODULES.add(self)
        n_in, n_out = len(self.inputs), len(self.outputs)
        self._in_nbytes = (ctypes.c_size_t * max(n_in, 1))(*[s.nbytes for s in self.inputs])
        self._out_nbytes = (ctypes.c_size_t * max(n_out, 1))(*[s.nbytes for s in self.outputs])

    # -- setup -------------------------------------------------------------------------------------------
    @staticmethod
    def _bind(lib, prefix: str) -> Dict[str, object]:
        c_int, c_char_p, c_size_t, c_void_p = ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p
        protos = {
            "create": (c_int, [ctypes.POINTER(c_void_p), c_char_p, c_int]),
            "run": (c_int, [c_void_p, c_int, ctypes.POINTER(c_void_p), ctypes.POINTER(c_size_t), c_int,
                            ctypes.POINTER(c_void_p), ctypes.POINTER(c_size_t)]),
            "destroy": (None, [c_void_p]),
            "last_error": (c_char_p, [c_void_p]),
            "num_threads": (c_int, [c_void_p]),
            "num_inputs": (c_int, []), "num_outputs": (c_int, []),
            "input_name": (c_char_p, [c_int]), "output_name": (c_char_p, [c_int]),
            "input_ndim": (c_int, [c_int]), "output_ndim": (c_int, [c_int]),
            "input_shape": (ctypes.POINTER(ctypes.c_int64), [c_int]),
            "output_shape": (ctypes.POINTER(ctypes.c_int64), [c_int]),
            "input_dtype": (c_char_p, [c_int]), "output_dtype": (c_char_p, [c_int]),
            "weights_external": (c_int, []),
        }
        fns = {}
        for short, (restype, argtypes) in protos.items():
            try:
                fn = getattr(lib, prefix + short)
            except AttributeError:
                raise ModelError(f"library does not export {prefix + short}: not a qcompiler module of this "
                                 f"name/version") from None
            fn.restype = restype
            fn.argtypes = argtypes
            fns[short] = fn
        return fns

    def _check_signature(self) -> None:
        """The manifest and the library must describe the same signature."""
        f = self._fn
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            count = f[f"num_{kind}s"]()
            lib_specs = []
            for i in range(count):
                ndim = f[f"{kind}_ndim"](i)
                shape_p = f[f"{kind}_shape"](i)
                lib_specs.append(TensorSpec(f[f"{kind}_name"](i).decode(), tuple(shape_p[k] for k in range(ndim)),
                                            f[f"{kind}_dtype"](i).decode()))
            if lib_specs != specs:
                raise ModelError(f"module {self.name!r}: manifest.json and the library disagree on the {kind}s "
                                 f"({[str(s) for s in specs]} vs {[str(s) for s in lib_specs]}); re-export it")

    def _create(self, path: str, num_threads: Optional[int]):
        handle = ctypes.c_void_p()
        weights = None
        if self._fn["weights_external"]():
            wfile = self.manifest.get("weights", {}).get("file") or "weights.bin"
            weights = os.path.abspath(os.path.join(path, wfile)).encode()
        rc = self._fn["create"](ctypes.byref(handle), weights, int(num_threads or 0))
        if rc != 0 or not handle.value:
            msg = self._fn["last_error"](None).decode(errors="replace")
            raise ModelError(f"module {self.name!r}: create failed (code {rc}): {msg}")
        return handle

    # -- running -----------------------------------------------------------------------------------------
    @property
    def num_threads(self) -> int:
        return int(self._fn["num_threads"](self._handle))

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> List[np.ndarray]:
        checked = check_feeds(self.inputs, feeds, self.name)
        return [checked[spec.name] for spec in self.inputs]

    def _new_outputs(self) -> List[np.ndarray]:
        return [_aligned_empty(s.shape, s.dtype) for s in self.outputs]

    def _pointers(self, arrays: List[np.ndarray], outs: List[np.ndarray]):
        in_ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])
        out_ptrs = (ctypes.c_void_p * max(len(outs), 1))(*[o.ctypes.data for o in outs])
        return in_ptrs, out_ptrs

    def _invoke(self, in_ptrs, out_ptrs) -> None:
        """One run; the caller holds ``self._lock`` and keeps the arrays behind the pointers alive."""
        if self._handle is None:
            raise RuntimeInputError(f"module {self.name!r} was closed; load it again")
        rc = self._fn["run"](self._handle, len(self.inputs), in_ptrs, self._in_nbytes, len(self.outputs), out_ptrs,
                             self._out_nbytes)
        if rc != 0:
            msg = self._fn["last_error"](None if rc == QC_ERR_BUSY else self._handle).decode(errors="replace")
            raise RuntimeInputError(f"module {self.name!r}: run failed (code {rc}): {msg}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run once: ``{input name: array}`` -> ``{output name: array}`` (fresh arrays).

        Safe to call from several threads: their runs take turns."""
        arrays = self._check_feeds(feeds)
        outs = self._new_outputs()
        pointers = self._pointers(arrays, outs)     # `arrays` and `outs` outlive the call
        with self._lock:
            self._invoke(*pointers)
        return {s.name: o for s, o in zip(self.outputs, outs)}

    def time_runs(self, feeds: Mapping[str, np.ndarray], runs: int = 10, warmup: int = 2) -> List[float]:
        """Seconds taken by each of ``runs`` runs (after ``warmup`` untimed ones), buffers reused."""
        arrays = self._check_feeds(feeds)
        outs = self._new_outputs()
        pointers = self._pointers(arrays, outs)    # arrays stay alive: the pointers stay valid
        times = []
        with self._lock:
            for _ in range(warmup):
                self._invoke(*pointers)
            for _ in range(runs):
                t0 = time.perf_counter()
                self._invoke(*pointers)
                times.append(time.perf_counter() - t0)
        return times

    # -- lifetime ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the model (its arena and threads), after a run in progress has finished."""
        lock = getattr(self, "_lock", None)
        if lock is None:          # __init__ failed before there was anything to destroy
            return
        with lock:
            self._destroy()

    def _destroy(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None and handle.value:
            self._fn["destroy"](handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # Never block here: at interpreter shutdown a daemon thread may be frozen inside run, holding
        # the lock (its model then stays alive; the process is ending).
        lock = getattr(self, "_lock", None)
        if lock is None or not lock.acquire(blocking=False):
            return
        try:
            self._destroy()
        except Exception:
            pass
        finally:
            lock.release()

    def __repr__(self) -> str:
        return (f"<NativeModule {self.name} ({self.path}): inputs {[str(s) for s in self.inputs]}, "
                f"outputs {[str(s) for s in self.outputs]}>")


# -- fork -------------------------------------------------------------------------------------------------
_LIVE_MODULES: "weakref.WeakSet[NativeModule]" = weakref.WeakSet()


def _fresh_locks_after_fork() -> None:
    # A lock held by another thread at fork() would stay held in the child forever (that thread
    # does not exist there); no run or load is in progress in the child, so all locks start afresh.
    global _LIBRARIES_LOCK
    _LIBRARIES_LOCK = threading.Lock()
    for module in list(_LIVE_MODULES):
        module._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_after_fork)


# -- opening libraries ---------------------------------------------------------------------------------
_LIBRARIES: Dict[str, ctypes.CDLL] = {}      # sha256 of a library file -> the library, loaded once
_HANDLE_DIGESTS: Dict[int, str] = {}         # dlopen handle -> sha256 of the file it was loaded from
_OPENED_PATHS = set()                        # paths already handed to dlopen in this process
_LIBRARIES_LOCK = threading.Lock()


def _open_library(path: str, name: str) -> ctypes.CDLL:
    """dlopen ``path`` (absolute), making sure the code is that of the file there now.

    The dynamic loader finds an already loaded library by its path string (and by device/inode),
    so loading a directory again after a different module was exported into it would silently run
    the old code. Libraries are therefore keyed by content: the same bytes share one load, and a new
    file at an already used path is opened through a one-off alias (a symlink in a temporary
    directory). A file rewritten in place while loaded (same inode) cannot be loaded again: the
    process's copy of the old code is already damaged, which is reported instead of run.
    """
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        raise ModelError(f"module {name!r}: cannot load {path!r}: {e}") from None
    with _LIBRARIES_LOCK:
        lib = _LIBRARIES.get(digest)
        if lib is not None:
            return lib
        try:
            if path in _OPENED_PATHS:
                lib = _dlopen_via_alias(path)
                log.debug("loaded %s through an alias: another library was loaded from that path before", path)
            else:
                lib = ctypes.CDLL(path)
        except OSError as e:
            raise ModelError(f"module {name!r}: cannot load {path!r}: {e}") from None
        _OPENED_PATHS.add(path)
        earlier = _HANDLE_DIGESTS.get(lib._handle)
        if earlier is not None and earlier != digest:
            raise ModelError(f"module {name!r}: {path!r} was overwritten in place while this process had the "
                             f"previous library loaded from it (which also damages that module's code); "
                             f"export into a new or emptied directory (export() replaces files rather than "
                             f"overwriting them), or load it in a new process")
        _HANDLE_DIGESTS[lib._handle] = digest
        _LIBRARIES[digest] = lib
        return lib


def _dlopen_via_alias(path: str) -> ctypes.CDLL:
    alias_dir = tempfile.mkdtemp(prefix="qc_lib_")
    try:
        alias = os.path.join(alias_dir, os.path.basename(path))
        os.symlink(path, alias)
        return ctypes.CDLL(alias)
    finally:
        shutil.rmtree(alias_dir, ignore_errors=True)   # the mapping stays valid


def _aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised array whose data is 64-byte aligned (kernels write into it directly)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def check_feeds(specs: Sequence["TensorSpec"], feeds: Mapping[str, object], module: str) -> Dict[str, np.ndarray]:
    """Validate run() feeds against a module's input signature (names, dtypes, shapes); returns
    C-contiguous arrays by input name. Shared by native, emulated and remote modules."""
    if not isinstance(feeds, Mapping):
        raise RuntimeInputError(f"module {module!r}: run() takes a dict {{input name: array}}, got "
                                f"{type(feeds).__name__}; inputs are {[str(s) for s in specs]}")
    expected = [s.name for s in specs]
    unknown = [k for k in feeds if k not in expected]
    missing = [k for k in expected if k not in feeds]
    if unknown or missing:
        parts = []
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            parts.append(f"missing {missing} (no array for missing input {missing[0]!r}{more})")
        if unknown:
            parts.append(f"unknown {unknown}")
        raise RuntimeInputError(f"module {module!r}: {'; '.join(parts)}; inputs are {[str(s) for s in specs]}")
    checked = {}
    for spec in specs:
        x = feeds[spec.name]
        if not isinstance(x, np.ndarray):
            raise RuntimeInputError(f"module {module!r}: input {spec.name!r} must be a numpy array "
                                    f"({spec}), got {type(x).__name__}")
        if str(x.dtype) != spec.dtype:
            raise RuntimeInputError(f"module {module!r}: input {spec.name!r} has dtype {x.dtype}, expected "
                                    f"{spec.dtype}; convert it with x.astype(np.{spec.dtype})")
        if tuple(x.shape) != spec.shape:
            raise RuntimeInputError(f"module {module!r}: input {spec.name!r} has shape {list(x.shape)}, "
                                    f"expected {list(spec.shape)}")
        checked[spec.name] = np.asarray(x, order="C")   # ascontiguousarray would make 0-d arrays 1-d
    return checked
