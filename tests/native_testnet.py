"""Hand-made LoweredGraphs built from small TE kernels, for the AOT/package/runtime tests.

The net (batch 8):  x[8,32] --dense W1--> h1[8,64] --relu--> h2[8,64] (output "hidden")
  --view--> h2v[8,8,8] --flip+1,*3 (uses a workspace)--> h3[8,8,8] --view--> h3f[8,64]
  --relu (same kernel as before)--> h4[8,64] --dense W2--> logits[8,16] (output)

Kernels are parallel over rows (exercises the shim's pool) and one allocates a workspace. TVM
objects are built once per process and target.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from qcompiler.codegen.lowered import KernelCall, KernelRecord, LoweredGraph
from qcompiler.ir import Graph, Node, Value

B, D_IN, D_H, D_OUT = 8, 32, 64, 16


def _dense(te, tvm, n, k, m, name):
    A = te.placeholder((n, k), name="A", dtype="float32")
    W = te.placeholder((k, m), name="W", dtype="float32")
    r = te.reduce_axis((0, k), name="r")
    C = te.compute((n, m), lambda i, j: te.sum(A[i, r] * W[r, j], axis=r), name="C")
    return _parallel(tvm, te.create_prim_func([A, W, C]), name, "C")


def _relu(te, tvm, n, m, name):
    A = te.placeholder((n, m), name="A", dtype="float32")
    C = te.compute((n, m), lambda i, j: te.max(A[i, j], tvm.tirx.const(0, "float32")), name="C")
    return _parallel(tvm, te.create_prim_func([A, C]), name, "C")


def _flip_scale(te, tvm, shape, name):
    """out[i] = (x[n-1-i] + 1) * 3 with the +1 stage materialised (a workspace buffer)."""
    n = shape[0]
    A = te.placeholder(shape, name="A", dtype="float32")
    T = te.compute(shape, lambda i, j, k: A[i, j, k] + 1.0, name="T")
    C = te.compute(shape, lambda i, j, k: T[n - 1 - i, j, k] * 3.0, name="C")
    return tvm.IRModule({name: te.create_prim_func([A, C]).with_attr("global_symbol", name)})


def _parallel(tvm, func, name, block):
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name)})
    sch = tvm.s_tir.Schedule(mod)
    sch.work_on(name)
    loops = sch.get_loops(sch.get_sblock(block))
    sch.parallel(loops[0])
    return sch.mod


@lru_cache(maxsize=None)
def kernel_objects(target_name: str = "host") -> dict:
    """symbol -> object bytes for the test net's kernels, built for ``target_name``."""
    import os
    import tempfile

    import tvm
    from tvm import te

    from qcompiler.targets import get_target

    target = get_target(target_name).tvm_target()
    mods = {
        "dense_8x32x64": _dense(te, tvm, B, D_IN, D_H, "dense_8x32x64"),
        "relu_8x64": _relu(te, tvm, B, D_H, "relu_8x64"),
        "flip_scale_8x8x8": _flip_scale(te, tvm, (B, 8, 8), "flip_scale_8x8x8"),
        "dense_8x64x16": _dense(te, tvm, B, D_H, D_OUT, "dense_8x64x16"),
    }
    objects = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sym, mod in mods.items():
            path = os.path.join(tmp, sym + ".o")
            tvm.compile(mod, target=target).mod.write_to_file(path)
            with open(path, "rb") as f:
                objects[sym] = f.read()
    return objects


def weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(D_IN, D_H)) / np.sqrt(D_IN)).astype(np.float32)
    w2 = (rng.normal(size=(D_H, D_OUT)) / np.sqrt(D_H)).astype(np.float32)
    return w1, w2


def make_lowered(target_name: str = "host", seed: int = 0) -> LoweredGraph:
    w1, w2 = weights(seed)
    g = Graph("testnet")
    g.add_value(Value("x", (B, D_IN), "float32"))
    g.inputs.append("x")
    g.add_const("W1", w1)
    g.add_const("W2", w2)
    for name, shape in (("h1", (B, D_H)), ("h2", (B, D_H)), ("h2v", (B, 8, 8)), ("h3", (B, 8, 8)),
                        ("h3f", (B, D_H)), ("h4", (B, D_H)), ("logits", (B, D_OUT))):
        g.add_value(Value(name, shape, "float32"))
    g.add_node(Node("MatMul", "fc1", ["x", "W1"], ["h1"]))
    g.add_node(Node("Relu", "relu1", ["h1"], ["h2"]))
    g.add_node(Node("Reshape", "view1", ["h2"], ["h2v"]))
    g.add_node(Node("FlipScale", "flip", ["h2v"], ["h3"]))
    g.add_node(Node("Reshape", "view2", ["h3"], ["h3f"]))
    g.add_node(Node("Relu", "relu2", ["h3f"], ["h4"]))
    g.add_node(Node("MatMul", "fc2", ["h4", "W2"], ["logits"]))
    g.outputs = ["logits", "h2"]
    calls = [
        KernelCall("fc1", "kernel", "dense_8x32x64", ["x", "W1", "h1"]),
        KernelCall("relu1", "kernel", "relu_8x64", ["h1", "h2"]),
        KernelCall("view1", "alias", None, ["h2", "h2v"]),
        KernelCall("flip", "kernel", "flip_scale_8x8x8", ["h2v", "h3"]),
        KernelCall("view2", "alias", None, ["h3", "h3f"]),
        KernelCall("relu2", "kernel", "relu_8x64", ["h3f", "h4"]),
        KernelCall("fc2", "kernel", "dense_8x64x16", ["h4", "W2", "logits"]),
    ]
    records = [KernelRecord(node=c.node, op=g.node(c.node).op, symbol=c.symbol, impl="te_test_" + str(c.symbol),
                            config={"parallel": "rows"}, macs=0) for c in calls]
    return LoweredGraph(graph=g, target_name=target_name, calls=calls, objects=kernel_objects(target_name),
                        constants={"W1": w1, "W2": w2}, records=records)


def reference(x: np.ndarray, seed: int = 0) -> dict:
    w1, w2 = weights(seed)
    h2 = np.maximum(x @ w1, 0)
    h3 = (h2.reshape(B, 8, 8)[::-1] + 1.0) * 3.0
    h4 = np.maximum(h3.reshape(B, D_H), 0)
    return {"logits": h4 @ w2, "h2": h2}


def sample_input(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(B, D_IN)).astype(np.float32)
