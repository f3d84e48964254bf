import logging

import numpy as np
import pytest

from qcompiler import ref
from qcompiler.errors import ConfigError
from qcompiler.passes.binarize import binarize
from qcompiler.passes.bitpack import bitpack

from passes_util import Builder


def _sign_ge(b, x):
    ge = b.node("GreaterOrEqual", [x, b.const(np.float32(0))])
    return b.node("Where", [ge, b.const(np.float32(1)), b.const(np.float32(-1))])


@pytest.mark.parametrize("pads,stride,groups", [((1, 1, 1, 1), 1, 1), ((2, 1, 0, 2), 2, 1), ((1, 1, 1, 1), 1, 2)])
def test_zero_padding_exact_at_every_border(pads, stride, groups):
    """A binary conv with zero padding equals the float conv of the binarized tensors everywhere."""
    b = Builder(seed=5)
    x = b.input("x", (2, 6, 7, 5))
    s = _sign_ge(b, x)
    w = np.where(b.rng.normal(size=(8, 6 // groups, 3, 3)) >= 0, 1, -1).astype(np.float32)
    y = b.node("Conv", [s, b.const(w), b.const(b.rng.normal(size=8).astype(np.float32))], kernel_shape=(3, 3),
               strides=(stride, stride), pads=pads, dilations=(1, 1), group=groups)
    g = b.done(y)
    h = binarize(g, keep_first_last=False)
    assert [n.op for n in h.nodes] == ["BitPack", "BinaryConv2d"]
    assert h.nodes[1].attrs["pad_value"] == 0
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 6, 7, 5)).astype(np.float32)}
    want, got = ref.run(g, feeds)[y], ref.run(h, feeds)[y]
    np.testing.assert_array_equal(got, want)  # borders included: every output position compared


def _binary_chain(b, sign_op="Sign", bn_shift=3.0):
    x = b.input("x", (3, 4, 6, 6))
    s = _sign_ge(b, b.conv(x, 8))                                       # first layer, kept float
    w = np.where(b.rng.normal(size=(16, 8, 3, 3)) >= 0, 1, -1).astype(np.float32)
    y = b.bn(b.conv(s, 16, weights=w, bias=False), mean_shift=bn_shift)
    s2 = b.node("Sign", [y]) if sign_op == "Sign" else _sign_ge(b, y)
    p = b.node("MaxPool", [s2], kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1),
               ceil_mode=0, storage_order=0)
    f = b.node("Flatten", [p], axis=1)
    w3 = np.where(b.rng.normal(size=(12, 16 * 9)) >= 0, 1, -1).astype(np.float32)
    d = b.node("Gemm", [f, b.const(w3)], alpha=1.0, beta=1.0, transA=0, transB=1)
    s3 = _sign_ge(b, b.bn(d))
    return b.done(b.gemm(s3, 10))


def test_binary_chain_exact_after_bitpack():
    g = _binary_chain(Builder(seed=1), sign_op="Where")
    h = bitpack(binarize(g))
    ops = [n.op for n in h.nodes]
    assert ops.count("BinaryConv2d") == 1 and ops.count("BinaryDense") == 1 and "PackedMaxPool" in ops
    assert all(n.attrs["out"] == "packed" for n in h.nodes if n.op.startswith("Binary"))
    assert ops[0] == "Conv" and ops[-1] == "Gemm"                       # keep_first_last
    feeds = {"x": np.random.default_rng(2).normal(size=(3, 4, 6, 6)).astype(np.float32)}
    np.testing.assert_array_equal(ref.run(h, feeds)[g.outputs[0]], ref.run(g, feeds)[g.outputs[0]])


def test_sign_zero_policy(caplog):
    # BN statistics centred on reachable accumulators: Sign's input can be exactly 0 -> kept float
    b = Builder(seed=1)
    g = _binary_chain(b, bn_shift=0.0)
    bn = next(n for n in g.nodes if n.op == "BatchNormalization")
    for i, v in zip(range(1, 5), (1.0, 0.0, 0.0, 1.0)):  # y = acc exactly: acc = 0 at some borders
        g.values[bn.inputs[i]].data = np.full(16, v, np.float32)
    with caplog.at_level(logging.WARNING):
        h = binarize(g)
    assert any(n.op == "Sign" for n in h.nodes) and h.meta["fallbacks"]
    assert "Sign" in caplog.text
    h2 = binarize(g, sign_of_zero="plus_one")
    assert not any(n.op == "Sign" for n in h2.nodes)
    # a BN that moves the zero crossing between integers makes Sign provably nonzero -> binarized
    g.values[bn.inputs[2]].data = np.full(16, 0.5, np.float32)
    h3 = bitpack(binarize(g))
    assert not any(n.op == "Sign" for n in h3.nodes)
    feeds = {"x": np.random.default_rng(2).normal(size=(3, 4, 6, 6)).astype(np.float32)}
    np.testing.assert_array_equal(ref.run(h3, feeds)[g.outputs[0]], ref.run(g, feeds)[g.outputs[0]])


