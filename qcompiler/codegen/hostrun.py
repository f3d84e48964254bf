"""Run a :class:`LoweredGraph` on this machine through the TVM runtime (tests and debugging).

This is not the deployable path (that is the AOT executor and C shim, which need no TVM): it links
the very objects of ``LoweredGraph.objects`` into one shared library, loads it with
``tvm.runtime.load_module`` and calls the kernels in order from Python, so kernels can be checked
against the reference executor before and independently of the module machinery.
"""

from __future__ import annotations

import hashlib
import os
from typing import Dict, Mapping

import numpy as np

from ..errors import RuntimeInputError, TargetError
from ..ref.executor import check_feeds
from .lowered import LoweredGraph


class HostRunner:
    """Load once, run many times. ``workdir`` receives the objects and the linked library."""

    def __init__(self, lowered: LoweredGraph, workdir: str):
        import tvm
        from tvm.support import cc

        self.lowered = lowered
        os.makedirs(workdir, exist_ok=True)
        paths = []
        for symbol, data in sorted(lowered.objects.items()):
            p = os.path.join(workdir, f"{symbol}.o")
            with open(p, "wb") as f:
                f.write(data)
            paths.append(p)
        self.module = None
        if paths:
            # dlopen returns an already loaded library for a path it has seen: name the library
            # after its contents so that another LoweredGraph in the same workdir gets its own
            digest = hashlib.sha256("\0".join(sorted(lowered.objects)).encode()).hexdigest()[:16]
            lib = os.path.join(workdir, f"kernels_{digest}.so")
            try:
                cc.create_shared(lib, paths)
            except Exception as e:
                raise TargetError(f"linking the kernels on this host failed (are they built for it?): {e}") from None
            self.module = tvm.runtime.load_module(lib)
        self._tvm = tvm

    def run(self, feeds: Mapping[str, np.ndarray], keep_all: bool = False) -> Dict[str, np.ndarray]:
        g = self.lowered.graph
        env: Dict[str, np.ndarray] = dict(check_feeds(g, feeds))
        env.update(self.lowered.constants)
        tvm = self._tvm
        for call in self.lowered.calls:
            if call.kind == "alias":
                src, dst = call.args
                env[dst] = env[src].reshape(g.values[dst].shape)
                continue
            tensors, outs = [], []
            for name in call.args:
                if name in env:
                    arr = env[name]
                    tensors.append(tvm.runtime.tensor(np.ascontiguousarray(arr).reshape(arr.shape)))
                else:
                    v = g.values[name]
                    t = tvm.runtime.tensor(np.zeros(v.shape, v.dtype))
                    tensors.append(t)
                    outs.append((name, t))
            self.module[call.symbol](*tensors)
            for name, t in outs:
                env[name] = t.numpy()
        if keep_all:
            return env
        missing = [o for o in g.outputs if o not in env]
        if missing:
            raise RuntimeInputError(f"outputs {missing} were never computed")
        return {o: env[o] for o in g.outputs}


def run_lowered(lowered: LoweredGraph, feeds: Mapping[str, np.ndarray], workdir: str,
                keep_all: bool = False) -> Dict[str, np.ndarray]:
    """Link, load and run ``lowered`` once (see :class:`HostRunner`)."""
    return HostRunner(lowered, workdir).run(feeds, keep_all)
