"""``qc.quantize(..., target=)`` packs binary/bitserial layers in the target's word width
(``choose_word_bits``), and such a graph lowers bit-exact against the reference executor."""

import numpy as np
import pytest

import qcompiler as qc
from passes_util import Builder
from qcompiler.ref import run as ref_run

PACKED = ("BitPack", "PackedMaxPool", "BinaryConv2d", "BinaryDense", "BitserialConv2d", "BitserialDense")


def _cnn(seed=5):
    b = Builder(seed=seed)
    x = b.input("x", (1, 3, 9, 7))
    y = b.node("Relu", [b.bn(b.conv(x, 16, bias=False))])
    y = b.node("Relu", [b.bn(b.conv(y, 70, bias=False))])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    return b.done(b.gemm(y, 10))


def _word_dtypes(g):
    """dtypes of every packed tensor: packed producers' outputs and the low-bit layers' weights."""
    out = set()
    for n in g.nodes:
        if n.op in ("BitPack", "PackedMaxPool") or n.attrs.get("out") == "packed":
            out |= {g.value(o).dtype for o in n.outputs}
        if n.op in PACKED[2:]:
            out |= {g.value(n.inputs[0]).dtype, g.value(n.inputs[1]).dtype}
    return out


@pytest.mark.parametrize("target,want", [("x86-avx2", {"uint64"}), ("aarch64", {"uint64"}),
                                         ("rpi3-armv7", {"uint32"}), (None, {"uint32"})])
def test_binary_words_follow_the_target(target, want):
    q = qc.quantize(_cnn(), qc.QuantConfig(weights=1, activations=1), target=target)
    assert {n.op for n in q.nodes} >= {"BinaryConv2d", "BinaryDense"}
    assert _word_dtypes(q) == want


def test_bitserial_words_follow_the_target():
    rng = np.random.default_rng(1)
    cal = [{"x": rng.normal(size=(1, 3, 9, 7)).astype(np.float32)} for _ in range(2)]
    q = qc.quantize(_cnn(), qc.QuantConfig(weights=2, activations=2), calibration=cal, target="x86-avx2")
    assert "BitserialConv2d" in {n.op for n in q.nodes}
    assert _word_dtypes(q) == {"uint64"}


def test_host_words_lower_bit_exact(tmp_path):
    pytest.importorskip("tvm")
    from qcompiler.codegen.hostrun import run_lowered
    from qcompiler.codegen.lower import lower_graph
    from qcompiler.passes.bitpack import choose_word_bits

    q = qc.quantize(_cnn(seed=6), qc.QuantConfig(weights=1, activations=1), target="host")
    assert _word_dtypes(q) == {f"uint{choose_word_bits('host')}"}
    feeds = {"x": np.random.default_rng(0).normal(size=(1, 3, 9, 7)).astype(np.float32)}
    lowered = lower_graph(q, "host")
    from qcompiler.targets import resolve

    if resolve("host").has("avx512"):
        # the convs have one 64-bit word per pixel: the x86 AVX-512 default is the pixel-vector layout
        assert any(r.config.get("layout") == "pixels" for r in lowered.records)
    got = run_lowered(lowered, feeds, str(tmp_path / "run"), keep_all=True)
    exp_all = ref_run(q, feeds, keep_all=True)
    for name in (o for n in q.nodes for o in n.outputs):
        exp = exp_all[name]
        if exp.dtype.kind == "f":
            np.testing.assert_allclose(got[name], exp, rtol=1e-5, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], exp, err_msg=name)


def test_compile_hints_at_narrow_words(caplog):
    pytest.importorskip("tvm")
    from qcompiler.api import _hint_word_bits
    from qcompiler.targets import resolve

    q32 = qc.quantize(_cnn(), qc.QuantConfig(weights=1, activations=1))
    with caplog.at_level("WARNING", logger="qcompiler.api"):
        _hint_word_bits(q32, resolve("x86-avx2"))
    assert "target='x86-avx2'" in caplog.text
    q64 = qc.quantize(_cnn(), qc.QuantConfig(weights=1, activations=1), target="x86-avx2")
    caplog.clear()
    with caplog.at_level("WARNING", logger="qcompiler.api"):
        _hint_word_bits(q32, resolve("rpi3-armv7"))
        _hint_word_bits(q64, resolve("x86-avx2"))
    assert caplog.text == ""



def _cnn_onnx(path):
    """A small float CNN as an ONNX file (what the CLI reads)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("w1", (16, 3, 3, 3)), ("w2", (16, 16, 3, 3)), ("wd", (16, 10)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_cli_compile_quantizes_for_its_target(tmp_path):
    """``qcompiler compile --target`` packs low-bit layers in that target's words."""
    import argparse

    from qcompiler.commands.compile import build_graph

    _cnn_onnx(tmp_path / "cnn.onnx")
    args = argparse.Namespace(model=str(tmp_path / "cnn.onnx"), input_shape=[], wbits=1, abits=1,
                              per_tensor=False, method="minmax", calib=None, target="rpi3-armv7")
    assert _word_dtypes(build_graph(args)) == {"uint32"}
    args.target = "x86-avx2"
    assert _word_dtypes(build_graph(args)) == {"uint64"}
