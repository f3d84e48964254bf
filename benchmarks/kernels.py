"""Low-bit kernels vs peers on the issue's workloads, one run, 1 thread: prints ratio tables.

Tables: binary A1W1 and A2W2 (bitserial) conv/dense, and int8 conv/dense. Peers measured in the
same process:
onnxruntime fp32 (Conv/MatMul) and int8 (QLinearConv / MatMulInteger, u8 activations x s8
weights), and TVM's own ``topi.nn.bitserial_conv2d_nchw`` / ``bitserial_dense`` (unipolar, uint32
packing: its uint64 variants give wrong results, see PEERS.md) with a simple hand schedule
(reductions outside the innermost output loop, which is vectorized), weights pre-packed in TVM's
layout ([O, C/32, KH, KW, bits] for the conv), activation packing inside the timed call as TVM does.
Every TVM peer is first checked against numpy on the benchmark's own inputs (a precondition: a
peer that does not compute the op is refused, not timed). Times are medians of >= 20 runs.
After the A1W1 and A2W2 tables, the dense rows against their roofline: the weight-streaming time at
the read bandwidth measured in the same run for a buffer of the weights' size
(popcount_peak.read_gbps) and the compute time at the popcount peak; after A2W2, its ceiling
(4 plane pairs at the popcount peak) against the VNNI vpdpbusd peak measured in the same run.
The int8 table times our QConv2d (uint8 x, zero point 128, uint8 output with onnxruntime's float
requantization, as QLinearConv) and QDense (int32 output, as MatMulInteger) kernels exactly as a
compiled module calls them (activation packing included), the fast kernel the selection table picks
and the generic int8 kernel it replaced, each checked bit-exact against the reference first.
LiteRT int8 (``ai-edge-litert``, XNNPACK, the ``bench`` extra; benchmarks/peers_litert.py: one-op
full-integer models built with its flatbuffers schema, s8 activations, per-channel s8 weights, int8
output for conv and dense) is one more int8 peer when installed: "x best i8" is against the fastest of
onnxruntime int8 and LiteRT int8. Larq Compute Engine A1W1 (benchmarks/peers_lce.py) runs in its own
venv, given by ``--lce-python PATH`` or $QC_LCE_PYTHON, else skipped with a line.
Run: ``TVM_NUM_THREADS=1 python benchmarks/kernels.py [--lce-python /tmp/lcevenv/bin/python]``.
"""

from __future__ import annotations

import functools
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
    """Median ms of a TVM function; each sample averages only as many calls as fill ~0.1 ms, so a
    sample of a long kernel is one call, like the onnxruntime/LiteRT samples (on a shared machine a
    10-call sample of a 1 ms kernel nearly always includes a lost time slice, which the median of
    such samples then reports)."""
    import tvm
    once = ex.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=3)(*args)
    number = max(1, min(10, int(1e-4 / max(float(np.min(once.results)), 1e-9))))
    r = ex.mod.time_evaluator("main", tvm.cpu(), number=number, repeat=RUNS)(*args)
    return float(np.median(r.results)) * 1e3


