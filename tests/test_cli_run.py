"""``qcompiler run`` and ``qcompiler bench`` on an exported module."""

import numpy as np
import pytest

import native_testnet as nt
from qcompiler.cli import main
from qcompiler.codegen.package import build_module


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    return build_module(nt.make_lowered(), name="testnet").export(tmp_path_factory.mktemp("cli") / "net")


def test_run_prints_summaries_and_writes_npz(module_dir, tmp_path, capsys):
    x = nt.sample_input()
    np.save(tmp_path / "x.npy", x)
    rc = main(["run", module_dir, "--input", f"x={tmp_path / 'x.npy'}", "--output", str(tmp_path / "out.npz"),
               "--threads", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "logits: float32[8,16] min" in out and "h2: float32[8,64]" in out and "argmax" in out
    saved = np.load(tmp_path / "out.npz")
    ref = nt.reference(x)
    for k in ref:
        np.testing.assert_allclose(saved[k], ref[k], rtol=1e-5, atol=1e-5)


def test_run_input_info(module_dir, capsys):
    assert main(["run", module_dir, "--input-info"]) == 0
    assert "input x: float32[8,32]" in capsys.readouterr().out


@pytest.mark.parametrize("make_args, message", [
    (lambda d, t: ["run", d], "missing ['x']"),
    (lambda d, t: ["run", d, "--input", f"y={t / 'x.npy'}"], "unknown ['y']"),
    (lambda d, t: ["run", d, "--input", f"x={t / 'missing.npy'}"], "does not exist"),
    (lambda d, t: ["run", d, "--input", "x"], "expected NAME=file.npy"),
    (lambda d, t: ["run", d, "--input", f"x={t / 'bad.npy'}"], "dtype float64, expected float32"),
    (lambda d, t: ["run", str(t / "nomodule"), "--input", f"x={t / 'x.npy'}"], "does not exist"),
    (lambda d, t: ["bench", d, "--runs", "0"], "--runs must be >= 1"),
])
def test_cli_errors_are_clear(module_dir, tmp_path, capsys, make_args, message):
    np.save(tmp_path / "x.npy", nt.sample_input())
    np.save(tmp_path / "bad.npy", nt.sample_input().astype(np.float64))
    rc = main(make_args(module_dir, tmp_path))
    err = capsys.readouterr().err
    assert rc == 1 and message in err and "Traceback" not in err


def test_bench_prints_latency(module_dir, capsys):
    assert main(["bench", module_dir, "--runs", "5", "--warmup", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "5 runs (1 warmup), 1 threads" in out and "median" in out and "p90" in out


def test_bench_random_inputs_have_the_right_dtype():
    from qcompiler.commands.bench import random_input
    from qcompiler.runtime.loader import TensorSpec

    rng = np.random.default_rng(0)
    for dtype in ("float32", "int8", "uint8", "int32", "bool"):
        x = random_input(TensorSpec("x", (3, 4), dtype), rng)
        assert x.dtype == np.dtype(dtype) and x.shape == (3, 4)
