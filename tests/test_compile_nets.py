"""End to end on real networks: ONNX -> (int8) -> native module -> loaded without TVM -> reference.

For each network of ``tests/nets.py`` (ResNet-18, MobileNetV2, MLP) one module-scoped fixture builds
a float module and a static full-integer int8 module (``qc.quantize`` calibrated on a few random
batches) and exports both. Then:

- a subprocess in which ``tvm`` and ``tvm_ffi`` cannot be imported loads both modules with 1 and 2
  threads and runs them; float outputs match ``qcompiler.ref.run`` within 1e-4 of the output's scale,
  int8 outputs are bit-exact with the reference executor on the quantized graph, and the 1- and
  2-thread runs agree exactly;
- a second, independent build in a fresh subprocess (no in-process kernel cache to lean on) gives
  byte-identical module directories;
- the ResNet's static memory plan reuses memory: the arena is smaller than all its intermediates.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

import nets
import qcompiler as qc
from qcompiler import ref
from qcompiler.codegen.lower import VIEW_OPS

NET_NAMES = ("resnet18", "mobilenetv2", "mlp")
KINDS = ("float", "int8")
THREADS = (1, 2)
FLOAT_RTOL = 1e-4          # of the output's scale (max |reference|)
CALIB_SEEDS = range(100, 104)
INPUT_SEEDS = (1, 2)       # two inputs per network: one wrong kernel rarely survives both
#: networks whose second (subprocess) build is part of the default run; the others are @slow
REBUILD_DEFAULT = ("resnet18", "mlp")


@dataclass
class NetBuild:
    """One network's graphs, its exported float and int8 modules, and the inputs that run them."""

    name: str
    onnx_path: Path
    graphs: Dict[str, qc.Graph]                 # kind -> graph
    dirs: Dict[str, Path]                       # kind -> exported module directory
    manifests: Dict[str, dict]
    calib_path: Path                            # the calibration batches as .npz (for the rebuild)
    inputs: List[np.ndarray]
    inputs_path: Path                           # the inputs as .npz (x0, x1, ...)


#: static full-integer int8 (the fixture and the subprocess rebuild both quantize with this)
QUANT = {"weights": 8, "activations": 8}


def _calibration(name: str) -> List[Dict[str, np.ndarray]]:
    return [{nets.INPUT_NAME: nets.sample_input(name, seed)} for seed in CALIB_SEEDS]


@pytest.fixture(scope="module")
def net_builds(torch_net_onnx, tmp_path_factory):
    """``get(name) -> NetBuild``, each network built once per module."""
    cache: Dict[str, NetBuild] = {}

    def get(name: str) -> NetBuild:
        if name not in cache:
            cache[name] = _build(name, torch_net_onnx(name), tmp_path_factory.mktemp(f"e2e_{name}"))
        return cache[name]

    return get


def _build(name: str, onnx_path, root: Path) -> NetBuild:
    graph = qc.from_onnx(onnx_path)
    batches = _calibration(name)
    graphs = {"float": graph, "int8": qc.quantize(graph, qc.QuantConfig(**QUANT), calibration=batches)}
    dirs, manifests = {}, {}
    for kind, g in graphs.items():
        module = qc.compile(g, target="host")
        module.plan.verify()
        dirs[kind] = Path(module.export(root / "build_a" / kind))
        manifests[kind] = module.manifest
    calib_path = root / "calib.npz"
    np.savez(calib_path, **{nets.INPUT_NAME: np.stack([b[nets.INPUT_NAME] for b in batches])})
    inputs = [nets.sample_input(name, seed) for seed in INPUT_SEEDS]
    inputs_path = root / "inputs.npz"
    np.savez(inputs_path, **{f"x{i}": x for i, x in enumerate(inputs)})
    return NetBuild(name, Path(onnx_path), graphs, dirs, manifests, calib_path, inputs, inputs_path)


# -- loading and running without TVM ------------------------------------------------------------------

