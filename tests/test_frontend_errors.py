"""Bad models give a clear qcompiler error naming what is wrong, never a deep traceback."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler as qc
from qcompiler.errors import ModelError, ShapeError, UnsupportedError


def _model(nodes, inputs, outputs, inits=(), opset=13, **kw):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], **kw)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _matmul_model(shape=(1, 16)):
    w = numpy_helper.from_array(np.random.default_rng(0).random((16, 8), np.float32), "W")
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                  [_vi("x", list(shape))], [_vi("y", [shape[0], 8])], [w])


def test_truncated_file(tmp_path):
    data = _matmul_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"cut.onnx is not a valid ONNX model \(truncated"):
        qc.from_onnx(path)


def test_every_truncation_is_a_model_error():
    data = _matmul_model().SerializeToString()
    for cut in range(0, len(data), 7):
        with pytest.raises(ModelError):
            qc.from_onnx(data[:cut])


@pytest.mark.parametrize("content", [b"hello, this is not a model\n",
                                     b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b""])
def test_not_onnx(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        qc.from_onnx(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        qc.from_onnx(tmp_path / "nope.onnx")


def test_unknown_ops_are_all_listed():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("NonMaxSuppression", ["a"], ["b"], name="nms1"),
             helper.make_node("Einsum", ["b"], ["c"], name="ein", equation="i->i"),
             helper.make_node("MyOp", ["c"], ["y"], name="custom", domain="com.example")]
    m = _model(nodes, [_vi("x", [4])], [_vi("y", [4])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedError) as e:
        qc.from_onnx(m)
    msg = str(e.value)
    assert "3 node(s)" in msg
    for part in ("NonMaxSuppression (node 'nms1')", "Einsum (node 'ein')",
                 "com.example.MyOp (node 'custom')"):
        assert part in msg


def test_unsupported_opset():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4])], [_vi("y", [4])], opset=7)
    with pytest.raises(UnsupportedError, match=r"opset 7; qcompiler supports opsets 11 to \d+"):
        qc.from_onnx(m)


def test_newer_opset_than_onnx_knows():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4])], [_vi("y", [4])], opset=99)
    with pytest.raises(UnsupportedError, match="opset 99"):
        qc.from_onnx(m)


def test_dynamic_dims_need_input_shapes():
    m = _matmul_model(shape=("batch", 16))
    with pytest.raises(ShapeError, match=r"input 'x' has dynamic shape \['batch', 16\].*input_shapes"):
        qc.from_onnx(m)
    g = qc.from_onnx(m, input_shapes={"x": (3, 16)})
    assert g.values["y"].shape == (3, 8)


def test_input_without_shape():
    m = _model([helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [_vi("y", None)])
    with pytest.raises(ShapeError, match="input 'x' has no shape"):
        qc.from_onnx(m)


@pytest.mark.parametrize("shapes, pattern", [
    ({"x": (1, 16, 1)}, r"input 'x' has rank 2, but input_shapes gives \[1, 16, 1\]"),
    ({"x": (1, 15)}, r"input 'x': input_shapes gives \[1, 15\] but the model fixes a dimension to 16"),
    ({"input": (1, 16)}, r"input_shapes names 'input', which is not a graph input; inputs are \['x'\]"),
    ({"W": (16, 8)}, r"input_shapes names 'W', which is not a graph input"),
    ({"x": (-1, 16)}, r"dimensions must be >= 0"),
])
def test_wrong_input_shapes(shapes, pattern):
    m = _matmul_model(shape=("batch", 16))
    with pytest.raises(ShapeError, match=pattern):
        qc.from_onnx(m, input_shapes=shapes)


def test_input_shape_that_does_not_fit_the_weights():
    m = _matmul_model(shape=("batch", "k"))
    with pytest.raises(ShapeError, match=r"node 'mm' \(MatMul\).*inner dims differ"):
        qc.from_onnx(m, input_shapes={"x": (1, 5)})


def test_external_data_missing(tmp_path):
    m = _matmul_model()
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, location="ext.weights",
                    size_threshold=0)
    assert qc.from_onnx(path).values["W"].shape == (16, 8)  # loads while the file is there
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(ModelError, match=r"initializer 'W' stores its data in external file "
                                         r"'ext.weights', which is missing"):
        qc.from_onnx(path)


def test_external_data_given_in_memory(tmp_path):
    m = _matmul_model()
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ModelError, match="uses external data, but the model was given in memory"):
        qc.from_onnx(proto)


def test_node_uses_undefined_value():
    m = _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")],
               [_vi("x", [4])], [_vi("y", [4])])
    with pytest.raises(ModelError, match=r"node 'add' \(Add\) uses 'ghost', which no earlier node"):
        qc.from_onnx(m)


def test_output_never_produced():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4])], [_vi("z", [4])])
    with pytest.raises(ModelError, match="graph output 'z' is not produced"):
        qc.from_onnx(m)


def test_unsupported_input_dtype_names_input_and_dtype():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4], TensorProto.BFLOAT16)],
               [_vi("y", [4], TensorProto.BFLOAT16)], opset=14)
    with pytest.raises(UnsupportedError, match="input 'x' uses dtype BFLOAT16"):
        qc.from_onnx(m)


@pytest.mark.parametrize("to", [TensorProto.STRING, TensorProto.FLOAT8E4M3FN, TensorProto.INT4])
def test_cast_to_unsupported_dtype_names_node(to):
    m = _model([helper.make_node("Cast", ["x"], ["y"], name="to_odd", to=to)], [_vi("x", [4])],
               [_vi("y", [4], to)], opset=21)
    name = TensorProto.DataType.Name(to)
    with pytest.raises(UnsupportedError, match=rf"node 'to_odd' \(Cast\) uses dtype {name}"):
        qc.from_onnx(m)


def test_unsupported_initializer_dtype():
    t = helper.make_tensor("s", TensorProto.STRING, [1], [b"a"])
    m = _model([helper.make_node("Identity", ["s"], ["y"])], [], [_vi("y", [1], TensorProto.STRING)], [t])
    with pytest.raises(UnsupportedError, match="initializer 's' uses dtype"):
        qc.from_onnx(m)


def test_runtime_shape_input_is_refused():
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
               [_vi("x", [2, 3]), _vi("s", [2], TensorProto.INT64)], [_vi("y", [3, 2])])
    with pytest.raises(UnsupportedError, match=r"node 'rs' \(Reshape\): the target shape .* must be "
                                               r"a constant"):
        qc.from_onnx(m)


def test_bad_reshape_target():
    s = numpy_helper.from_array(np.array([4, -1], np.int64), "s")
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")], [_vi("x", [2, 3])],
               [_vi("y", None)], [s])
    with pytest.raises(ShapeError, match=r"node 'rs' \(Reshape\): cannot reshape \[2, 3\]"):
        qc.from_onnx(m)


def test_unknown_attribute():
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="r", slope=2.0)], [_vi("x", [4])],
               [_vi("y", [4])])
    with pytest.raises(UnsupportedError, match=r"node 'r' \(Relu\): unknown attribute\(s\) \['slope'\]"):
        qc.from_onnx(m)


def test_training_dropout_is_refused():
    t = numpy_helper.from_array(np.array(True), "train")
    r = numpy_helper.from_array(np.array(0.5, np.float32), "ratio")
    m = _model([helper.make_node("Dropout", ["x", "ratio", "train"], ["y"], name="drop")],
               [_vi("x", [4])], [_vi("y", [4])], [t, r])
    with pytest.raises(UnsupportedError, match=r"node 'drop' \(Dropout\): Dropout in training mode"):
        qc.from_onnx(m)


def test_training_batchnorm_outputs_are_refused():
    params = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"],
                            ["y", "mean", "var", "saved_mean", "saved_var"], name="bn")
    m = _model([node], [_vi("x", [1, 3, 2, 2])], [_vi("y", [1, 3, 2, 2])], params, opset=11)
    with pytest.raises(UnsupportedError, match=r"node 'bn' \(BatchNormalization\): outputs "
                                               r"\['mean', 'var', 'saved_mean', 'saved_var'\]"):
        qc.from_onnx(m)


def test_gather_index_out_of_range_at_run_time():
    from qcompiler import ref
    from qcompiler.errors import RuntimeInputError

    data = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "d")
    m = _model([helper.make_node("Gather", ["d", "i"], ["y"], name="g")],
               [_vi("i", [2], TensorProto.INT64)], [_vi("y", [2, 2])], [data])
    g = qc.from_onnx(m)
    with pytest.raises(RuntimeInputError, match=r"node 'g' \(Gather\): Gather index out of range"):
        ref.run(g, {"i": np.array([0, 3], np.int64)})
