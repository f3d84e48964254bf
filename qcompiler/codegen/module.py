"""``CompiledModule``: a built native module held in memory until it is exported."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from typing import Dict, List, Mapping, Optional

import numpy as np

from ..errors import ConfigError
from .cross import EXECUTABLES
from ..runtime.loader import MANIFEST_FORMAT, MANIFEST_VERSION, TensorSpec

__all__ = ["CompiledModule", "MANIFEST_FORMAT", "MANIFEST_VERSION"]

log = logging.getLogger(__name__)


class CompiledModule:
    """The artifacts of one build (see ``package.build_module``), ready to export or run.

    >>> module = qc.compile(graph, target="host")                # doctest: +SKIP
    >>> module.export("build/net")                               # lib<name>.so/.a, <name>.h, manifest.json
    >>> module.run({"input": x})                                 # host targets: {output name: ndarray}
    """

    def __init__(self, name: str, target, manifest: dict, files: Dict[str, bytes], plan=None):
        self.name = name
        self.target = target
        self.manifest = manifest
        self.files = files
        self.plan = plan
        self._run_dir: Optional[str] = None
        self._loaded: Dict[Optional[int], object] = {}

    # -- facts -------------------------------------------------------------------------------------------
    @property
    def inputs(self) -> List[TensorSpec]:
        return [TensorSpec.from_manifest(d) for d in self.manifest["inputs"]]

    @property
    def outputs(self) -> List[TensorSpec]:
        return [TensorSpec.from_manifest(d) for d in self.manifest["outputs"]]

    @property
    def target_name(self) -> str:
        return self.target.name

    @property
    def arena_bytes(self) -> int:
        return int(self.manifest["memory"]["arena_bytes"])

    @property
    def intermediate_bytes(self) -> int:
        return int(self.manifest["memory"]["intermediate_bytes"])

    def __repr__(self) -> str:
        return (f"<CompiledModule {self.name} for {self.target.name}: {len(self.manifest['kernels'])} kernels, "
                f"arena {self.arena_bytes} bytes>")

    # -- export ------------------------------------------------------------------------------------------
    def export(self, path) -> str:
        """Write the module directory ``path`` (created if needed) and return it.

        An existing directory is only written into if it is empty or holds a previous module export
        (a ``manifest.json``); files of that previous export are replaced.
        """
        path = os.fspath(path)
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise ConfigError(f"cannot export module to {path!r}: it exists and is not a directory")
            entries = os.listdir(path)
            if entries and "manifest.json" not in entries:
                raise ConfigError(f"cannot export module to {path!r}: the directory is not empty and holds no "
                                  f"module (no manifest.json); choose an empty or new directory")
            for stale in ("objects", "android"):
                if os.path.isdir(os.path.join(path, stale)):
                    shutil.rmtree(os.path.join(path, stale))
            for entry in entries:
                if entry.endswith((".so", ".a", ".h")) or entry in ("weights.bin", "manifest.json", "runner",
                                                                     "README.md"):
                    os.remove(os.path.join(path, entry))
        os.makedirs(path, exist_ok=True)
        for rel, data in sorted(self.files.items()):
            dst = os.path.join(path, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as f:
                f.write(data)
            if rel in EXECUTABLES:
                os.chmod(dst, 0o755)
        log.info("exported module %s to %s", self.name, path)
        return path

    # -- running on this machine -------------------------------------------------------------------------
    def load(self, num_threads: Optional[int] = None):
        """The module loaded on this machine (exported to a private temporary directory first)."""
        if num_threads not in self._loaded:
            from ..runtime.loader import load

            if self._run_dir is None:
                self._run_dir = tempfile.mkdtemp(prefix=f"qc_{self.name}_")
                weakref.finalize(self, shutil.rmtree, self._run_dir, True)
                self.export(self._run_dir)
            self._loaded[num_threads] = load(self._run_dir, num_threads=num_threads)
        return self._loaded[num_threads]

    def run(self, feeds: Mapping[str, np.ndarray], num_threads: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Run on this machine (host targets): ``{input name: array}`` -> ``{output name: array}``."""
        return self.load(num_threads).run(feeds)