_NO_TVM_RUNNER = textwrap.dedent("""
    import json, sys
    # nothing may have pulled TVM in at interpreter start-up (.pth files, sitecustomize)
    assert not any(m.split(".")[0] in ("tvm", "tvm_ffi") for m in sys.modules), "tvm imported at start-up"
    sys.modules["tvm"] = None          # `import tvm` (and tvm.anything) now raises ImportError
    sys.modules["tvm_ffi"] = None
    for blocked in ("tvm", "tvm_ffi"):
        try:
            __import__(blocked)
        except ImportError:
            pass
        else:
            raise AssertionError(blocked + " is still importable")

    import numpy as np
    import qcompiler as qc

    dirs, inputs_path, out_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    inputs = np.load(inputs_path)
    results, threads_seen = {}, {}
    for kind, path in dirs.items():
        for threads in (1, 2):
            module = qc.load(path, num_threads=threads)
            threads_seen[f"{kind}/{threads}"] = module.num_threads
            for key in inputs.files:
                for out_name, arr in module.run({"input": inputs[key]}).items():
                    results[f"{kind}/{threads}/{key}/{out_name}"] = arr
            module.close()
    np.savez(out_path, **results)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tvm", "tvm_ffi") and sys.modules[m] is not None)
    print(json.dumps({"tvm_modules": loaded, "threads": threads_seen}))
""")


@dataclass
class NoTvmRun:
    outputs: Dict[str, np.ndarray]     # "<kind>/<threads>/x<i>/<output name>" -> array
    report: dict


@pytest.fixture(scope="module")
def no_tvm_runs(net_builds, tmp_path_factory):
    """``get(name) -> (NetBuild, NoTvmRun)``: the network's modules loaded and run once per module in a
    subprocess where TVM cannot be imported."""
    cache: Dict[str, NoTvmRun] = {}

    def get(name: str):
        built = net_builds(name)
        if name not in cache:
            cache[name] = _run_without_tvm(built, tmp_path_factory.mktemp(f"notvm_{name}"))
        return built, cache[name]

    return get


