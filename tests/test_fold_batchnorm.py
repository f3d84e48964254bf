import numpy as np

from qcompiler import ref
from qcompiler.passes.fold_batchnorm import fold_batchnorm

from passes_util import Builder


def _net():
    b = Builder()
    x = b.input("x", (2, 3, 6, 6))
    y = b.node("Relu", [b.bn(b.conv(x, 4, bias=False))])
    y = b.bn(b.conv(y, 4, groups=4))                     # depthwise, with bias
    y = b.node("Flatten", [y], axis=1)
    y = b.bn(b.gemm(y, 5))
    z = b.node("MatMul", [y, b.const(b.rng.normal(size=(5, 3)).astype(np.float32))])
    return b.done(b.bn(z))


def test_folds_every_bn_and_keeps_outputs():
    g = _net()
    f = fold_batchnorm(g)
    assert not any(n.op == "BatchNormalization" for n in f.nodes)
    assert [n.op for n in f.nodes].count("Gemm") == 2  # the MatMul gained a bias
    x = np.random.default_rng(1).normal(size=(2, 3, 6, 6)).astype(np.float32)
    a, b = ref.run(g, {"x": x}), ref.run(f, {"x": x})
    (ka, va), (kb, vb) = next(iter(a.items())), next(iter(b.items()))
    assert ka == kb
    np.testing.assert_allclose(vb, va, rtol=1e-4, atol=1e-4 * np.abs(va).max())
    assert len(f.meta["bn_stats"]) == 4


def test_bn_with_shared_producer_output_is_left_alone():
    b = Builder()
    x = b.input("x", (1, 2, 4, 4))
    c = b.conv(x, 2)
    g = b.done(b.bn(c), c)
    f = fold_batchnorm(g)
    assert [n.op for n in f.nodes] == ["Conv", "BatchNormalization"]
    assert "bn_stats" not in f.meta


def test_bn_after_binary_conv_folds_into_its_float_epilogue():
    """Bi-Real block: sign -> binary conv -> BN -> + x; the BN goes into the conv's scale/bias."""
    from qcompiler.passes.binarize import binarize

    b = Builder(seed=3)
    x = b.input("x", (1, 8, 5, 5))
    s = b.node("Where", [b.node("GreaterOrEqual", [x, b.const(np.float32(0))]),
                         b.const(np.float32(1)), b.const(np.float32(-1))])
    w = np.where(b.rng.normal(size=(8, 8, 3, 3)) >= 0, 1, -1).astype(np.float32)
    g = b.done(b.node("Add", [b.bn(b.conv(s, 8, weights=w, bias=False)), x]))
    h = binarize(g, keep_first_last=False)
    f = fold_batchnorm(h)
    assert [n.op for n in f.nodes] == ["BitPack", "BinaryConv2d", "Add"]
    feeds = {"x": np.random.default_rng(2).normal(size=(1, 8, 5, 5)).astype(np.float32)}
    want, got = ref.run(g, feeds)[g.outputs[0]], ref.run(f, feeds)[g.outputs[0]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
