"""Every float kernel against the reference executor on odd shapes (within 1e-5 relative).

Each case lowers a one-node graph for the host, links the LoweredGraph's own objects, runs them and
compares with ``qcompiler.ref``. Shapes are deliberately not multiples of the vector width.
"""

import numpy as np
import pytest

from lowering_helpers import check_op

rng = np.random.default_rng(1234)


def f32(*shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def conv_attrs(k, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), group=1):
    return dict(kernel_shape=k, strides=strides, pads=pads, dilations=dil, group=group)


CONV_CASES = [
    # (x shape, w shape, attrs, bias)
    ((1, 5, 11, 13), (7, 5, 3, 3), conv_attrs((3, 3), (2, 1), (1, 0, 2, 1), (1, 2)), True),
    ((2, 3, 9, 9), (17, 3, 1, 1), conv_attrs((1, 1)), False),
    ((1, 8, 10, 7), (12, 4, 3, 3), conv_attrs((3, 3), (1, 1), (1, 1, 1, 1), group=2), True),
    ((1, 6, 12, 11), (6, 1, 3, 3), conv_attrs((3, 3), (2, 2), (1, 1, 1, 1), group=6), True),
    ((1, 3, 8, 9), (6, 1, 5, 5), conv_attrs((5, 5), (1, 1), (2, 2, 2, 2), (1, 1), group=3), False),
    ((1, 3, 20, 19), (2, 3, 7, 7), conv_attrs((7, 7), (2, 2), (3, 3, 3, 3)), True),
]


@pytest.mark.parametrize("xs,ws,attrs,bias", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
def test_conv(xs, ws, attrs, bias, tmp_path):
    inputs = [(f32(*xs), False), (f32(*ws), True)]
    if bias:
        inputs.append((f32(ws[0]), True))
    lowered = check_op("Conv", inputs, attrs, tmp_path)
    rec = lowered.records[0]
    assert rec.macs > 0 and rec.fallback is None
    expect = "depthwise" if attrs["group"] == xs[1] else "ocvec"
    assert expect in rec.impl


@pytest.mark.parametrize("case", ["transB", "transA_beta", "runtime_B", "no_C"])
def test_gemm(case, tmp_path):
    m, k, n = 3, 37, 21
    if case == "transB":
        inputs = [(f32(m, k), False), (f32(n, k), True), (f32(n), True)]
        attrs = dict(alpha=1.0, beta=1.0, transA=0, transB=1)
    elif case == "transA_beta":
        inputs = [(f32(k, m), False), (f32(k, n), True), (f32(m, n), True)]
        attrs = dict(alpha=0.5, beta=2.0, transA=1, transB=0)
    elif case == "runtime_B":
        inputs = [(f32(m, k), False), (f32(k, n), False), (f32(1, n), True)]
        attrs = dict(alpha=1.0, beta=1.0, transA=0, transB=0)
    else:
        inputs = [(f32(1, k), False), (f32(n, k), True)]
        attrs = dict(alpha=1.0, beta=1.0, transA=0, transB=1)
    check_op("Gemm", inputs, attrs, tmp_path)


@pytest.mark.parametrize("case", ["2d_const", "3d_const", "batched", "vec"])
def test_matmul(case, tmp_path):
    if case == "2d_const":
        inputs = [(f32(5, 19), False), (f32(19, 10), True)]
    elif case == "3d_const":
        inputs = [(f32(2, 3, 19), False), (f32(19, 10), True)]
    elif case == "batched":
        inputs = [(f32(2, 1, 3, 7), False), (f32(3, 7, 5), False)]
    else:
        inputs = [(f32(7), False), (f32(2, 7, 5), False)]
    lowered = check_op("MatMul", inputs, {}, tmp_path)
    if case.endswith("const"):
        assert lowered.records[0].impl.startswith("dense_nvec")
    else:
        assert lowered.records[0].fallback


def test_batchnorm(tmp_path):
    c = 5
    inputs = [(f32(2, c, 3, 7), False), (f32(c), True), (f32(c), True), (f32(c), True),
              (f32(c, lo=0.1, hi=2.0), True)]
    check_op("BatchNormalization", inputs, dict(epsilon=1e-5, momentum=0.9, training_mode=0), tmp_path)


UNARY = [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}),
         ("HardSwish", {}), ("Tanh", {}), ("Exp", {}), ("Abs", {}), ("Neg", {}), ("Floor", {}), ("Ceil", {}),
         ("Round", {}), ("Sign", {}), ("Softsign", {}), ("Softplus", {}), ("Elu", {"alpha": 1.0}),
         ("Selu", {"alpha": 1.67, "gamma": 1.05}), ("Reciprocal", {})]


@pytest.mark.parametrize("op,attrs", UNARY, ids=[u[0] for u in UNARY])
def test_unary(op, attrs, tmp_path):
    x = f32(2, 3, 5, 7, lo=-4, hi=4)
    if op == "Reciprocal":
        x = np.where(np.abs(x) < 0.1, 0.5, x).astype(np.float32)
    check_op(op, [(x, False)], attrs, tmp_path)


