"""Whole-network benchmark: a Bi-Real-Net-18-shaped binary ResNet-18 vs its int8 and float versions.

    python benchmarks/networks.py [--runs 25] [--layers 12] [--out DIR]     (~2 minutes)

Models (PyTorch, random weights with BatchNorm statistics set by a few forward passes on random
images -- speed does not depend on training), input 1x3x224x224:

* **binary**: Bi-Real-Net-18 -- conv 7x7/2 (64) + BN + max pool 3x3/2, then 16 blocks of
  ``x -> sign -> binary conv 3x3 -> BN -> + shortcut(x)`` (a real-valued shortcut around every
  binary conv, 4 blocks per stage, 64/128/256/512 channels); a stage's first block downsamples
  with stride 2 and a shortcut of avg pool 2x2 + 1x1 conv + BN kept real-valued, as Bi-Real does;
  global average pool and a 512 -> 1000 dense layer. Sign is the straight-through estimator
  (``x >= 0 -> +1``) and the conv weights are ``sign(W)``, exported so that qcompiler's binarize
  pass recognises them; the first conv and the last dense layer are int8 (``keep_first_last=8``,
  calibrated; ``--binary-ends float`` keeps them float), the 1x1 shortcut convs stay float (they
  do not read a sign activation). Row "+ int8 shortcuts": the same net with the three 1x1
  shortcut convs int8 too (an override ``{"*shortcut*Conv": {"weights": 8}}``).
* **float**: the same network with ReLU in place of sign and real-valued weights.
* **int8**: the float network quantized static int8 (per-channel weights, min-max calibration)
  by ``qc.quantize``.

Workloads, all in one run, 1 thread, batch 1, median of ``--runs`` runs after warm-up, the runs
interleaved (each round runs every workload once, so load from other processes on a shared machine
falls on all of them alike): qcompiler binary / int8 / float modules (``qc.compile(target="host")``,
loaded with ``qc.load(num_threads=1)``); peers onnxruntime fp32 and onnxruntime int8 (QDQ from
``quantize_static``, per-channel, on the float model), 1 intra-op thread.

Before timing, each qcompiler module's output is checked against the reference executor on the
quantized graph (the int8 graph bit-exact; the binary graph, whose residual stream is float, and
the float graph within a tolerance), and onnxruntime fp32 against PyTorch. A per-layer breakdown
(each kernel of the binary and int8 modules rebuilt and timed alone through TVM, ``--layers N``
largest shown, with the manifest's impl/fallback) says which layers dominate.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from typing import Dict, List

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402

RUNS = 25
INPUT_SHAPE = (1, 3, 224, 224)
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))   # (channels, stride of the stage's first block)
BLOCKS_PER_STAGE = 4                                # Bi-Real-18: one shortcut per 3x3 conv
GOAL_VS_ORT_FP32 = 8.0
GOAL_VS_ORT_INT8 = 3.0

# -- models -----------------------------------------------------------------------------------------

def bireal18(torch, binary: bool):
    """Bi-Real-Net-18 (``binary``) or its real-valued twin (ReLU activations, float weights)."""
    nn = torch.nn

    class SignSTE(nn.Module):
        """Forward +1 if x >= 0 else -1 (the hard-tanh straight-through estimator)."""

        def forward(self, x):
            xc = x.clamp(-1, 1)
            return xc + (torch.where(x >= 0, 1.0, -1.0) - xc).detach()

    class BinaryConv(nn.Conv2d):
        def forward(self, x):
            w = self.weight
            wb = w + (torch.where(w >= 0, 1.0, -1.0) - w).detach()
            return nn.functional.conv2d(x, wb, None, self.stride, self.padding)

    class Block(nn.Module):
        """``bn(conv3x3(act(x))) + shortcut(x)``: Bi-Real's real-valued shortcut around each conv."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.act = SignSTE() if binary else nn.ReLU()
            conv = BinaryConv if binary else nn.Conv2d
            self.conv = conv(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.shortcut = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.AvgPool2d(stride), nn.Conv2d(cin, cout, 1, bias=False),
                                              nn.BatchNorm2d(cout))

        def forward(self, x):
            return self.bn(self.conv(self.act(x))) + self.shortcut(x)

    layers: List[nn.Module] = [nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                               nn.MaxPool2d(3, stride=2, padding=1)]
    cin = 64
    for cout, stride in STAGES:
        for b in range(BLOCKS_PER_STAGE):
            layers.append(Block(cin, cout, stride if b == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def make_model(torch, binary: bool, seed: int):
    """Random weights; BN running statistics from forward passes on random images (so that every
    layer sees unit-scale activations, as in a trained net)."""
    torch.manual_seed(seed)
    model = bireal18(torch, binary)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None          # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, *INPUT_SHAPE[1:]))
    return model.eval()


def export(torch, model, path: str) -> None:
    torch.onnx.export(model, torch.zeros(*INPUT_SHAPE), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])


# -- qcompiler ----------------------------------------------------------------------------------------

def binary_graph(path: str, calib: List[Dict[str, np.ndarray]], ends: str = "int8", shortcuts: str = "float",
                 target: str = "host"):
    """The binary graph: ``qc.quantize(QuantConfig(weights=1, activations=1, keep_first_last=...))``
    for the target (its packing word width): only the model's own sign activations are binarized;
    the first conv and the last dense layer int8 (``ends="int8"``: ``keep_first_last=8``, input
    ranges calibrated on ``calib``) or float (``ends="float"``: ``keep_first_last=32``); Bi-Real's
    real-valued 1x1 shortcut convs float, or int8 (``shortcuts="int8"``, an override)."""
    import qcompiler as qc

    overrides = {"*shortcut*Conv": {"weights": 8}} if shortcuts == "int8" else {}
    cfg = qc.QuantConfig(weights=1, activations=1, keep_first_last=8 if ends == "int8" else 32,
                         overrides=overrides)
    return qc.quantize(qc.from_onnx(path), cfg, calibration=calib, target=target)


def int8_graph(path: str, calib: List[Dict[str, np.ndarray]]):
    import qcompiler as qc

    cfg = qc.QuantConfig(weights=8, activations=8, per_channel=True, calibration="minmax")
    return qc.quantize(qc.from_onnx(path), cfg, calibration=calib)


def float_graph(path: str):
    import qcompiler as qc

    return qc.from_onnx(path)


def build(graph, name: str, out_dir: str):
    """Compile for the host, export, load with one thread; returns (module, seconds to compile)."""
    import qcompiler as qc

    t0 = time.perf_counter()
    module = qc.compile(graph, target="host", name=name)
    seconds = time.perf_counter() - t0
    path = module.export(os.path.join(out_dir, name))
    return qc.load(path, num_threads=1), seconds


def check(module, graph, feeds, exact: bool) -> str:
    """Module output vs the reference executor on the same graph; raises if they disagree."""
    from qcompiler import ref

    want = ref.run(graph, feeds)[graph.outputs[0]]
    got = module.run(feeds)[module.outputs[0].name]
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    scale = float(np.max(np.abs(want))) or 1.0
    same_top1 = bool(np.argmax(got) == np.argmax(want))
    ok = diff == 0.0 if exact else diff <= 1e-3 * scale
    status = f"max |diff| {diff:.3g} (output max {scale:.3g}), top-1 {'same' if same_top1 else 'DIFFERENT'}"
    if not ok:
        raise SystemExit(f"{module.name}: compiled output differs from the reference executor: {status}")
    return ("bit-exact" if diff == 0.0 else "within tolerance") + f"; {status}"


def module_timer(module, feeds):
    """One timed run of a loaded module (buffers bound outside the timed region)."""
    return lambda: module.time_runs(feeds, runs=1, warmup=0)[0]


def interleaved_ms(timers: Dict[str, object], runs: int, warmup: int = 3) -> Dict[str, float]:
    """Median ms of each timer over ``runs`` rounds; every round runs every workload once, so load
    from other processes on a shared machine falls on all workloads alike."""
    for timer in timers.values():
        for _ in range(warmup):
            timer()
    samples: Dict[str, List[float]] = {k: [] for k in timers}
    for _ in range(runs):
        for k, timer in timers.items():
            samples[k].append(timer())
    return {k: float(np.median(v)) * 1e3 for k, v in samples.items()}


# -- onnxruntime peers --------------------------------------------------------------------------------

def ort_session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_int8_model(float_path: str, out_path: str, calib: List[Dict[str, np.ndarray]]) -> str:
    """QDQ static int8 (per-channel s8 weights, u8 activations, min-max) of the float model."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calib)

        def get_next(self):
            return next(self._it, None)

    quantize_static(float_path, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out_path


def ort_timer(sess, feeds):
    def once() -> float:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        return time.perf_counter() - t0
    return once


# -- per-layer breakdown ------------------------------------------------------------------------------

def profile_layers(graph, target_name: str = "host", runs: int = 10, tuning=None) -> List[dict]:
    """Each kernel of ``graph``'s lowering, rebuilt in-process with TVM and timed alone (constants
    as compiled, other operands random): one row per executor call, in execution order, with the
    manifest's record (impl, fallback, MACs). Identical workloads are built and timed once."""
    import tvm
    from tvm import te

    from qcompiler.codegen.lower import lower_graph, workload_of
    from qcompiler.schedules.select import select
    from qcompiler.targets import resolve

    target = resolve(target_name)
    lowered = lower_graph(graph, target, tuning=tuning)
    nodes = {n.name: n for n in graph.nodes}
    records = {r.node: r for r in lowered.records}
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    ms_of: Dict[str, float] = {}
    rows = []
    for call in lowered.calls:
        if call.kind != "kernel":
            continue
        rec = records[call.node]
        if call.symbol not in ms_of:
            wl = workload_of(graph, nodes[call.node])
            impl = select(wl, target).impl
            plan = impl.plan(wl, rec.config)
            stages = impl.compute(wl, plan, rec.config)
            sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(stages.args)}))
            sch.work_on("main")
            impl.schedule(sch, stages, wl, target, rec.config)
            ex = tvm.compile(sch.mod, target=target.tvm_target())
            args = [tvm.runtime.tensor(_operand(lowered, name, rng), dev) for name in call.args]
            res = ex.mod.time_evaluator("main", dev, number=5, repeat=runs)(*args)
            ms_of[call.symbol] = float(np.median(res.results)) * 1e3
        rows.append({"node": call.node, "op": rec.op, "impl": rec.impl, "fallback": rec.fallback,
                     "macs": rec.macs, "ms": ms_of[call.symbol]})
    return rows


