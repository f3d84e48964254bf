"""BitPack, BitUnpack and PackedMaxPool kernels through the lowering, bit-exact against the reference."""

import numpy as np
import pytest

from lowering_helpers import check_op
from qcompiler.ref.ops.bits import pack_planes, pack_sign

pytest.importorskip("tvm")

rng = np.random.default_rng(11)


def _signs_packed(shape_nchw, word_bits):
    return pack_sign(rng.normal(size=shape_nchw).astype(np.float32), word_bits)


# (n, c, h, w, kernel, stride, pads, dilation, word_bits)
POOL_CASES = [
    (1, 70, 9, 11, 3, 2, (1, 1, 1, 1), 1, 64),     # odd sizes, padding at every border, stride 2
    (2, 40, 8, 8, 2, 2, (0, 0, 0, 0), 1, 8),       # the usual 2x2/2, 8-bit words
    (1, 33, 7, 6, 3, 1, (1, 0, 2, 1), 2, 32),      # uneven pads, dilation 2
]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"c{c[1]}_{c[2]}x{c[3]}_k{c[4]}s{c[5]}_w{c[8]}")
def test_packed_maxpool_exact(case, tmp_path):
    n, c, h, w, k, s, pads, d, wb = case
    x = _signs_packed((n, c, h, w), wb)
    # mostly -1 codes, so that AND over a window is not trivially 0
    x = x | rng.integers(0, 2, x.shape, dtype=np.uint64).astype(x.dtype) * np.array(-1).astype(x.dtype)
    check_op("PackedMaxPool", [(x, False)], {"kernel_shape": (k, k), "strides": (s, s), "pads": pads,
                                             "dilations": (d, d)}, tmp_path)


@pytest.mark.parametrize("shape,word_bits,threshold", [
    ((2, 70, 5, 3), 64, False), ((1, 3, 7, 9), 32, True), ((3, 40), 8, True), ((2, 130), 16, False)])
def test_bitpack_sign_exact(shape, word_bits, threshold, tmp_path):
    x = rng.normal(size=shape).astype(np.float32)
    x.reshape(-1)[::7] = 0.0                        # exact zeros pack as +1 (x >= 0)
    inputs = [(x, False)]
    if threshold:
        t = rng.normal(size=shape[1]).astype(np.float32) * 0.5
        inputs.append((t, True))
    check_op("BitPack", inputs, {"mode": "sign", "word_bits": word_bits}, tmp_path)


def test_bitpack_sign_int_input(tmp_path):
    x = rng.integers(-5, 5, (1, 20, 3, 4)).astype(np.int32)
    t = rng.normal(size=20).astype(np.float32)
    check_op("BitPack", [(x, False), (t, True)], {"mode": "sign", "word_bits": 16}, tmp_path)


@pytest.mark.parametrize("shape,bits,word_bits", [((1, 70, 4, 5), 2, 64), ((3, 33), 3, 8)])
def test_bitpack_unsigned_exact(shape, bits, word_bits, tmp_path):
    x = rng.integers(0, 1 << bits, shape).astype(np.uint8)
    check_op("BitPack", [(x, False)], {"mode": "unsigned", "word_bits": word_bits, "bits": bits}, tmp_path)


@pytest.mark.parametrize("shape,channels,word_bits", [((2, 3, 5, 2), 70, 64), ((4, 2), 40, 32)])
def test_bitunpack_sign_exact(shape, channels, word_bits, tmp_path):
    if len(shape) == 4:
        x = _signs_packed((shape[0], channels, shape[1], shape[2]), word_bits)
    else:
        x = pack_sign(rng.normal(size=(shape[0], channels)), word_bits)
    check_op("BitUnpack", [(x, False)], {"mode": "sign", "channels": channels}, tmp_path)


def test_bitunpack_unsigned_exact(tmp_path):
    x = pack_planes(rng.integers(0, 4, (1, 37, 3, 8)), 2, 32)
    check_op("BitUnpack", [(x, False)], {"mode": "unsigned", "channels": 37, "bits": 2}, tmp_path)
