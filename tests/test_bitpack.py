import numpy as np
import pytest

from qcompiler import ref
from qcompiler.errors import ConfigError
from qcompiler.passes.binarize import binarize
from qcompiler.passes.bitpack import bitpack, choose_word_bits

from passes_util import Builder


def _net(b, word_bits_in=32):
    x = b.input("x", (2, 3, 6, 6))
    ge = b.node("GreaterOrEqual", [x, b.const(np.float32(0))])
    s = b.node("Where", [ge, b.const(np.float32(1)), b.const(np.float32(-1))])
    w = np.where(b.rng.normal(size=(40, 3, 3, 3)) >= 0, 1, -1).astype(np.float32)
    y = b.node("BatchNormalization", [b.conv(s, 40, weights=w, bias=False)] + [
        b.const(a.astype(np.float32)) for a in (b.rng.normal(size=40), b.rng.normal(size=40),
                                                b.rng.normal(size=40) * 4, b.rng.uniform(1, 9, 40))],
        epsilon=1e-5, momentum=0.9, training_mode=0)
    y = b.node("Mul", [y, b.const(b.rng.normal(size=(40, 1, 1)).astype(np.float32))])   # flips some channels
    p = b.node("MaxPool", [y], kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1),
               ceil_mode=0, storage_order=0)
    ge2 = b.node("GreaterOrEqual", [p, b.const(np.float32(0.25))])
    s2 = b.node("Where", [ge2, b.const(np.float32(1)), b.const(np.float32(-1))])
    w2 = np.where(b.rng.normal(size=(5, 40, 1, 1)) >= 0, 1, -1).astype(np.float32)
    return b.done(b.conv(s2, 5, k=1, pad=0, weights=w2))


@pytest.mark.parametrize("word_bits", [8, 32, 64])
def test_fused_threshold_and_packed_pool_are_exact(word_bits):
    g = _net(Builder(seed=4))
    h = bitpack(binarize(g, keep_first_last=False, word_bits=word_bits), word_bits=word_bits)
    ops = [n.op for n in h.nodes]
    assert ops == ["BitPack", "BinaryConv2d", "PackedMaxPool", "BinaryConv2d"], ops
    first = h.nodes[1]
    assert first.attrs["out"] == "packed" and h.const(first.inputs[3]).any()  # some channels flipped
    feeds = {"x": np.random.default_rng(7).normal(size=(2, 3, 6, 6)).astype(np.float32)}
    np.testing.assert_array_equal(ref.run(h, feeds)[g.outputs[0]], ref.run(g, feeds)[g.outputs[0]])


def test_word_bits_mismatch_and_choice():
    g = binarize(_net(Builder(seed=4)), keep_first_last=False, word_bits=32)
    with pytest.raises(ConfigError, match="word_bits"):
        bitpack(g, word_bits=64)
    assert choose_word_bits("x86-avx2") == 64 and choose_word_bits("rpi3-armv7") == 32 and choose_word_bits() == 32


def test_noop_on_float_graph():
    b = Builder()
    g = b.done(b.node("Relu", [b.input("x", (2, 2))]))
    assert [n.op for n in bitpack(g).nodes] == ["Relu"]
