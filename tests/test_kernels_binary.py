"""Binary conv/dense kernels (schedules/x86) bit-exact against the reference executor, natively."""

import numpy as np
import pytest

from qcompiler.ref import run_single
from qcompiler.ref.ops.bits import pack_sign, pack_weight_sign
from qcompiler.schedules.compute_lowbit import conv_workload_from_attrs, dense_workload_from_attrs
from qcompiler.schedules.lowbit_tiling import LowbitConfig
from qcompiler.schedules.x86 import binary as x86_binary
from qcompiler.targets import get_target

tvm = pytest.importorskip("tvm")


def host_x86_target():
    for name in ("x86-avx512", "x86-avx2"):
        t = get_target(name)
        if t.runs_natively():
            return t
    pytest.skip("needs an AVX2 x86-64 host")


def run_kernel(kern, target, x):
    """Compile a LowbitKernel for ``target`` and run it on the host (TVM runtime)."""
    ex = tvm.compile(tvm.IRModule({"main": kern.func}), target=target.tvm_target())
    dev = tvm.cpu()
    args, out = [], None
    for p in kern.params:
        if p.source == "input":
            args.append(tvm.runtime.tensor(x, dev))
        elif p.source == "const":
            args.append(tvm.runtime.tensor(p.data, dev))
        else:
            out = tvm.runtime.tensor(np.zeros(p.shape, p.dtype), dev)
            args.append(out)
    ex(*args)
    return out.numpy()


