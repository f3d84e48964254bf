"""The .qir format: save/load is an exact round trip."""

import numpy as np
import pytest

import qcompiler as qc
from qcompiler import ref
from qcompiler.errors import ModelError
from qcompiler.ir import Graph, Node, Packing, QuantInfo, Value
from qcompiler.ir.serialize import load, save
from qcompiler.quant import QuantConfig, quantize

from _quant_models import batches, small_cnn_onnx


def _same_attr(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_attr(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same_attr(a[k], b[k])
    else:
        assert a == b or (a != a and b != b)


def _same_graph(g, h):
    assert (g.name, g.inputs, g.outputs) == (h.name, h.inputs, h.outputs)
    assert list(g.values) == list(h.values)
    for k, v in g.values.items():
        w = h.values[k]
        assert (v.shape, v.dtype, v.quant, v.packing) == (w.shape, w.dtype, w.quant, w.packing)
        if v.is_const:
            assert w.data.dtype == v.data.dtype and np.array_equal(w.data, v.data)
    assert len(g.nodes) == len(h.nodes)
    for n, m in zip(g.nodes, h.nodes):
        assert (n.op, n.name, n.inputs, n.outputs) == (m.op, m.name, m.inputs, m.outputs)
        _same_attr(n.attrs, m.attrs)
    _same_attr(g.meta, h.meta)


def test_roundtrip_quantized_graph(tmp_path):
    g = qc.from_onnx(small_cnn_onnx())
    q = quantize(g, QuantConfig(weights=4), calibration=batches(3))
    save(q, tmp_path / "q.qir")
    back = load(tmp_path / "q.qir")
    _same_graph(q, back)
    feed = batches(1, seed=9)[0]
    np.testing.assert_array_equal(ref.run(q, feed)["logits"], ref.run(back, feed)["logits"])


def test_roundtrip_odd_attributes_and_facts(tmp_path):
    g = Graph("odd")
    g.add_value(Value("x", (1, 4), "float32", quant=QuantInfo(8, False, scale=(0.1,), zero_point=(3,))))
    g.inputs.append("x")
    g.add_const("c", np.array(2.5, np.float32))
    g.add_const("p", np.arange(3, dtype=np.uint64), packing=Packing(64, axis=0, logical_shape=(130,)))
    g.add_value(Value("y", (1, 4), "float32"))
    attrs = {"t": (1, 2), "l": [1, (2, 3)], "f": 0.1 + 0.2, "nan": float("nan"), "s": "x/y", "b": True,
             "arr": np.array([[1, 2]], np.int16), "sc": np.float32(1.5), "none": None, "d": {"k": (1,)}}
    g.add_node(Node("Identity", "id", ["x"], ["y"], attrs))
    g.outputs.append("y")
    g.meta.update(opset=17, stats={"v": np.ones(2)})
    save(g, tmp_path / "odd.qir")
    _same_graph(g, load(tmp_path / "odd.qir"))


def test_bad_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "none.qir")
    (tmp_path / "bad.qir").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable"):
        load(tmp_path / "bad.qir")
