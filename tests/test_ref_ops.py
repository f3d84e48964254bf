"""Reference ops on tricky ONNX variants, checked against onnx.reference (single-node models).

Where onnx.reference itself is wrong or incomplete (Softmax-11's 2-D coercion, GlobalMaxPool over
3 spatial dims, Pad with negative pads, integer MaxPool), onnxruntime is the oracle instead.
"""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.helper import np_dtype_to_tensor_dtype
from onnx.reference import ReferenceEvaluator

import qcompiler as qc
from qcompiler import ref

RNG = np.random.default_rng(1234)


def _rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def _onnxruntime(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(op_type, inputs, attrs=None, opset=21, consts=(), n_out=1, rtol=1e-5, atol=1e-5,
          oracle="onnx"):
    """Run one ONNX node with qcompiler (import + reference executor) and with the oracle
    (onnx.reference, or onnxruntime with ``oracle="ort"``)."""
    names = list(inputs)
    node = helper.make_node(op_type, names, [f"y{i}" for i in range(n_out)], name="n", **(attrs or {}))
    graph_inputs = [helper.make_tensor_value_info(k, np_dtype_to_tensor_dtype(v.dtype), v.shape)
                    for k, v in inputs.items() if k and k not in consts]
    inits = [numpy_helper.from_array(inputs[k], k) for k in consts]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.UNDEFINED, None) for i in range(n_out)]
    model = helper.make_model(helper.make_graph([node], "g", graph_inputs, outs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    feeds = {k: v for k, v in inputs.items() if k and k not in consts}
    if oracle == "ort":
        model.ir_version = 8  # what the installed onnxruntime reads
        for out in model.graph.output:  # onnxruntime needs typed outputs: those of the input
            dtype = TensorProto.INT64 if out.name == "y1" and op_type == "MaxPool" else \
                graph_inputs[0].type.tensor_type.elem_type
            out.type.CopyFrom(helper.make_tensor_type_proto(dtype, None))
        expected = _onnxruntime(model, feeds)
    else:
        expected = ReferenceEvaluator(model).run(None, feeds)
    graph = qc.from_onnx(model)
    got = ref.run(graph, feeds)
    for i, e in enumerate(expected):
        a = got[graph.outputs[i]]
        assert a.dtype == e.dtype and a.shape == e.shape, (a.dtype, a.shape, e.dtype, e.shape)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)
    return graph


# -- convolution ----------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs, x_shape, w_shape", [
    (dict(group=2, dilations=[2, 1], strides=[2, 3], pads=[1, 0, 2, 1]), (2, 4, 9, 11), (6, 2, 3, 2)),
    (dict(group=8, auto_pad="SAME_UPPER", strides=[2, 2]), (1, 8, 7, 6), (8, 1, 3, 3)),  # depthwise
    (dict(auto_pad="SAME_LOWER", strides=[2]), (2, 3, 10), (4, 3, 4)),                   # 1-D
    (dict(strides=[1, 2, 1], pads=[1, 0, 1, 0, 1, 1]), (1, 2, 5, 6, 4), (3, 2, 3, 2, 2)),  # 3-D
    (dict(auto_pad="VALID", dilations=[3, 2]), (1, 3, 12, 10), (5, 3, 3, 3)),
])
def test_conv_variants(attrs, x_shape, w_shape):
    inputs = {"x": _rand(*x_shape), "w": _rand(*w_shape), "b": _rand(w_shape[0])}
    check("Conv", inputs, attrs, consts=("w", "b"), rtol=1e-4, atol=1e-4)


def test_conv_matches_torch_on_a_real_layer_size():
    torch = pytest.importorskip("torch")
    x, w = _rand(1, 32, 28, 28), _rand(64, 8, 3, 3)
    y = ref.run_single("Conv", [x, w], dict(kernel_shape=(3, 3), strides=(2, 2), dilations=(1, 1),
                                            pads=(1, 1, 1, 1), group=4))[0]
    expect = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), stride=2, padding=1, groups=4)
    np.testing.assert_allclose(y, expect.numpy(), rtol=1e-4, atol=1e-4)


