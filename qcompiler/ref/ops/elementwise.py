"""Elementwise ops (ONNX semantics, numpy multidirectional broadcasting).

Float results keep the input's dtype (float16 stays float16); attributes arrive normalised by the
frontend (every ONNX default filled in).
"""

import math

import numpy as np

from ...errors import UnsupportedError
from ..registry import op


def _scalar(x: np.ndarray, v: float):
    """``v`` as a scalar of ``x``'s dtype, so that arithmetic with it does not widen ``x``."""
    return x.dtype.type(v)


def _require_float(name: str, x: np.ndarray) -> None:
    if x.dtype.kind != "f":
        raise UnsupportedError(f"{name} is defined for float tensors, got {x.dtype}")


# -- unary math ---------------------------------------------------------------------------------

def _unary(name, fn, float_only=False):
    def compute(inputs, attrs):
        (x,) = inputs
        if float_only:
            _require_float(name, x)
        return [np.asarray(fn(x, attrs)).astype(x.dtype, copy=False)]

    compute.__name__ = name.lower()
    compute.__doc__ = f"ONNX {name}."
    op(name)(compute)


def _erf(x, attrs):
    # numpy has no erf; math.erf is exact to double precision (slow, but Erf is rare in CNNs).
    return np.frompyfunc(math.erf, 1, 1)(x.astype(np.float64)).astype(np.float64)


def _sign(x, attrs):
    return np.sign(x)


def _abs(x, attrs):
    return np.abs(x)


def _neg(x, attrs):
    return np.negative(x)


def _sigmoid(x, attrs):
    # split by sign so that exp never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _hard_sigmoid(x, attrs):
    return np.clip(_scalar(x, attrs["alpha"]) * x + _scalar(x, attrs["beta"]), 0, 1)


def _hard_swish(x, attrs):
    return x * np.clip(x * _scalar(x, 1 / 6) + _scalar(x, 0.5), 0, 1)


def _leaky_relu(x, attrs):
    return np.where(x >= 0, x, x * _scalar(x, attrs["alpha"]))


def _elu(x, attrs):
    return np.where(x >= 0, x, _scalar(x, attrs["alpha"]) * np.expm1(np.minimum(x, 0)))


def _selu(x, attrs):
    alpha, gamma = _scalar(x, attrs["alpha"]), _scalar(x, attrs["gamma"])
    return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _softplus(x, attrs):
    return np.logaddexp(x, _scalar(x, 0))


def _softsign(x, attrs):
    return x / (1 + np.abs(x))


def _reciprocal(x, attrs):
    return np.reciprocal(x)


_UNARY = [
    ("Abs", _abs, False), ("Neg", _neg, False), ("Sign", _sign, False),
    ("Sqrt", lambda x, a: np.sqrt(x), True), ("Exp", lambda x, a: np.exp(x), True),
    ("Log", lambda x, a: np.log(x), True), ("Floor", lambda x, a: np.floor(x), True),
    ("Ceil", lambda x, a: np.ceil(x), True), ("Round", lambda x, a: np.rint(x), True),  # half to even
    ("Erf", _erf, True), ("Tanh", lambda x, a: np.tanh(x), True), ("Sigmoid", _sigmoid, True),
    ("HardSigmoid", _hard_sigmoid, True), ("HardSwish", _hard_swish, True),
    ("LeakyRelu", _leaky_relu, True), ("Elu", _elu, True), ("Selu", _selu, True),
    ("Softplus", _softplus, True), ("Softsign", _softsign, True), ("Reciprocal", _reciprocal, True),
]
for _name, _fn, _float_only in _UNARY:
    _unary(_name, _fn, _float_only)


@op("Relu")
def relu(inputs, attrs):
    """ONNX Relu: max(x, 0)."""
    (x,) = inputs
    return [np.maximum(x, np.zeros((), x.dtype))]


@op("PRelu")
def prelu(inputs, attrs):
    """ONNX PRelu: x < 0 ? slope * x : x, slope broadcast to x (unidirectional)."""
    x, slope = inputs
    return [np.where(x < 0, x * slope.astype(x.dtype, copy=False), x).astype(x.dtype, copy=False)]


