"""Run a cross-compiled module on this machine under qemu-user, through its runner binary.

``qc.load(dir)`` returns an :class:`EmulatedModule` when the module's target cannot run natively
(e.g. an ``rpi4`` module on an x86 workstation) and says so: a log line, and ``module.emulated`` is
True with ``module.emulator`` holding the command. It has the loaded module's interface (``run``,
``time_runs``, ``inputs``/``outputs``, ``close``). Each ``run`` writes the inputs as ``.npy`` files
in a temporary directory, starts ``<emulator> <dir>/runner name=in0.npy ...`` and reads the outputs
back: it checks results, not the board's speed (``time_runs`` measures emulated time).

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

from qcompiler.errors import RuntimeInputError, TargetError

from . import board
from .loader import TensorSpec, check_feeds, check_runs_here

log = logging.getLogger(__name__)

#: Seconds one emulated runner process may take before it is stopped (qemu is ~10-50x slower).
TIMEOUT_S = 600


class EmulatorBugError(board.RunnerError):
    """The emulator itself crashed on valid code (a known qemu bug): the module is not at fault."""


#: (text in qemu's stderr, explanation): crashes of the emulator, not of the module
_KNOWN_EMULATOR_BUGS = [
    ("decode_save_opc: Assertion", "qemu-riscv64 before 8.1 aborts on some valid RVV instructions (e.g. "
     "vfcvt.rtz.x.f.v: qemu issue #1441); run the module on a board or under qemu >= 8.1"),
]


def _raise_for_known_emulator_bug(stderr: str, where: str) -> None:
    for needle, why in _KNOWN_EMULATOR_BUGS:
        if needle in stderr:
            raise EmulatorBugError(f"{where}: the emulator crashed, not the module: {why}")


def emulator_for(target) -> List[str]:
    """The emulator command for a module's target (as rebuilt from its manifest), from the target
    registry; a TargetError saying why when the module can run neither natively nor emulated."""
    from qcompiler.targets import get_target, list_targets

    try:
        check_runs_here(target)
    except TargetError as native_error:
        why = str(native_error)
    else:
        raise TargetError(f"target {target.name!r} runs natively here: no emulator needed")
    if target.name not in list_targets():
        raise TargetError(f"{why}; and {target.name!r} is not a known target, so its emulator is unknown")
    known = get_target(target.name)
    if known.mtriple != target.mtriple:
        raise TargetError(f"{why}; and target {target.name!r} now means {known.mtriple}, not the module's "
                          f"{target.mtriple}: rebuild the module")
    try:
        return known.find_emulator() or []
    except TargetError as e:
        raise TargetError(f"{why}; emulation is not possible either: {e}") from None


def load_emulated(path: str, manifest: dict, target, num_threads: Optional[int] = None) -> "EmulatedModule":
    return EmulatedModule(path, manifest, target, emulator_for(target), num_threads)


class EmulatedModule:
    """A module of a foreign target, run through its runner under the target's emulator."""

    emulated = True

    def __init__(self, path: str, manifest: dict, target, emulator: List[str], num_threads: Optional[int] = None):
        self.path = os.path.abspath(os.fspath(path))
        self.manifest = manifest
        self.name = manifest["name"]
        self.target = target
        self.emulator = list(emulator)
        self._num_threads = num_threads
        self.inputs: List[TensorSpec] = [TensorSpec.from_manifest(d) for d in manifest["inputs"]]
        self.outputs: List[TensorSpec] = [TensorSpec.from_manifest(d) for d in manifest["outputs"]]
        self.runner = os.path.join(self.path, board.RUNNER)
        if not os.path.isfile(self.runner):
            raise TargetError(f"module {self.name!r} in {self.path} (target {target.name}) cannot run here and has "
                              f"no {board.RUNNER} executable to run under emulation; re-export it")
        info = self._call(["--info"], cwd=self.path, what="reading the signature")
        runner_in, runner_out = board.parse_info(info.stdout)
        where = f"module {self.name!r} in {self.path}"
        board.check_signature(runner_in, self.inputs, "input", where)
        board.check_signature(runner_out, self.outputs, "output", where)
        self._closed = False
        log.info("module %s is built for %s, which this machine cannot run: running it under emulation (%s)",
                 self.name, target.name, " ".join(self.emulator))

    @property
    def num_threads(self) -> int:
        return int(self._num_threads or os.cpu_count() or 1)

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run once under the emulator: ``{input name: array}`` -> ``{output name: array}``."""
        return self._invoke(feeds, bench=0)[0]

    def time_runs(self, feeds: Mapping[str, np.ndarray], runs: int = 10, warmup: int = 2) -> List[float]:
        """Seconds of each of ``runs`` runs inside one emulated process (emulated time, not the board's)."""
        return board.parse_times(self._invoke(feeds, bench=runs, warmup=warmup)[1])

    def _invoke(self, feeds, bench: int, warmup: int = 1):
        if self._closed:
            raise RuntimeInputError(f"module {self.name!r} was closed; load it again")
        checked = check_feeds(self.inputs, feeds, self.name)
        with tempfile.TemporaryDirectory(prefix="qc-emu-") as tmp:
            args = board.stage_inputs(tmp, checked)
            os.mkdir(os.path.join(tmp, "out"))
            opts = board.runner_options(self._num_threads, bench=bench, warmup=warmup)
            result = self._call(args + opts, cwd=tmp, what="run")
            return board.collect_outputs(os.path.join(tmp, "out"), self.outputs), result.stdout

    def _call(self, args: List[str], cwd: str, what: str) -> subprocess.CompletedProcess:
        cmd = [*self.emulator, self.runner, *args]
        log.debug("emulated %s: %s", what, " ".join(cmd))
        where = f"module {self.name!r} ({self.target.name}) under {self.emulator[0] if self.emulator else 'no emulator'}"
        try:
            result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise board.RunnerError(f"{where}: {what} took longer than {TIMEOUT_S} s and was stopped") from None
        if result.returncode != 0:
            _raise_for_known_emulator_bug(result.stderr, where)
        board.raise_for_exit(result.returncode, result.stderr, f"{where} ({what})")
        return result

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"<EmulatedModule {self.name} ({self.path}) for {self.target.name} under "
                f"{' '.join(self.emulator)}: inputs {[str(s) for s in self.inputs]}>")