def test_xnor_weights_and_binarize_all():
    b = Builder(seed=3)
    x = b.input("x", (2, 8))
    y = b.gemm(b.node("Relu", [b.gemm(x, 16)]), 16)
    g = b.done(b.gemm(b.node("Relu", [y]), 4))
    assert [n.op for n in binarize(g).nodes] == [n.op for n in g.nodes]   # no sign activations: no-op
    h = binarize(g, binarize_all=True)
    dense = [n for n in h.nodes if n.op == "BinaryDense"]
    assert len(dense) == 1
    w = g.const(g.nodes[2].inputs[1])
    np.testing.assert_allclose(h.const(dense[0].inputs[2]), np.abs(w).mean(axis=1), rtol=1e-6)
    with pytest.raises(ConfigError, match="sign_of_zero"):
        binarize(g, sign_of_zero="zero")
    with pytest.raises(ConfigError, match="skip"):
        binarize(g, skip=["nope"])


def test_torch_ste_model_matches_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class SignSTE(torch.nn.Module):           # x + (sign(x) - x).detach(): Sign/Sub/Add
        def forward(self, x):
            return x + (x.sign() - x).detach()

    class SignGE(torch.nn.Module):            # hard-tanh STE with x >= 0 -> +1: Clip/GreaterOrEqual/Where
        def forward(self, x):
            xc = x.clamp(-1, 1)
            return xc + (torch.where(x >= 0, 1.0, -1.0) - xc).detach()

    def binary_weight(w):
        return w + (torch.where(w >= 0, 1.0, -1.0) - w).detach()

    class BConv(torch.nn.Conv2d):
        def forward(self, x):
            return torch.nn.functional.conv2d(x, binary_weight(self.weight), None, self.stride, self.padding)

    class BLinear(torch.nn.Linear):
        def forward(self, x):
            return torch.nn.functional.linear(x, binary_weight(self.weight))

    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), SignGE(),
        BConv(16, 32, 3, padding=1, bias=False), torch.nn.BatchNorm2d(32), SignSTE(), torch.nn.MaxPool2d(2),
        BConv(32, 32, 3, padding=1, bias=False), torch.nn.BatchNorm2d(32), SignGE(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), BLinear(128, 64, bias=False), torch.nn.BatchNorm1d(64), SignGE(), torch.nn.Linear(64, 10))
    for mod in m.modules():
        if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            n = mod.num_features
            mod.running_mean.data = torch.randn(n) * 3 + 0.5
            mod.running_var.data = torch.rand(n) * 20 + 1
            mod.weight.data = torch.randn(n)
            mod.bias.data = torch.randn(n) * 0.5
    m.eval()
    x = torch.randn(32, 1, 8, 8)
    path = tmp_path / "bnn.onnx"
    torch.onnx.export(m, x, str(path), dynamo=False, opset_version=17, input_names=["input"])
    import qcompiler as qc

    g = bitpack(binarize(qc.from_onnx(str(path))))
    ops = [n.op for n in g.nodes]
    assert ops.count("BinaryConv2d") == 2 and ops.count("BinaryDense") == 1 and "Sign" not in ops
    got = ref.run(g, {"input": x.numpy()})[g.outputs[0]]
    with torch.no_grad():
        want = m(x).numpy()
    assert np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_quantize_w1a1_binarizes_only_sign_fed_layers_of_a_binary_net():
    """A binary-trained net (sign activations present) keeps its real-valued layers real."""
    import qcompiler as qc

    b = Builder(seed=3)
    x = b.input("x", (1, 8, 6, 6))
    h = b.conv(b.conv(x, 16), 16)            # first layer, kept float
    s = _sign_ge(b, h)
    y = b.conv(s, 16)                         # fed by a sign: binarized
    z = b.conv(b.node("Relu", [y]), 16)       # fed by a ReLU: real-valued, must stay float
    g = b.done(b.conv(z, 4))
    q = qc.quantize(g, qc.QuantConfig(weights=1, activations=1, keep_first_last=8))
    ops = [n.op for n in q.nodes]
    assert ops.count("BinaryConv2d") == 1 and ops.count("Conv") >= 2, ops
