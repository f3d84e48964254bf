"""Bitserial (k-bit) conv/dense kernels bit-exact against the reference executor, natively on x86."""

import numpy as np
import pytest

from qcompiler.ref import run_single
from qcompiler.ref.ops.bits import pack_planes
from qcompiler.schedules.compute_lowbit import conv_workload_from_attrs, dense_workload_from_attrs
from qcompiler.schedules.x86 import binary as x86_binary

from test_kernels_binary import epilogue_case, host_x86_target, run_kernel

# (act_bits, weight_bits, w_mult, w_offset): unsigned, offset, ternary-like, bipolar
ENCODINGS = [(2, 2, 1, 0), (2, 2, 1, 2), (1, 2, 1, 1), (3, 1, 2, 1), (4, 4, 2, 15)]


@pytest.mark.parametrize("enc", ENCODINGS, ids=lambda e: "A%dW%d_m%d_o%d" % e)
def test_bitserial_conv2d_exact(enc):
    ab, wbits, mult, off = enc
    target = host_x86_target()
    rng = np.random.default_rng(sum(enc))
    n, c, h, w, o, k = 1, 70, 7, 9, 19, 3
    x = pack_planes(rng.integers(0, 1 << ab, (n, c, h, w)), ab, 64)
    u = pack_planes(rng.integers(0, 1 << wbits, (o, c, k, k)), wbits, 64)
    attrs = {"in_channels": c, "groups": 1, "kernel_shape": [k, k], "strides": [2, 2] if ab == 3 else [1, 1],
             "pads": [1, 0, 1, 2], "dilations": [1, 1], "act_bits": ab, "weight_bits": wbits,
             "w_mult": mult, "w_offset": off, "out": "int32"}
    ref = run_single("BitserialConv2d", [x, u], attrs)[0]
    wl = conv_workload_from_attrs("BitserialConv2d", x.shape, str(x.dtype), u.shape, attrs)
    np.testing.assert_array_equal(run_kernel(x86_binary.build_conv2d(wl, target, weights=u), target, x), ref)


@pytest.mark.parametrize("epi", ["int8_fixed", "packed"])
def test_bitserial_conv2d_epilogue_exact(epi):
    target = host_x86_target()
    rng = np.random.default_rng(5)
    n, c, h, w, o, k, ab, wbits = 1, 64, 6, 6, 40, 3, 2, 2
    x = pack_planes(rng.integers(0, 4, (n, c, h, w)), ab, 32)
    u = pack_planes(rng.integers(0, 4, (o, c, k, k)), wbits, 32)
    ep_attrs, extra = epilogue_case(epi, o, rng, 64)
    attrs = {"in_channels": c, "groups": 1, "kernel_shape": [k, k], "strides": [1, 1], "pads": [1, 1, 1, 1],
             "dilations": [1, 1], "act_bits": ab, "weight_bits": wbits, "w_mult": 2, "w_offset": 3, **ep_attrs}
    ref = run_single("BitserialConv2d", [x, u] + extra, attrs)[0]
    wl = conv_workload_from_attrs("BitserialConv2d", x.shape, str(x.dtype), u.shape, attrs)
    got = run_kernel(x86_binary.build_conv2d(wl, target, weights=u, epilogue_inputs=extra), target, x)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("m,k,n,enc", [(1, 1024, 64, (2, 2, 1, 0)), (5, 100, 37, (2, 2, 2, 3)),
                                       (3, 70, 20, (1, 3, 1, 4)), (6, 200, 9, (4, 2, 1, 0)),
                                       (9, 1530, 33, (2, 2, 2, 3))])
def test_bitserial_dense_exact(m, k, n, enc):
    ab, wbits, mult, off = enc
    target = host_x86_target()
    rng = np.random.default_rng(m + k + n)
    x = pack_planes(rng.integers(0, 1 << ab, (m, k)), ab, 64)
    u = pack_planes(rng.integers(0, 1 << wbits, (n, k)), wbits, 64)
    attrs = {"in_features": k, "act_bits": ab, "weight_bits": wbits, "w_mult": mult, "w_offset": off,
             "out": "int32"}
    ref = run_single("BitserialDense", [x, u], attrs)[0]
    wl = dense_workload_from_attrs("BitserialDense", x.shape, str(x.dtype), u.shape, attrs)
    np.testing.assert_array_equal(run_kernel(x86_binary.build_dense(wl, target, weights=u), target, x), ref)


@pytest.mark.parametrize("block", [1, 6, 16])
def test_bitserial_dense_plane_block_exact(block):
    """plane_block 6 divides the 24 words, 16 is halved to 8 (see LowbitConfig.plane_block)."""
    from qcompiler.schedules.lowbit_tiling import LowbitConfig

    target = host_x86_target()
    rng = np.random.default_rng(block)
    m, k, n, ab, wbits = 4, 1500, 21, 2, 2
    x = pack_planes(rng.integers(0, 1 << ab, (m, k)), ab, 64)
    u = pack_planes(rng.integers(0, 1 << wbits, (n, k)), wbits, 64)
    attrs = {"in_features": k, "act_bits": ab, "weight_bits": wbits, "w_mult": 2, "w_offset": 3, "out": "int32"}
    ref = run_single("BitserialDense", [x, u], attrs)[0]
    wl = dense_workload_from_attrs("BitserialDense", x.shape, str(x.dtype), u.shape, attrs)
    cfg = LowbitConfig(lanes=4, o_vectors=2, spatial_tile=3, plane_block=block)
    np.testing.assert_array_equal(run_kernel(x86_binary.build_dense(wl, target, cfg, weights=u), target, x), ref)


@pytest.mark.parametrize("c,cfg", [(50, None), (130, "taps")], ids=["1word_default", "3words_taps"])
def test_bitserial_conv2d_planes_outside_taps_exact(c, cfg):
    """Unrolled taps put the plane pairs outside the window (x86 default for one word per tap)."""
    from qcompiler.schedules.lowbit_tiling import LowbitConfig

    target = host_x86_target()
    rng = np.random.default_rng(c)
    n, h, w, o, k, ab, wbits = 2, 6, 9, 21, 3, 2, 2
    x = pack_planes(rng.integers(0, 1 << ab, (n, c, h, w)), ab, 64)
    u = pack_planes(rng.integers(0, 1 << wbits, (o, c, k, k)), wbits, 64)
    attrs = {"in_channels": c, "groups": 1, "kernel_shape": [k, k], "strides": [1, 1], "pads": [1, 2, 0, 1],
             "dilations": [1, 1], "act_bits": ab, "weight_bits": wbits, "w_mult": 2, "w_offset": 3, "out": "int32"}
    ref = run_single("BitserialConv2d", [x, u], attrs)[0]
    wl = conv_workload_from_attrs("BitserialConv2d", x.shape, str(x.dtype), u.shape, attrs)
    conf = LowbitConfig(lanes=8, o_vectors=3, spatial_tile=2, unroll_taps=True) if cfg else None
    kern = x86_binary.build_conv2d(wl, target, conf, weights=u)
    if target.has("avx512"):
        assert kern.config["unroll_taps"]
    np.testing.assert_array_equal(run_kernel(kern, target, x), ref)