def _operand(lowered, name: str, rng) -> np.ndarray:
    v = lowered.graph.values[name]
    if name in lowered.constants:
        return np.ascontiguousarray(lowered.constants[name]).reshape(v.shape)
    dt = np.dtype(v.dtype)
    if dt.kind == "f":
        return rng.standard_normal(v.shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, v.shape, dtype=dt, endpoint=True)


def print_profile(title: str, rows: List[dict], module_ms_: float, top: int) -> None:
    total = sum(r["ms"] for r in rows)
    print(f"\n{title}: {len(rows)} kernel calls, sum of kernels alone {total:.2f} ms "
          f"(whole module {module_ms_:.2f} ms)")
    by_op: Dict[str, List[float]] = {}
    for r in rows:
        key = r["op"] + (" [fallback]" if r["fallback"] else "")
        by_op.setdefault(key, []).append(r["ms"])
    print(f"  {'op':28s} {'calls':>5s} {'ms':>8s} {'share':>6s}")
    for op, ts in sorted(by_op.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {op:28s} {len(ts):5d} {sum(ts):8.3f} {100 * sum(ts) / total:5.1f}%")
    print(f"  largest {top} calls:")
    print(f"  {'node':34s} {'op':18s} {'impl':26s} {'MMACs':>7s} {'ms':>7s} {'GMAC/s':>7s}")
    for r in sorted(rows, key=lambda r: -r["ms"])[:top]:
        rate = f"{r['macs'] / r['ms'] / 1e6:7.1f}" if r["macs"] else f"{'':7s}"
        print(f"  {r['node'][:34]:34s} {r['op'][:18]:18s} {r['impl'][:26]:26s} {r['macs'] / 1e6:7.1f} "
              f"{r['ms']:7.3f} {rate}" + (f"  FALLBACK: {r['fallback']}" if r["fallback"] else ""))


# -- the run ------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=RUNS, help="timed runs per workload (median; >= 20)")
    ap.add_argument("--layers", type=int, default=12, help="largest layers to list (0: no breakdown)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--binary-ends", choices=("int8", "float"), default="int8",
                    help="first conv and last dense of the binary net in int8 (default) or float")
    ap.add_argument("--out", default=None, help="directory for the models and modules (default: temporary)")
    args = ap.parse_args(argv)
    if args.runs < 20:
        ap.error("--runs must be >= 20")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import torch

    torch.set_num_threads(1)
    out = args.out or tempfile.mkdtemp(prefix="qc_networks_")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    feeds = {"input": x}
    calib = [{"input": rng.standard_normal(INPUT_SHAPE).astype(np.float32)} for _ in range(4)]

    paths = {}
    for kind, binary in (("binary", True), ("float", False)):
        model = make_model(torch, binary, args.seed)
        paths[kind] = os.path.join(out, f"bireal18_{kind}.onnx")
        export(torch, model, paths[kind])
        if not binary:
            with torch.no_grad():
                torch_logits = model(torch.from_numpy(x)).numpy()
    paths["ort_int8"] = ort_int8_model(paths["float"], os.path.join(out, "bireal18_ort_qdq.onnx"), calib)

    graphs = {"binary": binary_graph(paths["binary"], calib, args.binary_ends),
              "binary_sc8": binary_graph(paths["binary"], calib, args.binary_ends, shortcuts="int8"),
              "int8": int8_graph(paths["float"], calib), "float": float_graph(paths["float"])}
    ops = Counter(n.op for n in graphs["binary"].nodes)
    print("binary graph: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])))
    modules, checks = {}, {}
    for kind, graph in graphs.items():
        modules[kind], seconds = build(graph, f"bireal18_{kind}", out)
        checks[kind] = check(modules[kind], graph, feeds, exact=kind == "int8")
        print(f"qcompiler {kind:10s}: compiled in {seconds:5.1f} s; vs reference executor: {checks[kind]}")

    sessions = {"ort_fp32": ort_session(paths["float"]), "ort_int8": ort_session(paths["ort_int8"])}
    ort_logits = sessions["ort_fp32"].run(None, feeds)[0]
    if not np.allclose(ort_logits, torch_logits, rtol=1e-3, atol=1e-3 * float(np.max(np.abs(torch_logits)))):
        raise SystemExit("onnxruntime fp32 disagrees with PyTorch on the float model")

    timers = {kind: module_timer(module, feeds) for kind, module in modules.items()}
    timers.update({kind: ort_timer(sess, feeds) for kind, sess in sessions.items()})
    ms = interleaved_ms(timers, args.runs)

    print(f"\nBi-Real-Net-18 shaped networks, {INPUT_SHAPE}, 1 thread, median of {args.runs} interleaved runs")
    print(f"{'workload':22s} {'ms':>8s} {'x ORT fp32':>11s} {'x ORT int8':>11s}")
    names = {"binary": "qcompiler binary", "binary_sc8": "  + int8 shortcuts", "int8": "qcompiler int8",
             "float": "qcompiler float", "ort_fp32": "onnxruntime fp32", "ort_int8": "onnxruntime int8 QDQ"}
    for kind, name in names.items():
        print(f"{name:22s} {ms[kind]:8.2f} {ms['ort_fp32'] / ms[kind]:11.2f} {ms['ort_int8'] / ms[kind]:11.2f}")
    for kind in ("binary", "binary_sc8"):
        vs32, vs8 = ms["ort_fp32"] / ms[kind], ms["ort_int8"] / ms[kind]
        print(f"goals ({names[kind].strip()}): >= {GOAL_VS_ORT_FP32:.0f}x ORT fp32: {vs32:.2f}x "
              f"{'met' if vs32 >= GOAL_VS_ORT_FP32 else 'MISSED'}; >= {GOAL_VS_ORT_INT8:.0f}x ORT int8: "
              f"{vs8:.2f}x {'met' if vs8 >= GOAL_VS_ORT_INT8 else 'MISSED'}")

    if args.layers > 0:
        for kind in ("binary", "int8"):
            print_profile(f"qcompiler {kind} per layer", profile_layers(graphs[kind]), ms[kind], args.layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
