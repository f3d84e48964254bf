"""The low-bit IR ops (qcompiler/ref/ops/lowbit.py) against independent float/integer computations."""

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qcompiler import ref
from qcompiler.errors import QCompilerError
from qcompiler.ref.ops import bits
from qcompiler.ref.ops.requant import (quantize_add_multipliers, quantize_multiplier,
                                       requantize_fixed_point, requantize_float)
from qcompiler.ref.registry import infer_outputs

RNG = np.random.default_rng(0)


def run(op, inputs, attrs):
    """Run an op and check that its registered shape inference agrees with what it computes."""
    (y,) = ref.run_single(op, inputs, attrs)
    described = [None if i is None else (i.shape, str(i.dtype), None) for i in inputs]
    assert infer_outputs(op, described, attrs) == [(tuple(y.shape), str(y.dtype))]
    return y


def torch_conv(x, w, strides, pads, dilations, groups, pad_value=0.0):
    """Float64 conv with explicit (possibly non-zero) padding, [t, l, b, r] pads."""
    xt = F.pad(torch.from_numpy(np.asarray(x, np.float64)), (pads[1], pads[3], pads[0], pads[2]),
               value=float(pad_value))
    y = F.conv2d(xt, torch.from_numpy(np.asarray(w, np.float64)), stride=strides, dilation=dilations,
                 groups=groups)
    return y.numpy()