# -- pooling --------------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs, shape", [
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, dilations=[1, 2]),
     (1, 2, 8, 9)),
    (dict(kernel_shape=[2, 3], strides=[2, 1], storage_order=1), (2, 3, 5, 6)),
    (dict(kernel_shape=[3], auto_pad="SAME_UPPER", strides=[2]), (1, 2, 7)),
    (dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2], ceil_mode=1), (1, 1, 5, 5, 3)),
])
def test_maxpool_variants_with_indices(attrs, shape):
    check("MaxPool", {"x": _rand(*shape)}, attrs, n_out=2)


def test_maxpool_int8():
    x = RNG.integers(-128, 128, (1, 2, 5, 5)).astype(np.int8)
    check("MaxPool", {"x": x}, dict(kernel_shape=[2, 2], pads=[1, 1, 0, 0]), opset=13, oracle="ort")


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=0),
    dict(kernel_shape=[2, 3], auto_pad="SAME_LOWER", count_include_pad=0),
    dict(kernel_shape=[3, 2], pads=[2, 0, 1, 1], count_include_pad=1, dilations=[2, 1]),
])
def test_averagepool_variants(attrs):
    check("AveragePool", {"x": _rand(2, 3, 8, 7)}, attrs)


def test_global_pools():
    check("GlobalAveragePool", {"x": _rand(2, 3, 4, 5)})
    check("GlobalMaxPool", {"x": _rand(2, 3, 4, 5)})
    check("GlobalMaxPool", {"x": _rand(2, 3, 4, 5, 2)}, opset=13, oracle="ort")


# -- dense and normalisation ----------------------------------------------------------------------

@pytest.mark.parametrize("attrs, a, b, c", [
    (dict(transA=1, transB=1, alpha=0.5, beta=2.0), (4, 3), (5, 4), (5,)),
    (dict(transB=1), (3, 4), (5, 4), (3, 1)),
    (dict(alpha=2.0), (3, 4), (4, 5), None),
])
def test_gemm_variants(attrs, a, b, c):
    inputs = {"a": _rand(*a), "b": _rand(*b)}
    if c is not None:
        inputs["c"] = _rand(*c)
    check("Gemm", inputs, attrs, consts=("b",))


@pytest.mark.parametrize("a, b", [((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,))])
def test_matmul_broadcasting(a, b):
    check("MatMul", {"a": _rand(*a), "b": _rand(*b)})


def test_batchnorm_inference():
    inputs = {"x": _rand(2, 3, 4, 5), "s": _rand(3), "b": _rand(3), "m": _rand(3),
              "v": np.abs(_rand(3)) + 0.1}
    check("BatchNormalization", inputs, dict(epsilon=1e-3), consts=("s", "b", "m", "v"))


@pytest.mark.parametrize("opset, axis", [(11, 1), (11, 0), (11, -1), (13, 1), (13, 0)])
def test_softmax_opsets(opset, axis):
    check("Softmax", {"x": _rand(2, 3, 4)}, dict(axis=axis), opset=opset, oracle="ort")


# -- shape and data movement ----------------------------------------------------------------------

@pytest.mark.parametrize("mode, pads, axes", [
    ("constant", [1, 2, 0, 3], None), ("reflect", [2, 1, 1, 2], None), ("edge", [0, 3, 2, 0], None),
    ("wrap", [2, 1, 1, 3], None), ("constant", [-1, 2, 1, -2], None), ("reflect", [1, 2], [-1]),
])
def test_pad_modes(mode, pads, axes):
    inputs = {"x": _rand(4, 5), "pads": np.array(pads, np.int64), "v": np.array(1.5, np.float32)}
    consts = ("pads",)
    if axes is not None:
        inputs["axes"] = np.array(axes, np.int64)
        consts += ("axes",)
    if mode != "constant":
        inputs["v"] = np.array(0, np.float32)
    negative = any(p < 0 for p in pads)
    check("Pad", inputs, dict(mode=mode), consts=consts, opset=18 if negative else 21,
          oracle="ort" if negative else "onnx")


