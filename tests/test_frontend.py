"""ONNX import details: removed ops, folded shape chains, constants, old-style models, normalised
attributes."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler as qc
from qcompiler import ref


def _model(nodes, inputs, outputs, inits=(), opset=13, ir_version=None):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        m.ir_version = ir_version
    return m


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def test_identity_and_dropout_vanish():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Identity", ["a"], ["b"], name="id"),
             helper.make_node("Dropout", ["b"], ["c", "mask"], name="drop"),
             helper.make_node("Sigmoid", ["c"], ["y"], name="sig")]
    g = qc.from_onnx(_model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])]))
    assert [n.op for n in g.nodes] == ["Relu", "Sigmoid"]
    assert g.nodes[1].inputs == ["a"]
    x = np.array([[-1, 0, 1], [2, -3, 4]], np.float32)
    np.testing.assert_allclose(ref.run(g, {"x": x})["y"], 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-6)


def test_identity_feeding_an_output_keeps_the_output_name():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])]
    g = qc.from_onnx(_model(nodes, [_vi("x", [3])], [_vi("y", [3])]))
    assert g.outputs == ["y"]
    np.testing.assert_array_equal(ref.run(g, {"x": np.array([-1, 0, 2], np.float32)})["y"], [0, 0, 2])


def test_shape_gather_concat_chain_folds_to_a_reshape():
    """The pattern exporters emit for x.view(x.size(0), -1)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Cast", ["shape"], ["shape64"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["x", "shape64"], ["y"], name="flatten")]
    inits = [_const("zero", np.array(0, np.int64)), _const("ax0", np.array([0], np.int64)),
             _const("minus1", np.array([-1], np.int64))]
    g = qc.from_onnx(_model(nodes, [_vi("x", [2, 3, 4, 5])], [_vi("y", [2, 60])], inits))
    assert [n.op for n in g.nodes] == ["Reshape"]
    assert g.nodes[0].attrs == {"shape": (2, 60)}
    assert g.nodes[0].inputs == ["x"]
    assert not g.initializers()  # the chain's constants are pruned
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(ref.run(g, {"x": x})["y"], x.reshape(2, 60))


def test_constant_nodes_become_constants():
    nodes = [helper.make_node("Constant", [], ["c"], value=_const("v", np.full((3,), 2, np.float32))),
             helper.make_node("Constant", [], ["k"], value_float=0.5),
             helper.make_node("Mul", ["x", "c"], ["m"]),
             helper.make_node("Add", ["m", "k"], ["y"])]
    g = qc.from_onnx(_model(nodes, [_vi("x", [3])], [_vi("y", [3])]))
    assert [n.op for n in g.nodes] == ["Mul", "Add"]
    assert g.values["k"].shape == () and g.values["c"].is_const
    np.testing.assert_array_equal(ref.run(g, {"x": np.ones(3, np.float32)})["y"], [2.5] * 3)


def test_all_constant_subgraph_folds():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["ab"]), helper.make_node("Add", ["x", "ab"], ["y"])]
    inits = [_const("a", np.eye(2, dtype=np.float32)), _const("b", np.full((2, 2), 3, np.float32))]
    g = qc.from_onnx(_model(nodes, [_vi("x", [2, 2])], [_vi("y", [2, 2])], inits))
    assert [n.op for n in g.nodes] == ["Add"]
    np.testing.assert_array_equal(g.values["ab"].data, np.full((2, 2), 3, np.float32))


def test_initializers_listed_as_graph_inputs():
    """Old exporters (IR version 3) list every initializer in graph.input too."""
    w = _const("W", np.ones((4, 2), np.float32))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    m = _model(nodes, [_vi("x", [1, 4]), _vi("W", [4, 2])], [_vi("y", [1, 2])], [w], opset=11,
               ir_version=3)
    g = qc.from_onnx(m)
    assert g.inputs == ["x"]
    assert g.values["W"].is_const
    np.testing.assert_array_equal(ref.run(g, {"x": np.ones((1, 4), np.float32)})["y"], [[4, 4]])


def test_graph_output_that_is_a_constant():
    nodes = [helper.make_node("Constant", [], ["c"], value=_const("v", np.array([1, 2], np.int64))),
             helper.make_node("Relu", ["x"], ["y"])]
    g = qc.from_onnx(_model(nodes, [_vi("x", [2])], [_vi("y", [2]), _vi("c", [2], TensorProto.INT64)]))
    out = ref.run(g, {"x": np.array([-1, 1], np.float32)})
    assert g.outputs == ["y", "c"]
    np.testing.assert_array_equal(out["c"], [1, 2])
    g.verify()


def test_graph_output_that_is_an_input():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    g = qc.from_onnx(_model(nodes, [_vi("x", [2])], [_vi("y", [2]), _vi("x", [2])]))
    out = ref.run(g, {"x": np.array([-1, 1], np.float32)})
    np.testing.assert_array_equal(out[g.outputs[1]], [-1, 1])


