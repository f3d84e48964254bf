"""Run a cross-compiled module on this machine under qemu-user, through its runner binary.

``qc.load(dir)`` returns an :class:`EmulatedModule` when the module's target cannot run natively
(e.g. an ``rpi4`` module on an x86 workstation) and says so: a log line, and ``module.emulated`` is
True with ``module.emulator`` holding the command. Each ``run`` writes the inputs as ``.npy`` files
in a temporary directory, starts ``<emulator> <dir>/runner name=in.npy ...`` and reads the outputs
back, so it measures correctness, not the board's speed (``bench`` numbers are emulated time).

>>> m = qc.load("build/net-rpi4")                         # doctest: +SKIP
>>> m.emulated, m.emulator[:3]                            # doctest: +SKIP
(True, ['qemu-aarch64', '-cpu', 'cortex-a72'])
>>> m.run({"input": x})["output"]                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from typing import Dict, List, Mapping, Optional

import numpy as np

from qcompiler.errors import TargetError

from . import board

log = logging.getLogger(__name__)

#: Seconds one emulated run may take before it is stopped (qemu is ~10-50x slower than native).
TIMEOUT_S = 600


class EmulatedModule:
    """A module of a foreign target, run through its runner under the target's emulator."""

    emulated = True

    def __init__(self, path: str, target, num_threads: Optional[int] = None):
        self.path = os.path.abspath(os.fspath(path))
        self.target = target
        self.num_threads = num_threads
        self.runner = os.path.join(self.path, board.RUNNER)
        if not os.path.isfile(self.runner):
            raise TargetError(f"module {self.path} (target {target.name}) has no {board.RUNNER} executable to run "
                              f"under emulation; re-export it with a qcompiler that builds the runner")
        self.emulator: List[str] = target.find_emulator() or []
        info = self._call(["--info"], cwd=self.path, what="reading the module signature")
        self.inputs, self.outputs = board.parse_info(info.stdout)
        log.info("target %s cannot run on this machine: running module %s under emulation (%s)",
                 target.name, self.path, " ".join(self.emulator))

    @property
    def input_names(self) -> List[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> List[str]:
        return [s.name for s in self.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run once under the emulator; returns {output name: array}."""
        feeds = board.check_feeds(self.inputs, inputs)
        with tempfile.TemporaryDirectory(prefix="qc-emu-") as tmp:
            args = board.stage_inputs(tmp, feeds)
            os.mkdir(os.path.join(tmp, "out"))
            self._call(args + board.runner_options(self.num_threads), cwd=tmp, what="run")
            return board.collect_outputs(os.path.join(tmp, "out"), self.outputs)

    def bench(self, inputs: Optional[Mapping[str, np.ndarray]] = None, repeat: int = 10,
              warmup: int = 1) -> Dict[str, float]:
        """Latency of ``repeat`` runs inside one emulated process (emulated time, not the board's)."""
        if inputs is None:
            inputs = {s.name: np.zeros(s.shape, s.dtype) for s in self.inputs}
        feeds = board.check_feeds(self.inputs, inputs)
        with tempfile.TemporaryDirectory(prefix="qc-emu-") as tmp:
            args = board.stage_inputs(tmp, feeds)
            os.mkdir(os.path.join(tmp, "out"))
            opts = board.runner_options(self.num_threads, bench=repeat, warmup=warmup)
            result = self._call(args + opts, cwd=tmp, what="bench")
        stats = board.parse_latency(result.stdout)
        stats["emulated"] = True
        return stats

    def _call(self, args: List[str], cwd: str, what: str) -> subprocess.CompletedProcess:
        cmd = [*self.emulator, self.runner, *args]
        log.debug("emulated %s: %s", what, " ".join(cmd))
        try:
            result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise board.RunnerError(f"{self.target.name} module under {self.emulator[0]}: {what} took longer "
                                    f"than {TIMEOUT_S} s and was stopped") from None
        board.raise_for_exit(result.returncode, result.stderr,
                             f"{self.target.name} module under {self.emulator[0] if self.emulator else 'native'} "
                             f"({what})")
        return result

    def __repr__(self) -> str:
        return f"EmulatedModule({self.path!r}, target={self.target.name!r}, emulator={self.emulator[0]!r})"
