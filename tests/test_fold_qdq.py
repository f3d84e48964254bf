"""fold_qdq: imported pre-quantized models become integer graphs, bit-exact with onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler as qc
from qcompiler import ref
from qcompiler.passes.fold_qdq import fold_qdq

from _quant_models import batches, small_cnn_onnx

ort = pytest.importorskip("onnxruntime")


def _session(model: onnx.ModelProto):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def ort_qdq_model(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    d = tmp_path_factory.mktemp("qdq")
    (d / "f.onnx").write_bytes(small_cnn_onnx())

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches(4))

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(d / "f.onnx"), str(d / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(d / "q.onnx"))
    # expose every quantized activation, so the comparison covers each layer's integer output
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            model.graph.output.append(helper.make_tensor_value_info(n.output[0], TensorProto.UINT8, None))
    return model


def test_ort_qdq_model_folds_to_integer_ops_bit_exact(ort_qdq_model):
    graph = qc.from_onnx(ort_qdq_model)
    folded = fold_qdq(graph)
    ops = [n.op for n in folded.nodes]
    assert ops.count("QConv2d") == 3 and ops.count("QDense") == 1 and ops.count("QAdd") == 1
    assert "Conv" not in ops and "Gemm" not in ops and "MaxPool" in ops
    sess = _session(ort_qdq_model)
    names = [o.name for o in ort_qdq_model.graph.output]
    unfolded_diff = 0
    for feed in batches(6, seed=5):
        expect = dict(zip(names, sess.run(None, feed)))
        got = ref.run(folded, feed)
        for name in names:
            np.testing.assert_array_equal(got[name], expect[name], err_msg=name)
        # the unfolded QDQ graph (ONNX float semantics) also runs; it may differ by rounding
        plain = ref.run(graph, feed)
        for name in names[1:]:
            d = np.abs(plain[name].astype(int) - expect[name].astype(int))
            assert d.max() <= 1
            unfolded_diff += int((d > 0).sum())
    assert unfolded_diff < 50  # a handful of one-step differences (float conv vs integer acc)


def _qlinear_model():
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (6, 3, 3, 3)).astype(np.int8)
    wm = rng.integers(0, 256, (6 * 4 * 4, 5)).astype(np.uint8)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (np.array(0.02, np.float32), "xs"), (np.array(128, np.uint8), "xz"),
        (w, "w"), (rng.uniform(0.005, 0.02, 6).astype(np.float32), "ws"), (np.zeros(6, np.int8), "wz"),
        (np.array(0.05, np.float32), "ys"), (np.array(10, np.uint8), "yz"),
        (rng.integers(-300, 300, 6).astype(np.int32), "b"),
        (wm, "wm"), (np.array(0.01, np.float32), "wms"), (np.array(120, np.uint8), "wmz"),
        (np.array(0.2, np.float32), "zs"), (np.array(100, np.uint8), "zz"),
        (np.array([2, 96], np.int64), "shape")]]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["yq"],
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Reshape", ["yq", "shape"], ["yf"]),
        helper.make_node("QLinearMatMul", ["yf", "ys", "yz", "wm", "wms", "wmz", "zs", "zz"], ["zq"]),
        helper.make_node("DequantizeLinear", ["zq", "zs", "zz"], ["out"]),
    ]
    g = helper.make_graph(nodes, "ql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3, 8, 8))],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("yq", TensorProto.UINT8, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_qlinear_ops_fold_bit_exact():
    model = _qlinear_model()
    graph = qc.from_onnx(model)
    folded = fold_qdq(graph)
    ops = [n.op for n in folded.nodes]
    assert "QConv2d" in ops and "QDense" in ops and "QLinearConv" not in ops
    sess = _session(model)
    for feed in batches(4, shape=(2, 3, 8, 8), seed=2, name="x"):
        expect = sess.run(None, feed)
        a, b = ref.run(graph, feed), ref.run(folded, feed)
        for name, e in zip(["out", "yq"], expect):
            np.testing.assert_array_equal(b[name], a[name])
            np.testing.assert_array_equal(b[name], e)


def test_requantize_pair_and_nothing_to_do():
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, (4,))
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.uint8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]),
             helper.make_node("QuantizeLinear", ["f", "s", "z"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "p", [x], [helper.make_tensor_value_info(
        "y", TensorProto.UINT8, None)], inits), opset_imports=[helper.make_opsetid("", 13)])
    folded = fold_qdq(qc.from_onnx(model))
    assert [n.op for n in folded.nodes] == ["Identity"] and folded.outputs == ["y"]
    v = np.arange(250, 254, dtype=np.uint8)
    np.testing.assert_array_equal(ref.run(folded, {"x": v})["y"], v)
    float_graph = qc.from_onnx(small_cnn_onnx())
    assert [n.op for n in fold_qdq(float_graph).nodes] == [n.op for n in float_graph.nodes]
