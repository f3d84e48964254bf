import numpy as np
import pytest

from qcompiler import ref
from qcompiler.errors import ConfigError
from qcompiler.passes.quantize_bitserial import quantize_bitserial
from qcompiler.ref.ops.bits import unpack_planes

from passes_util import Builder


def _net():
    b = Builder(seed=8)
    x = b.input("x", (16, 3, 6, 6))
    y = b.node("Relu", [b.conv(x, 8)])
    y = b.node("Relu", [b.conv(y, 8)])
    y = b.node("Relu", [b.gemm(b.node("Flatten", [y], axis=1), 16)])
    return b.done(b.gemm(y, 4))


def _feeds(seed):
    return {"x": np.random.default_rng(seed).normal(size=(16, 3, 6, 6)).astype(np.float32)}


def _rel_err(g, q):
    f = _feeds(9)
    a, b = ref.run(g, f)[g.outputs[0]], ref.run(q, f)[g.outputs[0]]
    return np.abs(b - a).mean() / np.abs(a).mean()


def test_bitserial_layers_and_error_shrinks_with_bits():
    g = _net()
    calib = [_feeds(1)]
    q2 = quantize_bitserial(g, weight_bits=2, act_bits=2, calibration=calib)
    q8 = quantize_bitserial(g, weight_bits=6, act_bits=6, calibration=calib)
    assert [n.op for n in q2.nodes].count("BitserialConv2d") == 1 and "BitserialDense" in [n.op for n in q2.nodes]
    assert q2.nodes[0].op == "Conv" and q2.nodes[-1].op == "Gemm"    # first/last kept
    e2, e8 = _rel_err(g, q2), _rel_err(g, q8)
    assert e8 < e2 < 1.0 and e8 < 0.1, (e2, e8)


def test_bitserial_layer_equals_float_conv_of_quantized_tensors():
    """The bit-plane op computes the float conv of the dequantized codes, border pixels included."""
    g = _net()
    q = quantize_bitserial(g, weight_bits=3, act_bits=3, calibration=[_feeds(1)], encoding="offset")
    env = ref.run(q, _feeds(2), keep_all=True)
    n = next(n for n in q.nodes if n.op == "BitserialConv2d")
    codes = env[n.inputs[0].replace("_xbits", "_codes")].astype(np.float64)
    sx = float(q.const(n.name + "_xscale"))
    u = unpack_planes(q.const(n.inputs[1]), 8).astype(np.float64)
    ws = q.const(n.inputs[2]).astype(np.float64) / sx
    w = (u - 4) * ws[:, None, None, None]
    from qcompiler.ref.ops.intmath import conv_nd
    want = conv_nd(codes * sx, w, (1, 1), (1, 1, 1, 1), (1, 1), 1) + q.const(n.inputs[3]).reshape(1, -1, 1, 1)
    np.testing.assert_allclose(env[n.outputs[0]], want, rtol=1e-4, atol=1e-4)


def test_errors():
    g = _net()
    with pytest.raises(ConfigError, match="calibration"):
        quantize_bitserial(g, calibration=[])
    with pytest.raises(ConfigError, match="bits"):
        quantize_bitserial(g, weight_bits=9, calibration=[_feeds(1)])