def test_sqrt_log(tmp_path):
    x = f32(3, 17, lo=0.1, hi=9)
    check_op("Sqrt", [(x, False)], {}, tmp_path)
    check_op("Log", [(x, False)], {}, tmp_path)


def test_clip_and_prelu(tmp_path):
    x = f32(1, 4, 6, 5, lo=-8, hi=8)
    check_op("Clip", [(x, False), (np.array(0, np.float32), True), (np.array(6, np.float32), True)], {}, tmp_path)
    check_op("Clip", [(x, False), (None, False), (np.array(0.5, np.float32), True)], {}, tmp_path)
    check_op("PRelu", [(x, False), (f32(4, 1, 1), True)], {}, tmp_path)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_broadcast(op, tmp_path):
    a = f32(2, 3, 5, 7)
    b = f32(3, 1, 7, lo=0.5, hi=2)
    check_op(op, [(a, False), (b, True)], {}, tmp_path)
    check_op(op, [(f32(1, 5), False), (f32(4, 1, lo=0.5, hi=2), False)], {}, tmp_path)


def test_binary_scalar_and_variadic(tmp_path):
    check_op("Mul", [(f32(3, 9), False), (np.array(0.25, np.float32), True)], {}, tmp_path)
    check_op("Max", [(f32(3, 9), False), (f32(9), False), (f32(1, 9), True)], {}, tmp_path)
    check_op("Greater", [(f32(3, 9), False), (f32(9), False)], {}, tmp_path)


POOLS = [
    ("MaxPool", dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), ceil_mode=0,
                     storage_order=0)),
    ("MaxPool", dict(kernel_shape=(2, 3), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(2, 1), ceil_mode=1,
                     storage_order=0)),
    ("AveragePool", dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), ceil_mode=1,
                         count_include_pad=0)),
    ("AveragePool", dict(kernel_shape=(3, 2), strides=(2, 1), pads=(1, 0, 1, 1), dilations=(1, 1), ceil_mode=1,
                         count_include_pad=1)),
]


@pytest.mark.parametrize("op,attrs", POOLS, ids=[f"{p[0]}{i}" for i, p in enumerate(POOLS)])
def test_pool(op, attrs, tmp_path):
    x = f32(2, 3, 11, 10, lo=-5, hi=-1)  # all negative: a wrong pad value in max shows
    check_op(op, [(x, False)], attrs, tmp_path, n_outputs=1)


def test_global_pools(tmp_path):
    x = f32(2, 5, 7, 9)
    check_op("GlobalAveragePool", [(x, False)], {}, tmp_path)
    check_op("GlobalMaxPool", [(x, False)], {}, tmp_path)


@pytest.mark.parametrize("attrs", [dict(axis=1), dict(axis=2), dict(axis=1, coerce_2d=True)])
def test_softmax(attrs, tmp_path):
    check_op("Softmax", [(f32(2, 11, 3, lo=-6, hi=6), False)], attrs, tmp_path)


def test_data_movement(tmp_path):
    x = f32(2, 3, 5, 7)
    check_op("Transpose", [(x, False)], dict(perm=(0, 2, 3, 1)), tmp_path)
    check_op("Concat", [(x, False), (f32(2, 4, 5, 7), True), (f32(2, 1, 5, 7), False)], dict(axis=1), tmp_path)
    check_op("Pad", [(x, False)], dict(pads=(0, 1, 2, 0, 0, 2, 1, 3), mode="constant"), tmp_path)
    check_op("Pad", [(x, False), (np.array(1.5, np.float32), True)],
             dict(pads=(0, 0, 1, 2, 0, 0, 2, 1), mode="constant"), tmp_path)
    check_op("Pad", [(x, False)], dict(pads=(0, 0, 2, 3, 0, 0, 3, 1), mode="reflect"), tmp_path)
    check_op("Pad", [(x, False)], dict(pads=(0, 0, 2, 1, 0, 0, 1, 4), mode="edge"), tmp_path)
    check_op("Slice", [(x, False)], dict(starts=(1, -1), ends=(5, -100), axes=(2, 3), steps=(2, -2)), tmp_path)
    check_op("Gather", [(x, False), (np.array([[2, -1], [0, 1]], np.int64), True)], dict(axis=2), tmp_path)
    check_op("Split", [(x, False)], dict(axis=3, split=(3, 4)), tmp_path)
    check_op("Expand", [(f32(3, 1, 7), False)], dict(shape=(2, 1, 4, 7)), tmp_path)
    check_op("Tile", [(f32(2, 3), False)], dict(repeats=(2, 3)), tmp_path)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
def test_reduce(op, tmp_path):
    x = f32(2, 3, 5, 7)
    check_op(op, [(x, False)], dict(axes=(2, 3), keepdims=1), tmp_path)
    check_op(op, [(x, False)], dict(axes=(1,), keepdims=0), tmp_path)
