"""fuse_residual: Add(BinaryConv2d float out, r) -> one BinaryConv2d with residual=1, bit-identical."""

import numpy as np
import pytest

from qcompiler import ref
from qcompiler.passes.fuse_residual import fuse_residual
from qcompiler.ref.ops import bits

from passes_util import Builder

WB = 32


def _bconv(b, x, out_ch, stride=1):
    """BitPack(sign) + BinaryConv2d 3x3 with a float epilogue, like a binarized Bi-Real conv."""
    c = b.g.values[x].shape[1]
    packed = b.node("BitPack", [x], mode="sign", word_bits=WB)
    w = bits.pack_weight_sign(np.where(b.rng.random((out_ch, c, 3, 3)) < 0.5, -1.0, 1.0), WB)
    scale = (b.rng.random(out_ch) * 0.3).astype(np.float32)
    bias = b.rng.normal(size=out_ch).astype(np.float32)
    return b.node("BinaryConv2d", [packed, b.const(w), b.const(scale), b.const(bias)], in_channels=c, groups=1,
                  kernel_shape=(3, 3), strides=(stride, stride), pads=(1, 1, 1, 1), dilations=(1, 1),
                  pad_value=0, out="float")


def _blocks():
    """Two Bi-Real blocks: identity shortcut (Add(conv, x)) and a downsampling one whose shortcut
    (AvgPool + 1x1 conv) is the Add's *first* operand; then a third conv whose output is shared."""
    b = Builder(seed=3)
    x = b.input("x", (2, 24, 8, 8))
    y = b.node("Add", [_bconv(b, x, 24), x])
    sc = b.conv(b.node("AveragePool", [y], kernel_shape=(2, 2), strides=(2, 2), dilations=(1, 1), pads=(0, 0, 0, 0), ceil_mode=0, count_include_pad=0), 40, k=1, pad=0)
    y = b.node("Add", [sc, _bconv(b, y, 40, stride=2)])
    shared = _bconv(b, y, 40)
    z = b.node("Add", [shared, y])
    return b.done(b.node("Mul", [z, shared]))


def _run(g, x):
    return ref.run(g, {"x": x})[g.outputs[0]]


