"""Elementwise ops (ONNX semantics, numpy broadcasting)."""

import numpy as np

from ..registry import op


@op("Relu")
def relu(inputs, attrs):
    (x,) = inputs
    return [np.maximum(x, np.zeros((), x.dtype))]


@op("Add")
def add(inputs, attrs):
    a, b = inputs
    return [np.add(a, b)]
