"""``qcompiler run --remote``: copy a module to a board over ssh and run it there.

The "board" is this machine, reached through a private sshd started on 127.0.0.1 (a high port, a
temporary host key, a temporary authorized key); the test is skipped, saying why, when sshd is not
installed (``apt-get install openssh-server``) or does not start.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

import qcompiler as qc
from qcompiler import ref
from qcompiler.errors import ConfigError, RuntimeInputError, TargetError
from qcompiler.runtime.remote import RemoteModule, parse_host

EXAMPLES = os.path.join(os.path.dirname(qc.__file__), "examples")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """(user@127.0.0.1:port, ssh -o options) of a private sshd that accepts one generated key."""
    sshd_exe = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if sshd_exe is None or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        pytest.skip("needs sshd, ssh and ssh-keygen (apt-get install openssh-server openssh-client)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copyfile(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"PermitRootLogin prohibit-password\nPidFile {d / 'sshd.pid'}\nSubsystem sftp internal-sftp\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)   # privilege separation directory sshd insists on
    proc = subprocess.Popen([sshd_exe, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "w"))
    user = getpass.getuser()
    options = [f"IdentityFile={d / 'client_key'}", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
               "LogLevel=ERROR"]
    probe = ["ssh", "-o", "BatchMode=yes", "-o", f"Port={port}"] + sum((["-o", o] for o in options), [])
    try:
        for _ in range(50):
            if proc.poll() is not None:
                break
            if subprocess.run(probe + [f"{user}@127.0.0.1", "true"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip(f"the test sshd did not accept a login: {(d / 'sshd.log').read_text()[-500:]}")
        if proc.poll() is not None:
            pytest.skip(f"the test sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
        yield f"{user}@127.0.0.1:{port}", options
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def host_module(tmp_path_factory):
    graph = qc.from_onnx(os.path.join(EXAMPLES, "digits_mlp.onnx"))
    calib = np.load(os.path.join(EXAMPLES, "digits_calib.npz"))["input"]
    graph = qc.quantize(graph, qc.QuantConfig(weights=8, activations=8), calibration=[{"input": c} for c in calib[:8]])
    path = tmp_path_factory.mktemp("remote") / "net"
    qc.compile(graph, target="host", name="net", weights="blob").export(path)
    return graph, path


def test_parse_host():
    assert parse_host("pi@raspberrypi.local") == ("pi@raspberrypi.local", [])
    assert parse_host("pi@10.0.0.2:2222") == ("pi@10.0.0.2", ["-o", "Port=2222"])
    for bad in ("", "-oProxyCommand=x", "pi@host name"):
        with pytest.raises(ConfigError):
            parse_host(bad)


def test_remote_run_matches_reference(sshd, host_module):
    host, options = sshd
    graph, path = host_module
    x = np.load(os.path.join(EXAMPLES, "digit.npy"))
    with RemoteModule(path, host, num_threads=2, ssh_options=options) as board:
        assert board.remote and not board.emulated
        remote_dir = board.remote_dir
        np.testing.assert_array_equal(board.run({"input": x})["logits"], ref.run(graph, {"input": x})["logits"])
        assert len(board.time_runs({"input": x}, runs=3)) == 3
        with pytest.raises(RuntimeInputError, match="shape"):
            board.run({"input": x[:, :8]})
    assert not os.path.exists(remote_dir), "the board's temporary directory is removed"


def test_cli_run_remote(sshd, host_module, tmp_path, capsys):
    from qcompiler.cli import main

    host, options = sshd
    _, path = host_module
    np.save(tmp_path / "x.npy", np.load(os.path.join(EXAMPLES, "digit.npy")))
    argv = ["run", str(path), "--remote", host, "--input", f"input={tmp_path / 'x.npy'}"]
    for opt in options:
        argv += ["--ssh-option", opt]
    assert main(argv) == 0
    assert "logits: float32[1,10]" in capsys.readouterr().out


def test_remote_refuses_a_foreign_module(sshd, tmp_path):
    """An aarch64 module sent to this x86-64 'board' is refused before anything runs."""
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu)")
    host, options = sshd
    graph = qc.from_onnx(os.path.join(EXAMPLES, "digits_mlp.onnx"))
    qc.compile(graph, target="rpi4", name="net").export(tmp_path / "net")
    with pytest.raises(TargetError, match="built for rpi4"):
        RemoteModule(tmp_path / "net", host, ssh_options=options)


def test_unreachable_board_is_a_clear_error(sshd, host_module):
    _, options = sshd
    with pytest.raises(TargetError, match="ssh .*failed"):
        RemoteModule(host_module[1], f"{getpass.getuser()}@127.0.0.1:{_free_port()}", ssh_options=options)
