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
