"""quantize_fp16: float16 weight storage."""

import pytest

import qcompiler as qc
from qcompiler.quant import QuantConfig, quantize

from _quant_models import logits_rel_err, small_cnn_onnx


@pytest.fixture(scope="module")
def cnn():
    return qc.from_onnx(small_cnn_onnx())


def test_float16_mode(cnn):
    q = quantize(cnn, QuantConfig(mode="float16"))
    assert sum(v.dtype == "float16" for v in q.values.values() if v.is_const) == 8
    assert logits_rel_err(cnn, q) < 1e-2