@pytest.mark.parametrize("starts, ends, axes, steps", [
    ([-1, 10], [-100, 0], [0, 1], [-1, -2]), ([1], [1000], [1], [2]), ([0, -3], [-1, -1], [-2, -1], None),
])
def test_slice_clamping(starts, ends, axes, steps):
    inputs = {"x": _rand(5, 6), "s": np.array(starts, np.int64), "e": np.array(ends, np.int64),
              "a": np.array(axes, np.int64)}
    if steps:
        inputs["st"] = np.array(steps, np.int64)
    check("Slice", inputs, consts=tuple(k for k in inputs if k != "x"))


def test_split_uneven_opset18():
    g = check("Split", {"x": _rand(7, 2)}, dict(num_outputs=3, axis=0), opset=18, n_out=3)
    assert g.nodes[0].attrs["split"] == (3, 3, 1)


def test_reduce_variants():
    axes = np.array([0, -1], np.int64)
    check("ReduceMean", {"x": _rand(3, 4, 5), "axes": axes}, dict(keepdims=0), opset=18, consts=("axes",))
    check("ReduceSum", {"x": _rand(3, 4), "axes": np.array([], np.int64)}, dict(noop_with_empty_axes=1),
          opset=13, consts=("axes",))
    check("ReduceMax", {"x": _rand(3, 4, 2)}, dict(axes=[1], keepdims=1), opset=13)
    check("ReduceProd", {"x": _rand(3, 4)}, dict(keepdims=0), opset=18)


def test_gather_negative_indices():
    check("Gather", {"x": _rand(3, 4), "i": np.array([[-1, 0], [2, -4]], np.int64)}, dict(axis=1))


def test_expand_is_bidirectional():
    check("Expand", {"x": _rand(3, 1), "s": np.array([2, 1, 4], np.int64)}, consts=("s",))


def test_reshape_zero_and_minus_one():
    check("Reshape", {"x": _rand(2, 3, 4), "s": np.array([0, -1], np.int64)}, consts=("s",))


# -- elementwise ----------------------------------------------------------------------------------

def test_integer_division_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, 0], np.int32)
    b = np.array([2, 2, -2, -2, 3], np.int32)
    check("Div", {"a": a, "b": b})


def test_pow_keeps_base_dtype():
    check("Pow", {"a": np.array([1, 2, 3], np.int32), "b": np.array([0.5, 2, 3], np.float32)})


def test_clip_with_only_max():
    x, hi = _rand(10), np.array(0.3, np.float32)
    model_inputs = ["x", "", "hi"]
    node = helper.make_node("Clip", model_inputs, ["y"])
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10])], [numpy_helper.from_array(hi, "hi")]),
        opset_imports=[helper.make_opsetid("", 13)])
    y = ref.run(qc.from_onnx(model), {"x": x})["y"]
    np.testing.assert_array_equal(y, np.minimum(x, hi))


@pytest.mark.parametrize("op_type, attrs", [
    ("HardSwish", {}), ("HardSigmoid", dict(alpha=0.3, beta=0.4)), ("Selu", {}), ("Elu", dict(alpha=0.7)),
    ("Erf", {}), ("Softplus", {}), ("Softsign", {}), ("LeakyRelu", dict(alpha=0.2)), ("Sigmoid", {}),
])
def test_activations(op_type, attrs):
    check(op_type, {"x": _rand(4, 5) * 4}, attrs)


def test_float16_keeps_dtype():
    check("Sigmoid", {"x": _rand(8).astype(np.float16)}, rtol=1e-3, atol=1e-3)
    check("Add", {"a": _rand(8).astype(np.float16), "b": _rand(8).astype(np.float16)})


def test_prelu_slope_broadcast():
    check("PRelu", {"x": _rand(2, 3, 4, 4), "s": _rand(3, 1, 1)}, consts=("s",))