def ours_conv(c, h, w, o, target, bits=None):
    """Our x86 kernel; ``bits`` = (A, W) for bitserial with TVM's unipolar weights 2u - (2^W - 1)."""
    from qcompiler.schedules.compute_lowbit import ConvGeometry, LowbitConvWorkload
    from qcompiler.schedules.x86 import binary as xb
    rng = np.random.default_rng(0)
    geom = ConvGeometry(1, c, h, w, o, 3, 3, (1, 1), (1, 1, 1, 1))
    if bits is None:
        wl = LowbitConvWorkload(geom, 64)
        wt = rng.integers(0, 2**63, (o, 3, 3, c // 64), dtype=np.uint64)
        x = rng.integers(0, 2**63, (1, h, w, c // 64), dtype=np.uint64)
    else:
        a, b = bits
        wl = LowbitConvWorkload(geom, 64, act_bits=a, weight_bits=b, w_mult=2, w_offset=(1 << b) - 1)
        wt = rng.integers(0, 2**63, (o, 3, 3, b, c // 64), dtype=np.uint64)
        x = rng.integers(0, 2**63, (1, h, w, a, c // 64), dtype=np.uint64)
    return _run_lowbit(xb.build_conv2d(wl, target, weights=wt), target, x)


def ours_dense(m, kk, n, target, bits=None):
    from qcompiler.schedules.compute_lowbit import LowbitDenseWorkload
    from qcompiler.schedules.x86 import binary as xb
    rng = np.random.default_rng(0)
    if bits is None:
        wl = LowbitDenseWorkload(m, kk, n, 64)
        wt = rng.integers(0, 2**63, (n, kk // 64), dtype=np.uint64)
        x = rng.integers(0, 2**63, (m, kk // 64), dtype=np.uint64)
    else:
        a, b = bits
        wl = LowbitDenseWorkload(m, kk, n, 64, act_bits=a, weight_bits=b, w_mult=2, w_offset=(1 << b) - 1)
        wt = rng.integers(0, 2**63, (n, b, kk // 64), dtype=np.uint64)
        x = rng.integers(0, 2**63, (m, a, kk // 64), dtype=np.uint64)
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


class PeerError(RuntimeError):
    """A peer that does not compute what it is benchmarked for."""


def _unipolar_weights(u, wbits):
    """TVM's unipolar convention: activations are codes, weight planes are +-1: w = 2u - (2^W - 1)."""
    return 2 * u.astype(np.int64) - ((1 << wbits) - 1)


def _conv_numpy(x, wv, pad):
    """int64 NCHW conv (stride 1) by im2col, the precondition check of the conv peer."""
    n, c, h, w = x.shape
    o, _, kh, kw = wv.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    cols = np.stack([xp[:, :, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)], axis=2)
    cols = cols.reshape(n, c * kh * kw, oh * ow)
    return np.einsum("ok,nkp->nop", wv.reshape(o, -1), cols).reshape(n, o, oh, ow)


def tvm_bitserial_conv(c, h, w, o, target, abits=1, wbits=1):
    """TVM's bitserial conv (unipolar), checked against numpy before timing."""
    import tvm
    from tvm import te, topi
    rng = np.random.default_rng(1)
    x_np = rng.integers(0, 1 << abits, (1, c, h, w)).astype(np.int32)
    u_np = rng.integers(0, 1 << wbits, (o, c, 3, 3)).astype(np.int32)
    # pre-pack the weights at "compile time" in the layout the conv takes: [O, C/32, KH, KW, W]
    wt = te.placeholder((o, c, 3, 3), "int32", name="w")
    wpk = topi.nn.bitpack(wt, wbits, pack_axis=1, bit_axis=4, pack_type="uint32")
    pack = tvm.compile(tvm.IRModule({"main": te.create_prim_func([wt, wpk])}), target=target.tvm_target())
    dev = tvm.cpu()
    wpk_nd = tvm.runtime.tensor(np.zeros([int(s) for s in wpk.shape], "uint32"), dev)
    pack(tvm.runtime.tensor(u_np, dev), wpk_nd)
    x = te.placeholder((1, c, h, w), "int32", name="x")
    wpk_ph = te.placeholder(wpk.shape, "uint32", name="wpk")
    out = topi.nn.bitserial_conv2d_nchw(x, wpk_ph, (1, 1), (1, 1, 1, 1), abits, wbits, pack_dtype="uint32",
                                        out_dtype="int32", unipolar=True)
    ex = _build_peer([x, wpk_ph, out], target)
    args = [tvm.runtime.tensor(x_np, dev), wpk_nd, tvm.runtime.tensor(np.zeros([int(s) for s in out.shape], "int32"), dev)]
    ex(*args)
    expect = _conv_numpy(x_np, _unipolar_weights(u_np, wbits), 1)
    if not np.array_equal(args[2].numpy(), expect):
        raise PeerError(f"TVM bitserial_conv2d_nchw A{abits}W{wbits} {c}x{h}x{w}->{o} does not match numpy")
    return tvm_ms(ex, args)


def tvm_bitserial_dense(m, kk, n, target, abits=1, wbits=1):
    """TVM's bitserial dense (unipolar, weights pre-packed [N, W, K/32]), checked against numpy."""
    import tvm
    from tvm import te, topi
    rng = np.random.default_rng(2)
    x_np = rng.integers(0, 1 << abits, (m, kk)).astype(np.int32)
    u_np = rng.integers(0, 1 << wbits, (n, kk)).astype(np.int32)
    wt = te.placeholder((n, kk), "int32", name="w")
    wpk = topi.nn.bitpack(wt, wbits, pack_axis=1, bit_axis=1, pack_type="uint32")
    pack = tvm.compile(tvm.IRModule({"main": te.create_prim_func([wt, wpk])}), target=target.tvm_target())
    dev = tvm.cpu()
    wpk_nd = tvm.runtime.tensor(np.zeros([int(s) for s in wpk.shape], "uint32"), dev)
    pack(tvm.runtime.tensor(u_np, dev), wpk_nd)
    x = te.placeholder((m, kk), "int32", name="x")
    wpk_ph = te.placeholder(wpk.shape, "uint32", name="wpk")
    out = topi.nn.bitserial_dense(x, wpk_ph, abits, wbits, pack_dtype="uint32", out_dtype="int32", unipolar=True)
    ex = _build_peer([x, wpk_ph, out], target)
    args = [tvm.runtime.tensor(x_np, dev), wpk_nd, tvm.runtime.tensor(np.zeros((m, n), "int32"), dev)]
    ex(*args)
    if not np.array_equal(args[2].numpy(), x_np.astype(np.int64) @ _unipolar_weights(u_np, wbits).T):
        raise PeerError(f"TVM bitserial_dense A{abits}W{wbits} M{m} K{kk} N{n} does not match numpy")
    return tvm_ms(ex, args)


def _schedule_peer(tensors):
    """The peer's hand schedule: the output's reduction loops moved outside its innermost spatial loop,
    which is vectorized (accumulators live in a vector), outermost loop parallel; the rest as TE has it."""
    import tvm
    from tvm import s_tir, te
    func = te.create_prim_func(tensors)
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    sch.work_on("main")
    blk = sch.get_sblock(tensors[-1].op.name)
    loops = sch.get_loops(blk)
    n_red = len(tensors[-1].op.reduce_axis)
    spatial, red = loops[: len(loops) - n_red], loops[len(loops) - n_red:]
    inner = spatial[-1]
    extent = int(sch.get(inner).extent)
    lanes = max(d for d in range(1, 9) if extent % d == 0)
    if lanes > 1:
        _, ii = sch.split(inner, [None, lanes])
        sch.reorder(*red, ii)
        sch.vectorize(ii)
    sch.parallel(spatial[0])
    return sch.mod


def _build_peer(tensors, target):
    import tvm
    return tvm.compile(_schedule_peer(tensors), target=target.tvm_target())


# the A1W1, A2W2 and int8 tables share the peers' workloads (onnxruntime and LiteRT do not depend on
# our bit widths): each peer workload is built and timed once per run
@functools.lru_cache(maxsize=None)
def ort_conv(c, h, w, o, int8, group=1, stride=1):
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    if int8:
        nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                                  pads=[1, 1, 1, 1], group=group, strides=[stride, stride])]
        cg = c // group
        inits = [helper.make_tensor("xs", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("xz", TensorProto.UINT8, [], [128]),
                 helper.make_tensor("w", TensorProto.INT8, [o, cg, 3, 3], rng.integers(-127, 128, o * cg * 9).tolist()),
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


@functools.lru_cache(maxsize=None)
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


def _int8_graph(op, c, h, w, o, m=1, groups=1, stride=1):
    """A one-node QConv2d (3x3, pad 1) or QDense graph with random data, and its feeds."""
    from qcompiler.ir import Graph, Node, Value
    from qcompiler.ref import infer_outputs
    rng = np.random.default_rng(3)
    g = Graph(op.lower())
    if op == "QConv2d":
        x = rng.integers(0, 256, (1, c, h, w)).astype(np.uint8)
        consts = [("w", rng.integers(-127, 128, (o, c // groups, 3, 3)).astype(np.int8)),
                  ("b", rng.integers(-3000, 3000, o).astype(np.int32)),
                  ("s", np.full(o, 0.1 * 0.01 / 0.5, np.float32))]
        attrs = dict(strides=(stride, stride), pads=(1, 1, 1, 1), dilations=(1, 1), groups=groups, x_zero_point=128,
                     w_zero_point=0, out="uint8", out_zero_point=128, out_min=0, out_max=255, requant="float")
    else:
        x = rng.integers(0, 256, (m, c)).astype(np.uint8)
        consts = [("w", rng.integers(-127, 128, (o, c)).astype(np.int8))]
        attrs = dict(x_zero_point=128, w_zero_point=0, out="int32")
    g.add_value(Value("x", x.shape, "uint8"))
    g.inputs.append("x")
    for name, arr in consts:
        g.add_const(name, arr)
    names = ["x", "w"] + [n for n, _ in consts[1:2]] + ([""] if op == "QDense" else []) + [n for n, _ in consts[2:]]
    specs = [None if not n else ((x.shape, "uint8", None) if n == "x" else (g.value(n).shape, g.value(n).dtype,
                                                                             g.value(n).data)) for n in names]
    (shape, dtype), = infer_outputs(op, specs, attrs)
    g.add_value(Value("y", shape, dtype))
    g.add_node(Node(op, "n0", names, ["y"], attrs))
    g.outputs = ["y"]
    return g, {"x": x}


def ours_int8_ms(graph, feeds, target, kind=None):
    """Time the graph's one kernel as the module calls it: the selected kernel, or ``kind`` (e.g. the
    generic ``qconv2d_nchw_ocvec``); checked bit-exact against the reference executor first."""
    import tempfile

    import tvm
    from qcompiler import ref
    from qcompiler.codegen import lower as L
    from qcompiler.codegen.hostrun import HostRunner
    from qcompiler.schedules import impls, select
    real_select = select.select
    if kind is not None:
        select.select = lambda wl, t: select.Selection(impls.get_impl(kind, t.family), kind, "benchmark", None)
        L.clear_cache()
    try:
        lowered = L.lower_graph(graph, target)
    finally:
        select.select = real_select
    with tempfile.TemporaryDirectory(prefix="qc_bench_") as d:
        runner = HostRunner(lowered, d)
        if not all(np.array_equal(runner.run(feeds)[k], v) for k, v in ref.run(graph, feeds).items()):
            raise PeerError(f"our {lowered.records[0].impl} does not match the reference executor")
        call = lowered.calls[0]
        env = {**feeds, **lowered.constants}
        args = [tvm.runtime.tensor(np.ascontiguousarray(env[n])) if n in env else
                tvm.runtime.tensor(np.zeros(graph.value(n).shape, graph.value(n).dtype)) for n in call.args]
        # single calls, like the onnxruntime peer's median_ms: on a shared machine a batch of 10
        # calls is preempted more often than one 0.5 ms call, which biased the ratio against us
        r = runner.module.time_evaluator(call.symbol, tvm.cpu(), number=1, repeat=RUNS)(*args)
        return float(np.median(r.results)) * 1e3, lowered.records[0].impl


def measure_int8(target):
    rows = []
    for c, h, w, o in CONVS:
        g, feeds = _int8_graph("QConv2d", c, h, w, o)
        ours, impl = ours_int8_ms(g, feeds, target)
        rows.append({"name": f"conv3x3 {c}x{h}x{w}->{o}", "macs": c * o * 9 * h * w, "ours": ours, "impl": impl,
                     "generic": ours_int8_ms(g, feeds, target, "qconv2d_nchw_ocvec")[0],
                     "ort_int8": ort_conv(c, h, w, o, True), "litert_i8": _litert_ms("conv", c, h, w, o)})
    for m, kk in DENSES:
        g, feeds = _int8_graph("QDense", kk, 1, 1, kk, m)
        ours, impl = ours_int8_ms(g, feeds, target)
        rows.append({"name": f"dense M{m} K{kk}->N{kk}", "macs": m * kk * kk, "ours": ours, "impl": impl,
                     "generic": ours_int8_ms(g, feeds, target, "qdense_nvec")[0],
                     "ort_int8": ort_dense(m, kk, kk, True), "litert_i8": _litert_ms("dense", m, kk, kk)})
    for c, h, w, st in DEPTHWISE:
        g, feeds = _int8_graph("QConv2d", c, h, w, c, groups=c, stride=st)
        ours, impl = ours_int8_ms(g, feeds, target)
        oh, ow = (h - 1) // st + 1, (w - 1) // st + 1
        rows.append({"name": f"dw3x3 s{st} {c}x{h}x{w}", "macs": c * 9 * oh * ow, "ours": ours, "impl": impl,
                     "generic": ours_int8_ms(g, feeds, target, "qdepthwise_conv2d_nchw")[0],
                     "ort_int8": ort_conv(c, h, w, c, True, group=c, stride=st)})
    return rows


def print_int8_table(rows):
    print("int8 (ours: u8 x s8, selected kernel) vs the generic int8 kernel, onnxruntime int8 and LiteRT int8")
    print(f"{'workload':28s} {'ours ms':>9s} {'GMAC/s':>7s} {'generic':>9s} {'x gen':>6s} {'ORT i8':>8s} "
          f"{'x i8':>6s} {'LiteRT i8':>9s} {'x best i8':>9s}  kernel")
    for r in rows:
        gmacs = r["macs"] / (r["ours"] * 1e-3) / 1e9
        print(f"{r['name']:28s} {r['ours']:9.4f} {gmacs:7.0f} {r['generic']:9.4f} {r['generic'] / r['ours']:6.2f} "
              f"{r['ort_int8']:8.4f} {r['ort_int8'] / r['ours']:6.2f} {_opt_ms(r.get('litert_i8'), 9)} "
              f"{_best_int8(r) / r['ours']:9.2f}  {r['impl']}")
    print()


CONVS = [(256, 14, 14, 256), (64, 56, 56, 64)]
#: MobileNet-style int8 depthwise 3x3, pad 1: channels, height, width, stride (the late small layers
#: take the channels-in-lanes kernel, schedules/x86/int8_depthwise_cl.py)
DEPTHWISE = [(144, 56, 56, 1), (144, 56, 56, 2), (576, 14, 14, 1), (576, 14, 14, 2), (960, 7, 7, 1)]
DENSES = [(1, 1024), (1, 4096), (64, 1024), (64, 4096)]


def _peer(fn, *args, **kw):
    """A TVM peer's time, or None (reported) when its output is wrong."""
    try:
        return fn(*args, **kw)
    except PeerError as e:
        print(f"  peer refused: {e}", file=sys.stderr)
        return None


def _ratio(peer, ours):
    return f"{peer / ours:6.2f}" if peer else f"{'n/a':>6s}"


def _ms(v, width):
    return f"{v:{width}.4f}" if v else f"{'wrong':>{width}s}"


@functools.lru_cache(maxsize=None)
def _litert_ms(kind, *shape):
    """LiteRT int8 (XNNPACK) peer time (benchmarks/peers_litert.py), or None: not installed, or
    refused (reported) because its output does not match numpy."""
    import peers_litert
    if not peers_litert.available():
        return None
    try:
        return peers_litert.conv_ms(*shape, runs=RUNS) if kind == "conv" else peers_litert.dense_ms(*shape, runs=RUNS)
    except peers_litert.LiteRTError as e:
        print(f"  peer refused: {e}", file=sys.stderr)
        return None


def _best_int8(r):
    """The fastest int8 peer of a row (onnxruntime int8, LiteRT int8 when it ran)."""
    return min(v for v in (r["ort_int8"], r.get("litert_i8")) if v)


def _opt_ms(v, width):
    return f"{v:{width}.4f}" if isinstance(v, float) else f"{'-':>{width}s}"


def measure(target, bits=None):
    rows = []
    kw = {} if bits is None else {"abits": bits[0], "wbits": bits[1]}
    for c, h, w, o in CONVS:
        rows.append({"name": f"conv3x3 {c}x{h}x{w}->{o}", "macs": c * o * 9 * h * w,
                     "ours": ours_conv(c, h, w, o, target, bits),
                     "tvm_bs": _peer(tvm_bitserial_conv, c, h, w, o, target, **kw),
                     "ort_fp32": ort_conv(c, h, w, o, False), "ort_int8": ort_conv(c, h, w, o, True),
                     "litert_i8": _litert_ms("conv", c, h, w, o)})
    for m, kk in DENSES:
        rows.append({"name": f"dense M{m} K{kk}->N{kk}", "macs": m * kk * kk,
                     "ours": ours_dense(m, kk, kk, target, bits),
                     "tvm_bs": _peer(tvm_bitserial_dense, m, kk, kk, target, **kw),
                     "ort_fp32": ort_dense(m, kk, kk, False), "ort_int8": ort_dense(m, kk, kk, True),
                     "litert_i8": _litert_ms("dense", m, kk, kk)})
    return rows


def print_table(title, rows, peak, planes=1):
    print(title)
    print(f"{'workload':28s} {'ours ms':>9s} {'GOPS':>6s} {'%peak':>6s} {'TVM bs ms':>10s} {'x TVM':>6s} "
          f"{'ORT f32':>8s} {'x f32':>6s} {'ORT i8':>8s} {'LiteRT i8':>9s} {'x best i8':>9s} {'LCE':>8s} {'x LCE':>6s}")
    for r in rows:
        # binary ops actually executed: one per bit-plane pair
        gops = 2 * r["macs"] * planes / (r["ours"] * 1e-3) / 1e9
        print(f"{r['name']:28s} {r['ours']:9.4f} {gops:6.0f} {100 * gops / peak:5.0f}% "
              f"{_ms(r['tvm_bs'], 10)} {_ratio(r['tvm_bs'], r['ours'])} {r['ort_fp32']:8.4f} "
              f"{r['ort_fp32'] / r['ours']:6.2f} {r['ort_int8']:8.4f} {_opt_ms(r.get('litert_i8'), 9)} "
              f"{_best_int8(r) / r['ours']:9.2f} {_opt_ms(r.get('lce'), 8)} "
              f"{_ratio(r['lce'], r['ours']) if isinstance(r.get('lce'), float) else '-':>6s}")
    print()


def _peer_status(argv):
    """Prints whether LiteRT and LCE run; runs LCE (its own venv, ``--lce-python PATH`` or
    $QC_LCE_PYTHON) and returns {workload: ms} (empty when skipped)."""
    import argparse

    import peers_lce
    import peers_litert
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lce-python", default=os.environ.get("QC_LCE_PYTHON"),
                    help="python of a venv with larq-compute-engine (see benchmarks/peers_lce.py)")
    args = ap.parse_args(argv)
    if peers_litert.available():
        print(f"LiteRT: ai-edge-litert {peers_litert.version()}, XNNPACK int8, checked against numpy "
              f"(<= {peers_litert.TOLERANCE} step)")
    else:
        print("LiteRT: not installed (pip install '.[bench]')")
    if not args.lce_python:
        print("LCE: skipped (no --lce-python PATH / QC_LCE_PYTHON; see benchmarks/peers_lce.py)\n")
        return {}
    try:
        res = peers_lce.run(args.lce_python, RUNS)
    except RuntimeError as e:
        print(f"LCE: failed, skipped: {e}\n")
        return {}
    for name, v in res["rows"].items():
        if not isinstance(v, float):
            print(f"  LCE {name}: {v}", file=sys.stderr)
    print(f"LCE: larq-compute-engine {res['version']} under {args.lce_python}, output checked against numpy\n")
    return {k: v for k, v in res["rows"].items() if isinstance(v, float)}


def print_dense_bounds(rows, peak, wplanes=1, planes=1):
    """Dense rows against the roofline: each call streams the packed weights once (N*K/8 bytes
    per weight plane) at the read bandwidth measured now for a buffer of that size
    (popcount_peak.read_gbps: the cache level or DRAM it lives in), and executes ``2*MACs*planes``
    ops at most at the popcount peak; bound = max(memory time, compute time)."""
    from popcount_peak import read_gbps
    print(f"  dense vs the roofline ({wplanes} weight plane(s); > 100 % of the memory bound: part of the "
          f"weights stayed in a nearer cache between calls)")
    for r in rows:
        if not r["name"].startswith("dense"):
            continue
        kk = int(r["name"].split("K")[1].split("-")[0])
        nbytes = kk * kk // 8 * wplanes
        bw = read_gbps(nbytes)
        mem_ms = nbytes / (bw * 1e9) * 1e3
        ops = 2 * r["macs"] * planes
        cpu_ms = ops / (peak * 1e9) * 1e3
        bound = max(mem_ms, cpu_ms)
        print(f"  {r['name']:28s} weights {nbytes / 1024:6.0f} KB  read {bw:6.1f} GB/s  memory {mem_ms:8.4f} ms  "
              f"peak {cpu_ms:8.4f} ms  -> {'memory' if mem_ms > cpu_ms else 'compute'}-bound, "
              f"ours {100 * bound / r['ours']:4.0f}% of bound")
    print()


def main(argv=None) -> int:
    from qcompiler.targets import get_target
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from popcount_peak import peak_gops

    target = get_target("x86-avx512")
    if not target.runs_natively():
        target = get_target("x86-avx2")
    peak = peak_gops()
    vec_peak = peak.get("avx512", peak["scalar"])
    print(f"1 thread, medians of {RUNS} runs; XOR+POPCNT+ADD peak {vec_peak:.0f} GOPS; target {target.name}")
    lce = _peer_status(argv)
    a1w1 = measure(target)
    for r in a1w1:
        r["lce"] = lce.get(r["name"])
    print_table("binary A1W1 (ours) vs peers (LiteRT int8: XNNPACK; LCE: A1W1 bconv, one padding)", a1w1, vec_peak)
    print_dense_bounds(a1w1, vec_peak)
    # A2W2, weights 2u - 3 (TVM's unipolar): ours runs 2 activation x 2 weight planes, the offset
    # term once per pixel
    a2w2 = measure(target, (2, 2))
    print_table("A2W2 bitserial (ours, 2x2 planes; GOPS/%peak count plane ops) vs peers", a2w2, vec_peak, planes=4)
    print_dense_bounds(a2w2, vec_peak, wplanes=2, planes=4)
    from popcount_peak import vnni_gmacs
    vnni, a2w2_ceiling = vnni_gmacs(), vec_peak / 2 / 4      # 4 plane pairs per 2-bit MAC
    if vnni:
        print(f"  A2W2 ceiling: 4 plane pairs at the popcount peak = {a2w2_ceiling:.0f} GMAC/s; VNNI vpdpbusd "
              f"peak {vnni:.0f} GMAC/s u8xs8 -> compute-bound A2W2 is at most {a2w2_ceiling / vnni:.2f}x an "
              f"int8 kernel at the VNNI peak\n")
    print_int8_table(measure_int8(target))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
