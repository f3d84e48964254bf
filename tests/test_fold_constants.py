import numpy as np

from qcompiler import ref
from qcompiler.passes.fold_constants import fold_constants

from passes_util import Builder


def test_folds_constant_subgraph_exactly():
    b = Builder()
    x = b.input("x", (2, 4))
    w = b.const(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))
    ge = b.node("GreaterOrEqual", [w, b.const(np.float32(0))])
    wb = b.node("Where", [ge, b.const(np.float32(1)), b.const(np.float32(-1))])
    y = b.node("Gemm", [x, wb], alpha=1.0, beta=1.0, transA=0, transB=1)
    g = b.done(b.node("Relu", [y]))
    f = fold_constants(g)
    assert [n.op for n in f.nodes] == ["Gemm", "Relu"]
    assert set(np.unique(f.const(f.nodes[0].inputs[1]))) == {-1.0, 1.0}
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)}
    np.testing.assert_array_equal(ref.run(f, feeds)[g.outputs[0]], ref.run(g, feeds)[g.outputs[0]])


def test_noop_without_constant_nodes():
    b = Builder()
    g = b.done(b.node("Relu", [b.input("x", (2, 2))]))
    assert [n.op for n in fold_constants(g).nodes] == ["Relu"]
