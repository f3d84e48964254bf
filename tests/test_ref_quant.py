"""ONNX quantization ops in the reference executor: ONNX's conformance cases, onnxruntime, edge cases."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler as qc
from qcompiler import ref
from qcompiler.conformance import run_conformance

QUANT_OPS = ["QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
             "MatMulInteger"]
RNG = np.random.default_rng(1)


def test_onnx_conformance_cases():
    results = run_conformance(ops=QUANT_OPS)
    failed = [(r.name, r.detail) for r in results if r.status == "failed"]
    assert not failed, failed
    passed = {r.name for r in results if r.status == "passed"}
    # every int8/uint8/int16/uint16 case passes; the refusals are float8/int4/int2/float4 dtypes
    assert len(passed) >= 23, sorted(passed)
    for r in results:
        if r.status == "unsupported":
            assert any(t in r.name for t in ("e4m3", "e5m2", "int4", "int2", "float4")), r


def _model(node, inputs, outputs, inits, opset=21):
    g = helper.make_graph([node], "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("x_type", ["uint8", "int8"])
def test_qlinear_conv_bit_exact_with_onnxruntime(per_channel, x_type):
    o, c = 8, 6
    x = RNG.integers(0, 256, (2, c, 9, 9)).astype(np.int64)
    x = (x - (128 if x_type == "int8" else 0)).astype(x_type)
    w = RNG.integers(-127, 128, (o, c // 2, 3, 3)).astype(np.int8)
    w_scale = (RNG.uniform(0.002, 0.02, o) if per_channel else np.array(0.01)).astype(np.float32)
    w_zp = np.zeros(o if per_channel else (), np.int8)
    bias = RNG.integers(-5000, 5000, o).astype(np.int32)
    y_zp = np.array(3 if x_type == "int8" else 131, x_type)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (np.array(0.05, np.float32), "xs"), (np.array(5 if x_type == "uint8" else -3, x_type), "xz"),
        (w, "w"), (w_scale, "ws"), (w_zp, "wz"), (np.array(0.37, np.float32), "ys"), (y_zp, "yz"),
        (bias, "b")]]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                            group=2, pads=[1, 0, 2, 1], strides=[2, 1])
    elem = TensorProto.UINT8 if x_type == "uint8" else TensorProto.INT8
    model = _model(node, [helper.make_tensor_value_info("x", elem, x.shape)],
                   [helper.make_tensor_value_info("y", elem, None)], inits)
    expect = _ort(model, {"x": x})[0]
    got = ref.run(qc.from_onnx(model), {"x": x})["y"]
    np.testing.assert_array_equal(got, expect)


def test_qlinear_matmul_bit_exact_with_onnxruntime():
    a = RNG.integers(0, 256, (3, 5, 40)).astype(np.uint8)
    b = RNG.integers(-128, 128, (40, 7)).astype(np.int8)
    inits = [numpy_helper.from_array(v, n) for v, n in [
        (np.array(0.03, np.float32), "as"), (np.array(120, np.uint8), "az"), (b, "b"),
        (np.array(0.011, np.float32), "bs"), (np.array(0, np.int8), "bz"),
        (np.array(0.9, np.float32), "ys"), (np.array(128, np.uint8), "yz")]]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    model = _model(node, [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape)],
                   [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    np.testing.assert_array_equal(ref.run(qc.from_onnx(model), {"a": a})["y"], _ort(model, {"a": a})[0])


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
def test_quantize_dequantize_per_axis_and_blocked_match_onnx_reference():
    from onnx.reference import ReferenceEvaluator

    x = (RNG.standard_normal((2, 6, 4)) * 50).astype(np.float32)
    x[0, 0, 0] = 1e10  # saturates instead of wrapping
    scale = RNG.uniform(0.1, 0.5, 6).astype(np.float32)
    zp = RNG.integers(-20, 20, 6).astype(np.int8)
    cases = [
        (helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1), scale, zp),
        (helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=-1, block_size=3),
         RNG.uniform(0.1, 0.5, (2, 6, 2)).astype(np.float32), RNG.integers(0, 9, (2, 6, 2)).astype(np.int16)),
    ]
    for node, s, z in cases:
        inits = [numpy_helper.from_array(s, "s"), numpy_helper.from_array(z, "z")]
        model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                       [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(z.dtype), None)],
                       inits)
        got = ref.run(qc.from_onnx(model), {"x": x})["y"]
        expect = ReferenceEvaluator(model).run(None, {"x": x})[0]
        # ONNX's numpy reference wraps 1e10 through int32; the spec (and we) saturate
        assert got[0, 0, 0] == np.iinfo(z.dtype).max
        got_rest, expect_rest = got.copy(), expect.copy()
        got_rest[0, 0, 0] = expect_rest[0, 0, 0] = 0
        np.testing.assert_array_equal(got_rest, expect_rest)
        # and back
        dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=node.attribute[0].i,
                              **({"block_size": 3} if len(node.attribute) > 1 else {}))
        dmodel = _model(dq, [helper.make_tensor_value_info("q", helper.np_dtype_to_tensor_dtype(z.dtype),
                                                           got.shape)],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        np.testing.assert_array_equal(ref.run(qc.from_onnx(dmodel), {"q": got})["y"],
                                      ReferenceEvaluator(dmodel).run(None, {"q": got})[0])


def test_matmul_integer_per_row_and_column_zero_points():
    a = RNG.integers(0, 256, (4, 9)).astype(np.uint8)
    b = RNG.integers(0, 256, (9, 3)).astype(np.uint8)
    az = RNG.integers(0, 256, 4).astype(np.uint8)
    bz = RNG.integers(0, 256, 3).astype(np.uint8)
    (y,) = ref.run_single("MatMulInteger", [a, b, az, bz])
    expect = (a.astype(np.int64) - az[:, None]) @ (b.astype(np.int64) - bz[None, :])
    np.testing.assert_array_equal(y, expect)
    assert y.dtype == np.int32


def test_conv_integer_per_channel_weight_zero_point():
    x = RNG.integers(0, 256, (1, 4, 5, 5)).astype(np.uint8)
    w = RNG.integers(0, 256, (3, 4, 2, 2)).astype(np.uint8)
    wz = np.array([1, 128, 255], np.uint8)
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[1, 1, 0, 0])
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(7, np.uint8), "xz"),
             numpy_helper.from_array(wz, "wz")]
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, None)], inits, opset=13)
    from onnx.reference import ReferenceEvaluator

    np.testing.assert_array_equal(ref.run(qc.from_onnx(model), {"x": x})["y"],
                                  ReferenceEvaluator(model).run(None, {"x": x})[0])


def test_bad_quant_inputs_are_clear_errors():
    from qcompiler.errors import QCompilerError

    with pytest.raises(QCompilerError, match="zero point dtype"):
        ref.run_single("QuantizeLinear", [np.zeros(3, np.float32), np.float32(1), np.int8(0)],
                       {"output_dtype": "uint8"})
    with pytest.raises(QCompilerError, match="3 entries"):
        ref.run_single("DequantizeLinear", [np.zeros((2, 3), np.int8), np.ones(2, np.float32)], {"axis": 1})
    assert onnx  # keep the import used for helper types
