"""quantize_int8 (static full-integer) and the qc.quantize pipeline against the float graph."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qcompiler as qc
from qcompiler import ref
from qcompiler.errors import ConfigError
from qcompiler.quant import QuantConfig, quantize

from _quant_models import batches, logits_rel_err, small_cnn_onnx

INT_OPS = {"QConv2d", "QDense", "QAdd", "MaxPool", "QuantizeLinear", "DequantizeLinear", "ReduceMean", "Clip"}


@pytest.fixture(scope="module")
def cnn():
    return qc.from_onnx(small_cnn_onnx())



@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "kl"])
def test_int8_close_to_float(cnn, method):
    q = quantize(cnn, QuantConfig(calibration=method), calibration=batches(6))
    ops = [n.op for n in q.nodes]
    assert ops.count("QConv2d") == 3 and ops.count("QDense") == 1 and ops.count("QAdd") == 1
    assert set(ops) <= INT_OPS, set(ops) - INT_OPS
    # only ReduceMean runs in float (between a DequantizeLinear and a QuantizeLinear)
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2
    assert q.inputs == cnn.inputs and q.outputs == cnn.outputs
    assert logits_rel_err(cnn, q) < 0.05  # measured 0.8..2.5 %


def test_w4a8_and_keep_first_last(cnn):
    cfg = QuantConfig(weights=4, activations=8, keep_first_last=8)
    q = quantize(cnn, cfg, calibration=batches(6))
    by_name = {n.name: n for n in q.nodes}
    w_first = q.values[by_name["/c1/Conv"].inputs[1]].data
    w_mid = q.values[by_name["/c2/Conv"].inputs[1]].data
    assert np.abs(w_first).max() > 7 and np.abs(w_mid).max() <= 7  # first layer keeps 8 bits
    assert logits_rel_err(cnn, q) < 0.15


def test_w4a4_activations_on_the_4bit_grid(cnn):
    q = quantize(cnn, QuantConfig(weights=4, activations=4), calibration=batches(6))
    env = ref.run(q, batches(1, seed=3)[0], keep_all=True)
    for n in q.nodes:
        if n.op in ("QConv2d", "QDense", "QAdd"):
            y = env[n.outputs[0]].astype(int)
            assert n.attrs["out_max"] - n.attrs["out_min"] <= 15 and y.max() - y.min() <= 15
    assert "Clip" in [n.op for n in q.nodes]  # the input's QuantizeLinear saturates to 4 bits
    assert logits_rel_err(cnn, q) < 0.5


def test_one_layer_error_bound():
    """One Conv+Relu: the dequantized integer output equals the float conv of the quantized input and
    weights to within half an output step plus the bias rounding."""
    g = qc.from_onnx(small_cnn_onnx())
    q = quantize(g, QuantConfig(), calibration=batches(4))
    node = next(n for n in q.nodes if n.name == "/c1/Conv")
    feed = batches(1, seed=11)[0]
    env = ref.run(q, feed, keep_all=True)
    xq_name = node.inputs[0]
    quant = next(n for n in q.nodes if n.outputs[0] == xq_name)
    s_x, z_x = q.const(quant.inputs[1]), q.const(quant.inputs[2])
    # recover the weight scales from the float weights
    w_float = g.const(next(n for n in g.nodes if n.name == "/c1/Conv").inputs[1])
    b_float = g.const(next(n for n in g.nodes if n.name == "/c1/Conv").inputs[2])
    wq = q.const(node.inputs[1]).astype(np.float64)
    s_w = np.abs(w_float).reshape(8, -1).max(1) / 127
    x = (env[xq_name].astype(np.float64) - z_x) * s_x
    ref_out = F.conv2d(torch.from_numpy(x), torch.from_numpy(wq * s_w[:, None, None, None]),
                       torch.from_numpy(b_float.astype(np.float64)), padding=1).numpy()
    ref_out = np.maximum(ref_out, 0)
    y_q = env[node.outputs[0]].astype(np.float64)
    # the output scale, recovered from the requantization multiplier M / 2^S = s_x s_w / s_y
    mult = q.const(node.inputs[3]).astype(np.float64)
    shift = q.const(node.inputs[4]).astype(np.float64)
    s_y = float(s_x) * s_w[0] / (mult[0] / 2.0 ** shift[0])
    inside = ref_out < 255 * s_y
    err = np.abs(y_q * s_y - ref_out)[inside]
    bound = 0.5 * s_y + 0.5 * float(s_x) * s_w.max() + 1e-5
    assert err.max() <= bound, (err.max(), bound)


def test_config_errors(cnn):
    with pytest.raises(ConfigError, match="match no node"):
        quantize(cnn, QuantConfig(overrides={"layer9.*": dict(weights=2)}), calibration=batches(1))
    with pytest.raises(ConfigError, match="input"):
        quantize(cnn, QuantConfig(), calibration=[{"x": np.zeros((2, 3, 16, 16), np.float32)}])
    with pytest.raises(ConfigError, match="asymmetric"):
        quantize(cnn, QuantConfig(symmetric_weights=False), calibration=batches(1))
    q = quantize(cnn, QuantConfig(symmetric_weights=False, per_channel=False), calibration=batches(6))
    assert logits_rel_err(cnn, q) < 0.05
