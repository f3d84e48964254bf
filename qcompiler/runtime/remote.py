"""Run a module on a board over ssh: copy the module directory, run its runner there, fetch outputs.

``qcompiler run build/net --remote pi@raspberrypi.local --input input=x.npy`` uses this. It needs
only ``ssh``/``scp`` here and a POSIX shell on the board (no Python): the runner in the module
directory is statically linked. ssh runs in batch mode (keys or an agent, never a password prompt);
``user@host:port`` picks a port and ``ssh_options`` pass ``-o`` options (e.g. ``IdentityFile=...``).

>>> with RemoteModule("build/net", "pi@raspberrypi.local") as m:        # doctest: +SKIP
...     y = m.run({"input": x})["output"]
...     seconds = m.time_runs({"input": x}, runs=50)
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qcompiler.errors import ConfigError, TargetError

from . import board
from .loader import TensorSpec, check_feeds, manifest_target, read_manifest

log = logging.getLogger(__name__)

#: What ``uname -m`` says on boards that can run each target architecture.
_MACHINES = {"aarch64": {"aarch64", "arm64"}, "armv7a": {"armv7l", "armv8l", "aarch64"},
             "riscv64": {"riscv64"}, "x86_64": {"x86_64", "amd64"}}

TIMEOUT_S = 600


def parse_host(host: str) -> Tuple[str, List[str]]:
    """``user@host[:port]`` -> (``user@host``, ssh ``-o Port=`` options)."""
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        raise ConfigError(f"--remote {host!r}: expected user@host or user@host:port")
    dest, sep, port = host.rpartition(":")
    if sep and port.isdigit() and dest:
        return dest, ["-o", f"Port={port}"]
    return host, []


class RemoteModule:
    """A module directory copied to a board over ssh, run there through its runner."""

    emulated = False
    remote = True

    def __init__(self, path: str, host: str, num_threads: Optional[int] = None, ssh_options: Sequence[str] = ()):
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise TargetError(f"--remote needs {tool!r}, which is not installed (apt-get install openssh-client)")
        self.path = os.path.abspath(os.fspath(path))
        self.manifest = read_manifest(self.path)
        self.name = self.manifest["name"]
        self.target = manifest_target(self.manifest)
        self.inputs: List[TensorSpec] = [TensorSpec.from_manifest(d) for d in self.manifest["inputs"]]
        self.outputs: List[TensorSpec] = [TensorSpec.from_manifest(d) for d in self.manifest["outputs"]]
        self._num_threads = num_threads
        self.remote_dir = None
        self._control_dir = None
        if not os.path.isfile(os.path.join(self.path, board.RUNNER)):
            hint = (": Android modules are linked into an app (see its README.md)" if self.target.os == "android"
                    else "; re-export it")
            raise TargetError(f"module {self.name!r} in {self.path} has no {board.RUNNER} executable to run on a "
                              f"board (target {self.target.name}){hint}")
        self.host, port_opts = parse_host(host)
        # one ssh connection for every step (copy, run, fetch): a master socket in a private directory
        self._control_dir = tempfile.mkdtemp(prefix="qcssh-")
        self._opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", *port_opts,
                      "-o", "ControlMaster=auto", "-o", f"ControlPath={self._control_dir}/%C",
                      "-o", "ControlPersist=120"]
        for opt in ssh_options:
            self._opts += ["-o", opt]
        try:
            self._check_machine()
        except BaseException:
            self.close()
            raise
        self.remote_dir = self._ssh("mktemp -d /tmp/qcompiler.XXXXXX", what="making a temporary directory").strip()
        try:
            log.info("running module %s on %s: copying it to %s", self.name, self.host, self.remote_dir)
            self._scp([self.path], f"{self.host}:{self.remote_dir}/module", what="copying the module")
            info = self._ssh(f"cd {shlex.quote(self.remote_dir)} && ./module/{board.RUNNER} --info", what="--info",
                             runner=True)
            runner_in, runner_out = board.parse_info(info)
            where = f"module {self.name!r} on {self.host}"
            board.check_signature(runner_in, self.inputs, "input", where)
            board.check_signature(runner_out, self.outputs, "output", where)
        except BaseException:
            self.close()
            raise

    @property
    def num_threads(self) -> int:
        return int(self._num_threads or self.target.cores)

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run once on the board: ``{input name: array}`` -> ``{output name: array}``."""
        return self._invoke(feeds, bench=0)[0]

    def time_runs(self, feeds: Mapping[str, np.ndarray], runs: int = 10, warmup: int = 2) -> List[float]:
        """Seconds of each of ``runs`` runs on the board (timed there, inside one runner process)."""
        return board.parse_times(self._invoke(feeds, bench=runs, warmup=warmup)[1])

    def close(self) -> None:
        if getattr(self, "remote_dir", None):
            try:
                self._ssh(f"rm -rf {shlex.quote(self.remote_dir)}", what="cleaning up")
            except Exception as e:  # cleanup must not hide the real result
                log.warning("could not remove %s:%s: %s", self.host, self.remote_dir, e)
            self.remote_dir = None
        if getattr(self, "_control_dir", None):
            try:
                self._spawn(["ssh", *self._opts, "-O", "exit", self.host], "closing the connection")
            except TargetError:
                pass
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------------------------------------

    def _invoke(self, feeds, bench: int, warmup: int = 1):
        if not self.remote_dir:
            raise TargetError(f"module {self.name!r} on {self.host} was closed; open it again")
        feeds = check_feeds(self.inputs, feeds, self.name)
        rdir = shlex.quote(self.remote_dir)
        with tempfile.TemporaryDirectory(prefix="qc-remote-") as tmp:
            args = board.stage_inputs(tmp, feeds)
            files = [os.path.join(tmp, a.split("=", 1)[1]) for a in args]
            if files:
                self._scp(files, f"{self.host}:{self.remote_dir}/", what="copying inputs")
            opts = board.runner_options(self._num_threads, bench=bench, warmup=warmup)
            cmd = " ".join(shlex.quote(a) for a in [f"./module/{board.RUNNER}", *args, *opts])
            stdout = self._ssh(f"cd {rdir} && rm -rf out && mkdir out && {cmd}", what="run", runner=True)
            out_dir = os.path.join(tmp, "out")
            os.mkdir(out_dir)
            self._scp([f"{self.host}:{self.remote_dir}/out/{f}" for f in board.output_files(self.outputs)], out_dir,
                      what="fetching outputs")
            return board.collect_outputs(out_dir, self.outputs), stdout

    def _check_machine(self) -> None:
        machine = self._ssh("uname -m", what="checking the board").strip()
        arch = self.target.arch
        if machine not in _MACHINES.get(arch, {arch}):
            raise TargetError(f"{self.host} is a {machine} machine, but the module was built for {self.target.name} "
                              f"({arch}); compile for a matching target (see `qcompiler targets`)")

    def _ssh(self, command: str, what: str, runner: bool = False) -> str:
        cmd = ["ssh", *self._opts, self.host, command]
        result = self._spawn(cmd, what)
        if result.returncode == 255:   # ssh's own failure (connection, authentication)
            raise TargetError(f"ssh {self.host} ({what}) failed: {result.stderr.strip() or 'no message'}")
        if runner:
            board.raise_for_exit(result.returncode, result.stderr, f"module {self.name!r} on {self.host} ({what})")
        elif result.returncode != 0:
            raise TargetError(f"ssh {self.host} ({what}) failed with exit code {result.returncode}: "
                              f"{result.stderr.strip() or 'no message'}")
        return result.stdout

    def _scp(self, sources: List[str], dest: str, what: str) -> None:
        result = self._spawn(["scp", "-q", "-r", *self._opts, *sources, dest], what)
        if result.returncode != 0:
            raise TargetError(f"scp ({what}) to/from {self.host} failed: {result.stderr.strip() or 'no message'}")

    def _spawn(self, cmd: List[str], what: str) -> subprocess.CompletedProcess:
        log.debug("remote %s: %s", what, " ".join(shlex.quote(c) for c in cmd))
        try:  # stdin closed: the ssh master must not hold on to ours
            return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TargetError(f"{self.host}: {what} took longer than {TIMEOUT_S} s and was stopped") from None

    def __repr__(self) -> str:
        return f"<RemoteModule {self.name} ({self.path}) on {self.host}:{self.remote_dir}>"
