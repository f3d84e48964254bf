"""ONNX quantization ops: QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul,
ConvInteger, MatMulInteger (ONNX semantics)."""

import numpy as np

from ..registry import op
