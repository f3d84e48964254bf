import numpy as np
import pytest

from qcompiler.errors import ModelError
from qcompiler.ir import Graph, Node, QuantInfo, Value, Packing
from qcompiler import ref


def _tiny():
    g = Graph("tiny")
    g.add_value(Value("x", (2, 3), "float32"))
    g.inputs.append("x")
    g.add_const("b", np.ones(3, np.float32))
    g.add_value(Value("y", (2, 3), "float32"))
    g.add_value(Value("z", (2, 3), "float32"))
    g.add_node(Node("Add", "add", ["y", "b"], ["z"]))
    g.add_node(Node("Relu", "relu", ["x"], ["y"]))
    g.outputs.append("z")
    return g


def test_toposort_and_run():
    g = _tiny()
    with pytest.raises(ModelError, match="before it is defined"):
        g.verify()
    g.toposort().verify()
    assert [n.name for n in g.nodes] == ["relu", "add"]
    out = ref.run(g, {"x": np.array([[-1, 0, 2], [3, -4, 5]], np.float32)})["z"]
    np.testing.assert_array_equal(out, [[1, 1, 3], [4, 1, 6]])


def test_print_and_json_mention_everything():
    g = _tiny().toposort()
    g.values["y"].quant = QuantInfo(bits=8, signed=False, scale=0.5)
    text = str(g)
    assert "Relu(%x)" in text and "qu8" in text and "return %z" in text
    assert '"op": "Add"' in g.to_json()


def test_copy_is_independent():
    g = _tiny().toposort()
    h = g.copy()
    h.nodes[0].attrs["k"] = 1
    h.outputs.append("y")
    assert "k" not in g.nodes[0].attrs and g.outputs == ["z"]


def test_quantinfo_validates():
    with pytest.raises(Exception, match="bits"):
        QuantInfo(bits=0, signed=True)
    with pytest.raises(Exception, match="axis"):
        QuantInfo(bits=8, signed=True, scale=[0.1, 0.2], zero_point=[0, 0])
    q = QuantInfo(bits=4, signed=True)
    assert (q.qmin, q.qmax) == (-8, 7)
    assert QuantInfo(bits=1, signed=True, bipolar=True).qmin == -1


def test_packing_shape():
    p = Packing(word_bits=32, axis=3, planes=2, layout="NHWC", logical_shape=(1, 4, 4, 70))
    assert p.packed_shape() == (1, 4, 4, 2, 3)