def test_fuses_both_operand_orders_bit_identically():
    g = _blocks()
    f = fuse_residual(g)
    convs = [n for n in f.nodes if n.op == "BinaryConv2d"]
    assert [int(n.attrs.get("residual", 0)) for n in convs] == [1, 1, 0]
    assert [n.op for n in f.nodes].count("Add") == 1          # the shared conv output keeps its Add
    assert convs[0].inputs[4] == "x"
    assert f.producers()[convs[1].inputs[4]].op == "Conv"     # the 1x1 shortcut, computed after the conv
    x = np.random.default_rng(0).normal(size=(2, 24, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(f, x), _run(g, x))     # bit-identical, not just close
    assert fuse_residual(f).nodes == f.nodes                  # idempotent


def test_broadcast_add_and_graph_output_conv_are_left_alone():
    b = Builder()
    x = b.input("x", (1, 16, 4, 4))
    conv = _bconv(b, x, 16)
    bias = b.const(np.ones((1, 16, 1, 1), np.float32))
    g = b.done(b.node("Add", [conv, bias]))
    assert [n.op for n in fuse_residual(g).nodes] == ["BitPack", "BinaryConv2d", "Add"]
    b = Builder()
    x = b.input("x", (1, 16, 4, 4))
    conv = _bconv(b, x, 16)
    g = b.done(b.node("Add", [conv, x]), conv)
    assert [n.op for n in fuse_residual(g).nodes] == ["BitPack", "BinaryConv2d", "Add"]


@pytest.mark.parametrize("keep", [None, 8])
def test_w1a1_quantize_fuses_the_bireal_shortcuts(keep):
    """The W1A1 pipeline ends with the fusion: no float Add after a binary conv is left."""
    import qcompiler as qc
    from qcompiler.quant.config import QuantConfig

    b = Builder(seed=5)

    def sign(v):  # the form a hard-tanh STE exports to: Where(x >= 0, 1, -1)
        ge = b.node("GreaterOrEqual", [v, b.const(np.float32(0))])
        return b.node("Where", [ge, b.const(np.float32(1)), b.const(np.float32(-1))])

    def pm1_weights(c):
        return np.where(b.rng.random((c, c, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)

    x = b.input("x", (1, 16, 8, 8))
    stem = b.conv(x, 16)
    y = b.node("Add", [b.bn(b.conv(sign(stem), 16, bias=False, weights=pm1_weights(16))), stem])
    y = b.node("Add", [y, b.bn(b.conv(sign(y), 16, bias=False, weights=pm1_weights(16)))])
    head = b.gemm(b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), 4)
    net = b.done(head)
    calib = [{"x": np.random.default_rng(i).normal(size=(1, 16, 8, 8)).astype(np.float32)} for i in range(2)]
    q = qc.quantize(net, QuantConfig(weights=1, activations=1, keep_first_last=keep), calibration=calib)
    ops = [n.op for n in q.nodes]
    assert ops.count("BinaryConv2d") == 2 and "Add" not in ops, ops
    assert all(int(n.attrs.get("residual", 0)) for n in q.nodes if n.op == "BinaryConv2d")


# -- compiled: the fused kernels bit-exact against the reference executor --------------------------

def _bsconv(b, x, o, wb=64):
    """BitPack(unsigned, 2 bits) + BitserialConv2d A2W2 3x3 with a float epilogue."""
    c = b.g.values[x].shape[1]
    codes = b.node("Cast", [b.node("Clip", [b.node("Round", [x]), b.const(np.float32(0)), b.const(np.float32(3))])],
                   to="int32")
    packed = b.node("BitPack", [codes], mode="unsigned", word_bits=wb, bits=2)
    w = bits.pack_planes(b.rng.integers(0, 4, (o, c, 3, 3)), 2, wb)
    scale = (b.rng.random(o) * 0.3).astype(np.float32)
    bias = b.rng.normal(size=o).astype(np.float32)
    return b.node("BitserialConv2d", [packed, b.const(w), b.const(scale), b.const(bias)], in_channels=c, groups=1,
                  kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), act_bits=2,
                  weight_bits=2, w_mult=1, w_offset=0, out="float")


def fused_kernels_graph(c=64, h=10, w=14, wb=64):
    """Residual convs in both binary layouts (C = one word: pixels in the lanes; wider: channels),
    stride 2 with a strided 1x1 conv shortcut, and a bitserial one; every fused output is an output.
    (The float shortcuts are exact, see _select_conv; the Bi-Real AvgPool one is in the pass tests.)"""
    b = Builder(seed=7)
    x = b.input("x", (1, c, h, w))
    y1 = b.node("Add", [_bconv_wb(b, x, c, 1, wb), x])
    y2 = b.node("Add", [_select_conv(b, y1, c + 32), _bconv_wb(b, y1, c + 32, 1, wb)])
    y3 = b.node("Add", [_bconv_wb(b, y2, c + 32, 1, wb), y2])
    sc = _select_conv(b, y3, 40, stride=2)
    y4 = b.node("Add", [sc, _bconv_wb(b, y3, 40, 2, wb)])
    y5 = b.node("Add", [_bsconv(b, y4, 40, wb), y4])
    g = b.done(y1, y2, y3, y4, y5)
    feeds = {"x": np.random.default_rng(1).normal(size=(1, c, h, w)).astype(np.float32)}
    return g, feeds


def _select_conv(b, x, out_ch, stride=1):
    """A 1x1 shortcut conv whose float result is exact in any summation order (one weight 0.5 per
    output channel): the compiled graph then matches the reference bit for bit before the fusion."""
    c = b.g.values[x].shape[1]
    w = np.zeros((out_ch, c, 1, 1), np.float32)
    w[np.arange(out_ch), np.arange(out_ch) % c] = 0.5
    return b.conv(x, out_ch, k=1, pad=0, bias=False, weights=w, stride=stride)


def _bconv_wb(b, x, out_ch, stride, wb):
    global WB
    old, WB = WB, wb
    try:
        return _bconv(b, x, out_ch, stride)
    finally:
        WB = old


def test_fused_kernels_bit_exact_natively(tmp_path):
    pytest.importorskip("tvm")
    import qcompiler as qc

    g, feeds = fused_kernels_graph()
    f = fuse_residual(g)
    fused = [n for n in f.nodes if int(n.attrs.get("residual", 0))]
    assert len(fused) == 5 and "Add" not in [n.op for n in f.nodes]
    qc.compile(f, target="host").export(tmp_path / "m")
    m = qc.load(tmp_path / "m")
    got = m.run(feeds)
    want = ref.run(g, feeds)                                  # the unfused graph
    for name in g.outputs:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("target", ["rpi4", "rpi3-armv7", "riscv64", "riscv64-rvv"])
def test_fused_kernels_bit_exact_under_qemu(target, tmp_path):
    """The same graph, smaller, cross-compiled and run under qemu-user (NEON aarch64 / armv7,
    scalar rv64, RVV)."""
    pytest.importorskip("tvm")
    from test_kernels_cross import _compile, _run_and_compare, _skip_without

    _skip_without(target)
    g, feeds = fused_kernels_graph(h=6, w=8)
    _compile(fuse_residual(g), target, tmp_path / "m")
    _run_and_compare(tmp_path / "m", g, feeds)               # against the unfused graph's reference


def test_later_passes_leave_a_fused_epilogue_alone():
    """A BN or a sign BitPack after a fused conv is not per-channel affine / a threshold of acc."""
    from qcompiler.passes.bitpack import bitpack
    from qcompiler.passes.fold_batchnorm import fold_batchnorm

    b = Builder(seed=2)
    x = b.input("x", (1, 16, 5, 5))
    y = b.node("Add", [_bconv(b, x, 16), x])
    g = b.done(b.bn(y), b.node("BitPack", [y], mode="sign", word_bits=WB))
    f = fuse_residual(g)
    assert [n.op for n in f.nodes] == ["BitPack", "BinaryConv2d", "BatchNormalization", "BitPack"]
    feeds = {"x": np.random.default_rng(4).normal(size=(1, 16, 5, 5)).astype(np.float32)}
    want = ref.run(g, feeds)
    for h in (fold_batchnorm(f), bitpack(f, word_bits=WB)):
        assert [n.op for n in h.nodes] == [n.op for n in f.nodes]
        got = ref.run(h, feeds)
        for name in g.outputs:
            np.testing.assert_array_equal(got[name], want[name])
