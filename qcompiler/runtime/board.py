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
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qcompiler.errors import QCompilerError, RuntimeInputError, ShapeError

#: File name of the runner executable inside a module directory.
RUNNER = "runner"

# runner.c's exit codes (keep in sync with its header comment)
EXIT_USAGE, EXIT_INPUT, EXIT_MODULE, EXIT_OUTPUT = 2, 3, 4, 5


class RunnerError(QCompilerError):
    """The runner failed on the board or under the emulator (its message is in the error)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: Tuple[int, ...]


_INFO_LINE = re.compile(r"^(input|output) (\S+) (\S+) \(([0-9, ]*)\)$")


def parse_info(text: str) -> Tuple[List[TensorSpec], List[TensorSpec]]:
    """The (inputs, outputs) a runner prints with ``--info``: ``input x float32 (1, 64)`` lines."""
    inputs, outputs = [], []
    for line in text.splitlines():
        m = _INFO_LINE.match(line.strip())
        if not m:
            continue
        shape = tuple(int(d) for d in m.group(4).replace(" ", "").split(",") if d)
        (inputs if m.group(1) == "input" else outputs).append(TensorSpec(m.group(2), m.group(3), shape))
    if not outputs:
        raise RunnerError(f"the runner's --info printed no signature:\n{text.strip()}")
    return inputs, outputs


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, object]) -> Dict[str, np.ndarray]:
    """Validate feeds against the signature before anything is copied or launched."""
    names = [s.name for s in specs]
    unknown = sorted(set(feeds) - set(names))
    if unknown:
        raise RuntimeInputError(f"unknown input(s) {unknown}; the module's inputs are {names}")
    checked = {}
    for spec in specs:
        if spec.name not in feeds:
            raise RuntimeInputError(f"missing input {spec.name!r} ({spec.dtype} {list(spec.shape)})")
        arr = np.asarray(feeds[spec.name])
        if arr.dtype != np.dtype(spec.dtype):
            raise RuntimeInputError(f"input {spec.name!r} has dtype {arr.dtype}, the module expects {spec.dtype}")
        if tuple(arr.shape) != spec.shape:
            raise ShapeError(f"input {spec.name!r} has shape {list(arr.shape)}, the module expects "
                             f"{list(spec.shape)}")
        checked[spec.name] = np.ascontiguousarray(arr)
    return checked


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


def collect_outputs(out_dir: str, specs: Sequence[TensorSpec]) -> Dict[str, np.ndarray]:
    outputs = {}
    for spec in specs:
        path = os.path.join(out_dir, f"{spec.name}.npy")
        if not os.path.isfile(path):
            raise RunnerError(f"the runner wrote no {spec.name}.npy")
        outputs[spec.name] = np.load(path, allow_pickle=False)
    return outputs


_LATENCY = re.compile(r"latency_ms median ([0-9.]+) mean ([0-9.]+) min ([0-9.]+) max ([0-9.]+) runs (\d+)")


def parse_latency(stdout: str) -> Dict[str, float]:
    """``--bench`` output as {"median_ms", "mean_ms", "min_ms", "max_ms", "runs"}."""
    m = _LATENCY.search(stdout)
    if not m:
        raise RunnerError(f"the runner printed no latency line:\n{stdout.strip()}")
    med, mean, lo, hi, runs = m.groups()
    return {"median_ms": float(med), "mean_ms": float(mean), "min_ms": float(lo), "max_ms": float(hi),
            "runs": int(runs)}


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