def epilogue_case(kind, o, rng, acc_bound):
    """(attrs, extra inputs) of one epilogue with random per-channel parameters."""
    if kind == "int32":
        return {"out": "int32"}, []
    if kind == "float":
        return ({"out": "float"}, [rng.normal(0, 0.1, o).astype(np.float32), rng.normal(0, 1, o).astype(np.float32)])
    if kind == "int8_fixed":
        mult = rng.integers(1 << 30, (1 << 31) - 1, o).astype(np.int32)
        shift = rng.integers(3, 12, o).astype(np.int32)
        return ({"out": "int8", "requant": "fixed_point", "out_zero_point": 3, "out_min": -128, "out_max": 127},
                [mult, shift])
    if kind == "uint8_float":
        return ({"out": "uint8", "requant": "float", "out_zero_point": 7, "out_min": 0, "out_max": 200},
                [rng.uniform(0.05, 2.0, o).astype(np.float32)])
    if kind == "packed":
        thr = rng.integers(-acc_bound // 4, acc_bound // 4 + 1, o).astype(np.int32)
        flip = rng.integers(0, 2, o).astype(np.uint8)
        return {"out": "packed", "out_word_bits": 32}, [thr, flip]
    raise ValueError(kind)


def signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def conv_case(rng, n, c, h, w, o, k, stride=1, pads=(1, 1, 1, 1), dilation=1, pad_value=0, word_bits=64,
              groups=1, epi="int32"):
    """(x, packed weights, epilogue inputs, reference output, workload) of one random BinaryConv2d."""
    x = pack_sign(signs(rng, (n, c, h, w)), word_bits)
    wt = pack_weight_sign(signs(rng, (o, c // groups, k, k)), word_bits)
    ep_attrs, extra = epilogue_case(epi, o, rng, c * k * k)
    attrs = {"in_channels": c, "groups": groups, "kernel_shape": [k, k], "strides": [stride, stride],
             "pads": list(pads), "dilations": [dilation, dilation], "pad_value": pad_value, **ep_attrs}
    ref = run_single("BinaryConv2d", [x, wt] + extra, attrs)[0]
    return x, wt, extra, ref, conv_workload_from_attrs("BinaryConv2d", x.shape, str(x.dtype), wt.shape, attrs)


# (n, c, h, w, o, k, stride, pads, dilation, pad_value, word_bits)
CONV_CASES = [
    (1, 70, 9, 11, 19, 3, 1, (1, 1, 1, 1), 1, 0, 64),      # C not a multiple of the word, odd sizes
    (2, 130, 6, 5, 8, 3, 1, (1, 0, 2, 1), 1, 0, 64),       # uneven padding
    (1, 64, 10, 7, 33, 3, 2, (1, 1, 1, 1), 1, -1, 64),     # stride 2, pad_value -1
    (1, 40, 8, 9, 24, 3, 1, (2, 2, 2, 2), 2, 0, 32),       # dilation 2, 32-bit words
    (1, 96, 7, 7, 16, 3, 1, (1, 1, 1, 1), 1, 1, 64),       # one padding
    (1, 20, 5, 6, 12, 5, 2, (2, 1, 2, 2), 1, 0, 8),        # 5x5, 8-bit words
    (1, 33, 3, 2, 5, 3, 1, (1, 1, 1, 1), 1, 0, 16),        # image smaller than the kernel window
    (1, 64, 6, 6, 8, 1, 1, (0, 0, 0, 0), 1, 0, 64),        # 1x1, no padding
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"_s{c[6]}_pv{c[9]}_w{c[10]}")
def test_binary_conv2d_exact(case):
    n, c, h, w, o, k, s, pads, d, pv, wb = case
    target = host_x86_target()
    rng = np.random.default_rng(hash(case) & 0xFFFF)
    x, wt, _, ref, wl = conv_case(rng, n, c, h, w, o, k, s, pads, d, pv, wb)
    got = run_kernel(x86_binary.build_conv2d(wl, target, weights=wt), target, x)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    bad = np.argwhere(got != ref)
    assert bad.size == 0, f"{case}: {len(bad)} mismatches, first at {bad[:3].tolist()}"


@pytest.mark.parametrize("epi", ["float", "int8_fixed", "uint8_float", "packed"])
def test_binary_conv2d_epilogues_exact(epi):
    target = host_x86_target()
    rng = np.random.default_rng(7)
    n, c, h, w, o, k = 1, 100, 7, 9, 37, 3
    x, wt, extra, ref, wl = conv_case(rng, n, c, h, w, o, k, epi=epi)
    got = run_kernel(x86_binary.build_conv2d(wl, target, weights=wt, epilogue_inputs=extra), target, x)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_binary_conv2d_groups_exact():
    target = host_x86_target()
    rng = np.random.default_rng(3)
    n, c, h, w, o, k, g = 1, 128, 6, 7, 32, 3, 2
    x, wt, _, ref, wl = conv_case(rng, n, c, h, w, o, k, groups=g)
    np.testing.assert_array_equal(run_kernel(x86_binary.build_conv2d(wl, target, weights=wt), target, x), ref)


@pytest.mark.parametrize("cfg", [LowbitConfig(8, 1, 7), LowbitConfig(4, 3, 5, unroll_taps=True),
                                 LowbitConfig(1, 4, 2, parallel="none"), LowbitConfig(8, 2, 1)], ids=str)
def test_binary_conv2d_configs_exact(cfg):
    """Tile sizes that do not divide the shapes must not change the result."""
    target = host_x86_target()
    rng = np.random.default_rng(11)
    n, c, h, w, o, k = 1, 72, 9, 13, 21, 3
    x, wt, _, ref, wl = conv_case(rng, n, c, h, w, o, k, stride=2)
    np.testing.assert_array_equal(run_kernel(x86_binary.build_conv2d(wl, target, cfg, weights=wt), target, x), ref)


@pytest.mark.parametrize("m,k,n,wb,epi", [(1, 1024, 64, 64, "int32"), (5, 100, 37, 64, "int32"),
                                          (7, 70, 20, 32, "float"), (3, 300, 50, 64, "packed"),
                                          (4, 65, 9, 8, "int8_fixed"), (2, 129, 17, 16, "uint8_float")])
def test_binary_dense_exact(m, k, n, wb, epi):
    target = host_x86_target()
    rng = np.random.default_rng(m * 1000 + k)
    x = pack_sign(signs(rng, (m, k)), wb)
    wt = pack_weight_sign(signs(rng, (n, k)), wb)
    ep_attrs, extra = epilogue_case(epi, n, rng, k)
    attrs = {"in_features": k, **ep_attrs}
    ref = run_single("BinaryDense", [x, wt] + extra, attrs)[0]
    wl = dense_workload_from_attrs("BinaryDense", x.shape, str(x.dtype), wt.shape, attrs)
    got = run_kernel(x86_binary.build_dense(wl, target, weights=wt, epilogue_inputs=extra), target, x)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


PIXELS = LowbitConfig(lanes=8, o_vectors=3, spatial_tile=2, unroll_taps=True, layout="pixels")


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"_s{c[6]}_pv{c[9]}_w{c[10]}")
def test_binary_conv2d_pixel_layout_exact(case):
    """layout="pixels" (vectors of output pixels) on every shape, tiles not dividing the sizes."""
    n, c, h, w, o, k, s, pads, d, pv, wb = case
    target = host_x86_target()
    rng = np.random.default_rng(hash(case) & 0xFFFF)
    x, wt, _, ref, wl = conv_case(rng, n, c, h, w, o, k, s, pads, d, pv, wb)
    np.testing.assert_array_equal(run_kernel(x86_binary.build_conv2d(wl, target, PIXELS, weights=wt), target, x), ref)


@pytest.mark.parametrize("epi", ["int32", "float", "int8_fixed", "packed"])
def test_binary_conv2d_pixel_layout_default_epilogues_exact(epi):
    """C = 64 in 64-bit words, stride 1: the x86 AVX-512 default is the pixel layout."""
    target = host_x86_target()
    rng = np.random.default_rng(8)
    n, c, h, w, o, k = 2, 64, 6, 19, 70, 3
    x, wt, extra, ref, wl = conv_case(rng, n, c, h, w, o, k, pads=(1, 2, 0, 1), epi=epi)
    kern = x86_binary.build_conv2d(wl, target, weights=wt, epilogue_inputs=extra)
    if target.has("avx512"):
        assert kern.config["layout"] == "pixels"
    np.testing.assert_array_equal(run_kernel(kern, target, x), ref)


def test_binary_conv2d_pixel_layout_groups_exact():
    target = host_x86_target()
    rng = np.random.default_rng(4)
    n, c, h, w, o, k, g = 1, 128, 5, 9, 30, 3, 2
    x, wt, _, ref, wl = conv_case(rng, n, c, h, w, o, k, pad_value=1, groups=g)
    cfg = PIXELS.replace(o_vectors=4)        # fitted to 3 (divides the 15 channels per group)
    np.testing.assert_array_equal(run_kernel(x86_binary.build_conv2d(wl, target, cfg, weights=wt), target, x), ref)


def test_dense_rejects_the_pixel_layout():
    from qcompiler.errors import ConfigError

    wl = dense_workload_from_attrs("BinaryDense", (2, 2), "uint64", (8, 2), {"in_features": 100})
    with pytest.raises(ConfigError, match="layout"):
        x86_binary.build_dense(wl, get_target("x86-avx2"), PIXELS, weights=np.zeros((8, 2), np.uint64))