def _run_without_tvm(built: NetBuild, work: Path) -> NoTvmRun:
    out_path = work / "outputs.npz"
    dirs = json.dumps({kind: str(d) for kind, d in built.dirs.items()})
    proc = subprocess.run([sys.executable, "-c", _NO_TVM_RUNNER, dirs, str(built.inputs_path), str(out_path)],
                          cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{built.name}: TVM-less load/run failed:\n{proc.stderr[-4000:]}"
    with np.load(out_path) as data:
        outputs = {k: data[k] for k in data.files}
    return NoTvmRun(outputs, json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("net", NET_NAMES)
def test_modules_load_and_run_without_tvm(net, no_tvm_runs):
    built, no_tvm_run = no_tvm_runs(net)
    assert no_tvm_run.report["tvm_modules"] == []
    assert no_tvm_run.report["threads"] == {f"{k}/{t}": t for k in KINDS for t in THREADS}
    for kind in KINDS:
        so = built.dirs[kind] / built.manifests[kind]["library"]["shared"]
        dynamic = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
        needed = [line for line in dynamic.splitlines() if "(NEEDED)" in line]
        assert needed and not [n for n in needed if "tvm" in n.lower()], f"{so} links a TVM library: {needed}"


def _module_output(run: NoTvmRun, kind: str, threads: int, i: int) -> np.ndarray:
    return run.outputs[f"{kind}/{threads}/x{i}/{nets.OUTPUT_NAME}"]


@pytest.mark.parametrize("net", NET_NAMES)
def test_float_module_matches_reference(net, no_tvm_runs):
    built, no_tvm_run = no_tvm_runs(net)
    graph = built.graphs["float"]
    for i, x in enumerate(built.inputs):
        want = ref.run(graph, {nets.INPUT_NAME: x})[nets.OUTPUT_NAME]
        for threads in THREADS:
            got = _module_output(no_tvm_run, "float", threads, i)
            assert got.dtype == want.dtype and got.shape == want.shape
            scale = float(np.max(np.abs(want)))
            err = float(np.max(np.abs(got.astype(np.float64) - want)))
            assert err <= FLOAT_RTOL * scale, (f"{built.name} float, input {i}, {threads} thread(s): max error "
                                               f"{err:.3g} > {FLOAT_RTOL} x output scale {scale:.3g}")


@pytest.mark.parametrize("net", NET_NAMES)
def test_int8_module_is_bit_exact(net, no_tvm_runs):
    built, no_tvm_run = no_tvm_runs(net)
    graph = built.graphs["int8"]
    ops = {n.op for n in graph.nodes}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and any(op.startswith("Q") and op != "QuantizeLinear"
                                                                 for op in ops), f"not an int8 graph: {ops}"
    for i, x in enumerate(built.inputs):
        want = ref.run(graph, {nets.INPUT_NAME: x})[nets.OUTPUT_NAME]
        for threads in THREADS:
            got = _module_output(no_tvm_run, "int8", threads, i)
            assert got.dtype == want.dtype and got.shape == want.shape
            diff = np.flatnonzero(got.view(np.uint8) != want.view(np.uint8))
            assert diff.size == 0, (f"{built.name} int8, input {i}, {threads} thread(s): {diff.size} bytes "
                                    f"differ; got {got.reshape(-1)[:6]} want {want.reshape(-1)[:6]}")


@pytest.mark.parametrize("net", NET_NAMES)
def test_one_and_two_threads_agree(net, no_tvm_runs):
    built, no_tvm_run = no_tvm_runs(net)
    for kind in KINDS:
        for i in range(len(built.inputs)):
            one, two = (_module_output(no_tvm_run, kind, t, i) for t in THREADS)
            np.testing.assert_array_equal(one, two, err_msg=f"{built.name} {kind}, input {i}: 1 vs 2 threads")


# -- reproducible builds ------------------------------------------------------------------------------

_REBUILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import qcompiler as qc

    onnx_path, quant, calib_path, out_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    graph = qc.from_onnx(onnx_path)
    calib = np.load(calib_path)["input"]
    qgraph = qc.quantize(graph, qc.QuantConfig(**quant), calibration=[{"input": b} for b in calib])
    for kind, g in (("float", graph), ("int8", qgraph)):
        qc.compile(g, target="host").export(f"{out_dir}/{kind}")
""")


def _tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rebuild_params():
    return [pytest.param(n, marks=() if n in REBUILD_DEFAULT else pytest.mark.slow) for n in NET_NAMES]


@pytest.mark.parametrize("net", _rebuild_params())
def test_second_build_is_byte_identical(net, net_builds, tmp_path):
    built = net_builds(net)
    out_dir = tmp_path / "build_b"
    argv = [str(built.onnx_path), json.dumps(QUANT), str(built.calib_path), str(out_dir)]
    proc = subprocess.run([sys.executable, "-c", _REBUILD, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{net}: second build failed:\n{proc.stderr[-4000:]}"
    for kind in KINDS:
        first, second = _tree(built.dirs[kind]), _tree(out_dir / kind)
        assert sorted(first) == sorted(second), f"{net} {kind}: the builds wrote different files"
        differing = [rel for rel in first if first[rel] != second[rel]]
        assert not differing, f"{net} {kind}: files differ between two builds: {differing}"
        assert f"lib{built.manifests[kind]['name']}.so" in first


# -- the static memory plan ---------------------------------------------------------------------------

def _intermediate_tensor_bytes(graph: qc.Graph) -> int:
    """Bytes of every tensor a kernel writes that is not a graph output (views own no bytes)."""
    total = 0
    for node in graph.nodes:
        if node.op in VIEW_OPS:
            continue
        for name in node.outputs:
            if name and name not in graph.outputs:
                v = graph.value(name)
                total += int(np.prod(v.shape, dtype=np.int64)) * np.dtype(v.dtype).itemsize
    return total


def test_resnet_arena_is_smaller_than_its_intermediates(net_builds):
    built = net_builds("resnet18")
    for kind in KINDS:
        memory = built.manifests[kind]["memory"]
        arena, recorded = memory["arena_bytes"], memory["intermediate_bytes"]
        counted = _intermediate_tensor_bytes(built.graphs[kind])
        # the manifest's sum counts each arena buffer once, aligned: never less than the raw sum
        assert recorded >= counted > 0, (kind, recorded, counted)
        assert 0 < arena < counted, f"resnet18 {kind}: arena {arena} bytes vs intermediates {counted} bytes"
        on_disk = json.loads((built.dirs[kind] / "manifest.json").read_text())["memory"]
        assert on_disk == memory