@op("Clip")
def clip(inputs, attrs):
    """ONNX Clip (opset >= 11): optional scalar ``min`` and ``max`` inputs; absent means unbounded."""
    x = inputs[0]
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    y = x
    if lo is not None:
        y = np.maximum(y, lo.astype(x.dtype).reshape(()))
    if hi is not None:
        y = np.minimum(y, hi.astype(x.dtype).reshape(()))
    return [np.asarray(y, x.dtype)]


# -- binary arithmetic ----------------------------------------------------------------------------

def _int_div(a, b):
    """Integer division truncating toward zero (C semantics, as ONNX runtimes do)."""
    q = np.floor_divide(a, b)
    if a.dtype.kind == "i":
        fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
        q = q + fix.astype(q.dtype)
    return q


def _div(a, b):
    return _int_div(a, b) if a.dtype.kind in "iu" else np.divide(a, b)


def _binary(name, fn):
    def compute(inputs, attrs):
        a, b = inputs
        if a.dtype != b.dtype:
            raise UnsupportedError(f"{name} needs both inputs of one dtype, got {a.dtype} and {b.dtype}")
        return [np.asarray(fn(a, b)).astype(a.dtype, copy=False)]

    compute.__name__ = name.lower()
    compute.__doc__ = f"ONNX {name} with multidirectional broadcasting."
    op(name)(compute)


for _name, _fn in [("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", _div)]:
    _binary(_name, _fn)


@op("Pow")
def power(inputs, attrs):
    """ONNX Pow: the result has the base's dtype; the exponent may have another numeric dtype."""
    a, b = inputs
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        y = np.power(a.astype(np.int64), b.astype(np.int64))
    elif a.dtype.kind == "f":
        y = np.power(a, b.astype(a.dtype))
    else:  # integer base, float exponent: computed in float64, truncated back to the base's dtype
        y = np.power(a.astype(np.float64), b.astype(np.float64))
    return [np.asarray(y).astype(a.dtype)]


def _variadic(name, fn):
    def compute(inputs, attrs):
        xs = [x for x in inputs if x is not None]
        if len({x.dtype for x in xs}) != 1:
            raise UnsupportedError(f"{name} needs inputs of one dtype, got {[str(x.dtype) for x in xs]}")
        return [np.asarray(fn(xs)).astype(xs[0].dtype, copy=False)]

    compute.__name__ = name.lower()
    compute.__doc__ = f"ONNX {name} over any number of inputs, with broadcasting."
    op(name)(compute)


def _reduce_pairwise(ufunc):
    def fn(xs):
        y = xs[0]
        for x in xs[1:]:
            y = ufunc(y, x)
        return np.broadcast_to(y, np.broadcast_shapes(*[x.shape for x in xs]))

    return fn


def _mean(xs):
    total = _reduce_pairwise(np.add)(xs)
    return total / xs[0].dtype.type(len(xs)) if xs[0].dtype.kind == "f" else total // len(xs)


# Min/Max propagate NaN like numpy's maximum/minimum (ONNX leaves NaN handling to IEEE semantics).
for _name, _fn in [("Min", _reduce_pairwise(np.minimum)), ("Max", _reduce_pairwise(np.maximum)),
                   ("Sum", _reduce_pairwise(np.add)), ("Mean", _mean)]:
    _variadic(_name, _fn)


# -- comparison and logic -------------------------------------------------------------------------

def _compare(name, fn):
    def compute(inputs, attrs):
        a, b = inputs
        return [np.asarray(fn(a, b), dtype=bool)]

    compute.__name__ = name.lower()
    compute.__doc__ = f"ONNX {name}: a bool tensor, with broadcasting."
    op(name)(compute)


for _name, _fn in [("Equal", np.equal), ("Greater", np.greater), ("Less", np.less),
                   ("GreaterOrEqual", np.greater_equal), ("LessOrEqual", np.less_equal),
                   ("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)]:
    _compare(_name, _fn)


@op("Not")
def logical_not(inputs, attrs):
    """ONNX Not (bool)."""
    return [np.logical_not(inputs[0])]


@op("Where")
def where(inputs, attrs):
    """ONNX Where(condition, x, y) with broadcasting."""
    c, x, y = inputs
    return [np.where(c, x, y).astype(x.dtype, copy=False)]
