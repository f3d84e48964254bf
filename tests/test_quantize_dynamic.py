"""quantize_dynamic: weights-only int8 (the fallback without calibration data)."""

import logging

import numpy as np
import pytest

import qcompiler as qc
from qcompiler.quant import QuantConfig, quantize

from _quant_models import logits_rel_err, small_cnn_onnx


@pytest.fixture(scope="module")
def cnn():
    return qc.from_onnx(small_cnn_onnx())


def test_no_calibration_falls_back_to_weights_only(cnn, caplog):
    with caplog.at_level(logging.WARNING, logger="qcompiler.quant"):
        q = quantize(cnn, QuantConfig())
    assert "no calibration data" in caplog.text
    assert [n.op for n in q.nodes].count("DequantizeLinear") == 4
    assert not any(n.op.startswith("Q") and n.op != "QuantizeLinear" for n in q.nodes)
    assert logits_rel_err(cnn, q) < 0.02


def test_pass_directly_per_tensor(cnn):
    from qcompiler.passes.quantize_dynamic import quantize_dynamic

    q = quantize_dynamic(cnn, QuantConfig(per_channel=False, weights=6))
    dq = [n for n in q.nodes if n.op == "DequantizeLinear"]
    assert len(dq) == 4 and all(np.abs(q.const(n.inputs[0])).max() <= 31 for n in dq)
    assert logits_rel_err(cnn, q) < 0.05
