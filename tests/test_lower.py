"""lower_graph: whole graphs to a LoweredGraph (calls, shared objects, constants, records, errors)."""

import numpy as np
import pytest

from lowering_helpers import assert_close, run_both, single_node_graph
from qcompiler.codegen.lower import LowerConfig, lower_graph
from qcompiler.codegen.macs import graph_macs, node_macs
from qcompiler.errors import ConfigError, UnsupportedError
from qcompiler.ir import Graph, Node, Value
from qcompiler.ref import infer_outputs

rng = np.random.default_rng(5)


class Builder:
    """Builds a graph node by node with shapes from the reference's inference."""

    def __init__(self, name="net"):
        self.g = Graph(name)
        self.n = 0

    def input(self, name, shape, dtype="float32"):
        self.g.add_value(Value(name, shape, dtype))
        self.g.inputs.append(name)
        return name

    def const(self, arr):
        name = f"c{len(self.g.values)}"
        self.g.add_const(name, arr)
        return name

    def node(self, op, inputs, **attrs):
        self.n += 1
        specs = []
        for i in inputs:
            if not i:
                specs.append(None)
                continue
            v = self.g.values[i]
            specs.append((v.shape, v.dtype, v.data))
        (shape, dtype), *_ = infer_outputs(op, specs, attrs)
        out = f"t{self.n}"
        self.g.add_value(Value(out, shape, dtype))
        self.g.add_node(Node(op, f"{op.lower()}{self.n}", list(inputs), [out], attrs))
        return out


def conv(b, x, cin, cout, k=3, stride=1, group=1):
    w = b.const(rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) * 0.2)
    bias = b.const(rng.standard_normal(cout).astype(np.float32) * 0.1)
    p = k // 2
    return b.node("Conv", [x, w, bias], kernel_shape=(k, k), strides=(stride, stride), pads=(p, p, p, p),
                  dilations=(1, 1), group=group)


def small_cnn():
    """A ResNet/MobileNet-flavoured CNN: conv, BN, ReLU6, depthwise, residual add, pools, Flatten, Gemm."""
    b = Builder("cnn")
    x = b.input("input", (1, 3, 17, 15))
    y = conv(b, x, 3, 8, stride=2)
    y = b.node("Clip", [y, b.const(np.array(0, np.float32)), b.const(np.array(6, np.float32))])
    z = conv(b, y, 8, 8, group=8)
    z = b.node("Relu", [z])
    z = conv(b, z, 8, 8, k=1)
    y = b.node("Add", [y, z])
    z = conv(b, y, 8, 8, k=1)  # same workload as the previous 1x1 conv: one object
    y = b.node("Add", [y, z])
    y = b.node("MaxPool", [y], kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1),
               ceil_mode=1, storage_order=0)
    y = b.node("GlobalAveragePool", [y])
    y = b.node("Flatten", [y], axis=1)
    w = b.const(rng.standard_normal((10, 8)).astype(np.float32))
    y = b.node("Gemm", [y, w, b.const(np.zeros(10, np.float32))], alpha=1.0, beta=1.0, transA=0, transB=1)
    y = b.node("Softmax", [y], axis=1)
    b.g.outputs = [y]
    b.g.verify()
    return b.g


def test_small_cnn_matches_reference(tmp_path):
    g = small_cnn()
    x = rng.standard_normal((1, 3, 17, 15)).astype(np.float32)
    lowered, got, exp = run_both(g, {"input": x}, tmp_path)
    assert_close(got, exp, rtol=1e-5)
    kinds = [c.kind for c in lowered.calls]
    assert kinds.count("alias") == 1 and len(kinds) == len(g.nodes)
    # the two identical 1x1 convs share one kernel object
    syms = [c.symbol for c in lowered.calls if c.kind == "kernel"]
    assert len(set(syms)) == len(lowered.objects) < len(syms)
    # weights are packed constants, not the raw ones
    packed = [n for n in lowered.constants if "__ocvec" in n]
    assert packed and all(lowered.graph.values[n].is_const for n in lowered.constants)
    for call in lowered.calls:
        for name in call.args:
            assert name in lowered.graph.values
    # records: one per node, MACs from macs.py, configs recorded
    assert [r.node for r in lowered.records] == [n.name for n in g.nodes]
    assert sum(r.macs for r in lowered.records) == graph_macs(g) > 0
    assert all(r.config for r in lowered.records if r.impl != "alias")


def test_symbols_and_objects_are_deterministic():
    g = small_cnn()
    a = lower_graph(g, "host")
    b = lower_graph(g, "host", config=LowerConfig(cache_size=0))  # rebuilt, not cached
    assert [c.symbol for c in a.calls] == [c.symbol for c in b.calls]
    assert a.objects == b.objects
    for sym, obj in a.objects.items():
        assert f"__tvm_ffi_{sym}".encode() in obj


