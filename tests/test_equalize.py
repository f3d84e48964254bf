import numpy as np

from qcompiler import ref
from qcompiler.passes.equalize import equalize, find_pairs
from qcompiler.passes.fold_batchnorm import fold_batchnorm

from passes_util import Builder


def _net(seed=0):
    b = Builder(seed=seed)
    x = b.input("x", (4, 3, 8, 8))
    w1 = b.rng.normal(size=(6, 3, 3, 3)).astype(np.float32) * np.array([10, .1, 1, 5, .01, 2], np.float32)[:, None, None, None]
    y = b.node("Relu", [b.conv(x, 6, weights=w1)])
    y = b.node("Relu", [b.conv(y, 6, groups=6)])            # depthwise
    y = b.node("MaxPool", [b.node("Relu", [b.conv(y, 8, k=1, pad=0)])], kernel_shape=(2, 2), strides=(2, 2),
               pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=0, storage_order=0)
    y = b.node("Flatten", [y], axis=1)
    return b.done(b.gemm(b.node("Relu", [b.gemm(y, 7)]), 3))


def _ranges(w):
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1)


def test_output_unchanged_and_ranges_equalized():
    g = _net()
    e = equalize(g)
    pairs = find_pairs(g)
    assert len(pairs) == 4 and pairs[2].spatial == 16
    x = np.random.default_rng(3).normal(size=(4, 3, 8, 8)).astype(np.float32)
    a, b = ref.run(g, {"x": x})[g.outputs[0]], ref.run(e, {"x": x})[g.outputs[0]]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    # first pair: conv1 output-channel range == depthwise input-channel range == sqrt(r1 * r2)
    w1, w2 = (e.const(e.node(p).inputs[1]) for p in (pairs[0].first.name, pairs[0].second.name))
    r1, r2 = _ranges(w1), _ranges(w2)
    np.testing.assert_allclose(r1, r2, rtol=0.05)
    before = _ranges(g.const(g.node(pairs[0].first.name).inputs[1]))
    assert before.max() / before.min() > 100 and r1.max() / r1.min() < before.max() / before.min() / 10


def test_bias_absorption_uses_bn_stats():
    b = Builder(seed=2)
    x = b.input("x", (64, 5))
    y = b.node("Relu", [b.bn(b.gemm(x, 6), mean_shift=0)])
    g = fold_batchnorm(b.done(b.gemm(y, 3)))
    stats = g.meta["bn_stats"][g.nodes[0].outputs[0]]
    stats["mean"] = [5.0] * 6   # pretend BN promised large positive pre-activations
    stats["std"] = [1.0] * 6
    bname = g.nodes[0].inputs[2]
    g.values[bname].data = g.values[bname].data + np.float32(8)  # and make it true for most inputs
    e = equalize(g, absorb_bias=True)
    b1 = e.const(e.nodes[0].inputs[2])
    ref_b1 = equalize(g, absorb_bias=False).const(e.nodes[0].inputs[2])
    assert np.all(b1 < ref_b1)  # c = max(0, mean - 3 std) moved out of layer 1
    # exact wherever every pre-activation exceeds c = max(0, 5 - 3 * 1) = 2 (in the original scale)
    feeds = {"x": np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32) * 3}
    pre = ref.run(g, feeds, keep_all=True)[g.nodes[0].outputs[0]]
    ok = np.all(pre >= 2.0, axis=1)
    a, bb = ref.run(g, feeds)[g.outputs[0]], ref.run(e, feeds)[g.outputs[0]]
    assert ok.sum() >= 1
    np.testing.assert_allclose(bb[ok], a[ok], rtol=1e-4, atol=1e-4)
    assert not np.allclose(bb[~ok], a[~ok])  # elsewhere it is an approximation


def test_noop_without_pairs():
    b = Builder()
    g = b.done(b.node("Sigmoid", [b.gemm(b.input("x", (2, 3)), 2)]))
    assert find_pairs(g) == [] and [n.op for n in equalize(g).nodes] == ["Gemm", "Sigmoid"]
