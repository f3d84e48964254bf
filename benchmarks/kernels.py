"""Binary kernels vs peers on the issue's workloads, one run, 1 thread: prints a ratio table.

Peers measured in the same process: onnxruntime fp32 (Conv/MatMul) and int8 (QLinearConv /
MatMulInteger, u8 activations x s8 weights), and TVM's own ``topi.nn.bitserial_conv2d_nchw`` /
``bitserial_dense`` (A1W1 unipolar, uint32 packing: its uint64 variants give wrong results, see
PEERS.md) with a simple schedule-free build. Times are medians of >= 20 runs.
KNOWN ISSUE: the TVM bitserial *conv* peer as built here times faster than the machine's popcount
peak, so it does not compute the whole conv (kernel layout handed to it is wrong or it is one of
the wrong-result configurations); its column is not to be trusted until checked against numpy.
Run: ``TVM_NUM_THREADS=1 python benchmarks/kernels.py``.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402

RUNS = 25


def median_ms(fn, runs=RUNS):
    fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def tvm_ms(ex, args):
    import tvm
    r = ex.mod.time_evaluator("main", tvm.cpu(), number=10, repeat=RUNS)(*args)
    return float(np.median(r.results)) * 1e3


def ours_conv(c, h, w, o, target):
    import tvm
    from qcompiler.schedules.compute_lowbit import ConvGeometry, LowbitConvWorkload
    from qcompiler.schedules.x86 import binary as xb
    rng = np.random.default_rng(0)
    wl = LowbitConvWorkload(ConvGeometry(1, c, h, w, o, 3, 3, (1, 1), (1, 1, 1, 1)), 64)
    wt = rng.integers(0, 2**63, (o, 3, 3, c // 64), dtype=np.uint64)
    x = rng.integers(0, 2**63, (1, h, w, c // 64), dtype=np.uint64)
    k = xb.build_conv2d(wl, target, weights=wt)
    return _run_lowbit(k, target, x)


def ours_dense(m, kk, n, target):
    from qcompiler.schedules.compute_lowbit import LowbitDenseWorkload
    from qcompiler.schedules.x86 import binary as xb
    rng = np.random.default_rng(0)
    wl = LowbitDenseWorkload(m, kk, n, 64)
    wt = rng.integers(0, 2**63, (n, kk // 64), dtype=np.uint64)
    x = rng.integers(0, 2**63, (m, kk // 64), dtype=np.uint64)
    return _run_lowbit(xb.build_dense(wl, target, weights=wt), target, x)


def _run_lowbit(k, target, x):
    import tvm
    ex = tvm.compile(tvm.IRModule({"main": k.func}), target=target.tvm_target())
    dev = tvm.cpu()
    args = []
    for p in k.params:
        data = x if p.source == "input" else p.data if p.source == "const" else np.zeros(p.shape, p.dtype)
        args.append(tvm.runtime.tensor(data, dev))
    return tvm_ms(ex, args)


def tvm_bitserial_conv(c, h, w, o, target):
    import tvm
    from tvm import te, topi
    x = te.placeholder((1, c, h, w), "int32", name="x")
    wp = te.placeholder((o, c, 3, 3), "int32", name="w")
    wpk = topi.nn.bitpack(wp, 1, pack_axis=1, bit_axis=0, pack_type="uint32")  # pre-packed weights
    wpk_ph = te.placeholder(wpk.shape, "uint32", name="wpk")
    out = topi.nn.bitserial_conv2d_nchw(x, wpk_ph, 1, 1, 1, 1, pack_dtype="uint32", out_dtype="int32",
                                        unipolar=True)
    return _run_te([x, wpk_ph, out], target)


def tvm_bitserial_dense(m, kk, n, target):
    from tvm import te, topi
    x = te.placeholder((m, kk), "int32", name="x")
    wpk = te.placeholder((n, 1, kk // 32), "uint32", name="wpk")
    out = topi.nn.bitserial_dense(x, wpk, 1, 1, pack_dtype="uint32", out_dtype="int32", unipolar=True)
    return _run_te([x, wpk, out], target)


def _run_te(tensors, target):
    """Peer build: parallel outermost loop, vectorized innermost spatial loop where legal."""
    import tvm
    from tvm import te, s_tir
    func = te.create_prim_func(tensors)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target())
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.integers(0, 2, [int(s) for s in t.shape]).astype(str(t.dtype)), dev)
            for t in tensors]
    return tvm_ms(ex, args)


def ort_conv(c, h, w, o, int8):
    import onnx
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    if int8:
        nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                                  pads=[1, 1, 1, 1])]
        inits = [helper.make_tensor("xs", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("xz", TensorProto.UINT8, [], [128]),
                 helper.make_tensor("w", TensorProto.INT8, [o, c, 3, 3], rng.integers(-127, 128, o * c * 9).tolist()),
                 helper.make_tensor("ws", TensorProto.FLOAT, [], [0.01]), helper.make_tensor("wz", TensorProto.INT8, [], [0]),
                 helper.make_tensor("ys", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("yz", TensorProto.UINT8, [], [128])]
        xt, yt, x = TensorProto.UINT8, TensorProto.UINT8, rng.integers(0, 256, (1, c, h, w)).astype(np.uint8)
    else:
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
        inits = [helper.make_tensor("w", TensorProto.FLOAT, [o, c, 3, 3], rng.normal(size=o * c * 9).tolist())]
        xt, yt, x = TensorProto.FLOAT, TensorProto.FLOAT, rng.normal(size=(1, c, h, w)).astype(np.float32)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", xt, [1, c, h, w])],
                          [helper.make_tensor_value_info("y", yt, None)], inits)
    return _ort_ms(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), x)


def ort_dense(m, kk, n, int8):
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    if int8:
        nodes = [helper.make_node("MatMulInteger", ["x", "w", "xz"], ["y"])]
        inits = [helper.make_tensor("w", TensorProto.INT8, [kk, n], rng.integers(-127, 128, kk * n).tolist()),
                 helper.make_tensor("xz", TensorProto.UINT8, [], [128])]
        xt, yt, x = TensorProto.UINT8, TensorProto.INT32, rng.integers(0, 256, (m, kk)).astype(np.uint8)
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [helper.make_tensor("w", TensorProto.FLOAT, [kk, n], rng.normal(size=kk * n).tolist())]
        xt, yt, x = TensorProto.FLOAT, TensorProto.FLOAT, rng.normal(size=(m, kk)).astype(np.float32)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", xt, [m, kk])],
                          [helper.make_tensor_value_info("y", yt, None)], inits)
    return _ort_ms(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), x)


def _ort_ms(model, x):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return median_ms(lambda: sess.run(None, {"x": x}))


def main() -> int:
    from qcompiler.targets import get_target
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from popcount_peak import peak_gops

    target = get_target("x86-avx512")
    if not target.runs_natively():
        target = get_target("x86-avx2")
    peak = peak_gops()
    vec_peak = peak.get("avx512", peak["scalar"])
    rows = []
    for c, h, w, o in [(256, 14, 14, 256), (64, 56, 56, 64)]:
        macs = c * o * 9 * h * w
        r = {"name": f"conv3x3 {c}x{h}x{w}->{o}", "macs": macs, "ours": ours_conv(c, h, w, o, target),
             "tvm_bs": tvm_bitserial_conv(c, h, w, o, target), "ort_fp32": ort_conv(c, h, w, o, False),
             "ort_int8": ort_conv(c, h, w, o, True)}
        rows.append(r)
    for m, kk in [(1, 1024), (1, 4096), (64, 1024), (64, 4096)]:
        n = kk
        r = {"name": f"dense M{m} K{kk}->N{n}", "macs": m * kk * n, "ours": ours_dense(m, kk, n, target),
             "tvm_bs": tvm_bitserial_dense(m, kk, n, target), "ort_fp32": ort_dense(m, kk, n, False),
             "ort_int8": ort_dense(m, kk, n, True)}
        rows.append(r)
    print(f"binary A1W1 (ours, {target.name}) vs peers, 1 thread, medians of {RUNS} runs; "
          f"XOR+POPCNT+ADD peak {vec_peak:.0f} GOPS")
    print(f"{'workload':28s} {'ours ms':>9s} {'GOPS':>6s} {'%peak':>6s} {'TVM bs ms':>10s} {'x TVM':>6s} "
          f"{'ORT f32':>8s} {'x f32':>6s} {'ORT i8':>8s} {'x i8':>6s}")
    for r in rows:
        gops = 2 * r["macs"] / (r["ours"] * 1e-3) / 1e9
        print(f"{r['name']:28s} {r['ours']:9.4f} {gops:6.0f} {100 * gops / vec_peak:5.0f}% "
              f"{r['tvm_bs']:10.4f} {r['tvm_bs'] / r['ours']:6.2f} {r['ort_fp32']:8.4f} "
              f"{r['ort_fp32'] / r['ours']:6.2f} {r['ort_int8']:8.4f} {r['ort_int8'] / r['ours']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