def test_conv_auto_pad_becomes_explicit_pads():
    w = _const("w", np.ones((2, 1, 3, 3), np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c", auto_pad="SAME_UPPER", strides=[2, 2])]
    g = qc.from_onnx(_model(nodes, [_vi("x", [1, 1, 4, 4])], [_vi("y", [1, 2, 2, 2])], [w]))
    attrs = g.nodes[0].attrs
    assert "auto_pad" not in attrs
    assert attrs == {"kernel_shape": (3, 3), "strides": (2, 2), "dilations": (1, 1), "pads": (0, 0, 1, 1),
                     "group": 1}
    assert g.values["y"].shape == (1, 2, 2, 2)


@pytest.mark.parametrize("opset, axis, coerce", [(11, 1, True), (11, -1, False), (11, 2, False),
                                                 (13, 1, False)])
def test_softmax_opsets_normalise_to_one_attr_set(opset, axis, coerce):
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=axis)]
    g = qc.from_onnx(_model(nodes, [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], opset=opset))
    assert g.nodes[0].attrs == {"axis": axis % 3, "coerce_2d": coerce}


def test_squeeze_attr_and_input_forms_agree():
    old = _model([helper.make_node("Squeeze", ["x"], ["y"], axes=[-1, 1])], [_vi("x", [2, 1, 3, 1])],
                 [_vi("y", [2, 3])], opset=11)
    new = _model([helper.make_node("Squeeze", ["x", "axes"], ["y"])], [_vi("x", [2, 1, 3, 1])],
                 [_vi("y", [2, 3])], [_const("axes", np.array([-1, 1], np.int64))], opset=13)
    a, b = qc.from_onnx(old).nodes[0], qc.from_onnx(new).nodes[0]
    assert a.attrs == b.attrs == {"axes": (3, 1)}
    assert b.inputs == ["x"]


def test_reduce_axes_attr_and_input_forms_agree():
    old = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1], keepdims=0)],
                 [_vi("x", [2, 3])], [_vi("y", [2])], opset=13)
    new = _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)],
                 [_vi("x", [2, 3])], [_vi("y", [2])], [_const("axes", np.array([1], np.int64))], opset=18)
    assert qc.from_onnx(old).nodes[0].attrs == qc.from_onnx(new).nodes[0].attrs == {"axes": (1,),
                                                                                      "keepdims": 0}


def test_reduce_noop_with_empty_axes_vanishes():
    nodes = [helper.make_node("ReduceSum", ["x"], ["r"], noop_with_empty_axes=1),
             helper.make_node("Relu", ["r"], ["y"])]
    g = qc.from_onnx(_model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], opset=13))
    assert [n.op for n in g.nodes] == ["Relu"]


def test_split_without_sizes_uses_the_node_outputs():
    nodes = [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1)]
    g = qc.from_onnx(_model(nodes, [_vi("x", [2, 6])], [_vi(n, [2, 2]) for n in "abc"], opset=11))
    assert g.nodes[0].attrs == {"axis": 1, "split": (2, 2, 2)}


def test_clip_min_max_inputs_stay_inputs():
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])]
    inits = [_const("lo", np.array(0, np.float32)), _const("hi", np.array(6, np.float32))]
    g = qc.from_onnx(_model(nodes, [_vi("x", [4])], [_vi("y", [4])], inits))
    y = ref.run(g, {"x": np.array([-1, 3, 7, 6], np.float32)})["y"]
    np.testing.assert_array_equal(y, [0, 3, 6, 6])


def test_unnamed_and_duplicate_node_names_are_made_unique():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Relu", ["b"], ["y"], name="r")]
    g = qc.from_onnx(_model(nodes, [_vi("x", [2])], [_vi("y", [2])]))
    names = [n.name for n in g.nodes]
    assert len(set(names)) == 3 and names[0] == "Relu_0"
    assert "Relu" in str(g)


def test_input_shapes_fix_dynamic_dims_through_a_conv():
    w = _const("w", np.ones((4, 3, 3, 3), np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    m = _model(nodes, [_vi("x", ["N", 3, "H", "W"])], [_vi("y", ["N", 4])], [w])
    g = qc.from_onnx(m, input_shapes={"x": (2, 3, 8, 8)})
    assert g.values["y"].shape == (2, 4)
    y = ref.run(g, {"x": np.ones((2, 3, 8, 8), np.float32)})["y"]
    np.testing.assert_allclose(y, np.full((2, 4), 27 * 36 / 64 + 18 * 24 / 64 + 12 * 4 / 64), rtol=1e-6)


@pytest.mark.parametrize("name", ["light_squeezenet", "light_shufflenet"])
def test_onnx_light_models_match_onnxruntime(name):
    """Real architectures shipped in the onnx wheel (opset 9, initializers in graph.input),
    upgraded to opset 11 as the importer's error advises."""
    import os

    import onnx
    ort = pytest.importorskip("onnxruntime")
    from qcompiler.conformance import upgrade_opset

    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", name + ".onnx")
    if not os.path.isfile(path):
        pytest.skip(f"{name} is not in this onnx wheel")
    with pytest.raises(qc.UnsupportedError, match="opset 9"):
        qc.from_onnx(path)
    model = upgrade_opset(onnx.load(path))
    g = qc.from_onnx(model)
    x = np.random.default_rng(0).random(g.values[g.inputs[0]].shape).astype(np.float32)
    got = ref.run(g, {g.inputs[0]: x})[g.outputs[0]]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {g.inputs[0]: x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
