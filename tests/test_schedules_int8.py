"""int8 kernels (QConv2d, QDense, QAdd, QuantizeLinear, DequantizeLinear) bit-exact against the
reference executor, for every epilogue (int32, float, int8/uint8 with fixed-point and float
requantization) on odd shapes."""

import numpy as np
import pytest

from lowering_helpers import check_op
from qcompiler.ref.ops.requant import quantize_multipliers

rng = np.random.default_rng(77)


def epilogue(kind: str, o: int, out_dtype="int8", relu=False):
    """(extra inputs, attrs) of an ``out`` epilogue with per-channel parameters."""
    if kind == "int32":
        return [], {"out": "int32"}
    if kind == "float":
        return ([(rng.uniform(1e-3, 2e-2, o).astype(np.float32), True),
                 (rng.uniform(-1, 1, o).astype(np.float32), True)], {"out": "float"})
    lo, hi = (-128, 127) if out_dtype == "int8" else (0, 255)
    zp = 3 if out_dtype == "int8" else 120
    if relu:
        lo = zp
    attrs = {"out": out_dtype, "out_zero_point": zp, "out_min": lo, "out_max": hi, "requant": kind}
    real = rng.uniform(2e-4, 5e-3, o)
    if kind == "fixed_point":
        m, s = quantize_multipliers(real)
        return [(m, True), (s, True)], attrs
    return [(real.astype(np.float32), True)], attrs


def qconv_attrs(strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), groups=1, xz=0, wz=0):
    return dict(strides=strides, pads=pads, dilations=dil, groups=groups, x_zero_point=xz, w_zero_point=wz)


QCONV = [
    # x shape, w shape, geometry, x dtype, epilogue kind, out dtype, bias
    ((1, 5, 9, 11), (7, 5, 3, 3), qconv_attrs((1, 2), (1, 1, 2, 0), (1, 1), 1, 128, 0), "uint8", "fixed_point", "uint8", True),
    ((2, 4, 8, 7), (9, 4, 1, 1), qconv_attrs(xz=-3, wz=2), "int8", "float", "int8", False),
    ((1, 6, 10, 9), (6, 1, 3, 3), qconv_attrs((2, 2), (1, 1, 1, 1), groups=6, xz=100), "uint8", "fixed_point", "int8", True),
    ((1, 8, 7, 7), (12, 4, 3, 3), qconv_attrs((1, 1), (1, 0, 1, 2), (2, 1), groups=2, xz=5), "uint8", "int32", "", True),
    ((1, 3, 13, 12), (5, 3, 3, 3), qconv_attrs((2, 2), (0, 1, 1, 1), xz=17), "uint8", "float_out", "", True),
]


@pytest.mark.parametrize("xs,ws,attrs,xdt,kind,odt,bias", QCONV, ids=[f"qconv{i}" for i in range(len(QCONV))])
def test_qconv2d(xs, ws, attrs, xdt, kind, odt, bias, tmp_path):
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, xs).astype(xdt)
    w = rng.integers(-127, 128, ws).astype(np.int8)
    o = ws[0]
    b = (rng.integers(-2000, 2000, o).astype(np.int32), True) if bias else (None, False)
    extra, eattrs = epilogue("float" if kind == "float_out" else kind, o, odt or "int8", relu=(kind == "fixed_point"))
    lowered = check_op("QConv2d", [(x, False), (w, True), b] + extra, {**attrs, **eattrs}, tmp_path)
    assert lowered.records[0].bits.get("w") == 8 and lowered.records[0].macs > 0


@pytest.mark.parametrize("kind,odt", [("fixed_point", "int8"), ("float", "uint8"), ("int32", ""), ("float_out", "")])
def test_qdense(kind, odt, tmp_path):
    m, k, n = 3, 45, 19
    x = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    extra, eattrs = epilogue("float" if kind == "float_out" else kind, n, odt or "int8")
    b = (rng.integers(-5000, 5000, n).astype(np.int32), True)
    attrs = {"x_zero_point": 128, "w_zero_point": 0, **eattrs}
    check_op("QDense", [(x, False), (w, True), b] + extra, attrs, tmp_path)
    # without bias, signed x
    xs = rng.integers(-128, 128, (m, k)).astype(np.int8)
    check_op("QDense", [(xs, False), (w, True), (None, False)] + extra, {**attrs, "x_zero_point": -1}, tmp_path)


@pytest.mark.parametrize("mode", ["fixed_point", "float"])
def test_qadd(mode, tmp_path):
    a = rng.integers(-128, 128, (1, 4, 5, 7)).astype(np.int8)
    b = rng.integers(-128, 128, (1, 4, 1, 7)).astype(np.int8)
    attrs = dict(a_zero_point=3, b_zero_point=-5, out="int8", out_zero_point=-2, out_min=-128, out_max=127,
                 requant=mode)
    if mode == "fixed_point":
        attrs.update(a_multiplier=1 << 30, b_multiplier=(3 << 28) + 12345, shift=31)
    else:
        attrs.update(a_scale=0.05, b_scale=0.031, out_scale=0.07)
    check_op("QAdd", [(a, False), (b, False)], attrs, tmp_path)


def test_quantize_dequantize(tmp_path):
    x = rng.uniform(-3, 3, (2, 3, 5, 7)).astype(np.float32)
    x[0, 0, 0, :3] = [0.025, -0.075, 0.125]  # exact .5 ties after division by 0.05
    scale, zp = np.array(0.05, np.float32), np.array(-3, np.int8)
    check_op("QuantizeLinear", [(x, False), (scale, True), (zp, True)], dict(axis=1, block_size=0,
                                                                            output_dtype="int8", precision=""), tmp_path)
    pc_scale = np.array([0.02, 0.03, 0.05], np.float32)
    pc_zp = np.array([128, 100, 0], np.uint8)
    check_op("QuantizeLinear", [(x, False), (pc_scale, True), (pc_zp, True)],
             dict(axis=1, block_size=0, output_dtype="uint8", precision=""), tmp_path)
    q = rng.integers(0, 256, (2, 3, 5, 7)).astype(np.uint8)
    check_op("DequantizeLinear", [(q, False), (pc_scale, True), (pc_zp, True)],
             dict(axis=1, block_size=0, output_dtype="float32"), tmp_path)
    qi = rng.integers(-1 << 20, 1 << 20, (4, 9)).astype(np.int32)
    check_op("DequantizeLinear", [(qi, False), (np.array(1e-3, np.float32), True)],
             dict(axis=1, block_size=0, output_dtype="float32"), tmp_path)
