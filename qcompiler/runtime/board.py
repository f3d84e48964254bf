"""Talking to a module's command-line runner (``runner.c``) from Python.

A module directory built for a board holds ``runner``, a small executable that reads inputs from
``.npy`` files and writes outputs as ``.npy``. Two places drive it from the host: ``emulate`` (under
qemu-user on this machine) and ``remote`` (on a board over ssh). This file holds what they share:
the runner's file name, its signature (``runner --info``), staging inputs, collecting outputs, and
turning its exit codes into qcompiler errors. No TVM import: this runs wherever the loader runs.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qcompiler.errors import ModelError, QCompilerError, RuntimeInputError

from .loader import TensorSpec

#: File name of the runner executable inside a module directory.
RUNNER = "runner"

# runner.c's exit codes (keep in sync with its header comment)
EXIT_USAGE, EXIT_INPUT, EXIT_MODULE, EXIT_OUTPUT = 2, 3, 4, 5


class RunnerError(QCompilerError):
    """The runner failed on the board or under the emulator (its message is in the error)."""


_INFO_LINE = re.compile(r"^(input|output) (\S+) (\S+) \(([0-9, ]*)\)$")


def parse_info(text: str) -> Tuple[List[TensorSpec], List[TensorSpec]]:
    """The (inputs, outputs) a runner prints with ``--info``: ``input x float32 (1, 64)`` lines."""
    inputs, outputs = [], []
    for line in text.splitlines():
        m = _INFO_LINE.match(line.strip())
        if not m:
            continue
        shape = tuple(int(d) for d in m.group(4).replace(" ", "").split(",") if d)
        (inputs if m.group(1) == "input" else outputs).append(TensorSpec(m.group(2), shape, m.group(3)))
    if not outputs:
        raise RunnerError(f"the runner's --info printed no signature:\n{text.strip()}")
    return inputs, outputs


def check_signature(runner_specs, manifest_specs, kind: str, where: str) -> None:
    """The runner (what it was compiled against) and the manifest must describe the same signature."""
    if list(runner_specs) != list(manifest_specs):
        raise ModelError(f"{where}: the runner and manifest.json disagree on the {kind}s "
                         f"({[str(s) for s in runner_specs]} vs {[str(s) for s in manifest_specs]}); re-export it")


def stage_inputs(directory: str, feeds: Mapping[str, np.ndarray]) -> List[str]:
    """Write each feed to ``<directory>/<name>.npy``; return the runner's ``name=file`` arguments
    (file names relative to ``directory``, where the runner is started)."""
    args = []
    for i, (name, arr) in enumerate(feeds.items()):
        fname = f"in{i}.npy"  # input names may hold characters a file name should not
        np.save(os.path.join(directory, fname), arr, allow_pickle=False)
        args.append(f"{name}={fname}")
    return args


def runner_options(num_threads: Optional[int] = None, bench: int = 0, warmup: int = 1,
                   out_dir: str = "out") -> List[str]:
    opts = ["-o", out_dir]
    if num_threads:
        opts += ["--threads", str(int(num_threads))]
    if bench:
        opts += ["--bench", str(int(bench)), "--warmup", str(int(warmup))]
    return opts


def output_files(specs: Sequence[TensorSpec]) -> List[str]:
    """The file each output is written to, as runner.c's ``output_file`` names it."""
    files: List[str] = []
    seen = set()
    for i, spec in enumerate(specs):
        raw = spec.name.encode("utf-8")[:399]   # runner.c works on bytes
        stem = re.sub(rb"[^A-Za-z0-9._-]", b"_", raw).decode("ascii") or "_"
        if stem.startswith("."):
            stem = "_" + stem[1:]
        files.append(f"{stem}_{i}.npy" if stem in seen else f"{stem}.npy")
        seen.add(stem)
    return files


def collect_outputs(out_dir: str, specs: Sequence[TensorSpec]) -> Dict[str, np.ndarray]:
    outputs = {}
    for spec, fname in zip(specs, output_files(specs)):
        path = os.path.join(out_dir, fname)
        if not os.path.isfile(path):
            raise RunnerError(f"the runner wrote no {fname} for output {spec.name!r}")
        outputs[spec.name] = np.load(path, allow_pickle=False)
    return outputs


def parse_times(stdout: str) -> List[float]:
    """Seconds of each timed run, from the ``times_ms ...`` line ``--bench`` prints."""
    for line in stdout.splitlines():
        if line.startswith("times_ms"):
            return [float(t) / 1e3 for t in line.split()[1:]]
    raise RunnerError(f"the runner printed no times_ms line:\n{stdout.strip()}")


def raise_for_exit(code: int, stderr: str, where: str) -> None:
    """Turn a runner exit code into the matching qcompiler error (no-op for 0)."""
    if code == 0:
        return
    msg = stderr.strip().replace("runner: error: ", "") or f"no message (exit code {code})"
    if code in (EXIT_USAGE, EXIT_INPUT):
        raise RuntimeInputError(f"{where}: {msg}")
    if code < 0 or code >= 128:
        sig = -code if code < 0 else code - 128
        raise RunnerError(f"{where}: the runner was killed by signal {sig} ({_SIGNALS.get(sig, 'signal')}); "
                          f"the module uses an instruction or alignment the CPU does not support, or crashed. "
                          f"{msg}")
    raise RunnerError(f"{where}: {msg}")


_SIGNALS = {4: "SIGILL: illegal instruction", 7: "SIGBUS: bus error", 11: "SIGSEGV: segmentation fault",
            6: "SIGABRT", 9: "SIGKILL"}