def test_tuning_overrides_knobs(tmp_path):
    x = rng.standard_normal((1, 4, 9, 10)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    g = single_node_graph("Conv", [(x, False), (w, True)], dict(kernel_shape=(3, 3), strides=(1, 1),
                                                               pads=(1, 1, 1, 1), dilations=(1, 1), group=1))
    base = lower_graph(g, "host")
    from qcompiler.codegen.lower import workload_of

    key = workload_of(g, g.nodes[0]).key()
    tuned = lower_graph(g, "host", tuning={key: {"vo": 4, "tile_ow": 3}})
    assert tuned.records[0].config["vo"] == 4 and tuned.records[0].config["tile_ow"] == 3
    assert tuned.calls[0].symbol != base.calls[0].symbol
    from qcompiler.codegen.hostrun import run_lowered
    from qcompiler import ref

    got = run_lowered(tuned, {"in0": x}, str(tmp_path))
    assert_close(got, ref.run(g, {"in0": x}))
    with pytest.raises(UnsupportedError, match="unknown schedule knob"):
        lower_graph(g, "host", tuning={key: {"bogus": 1}})


def test_unsupported_nodes_are_all_listed():
    b = Builder("bad")
    x = b.input("x", (1, 2, 5))
    y = b.node("Erf", [x])
    w = b.const(rng.standard_normal((3, 2, 3)).astype(np.float32))
    y = b.node("Conv", [y, w], kernel_shape=(3,), strides=(1,), pads=(1, 1), dilations=(1,), group=1)
    y = b.node("Relu", [y])
    b.g.outputs = [y]
    with pytest.raises(UnsupportedError) as e:
        lower_graph(b.g, "host")
    msg = str(e.value)
    assert "2 node(s)" in msg and "'erf1' (Erf)" in msg and "'conv2' (Conv)" in msg and "2-D" in msg


def test_view_of_constant_becomes_constant(tmp_path):
    b = Builder("views")
    x = b.input("x", (2, 6))
    c = b.const(rng.standard_normal((3, 2)).astype(np.float32))
    r = b.node("Reshape", [c], shape=(6,))
    y = b.node("Add", [x, r])
    y = b.node("Reshape", [y], shape=(3, 4))
    b.g.outputs = [y]
    lowered, got, exp = run_both(b.g, {"x": rng.standard_normal((2, 6)).astype(np.float32)}, tmp_path)
    assert_close(got, exp)
    assert [c.kind for c in lowered.calls] == ["kernel", "alias"]
    assert "t1" in lowered.constants


def test_int8_graph(tmp_path):
    """Quantize -> QConv2d (uint8 out) -> QAdd -> Dequantize, bit-exact with the reference."""
    from qcompiler.ref.ops.requant import quantize_multipliers

    b = Builder("int8")
    x = b.input("x", (1, 4, 7, 9))
    q = b.node("QuantizeLinear", [x, b.const(np.array(0.02, np.float32)), b.const(np.array(128, np.uint8))],
               axis=1, block_size=0, output_dtype="uint8", precision="")
    m, s = quantize_multipliers(rng.uniform(1e-3, 4e-3, 4))
    w = b.const(rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8))
    c = b.node("QConv2d", [q, w, b.const(rng.integers(-900, 900, 4).astype(np.int32)), b.const(m), b.const(s)],
               strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1, x_zero_point=128, w_zero_point=0,
               out="uint8", out_zero_point=120, out_min=120, out_max=255, requant="fixed_point")
    a = b.node("QAdd", [c, q], a_zero_point=120, b_zero_point=128, out="uint8", out_zero_point=125, out_min=0,
               out_max=255, requant="fixed_point", a_multiplier=1 << 30, b_multiplier=(1 << 30) - 7, shift=31)
    y = b.node("DequantizeLinear", [a, b.const(np.array(0.03, np.float32)), b.const(np.array(125, np.uint8))],
               axis=1, block_size=0, output_dtype="float32")
    b.g.outputs = [y]
    feeds = {"x": rng.uniform(-2, 2, (1, 4, 7, 9)).astype(np.float32)}
    lowered, got, exp = run_both(b.g, feeds, tmp_path)
    np.testing.assert_array_equal(got[y], exp[y])
    assert lowered.records[1].bits == {"x": 8, "w": 8, "out": 8}


def test_macs_counts():
    g = small_cnn()
    convs = [n for n in g.nodes if n.op == "Conv"]
    first = convs[0]  # 3 -> 8 channels, 3x3, stride 2 on 17x15 -> 9x8
    assert node_macs(g, first) == 8 * 9 * 8 * 3 * 9
    dw = convs[1]
    assert node_macs(g, dw) == 8 * 9 * 8 * 1 * 9
    gemm = [n for n in g.nodes if n.op == "Gemm"][0]
    assert node_macs(g, gemm) == 10 * 8
    assert node_macs(g, [n for n in g.nodes if n.op == "Relu"][0]) == 0


def test_lower_config_validates():
    with pytest.raises(ConfigError):
        LowerConfig(cache_size=-1)
    with pytest.raises(ConfigError):
        LowerConfig(symbol_prefix="no-dash")
    with pytest.raises(ConfigError, match="unknown lowering option"):
        lower_graph(small_cnn(), "host", config={"bogus": 1})
    with pytest.raises(ConfigError, match="tuning file"):
        lower_graph(small_cnn(), "host", tuning="/nonexistent/tuning.json")


@pytest.mark.parametrize("target", ["x86-avx2", "aarch64", "rpi3-armv7", "riscv64-rvv"])
def test_cross_targets_build(target):
    """The same kernels build for the other families (run under qemu in the cross-target tests)."""
    g = small_cnn()
    lowered = lower_graph(g, target)
    fam = {"x86-avx2": "x86", "aarch64": "arm", "rpi3-armv7": "arm", "riscv64-rvv": "riscv"}[target]
    assert all(r.impl.endswith(f"__{fam}") for r in lowered.records if r.impl != "alias")
    assert lowered.objects and lowered.target_name == target