def pm1(shape):
    return np.where(RNG.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


# -- packing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("wb", [8, 16, 32, 64])
@pytest.mark.parametrize("n", [1, 7, 8, 33, 70])
def test_pack_layout_and_roundtrip(wb, n):
    b = RNG.random((3, n)) < 0.5
    words = bits.pack_bits(b, wb)
    assert words.dtype == np.dtype(f"uint{wb}") and words.shape == (3, -(-n // wb))
    for r in range(3):
        for c in range(n):  # element c at word c // wb, bit c % wb (LSB first)
            assert (int(words[r, c // wb]) >> (c % wb)) & 1 == int(b[r, c])
        total = sum(int(wd) << (wb * i) for i, wd in enumerate(words[r]))
        assert total >> n == 0  # bits past the logical length are 0
    np.testing.assert_array_equal(bits.unpack_bits(words, n), b)


def test_bitpack_sign_threshold_and_unpack():
    x = RNG.standard_normal((2, 37, 3, 4)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # x >= 0 -> +1 (bit 0)
    t = RNG.standard_normal(37).astype(np.float32)
    packed = run("BitPack", [x, None], dict(mode="sign", word_bits=16))
    assert packed.shape == (2, 3, 4, 3)
    assert bits.unpack_bits(packed, 37)[0, 0, 0, 0] == 0
    back = run("BitUnpack", [packed], dict(mode="sign", channels=37))
    np.testing.assert_array_equal(back, np.where(x < 0, -1.0, 1.0))
    packed_t = run("BitPack", [x, t], dict(mode="sign", word_bits=32))
    back_t = run("BitUnpack", [packed_t], dict(mode="sign", channels=37))
    np.testing.assert_array_equal(back_t, np.where(x < t[None, :, None, None], -1.0, 1.0))


@pytest.mark.parametrize("shape", [(2, 11, 3, 3), (5, 70)])
def test_bitpack_unsigned_planes(shape):
    codes = RNG.integers(0, 8, shape).astype(np.uint8)
    packed = run("BitPack", [codes], dict(mode="unsigned", word_bits=32, bits=3))
    assert packed.shape[-2] == 3
    back = run("BitUnpack", [packed], dict(mode="unsigned", channels=shape[1], bits=3))
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, codes)
    with pytest.raises(QCompilerError, match=r"\[0, 4\)"):
        ref.run_single("BitPack", [codes], dict(mode="unsigned", word_bits=32, bits=2))


# -- binary conv / dense ------------------------------------------------------------------------

BCONV_CASES = [
    # C, O, H, W, k, strides, pads [t, l, b, r], dilations, groups, word_bits
    (3, 4, 5, 6, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 32),
    (37, 5, 7, 6, 3, (2, 2), (1, 2, 0, 1), (1, 1), 1, 8),
    (70, 3, 6, 6, 3, (1, 2), (2, 2, 2, 2), (2, 1), 1, 64),
    (10, 4, 5, 5, 3, (2, 1), (1, 1, 1, 1), (1, 1), 2, 8),
    (9, 6, 4, 5, 1, (1, 1), (0, 0, 0, 0), (1, 1), 3, 16),
    (33, 2, 5, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1, 32),  # every output touches a border
]


@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("case", BCONV_CASES, ids=lambda c: f"C{c[0]}g{c[8]}s{c[5][0]}w{c[9]}")
def test_binary_conv_equals_float_conv(case, pad_value):
    c, o, h, w, k, strides, pads, dil, groups, wb = case
    x = pm1((2, c, h, w))
    wt = pm1((o, c // groups, k, k))
    attrs = dict(in_channels=c, groups=groups, kernel_shape=(k, k), strides=strides, pads=pads,
                 dilations=dil, pad_value=pad_value, out="int32")
    acc = run("BinaryConv2d", [bits.pack_sign(x, wb), bits.pack_weight_sign(wt, wb)], attrs)
    expect = torch_conv(x, wt, strides, pads, dil, groups, pad_value)
    np.testing.assert_array_equal(acc, expect.astype(np.int32), err_msg=f"{case} pad_value={pad_value}")


def test_binary_conv_float_and_packed_epilogues():
    c, o = 13, 10
    x, wt = pm1((1, c, 4, 4)), pm1((o, c, 3, 3))
    base = dict(in_channels=c, groups=1, kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                dilations=(1, 1), pad_value=0)
    xp, wp = bits.pack_sign(x, 32), bits.pack_weight_sign(wt, 32)
    acc = run("BinaryConv2d", [xp, wp], dict(base, out="int32")).astype(np.int64)
    scale = RNG.random(o).astype(np.float32)
    bias = RNG.standard_normal(o).astype(np.float32)
    y = run("BinaryConv2d", [xp, wp, scale, bias], dict(base, out="float"))
    np.testing.assert_array_equal(y, acc.astype(np.float32) * scale[None, :, None, None]
                                  + bias[None, :, None, None])
    thr = RNG.integers(-10, 10, o).astype(np.int32)
    flip = (np.arange(o) % 3 == 0).astype(np.uint8)
    yp = run("BinaryConv2d", [xp, wp, thr, flip], dict(base, out="packed", out_word_bits=8))
    assert yp.shape == (1, 4, 4, 2) and yp.dtype == np.uint8
    t4 = thr[None, :, None, None]
    minus = np.where(flip[None, :, None, None] == 1, acc > t4, acc < t4)
    np.testing.assert_array_equal(bits.unpack_bits(yp, o), minus.transpose(0, 2, 3, 1))


def test_binary_conv_residual_epilogue_is_the_unfused_add():
    """residual=1: ``(acc * scale + bias) + residual``, each step rounded to float32 -- exactly the
    unfused float epilogue followed by the float Add (and not one rounding of the whole sum)."""
    c, o = 13, 10
    x, wt = pm1((2, c, 5, 6)), pm1((o, c, 3, 3))
    base = dict(in_channels=c, groups=1, kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                dilations=(1, 1), pad_value=0)
    xp, wp = bits.pack_sign(x, 32), bits.pack_weight_sign(wt, 32)
    scale = (RNG.random(o) * 0.37).astype(np.float32)
    bias = RNG.standard_normal(o).astype(np.float32)
    res = RNG.standard_normal((2, o, 5, 6)).astype(np.float32)
    y = run("BinaryConv2d", [xp, wp, scale, bias], dict(base, out="float"))
    (unfused,) = ref.run_single("Add", [y, res], {})
    fused = run("BinaryConv2d", [xp, wp, scale, bias, res], dict(base, out="float", residual=1))
    assert fused.dtype == np.float32
    np.testing.assert_array_equal(fused, unfused)
    acc = run("BinaryConv2d", [xp, wp], dict(base, out="int32")).astype(np.float64)
    once = (acc * scale[None, :, None, None] + bias[None, :, None, None] + res).astype(np.float32)
    assert (once != fused).any()  # the order of the roundings is observable
    # BitserialConv2d shares the epilogue
    codes = RNG.integers(0, 4, (1, c, 4, 4)).astype(np.uint8)
    u = RNG.integers(0, 4, (o, c, 3, 3)).astype(np.uint8)
    bs = dict(base, act_bits=2, weight_bits=2, w_mult=1, w_offset=0, out="float")
    bx, bw = bits.pack_planes(codes, 2, 16), bits.pack_planes(u, 2, 16)
    r4 = RNG.standard_normal((1, o, 4, 4)).astype(np.float32)
    yb = run("BitserialConv2d", [bx, bw, scale, bias], bs)
    np.testing.assert_array_equal(run("BitserialConv2d", [bx, bw, scale, bias, r4], dict(bs, residual=1)),
                                  yb + r4)
    with pytest.raises(QCompilerError, match="residual must have the output's shape"):
        ref.run_single("BinaryConv2d", [xp, wp, scale, bias, res[:1]], dict(base, out="float", residual=1))
    with pytest.raises(QCompilerError, match="needs the float epilogue"):
        ref.run_single("BinaryConv2d", [xp, wp, res], dict(base, out="int32", residual=1))
    with pytest.raises(QCompilerError, match="BinaryDense"):
        ref.run_single("BinaryDense", [bits.pack_sign(pm1((2, 8)), 8), bits.pack_sign(pm1((3, 8)), 8),
                                       scale[:3], bias[:3], res[:, :3, 0, 0]],
                       dict(in_features=8, out="float", residual=1))


@pytest.mark.parametrize("k,wb", [(1, 8), (70, 32), (129, 64)])
def test_binary_dense_popcount_formula(k, wb):
    x, w = pm1((3, k)), pm1((5, k))
    xp, wp = bits.pack_sign(x, wb), bits.pack_sign(w, wb)
    acc = run("BinaryDense", [xp, wp], dict(in_features=k, out="int32"))
    np.testing.assert_array_equal(acc, (x @ w.T).astype(np.int32))
    pop = bits.popcount(xp[:, None, :] ^ wp[None, :, :]).sum(-1)  # dot = K - 2 popcount(x ^ w)
    np.testing.assert_array_equal(acc, k - 2 * pop)


# -- bitserial ----------------------------------------------------------------------------------

ENCODINGS = {  # weight_bits, w_mult, w_offset
    "unsigned": (2, 1, 0),
    "offset": (3, 1, 4),
    "ternary": (2, 1, 1),
    "bipolar": (2, 2, 3),
}


@pytest.mark.parametrize("enc", ENCODINGS)
def test_bitserial_dense_matches_integer_and_popcount_formula(enc):
    wbits, mult, off = ENCODINGS[enc]
    abits, k = 2, 45
    xc = RNG.integers(0, 1 << abits, (3, k))
    u = RNG.integers(0, 3 if enc == "ternary" else 1 << wbits, (4, k))
    xp, wp = bits.pack_planes(xc, abits, 32), bits.pack_planes(u, wbits, 32)
    attrs = dict(in_features=k, act_bits=abits, weight_bits=wbits, w_mult=mult, w_offset=off, out="int32")
    acc = run("BitserialDense", [xp, wp], attrs)
    np.testing.assert_array_equal(acc, xc @ (mult * u - off).T)
    # the kernels' formula from the contract
    planes_x, planes_u = xp, wp  # [M, k, Kw], [N, B, Kw]
    and_term = sum((1 << (i + j)) * bits.popcount(planes_x[:, None, i, :] & planes_u[None, :, j, :]).sum(-1)
                   for i in range(abits) for j in range(wbits))
    x_term = sum((1 << i) * bits.popcount(planes_x[:, i, :]).sum(-1) for i in range(abits))
    np.testing.assert_array_equal(acc, mult * and_term - off * x_term[:, None])


@pytest.mark.parametrize("groups,strides,pads", [(1, (1, 1), (1, 1, 1, 1)), (2, (2, 2), (0, 1, 2, 1))])
def test_bitserial_conv_matches_integer_conv(groups, strides, pads):
    c, o, abits, wbits, mult, off = 14, 4, 3, 2, 2, 3
    xc = RNG.integers(0, 1 << abits, (2, c, 6, 5))
    u = RNG.integers(0, 1 << wbits, (o, c // groups, 3, 3))
    attrs = dict(in_channels=c, groups=groups, kernel_shape=(3, 3), strides=strides, pads=pads,
                 dilations=(1, 1), act_bits=abits, weight_bits=wbits, w_mult=mult, w_offset=off,
                 out="int32")
    acc = run("BitserialConv2d", [bits.pack_planes(xc, abits, 8), bits.pack_planes(u, wbits, 16)], attrs)
    expect = torch_conv(xc, mult * u - off, strides, pads, (1, 1), groups, 0)
    np.testing.assert_array_equal(acc, expect.astype(np.int32))


# -- integer conv / dense and requantization ----------------------------------------------------

def test_qconv2d_int32_matches_float_conv():
    x = RNG.integers(0, 256, (2, 6, 7, 5)).astype(np.uint8)
    w = RNG.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    bias = RNG.integers(-1000, 1000, 4).astype(np.int32)
    attrs = dict(strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2), groups=2, x_zero_point=17,
                 w_zero_point=-3, out="int32")
    acc = run("QConv2d", [x, w, bias], attrs)
    # padded pixels are real zero: pad x - zp with 0
    expect = torch_conv(x.astype(np.float64) - 17, w.astype(np.float64) + 3, (2, 1), (1, 0, 1, 2),
                        (1, 2), 2, 0) + bias[None, :, None, None]
    np.testing.assert_array_equal(acc, expect.astype(np.int32))
    assert run("QConv2d", [x, w, None], attrs).shape == acc.shape


def test_requant_fixed_point_hand_cases():
    # M = 2^30, S = 31: multiplier 0.5; ties round toward +inf
    acc = np.array([[5, -5, 3, -3, 0, 1000, -1000, 7]], np.int64)
    m = np.full(8, 1 << 30, np.int32)
    s = np.full(8, 31, np.int32)
    ones = np.ones(8, np.int64)
    y = requantize_fixed_point(acc.T * ones, m, s, 1, 0, -128, 127)
    np.testing.assert_array_equal(y.diagonal(), [3, -2, 2, -1, 0, 127, -128, 4])
    # with a zero point and a ReLU-fused clamp
    y = requantize_fixed_point(np.array([[5, -5]]), m[:2], s[:2], 1, 10, 10, 255)
    np.testing.assert_array_equal(y, [[13, 10]])


def test_requant_float_hand_cases():
    acc = np.array([[5, -5, 7, -7, 1, 300]], np.int64)
    y = requantize_float(acc, np.full(6, 0.5, np.float32), 1, 0, -128, 127)
    np.testing.assert_array_equal(y, [[2, -2, 4, -4, 0, 127]])  # half to even; clamp
    y = requantize_float(np.array([[5, 3]]), np.array([0.5, 0.5], np.float32), 1, 3, 0, 255)
    np.testing.assert_array_equal(y, [[5, 5]])


def test_qdense_epilogues_through_the_op():
    x = RNG.integers(-128, 128, (3, 20)).astype(np.int8)
    w = RNG.integers(-128, 128, (6, 20)).astype(np.int8)
    bias = RNG.integers(-500, 500, 6).astype(np.int32)
    base = dict(x_zero_point=2, w_zero_point=0)
    acc = run("QDense", [x, w, bias], dict(base, out="int32")).astype(np.int64)
    np.testing.assert_array_equal(acc, (x.astype(np.int64) - 2) @ w.T.astype(np.int64) + bias)
    real = RNG.uniform(1e-4, 1e-2, 6)
    mult, shift = zip(*(quantize_multiplier(r) for r in real))
    mult, shift = np.array(mult, np.int32), np.array(shift, np.int32)
    q = dict(base, out="uint8", out_zero_point=128, out_min=0, out_max=255)
    y = run("QDense", [x, w, bias, mult, shift], dict(q, requant="fixed_point"))
    expect = [[min(255, max(0, ((int(a) * int(mm) + (1 << (int(ss) - 1))) >> int(ss)) + 128))
               for a, mm, ss in zip(row, mult, shift)] for row in acc]
    np.testing.assert_array_equal(y, expect)
    # fixed point vs float requant differ at most by one step (rounding of M and tie-breaking)
    yf = run("QDense", [x, w, bias, real.astype(np.float32)], dict(q, requant="float"))
    assert np.abs(y.astype(int) - yf.astype(int)).max() <= 1
    with pytest.raises(QCompilerError, match="extra input"):
        ref.run_single("QDense", [x, w, bias, mult], dict(q, requant="fixed_point"))


def test_quantize_multiplier_exactness():
    rs = np.concatenate([RNG.uniform(1e-6, 1.0, 500), 2.0 ** -np.arange(0, 20), [0.99999999, 1.5, 300.0]])
    for r in rs:
        m, s = quantize_multiplier(float(r))
        assert (1 << 30) <= m < (1 << 31) and 1 <= s <= 63
        # M is the correctly rounded value of r * 2^S
        exact = Fraction(float(r)) * (1 << s)
        assert abs(Fraction(m) - exact) <= Fraction(1, 2)
    # requantized results equal round-half-up of the exact rational acc * M / 2^S
    acc = RNG.integers(-(1 << 31), (1 << 31) - 1, 200)
    m, s = quantize_multiplier(0.0123)
    y = requantize_fixed_point(acc[:, None], np.array([m], np.int32), np.array([s], np.int32), 1, 0,
                               -(1 << 40), 1 << 40)[:, 0]
    for a, got in zip(acc, y):
        q = Fraction(int(a) * m, 1 << s)
        assert got == (q + Fraction(1, 2)).__floor__()
    # tiny multipliers flush to a representation that gives 0 for every int32 accumulator
    m, s = quantize_multiplier(1e-12)
    assert (((1 << 31) - 1) * m + (1 << (s - 1))) >> s == 0
    assert ((-(1 << 31)) * m + (1 << (s - 1))) >> s == 0


# -- pooling and add -----------------------------------------------------------------------------

@pytest.mark.parametrize("k,s,pads", [(2, 2, (0, 0, 0, 0)), (3, 2, (1, 1, 1, 1)), (3, 1, (1, 0, 1, 2))])
def test_packed_maxpool_equals_float_maxpool(k, s, pads):
    x = pm1((2, 19, 6, 7))
    y = run("PackedMaxPool", [bits.pack_sign(x, 8)], dict(kernel_shape=(k, k), strides=(s, s), pads=pads,
                                                          dilations=(1, 1)))
    xt = F.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]), value=-np.inf)
    expect = F.max_pool2d(xt, k, s).numpy()
    np.testing.assert_array_equal(bits.unpack_sign(y, 19), expect)


def test_qadd_modes():
    a = RNG.integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    b = RNG.integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    sa, sb, so, za, zb, zo = 0.02, 0.05, 0.06, 120, 130, 100
    base = dict(a_zero_point=za, b_zero_point=zb, out="uint8", out_zero_point=zo, out_min=0, out_max=255)
    yf = run("QAdd", [a, b], dict(base, requant="float", a_scale=sa, b_scale=sb, out_scale=so))
    # the ONNX meaning of DequantizeLinear, DequantizeLinear -> Add -> QuantizeLinear, in float32
    deq = (np.float32(sa) * (a.astype(np.float32) - za) + np.float32(sb) * (b.astype(np.float32) - zb))
    np.testing.assert_array_equal(yf, np.clip(np.rint(deq / np.float32(so)) + zo, 0, 255).astype(np.uint8))
    ma, mb, sh = quantize_add_multipliers(sa / so, sb / so)
    yx = run("QAdd", [a, b], dict(base, requant="fixed_point", a_multiplier=ma, b_multiplier=mb, shift=sh))
    assert np.abs(yx.astype(int) - yf.astype(int)).max() <= 1
    # hand case: ratios 1/2 and 1/4, ties toward +inf
    y = ref.run_single("QAdd", [np.array([3, -3], np.int8), np.array([2, 2], np.int8)],
                       dict(a_zero_point=0, b_zero_point=0, out="int8", out_zero_point=0, out_min=-128,
                            out_max=127, requant="fixed_point", a_multiplier=1 << 30,
                            b_multiplier=1 << 29, shift=31))[0]
    np.testing.assert_array_equal(y, [2, -1])  # 1.5+0.5=2, -1.5+0.5=-1


def test_bad_attrs_are_clear_errors():
    x, w = pm1((1, 8, 3, 3)), pm1((2, 8, 3, 3))
    attrs = dict(in_channels=8, groups=1, kernel_shape=(3, 3), strides=(1, 1), pads=(0, 0, 0, 0),
                 dilations=(1, 1), pad_value=2, out="int32")
    with pytest.raises(QCompilerError, match="pad_value"):
        ref.run_single("BinaryConv2d", [bits.pack_sign(x, 8), bits.pack_weight_sign(w, 8)], attrs)
    with pytest.raises(QCompilerError, match="words"):
        ref.run_single("BinaryConv2d", [bits.pack_sign(x, 8), bits.pack_weight_sign(pm1((2, 9, 3, 3)), 8)],
                       dict(attrs, pad_value=0))
    with pytest.raises(QCompilerError, match="out must be"):
        ref.run_single("BinaryConv2d", [bits.pack_sign(x, 8), bits.pack_weight_sign(w, 8)],
                       dict(attrs, pad_value=0, out="int4"))
