"""Binary/bitserial graphs through the lowering (selection table, compile-time constants, kernels),
bit-exact against the reference executor; and end to end through ``qc.compile`` / ``qc.load``."""

import numpy as np
import pytest

import qcompiler as qc
from lowering_helpers import check_op, single_node_graph
from passes_util import Builder
from qcompiler.codegen.lower import lower_graph
from qcompiler.errors import UnsupportedError
from qcompiler.ref import run as ref_run
from qcompiler.ref.ops.bits import pack_planes, pack_sign

pytest.importorskip("tvm")


def small_binary_cnn(seed=1):
    """conv-BN-ReLU x3, max pool, stride-2 conv, global pool, dense: odd-free but every packed op."""
    b = Builder(seed=seed)
    x = b.input("x", (1, 3, 13, 11))
    y = b.node("Relu", [b.bn(b.conv(x, 16, bias=False))])
    y = b.node("Relu", [b.bn(b.conv(y, 20, bias=False))])
    y = b.node("MaxPool", [y], kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1),
               ceil_mode=0, storage_order=0)
    y = b.node("Relu", [b.bn(b.conv(y, 70, bias=False, stride=2))])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    return b.done(b.gemm(y, 10))


def assert_all_equal(graph, got, exp):
    for node in graph.nodes:
        for name in node.outputs:
            a, e = got[name], exp[name]
            assert a.shape == e.shape and a.dtype == e.dtype, f"{node.op} {name}"
            if e.dtype.kind == "f":
                np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5, err_msg=f"{node.op} {name}")
            else:
                np.testing.assert_array_equal(a, e, err_msg=f"{node.op} {name}")


def test_binary_net_lowers_bit_exact(tmp_path):
    from qcompiler.codegen.hostrun import run_lowered

    q = qc.quantize(small_binary_cnn(), qc.QuantConfig(weights=1, activations=1))
    ops = {n.op for n in q.nodes}
    assert {"BitPack", "BinaryConv2d", "PackedMaxPool", "BinaryDense"} <= ops, ops
    lowered = lower_graph(q, "host")
    impls = {r.op: r.impl for r in lowered.records}
    assert impls["BinaryConv2d"].startswith("bconv2d_nhwc__") and impls["PackedMaxPool"].startswith("packed_maxpool")
    assert not [r for r in lowered.records if r.fallback]
    # prepared constants flow into LoweredGraph.constants (blocked weights, correction tables)
    assert any("__blk" in name for name in lowered.constants) and any("__base" in name for name in lowered.constants)
    feeds = {"x": np.random.default_rng(0).normal(size=(1, 3, 13, 11)).astype(np.float32)}
    got = run_lowered(lowered, feeds, str(tmp_path / "run"), keep_all=True)
    assert_all_equal(q, got, ref_run(q, feeds, keep_all=True))


def test_binary_net_end_to_end_module(tmp_path):
    q = qc.quantize(small_binary_cnn(seed=2), qc.QuantConfig(weights=1, activations=1))
    qc.compile(q, target="host").export(str(tmp_path / "net"))
    module = qc.load(str(tmp_path / "net"))
    for seed in range(2):
        feeds = {"x": np.random.default_rng(seed).normal(size=(1, 3, 13, 11)).astype(np.float32)}
        got, exp = module.run(feeds), ref_run(q, feeds)
        for name in exp:
            np.testing.assert_allclose(got[name], exp[name], rtol=1e-5, atol=1e-5)


def test_bitserial_net_lowers_bit_exact(tmp_path):
    from qcompiler.codegen.hostrun import run_lowered

    g = small_binary_cnn(seed=3)
    rng = np.random.default_rng(4)
    cal = [{"x": rng.normal(size=(1, 3, 13, 11)).astype(np.float32)} for _ in range(2)]
    q = qc.quantize(g, qc.QuantConfig(weights=2, activations=2), calibration=cal)
    assert {"BitserialConv2d", "BitserialDense"} <= {n.op for n in q.nodes}
    lowered = lower_graph(q, "host")
    got = run_lowered(lowered, cal[0], str(tmp_path / "run"), keep_all=True)
    assert_all_equal(q, got, ref_run(q, cal[0], keep_all=True))


# -- single nodes: epilogues, groups, odd shapes ------------------------------------------------------

def _epilogue(kind, o, rng):
    if kind == "float":
        return {"out": "float"}, [rng.normal(0, 0.1, o).astype(np.float32), rng.normal(0, 1, o).astype(np.float32)]
    if kind == "int8":
        return ({"out": "int8", "requant": "fixed_point", "out_zero_point": -3, "out_min": -100, "out_max": 127},
                [rng.integers(1 << 30, (1 << 31) - 1, o).astype(np.int32), rng.integers(4, 10, o).astype(np.int32)])
    if kind == "packed":
        return ({"out": "packed", "out_word_bits": 8},
                [rng.integers(-20, 20, o).astype(np.int32), rng.integers(0, 2, o).astype(np.uint8)])
    return {"out": "int32"}, []


@pytest.mark.parametrize("epi,groups", [("packed", 1), ("int8", 2), ("float", 1)])
def test_binary_conv_node_exact(epi, groups, tmp_path):
    rng = np.random.default_rng(7)
    c, o = 128, 22 if groups == 1 else 32
    x = pack_sign(rng.normal(size=(1, c, 7, 6)), 64 if groups == 1 else 32)
    w = pack_sign(rng.normal(size=(o, c // groups, 3, 3)), x.dtype.itemsize * 8)
    attrs, extra = _epilogue(epi, o, rng)
    attrs.update(in_channels=c, groups=groups, kernel_shape=(3, 3), strides=(2, 2), pads=(1, 0, 1, 1),
                 dilations=(1, 1), pad_value=0)
    check_op("BinaryConv2d", [(x, False), (w, True)] + [(e, True) for e in extra], attrs, tmp_path)


@pytest.mark.parametrize("op", ["BinaryDense", "BitserialDense"])
def test_lowbit_dense_node_packed_epilogue(op, tmp_path):
    rng = np.random.default_rng(8)
    m, k, n = 3, 100, 37
    attrs, extra = _epilogue("packed", n, rng)
    if op == "BinaryDense":
        x, w = pack_sign(rng.normal(size=(m, k)), 32), pack_sign(rng.normal(size=(n, k)), 32)
        attrs.update(in_features=k)
    else:
        x, w = pack_planes(rng.integers(0, 4, (m, k)), 2, 32), pack_planes(rng.integers(0, 4, (n, k)), 2, 32)
        attrs.update(in_features=k, act_bits=2, weight_bits=2, w_mult=2, w_offset=3)
    check_op(op, [(x, False), (w, True)] + [(e, True) for e in extra], attrs, tmp_path)


def test_runtime_weights_are_refused_with_the_reason(tmp_path):
    rng = np.random.default_rng(9)
    x, w = pack_sign(rng.normal(size=(2, 64)), 64), pack_sign(rng.normal(size=(8, 64)), 64)
    g = single_node_graph("BinaryDense", [(x, False), (w, False)], {"in_features": 64, "out": "int32"})
    with pytest.raises(UnsupportedError, match="must be compile-time constants"):
        lower_graph(g, "host")
