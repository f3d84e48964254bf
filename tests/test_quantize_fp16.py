"""quantize_fp16: float16 weight storage."""

import numpy as np
import pytest

import qcompiler as qc
from qcompiler import ref
from qcompiler.quant import QuantConfig, quantize

from _quant_models import batches, small_cnn_onnx


@pytest.fixture(scope="module")
def cnn():
    return qc.from_onnx(small_cnn_onnx())


def _rel_err(g, q, n=3):
    worst = 0.0
    for feed in batches(n, seed=7):
        a = ref.run(g, feed)["logits"]
        b = ref.run(q, feed)["logits"]
        worst = max(worst, float(np.abs(a - b).max() / np.abs(a).max()))
    return worst


def test_float16_mode(cnn):
    q = quantize(cnn, QuantConfig(mode="float16"))
    assert sum(v.dtype == "float16" for v in q.values.values() if v.is_const) == 8
    assert _rel_err(cnn, q) < 1e-2
