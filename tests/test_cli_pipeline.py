"""The README's first command sequence, run through the installed ``qcompiler`` console script.

``qcompiler compile`` (int8, calibrated) -> ``qcompiler run`` -> ``qcompiler bench`` on the shipped
example model, each a real subprocess; the module's output is checked against the reference
executor on the same quantized graph, and bad invocations must fail with exit code 1 and a one-line
message (no traceback).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

import qcompiler as qc
from qcompiler import ref
from qcompiler.commands.common import load_npz_batches
from qcompiler.runtime.loader import read_manifest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "qcompiler" / "examples"
MODEL, CALIB, DIGIT = EXAMPLES / "digits_mlp.onnx", EXAMPLES / "digits_calib.npz", EXAMPLES / "digit.npy"
#: the README's build directory; the tests replace it with a temporary one
README_BUILD = "build/digits"


def _console_script() -> str:
    """The ``qcompiler`` entry point installed next to this interpreter (``pip install -e .``)."""
    path = Path(sys.executable).parent / "qcompiler"
    assert path.is_file(), f"console script {path} is missing: install the package with `pip install -e .`"
    return str(path)


def _readme_commands() -> List[List[str]]:
    """The ``qcompiler ...`` commands of the README's first shell block, in order, as argv lists."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no ```bash block"
    commands = []
    for line in block.group(1).splitlines():
        if line.lstrip().startswith("#"):
            continue
        for part in line.split("&&"):
            argv = shlex.split(part)
            if argv and argv[0] == "qcompiler":
                commands.append(argv[1:])
        if commands:
            return commands
    raise AssertionError("README.md's first shell block runs no qcompiler command")


def qcompiler(args: List[str], cwd=REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([_console_script(), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _assert_clean_failure(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    err = proc.stderr
    assert proc.returncode == 1, f"exit code {proc.returncode}\nstdout: {proc.stdout}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in the error message:\n{err}"


# -- the README sequence ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Run the README's commands with the build directory moved to a temporary one."""
    commands = _readme_commands()
    assert [c[0] for c in commands] == ["compile", "run"], commands
    tmp = tmp_path_factory.mktemp("readme")
    module_dir = tmp / "digits"
    procs = []
    for argv in commands:
        argv = [str(module_dir) if a == README_BUILD else a for a in argv]
        procs.append(qcompiler(argv))
        assert procs[-1].returncode == 0, f"qcompiler {shlex.join(argv)} failed:\n{procs[-1].stderr}"
    return module_dir, procs


@pytest.fixture(scope="module")
def reference_graph():
    """The example model quantized as the README's compile command does it (int8, min-max calibration
    on the shipped batches, per-channel weights: the CLI's defaults)."""
    graph = qc.from_onnx(MODEL)
    cfg = qc.QuantConfig(weights=8, activations=8, per_channel=True, calibration="minmax")
    return qc.quantize(graph, cfg, calibration=load_npz_batches(str(CALIB))), graph


def test_readme_commands_are_the_documented_sequence():
    compile_argv, run_argv = _readme_commands()
    assert compile_argv[:2] == ["compile", "qcompiler/examples/digits_mlp.onnx"]
    assert {"--wbits", "--abits", "--calib", "--target", "-o"} <= set(compile_argv)
    assert run_argv[:2] == ["run", README_BUILD] and "input=qcompiler/examples/digit.npy" in run_argv


def test_compile_writes_a_module(readme_run):
    module_dir, (compiled, _) = readme_run
    assert f"wrote {module_dir}" in compiled.stdout
    manifest = read_manifest(module_dir)
    assert manifest["target"]["name"] == "host"
    assert [(s["name"], s["shape"], s["dtype"]) for s in manifest["inputs"]] == [("input", [1, 64], "float32")]
    assert {"libdigits.so", "libdigits.a", "digits.h", "manifest.json"} <= set(os.listdir(module_dir))
    dense = [layer for layer in manifest["layers"] if layer["op"] == "QDense"]
    assert len(dense) == 3, manifest["layers"]      # 64-128-128-10: every Gemm became an int8 layer
    assert all(d["bits"]["w"] == 8 and d["bits"]["x"] == 8 for d in dense), dense


def test_run_prints_the_reference_prediction(readme_run, reference_graph, tmp_path):
    module_dir, (_, ran) = readme_run
    qgraph, float_graph = reference_graph
    x = np.load(DIGIT)
    want = ref.run(qgraph, {"input": x})["logits"]
    prediction = int(np.argmax(want))
    assert prediction == int(np.argmax(ref.run(float_graph, {"input": x})["logits"])), \
        "int8 quantization changed the example digit's class"
    assert re.search(rf"^logits: float32\[1,10\] .* argmax \[{prediction}\]", ran.stdout, re.M), ran.stdout
    # the same run again, with --output: the module's logits are bit-exact with the reference
    out = tmp_path / "out.npz"
    proc = qcompiler(["run", module_dir, "--input", f"input={DIGIT}", "--output", out, "--threads", "2"])
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["logits"], want)


def test_bench_reports_latency(readme_run):
    module_dir, _ = readme_run
    proc = qcompiler(["bench", module_dir, "--runs", "5"])
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"5 runs \(\d+ warmup\), \d+ threads", proc.stdout), proc.stdout
    m = re.search(r"median ([0-9.]+)\s+p90 ([0-9.]+)", proc.stdout)
    assert m, proc.stdout
    median, p90 = float(m.group(1)), float(m.group(2))
    assert 0 < median <= p90


# -- errors -------------------------------------------------------------------------------------------

def test_unknown_target_names_the_known_ones(tmp_path):
    proc = qcompiler(["compile", MODEL, "--target", "no-such-board", "-o", tmp_path / "m"])
    _assert_clean_failure(proc, "unknown target 'no-such-board'", "host", "x86-avx2", "rpi4")
    assert not (tmp_path / "m").exists()


def test_missing_calibration_file(tmp_path):
    missing = tmp_path / "nope.npz"
    proc = qcompiler(["compile", MODEL, "--wbits", "8", "--abits", "8", "--calib", missing, "--target", "host",
                      "-o", tmp_path / "m"])
    _assert_clean_failure(proc, "calibration file", str(missing), "does not exist")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("case", ["shape", "dtype", "name"])
def test_run_rejects_bad_inputs(readme_run, tmp_path, case):
    module_dir, _ = readme_run
    x = np.load(DIGIT)
    name, expected = "input", ()
    if case == "shape":
        x, expected = np.concatenate([x, x]), ("'input'", "shape [2, 64]", "expected [1, 64]")
    elif case == "dtype":
        x, expected = x.astype(np.float64), ("'input'", "dtype float64", "expected float32")
    else:
        name, expected = "image", ("unknown ['image']", "missing ['input']")
    np.save(tmp_path / "x.npy", x)
    proc = qcompiler(["run", module_dir, "--input", f"{name}={tmp_path / 'x.npy'}"])
    _assert_clean_failure(proc, "qcompiler run: error:", *expected)
    assert proc.stderr.strip().count("\n") == 0, f"expected a one-line message:\n{proc.stderr}"
