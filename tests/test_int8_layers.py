import numpy as np
import pytest

import qcompiler as qc
from qcompiler import ref
from qcompiler.errors import ConfigError, UnsupportedError
from qcompiler.passes.graph_edit import set_const
from qcompiler.passes.int8_layers import int8_layers, int8_layers_calibrated

from lowering_helpers import run_both
from passes_util import Builder


def _stem_net(seed=0):
    """A 7x7/2 conv on a 3-channel image (Bi-Real's stem), global pool, flatten, dense."""
    b = Builder(seed=seed)
    x = b.input("x", (1, 3, 20, 18))
    y = b.conv(x, 24, k=7, pad=3, stride=2)
    p = b.node("GlobalAveragePool", [y])
    f = b.node("Flatten", [p], axis=1)
    return b.done(b.gemm(f, 10)), b


def _names(g, op):
    return [n.name for n in g.nodes if n.op == op]


def _dequantized_reference(q, g, feeds):
    """The float net evaluated on the int8 layers' dequantized inputs and weights: the int8 layers
    must equal it up to float32 rounding (their epilogue adds the float bias exactly)."""
    env = ref.run(q, feeds, keep_all=True)
    out = {}
    for node in q.nodes:
        if node.op not in ("QConv2d", "QDense"):
            continue
        quant = next(n for n in q.nodes if n.outputs[0] == node.inputs[0])
        xq = env[node.inputs[0]].astype(np.float64) - node.attrs["x_zero_point"]
        x = xq * float(q.const(quant.inputs[1]))
        w = q.const(node.inputs[1]).astype(np.float64)
        scale = q.const(node.inputs[3]).astype(np.float64) / float(q.const(quant.inputs[1]))
        bias = q.const(node.inputs[4]).astype(np.float64)
        wf = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        if node.op == "QConv2d":
            import torch

            y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wf), torch.from_numpy(bias),
                                           stride=node.attrs["strides"], padding=node.attrs["pads"][:2]).numpy()
        else:
            y = x @ wf.T + bias
        out[node.outputs[0]] = (y, env[node.outputs[0]])
    return out


def test_first_and_last_layer_become_int8_with_float_epilogue():
    g, b = _stem_net()
    conv, gemm = _names(g, "Conv")[0], _names(g, "Gemm")[0]
    feeds = {"x": b.rng.normal(size=(1, 3, 20, 18)).astype(np.float32)}
    env = ref.run(g, feeds, keep_all=True)
    flat = next(n for n in g.nodes if n.op == "Flatten").outputs[0]
    ranges = {"x": (env["x"].min(), env["x"].max()), flat: (env[flat].min(), env[flat].max())}
    q = int8_layers(g, [conv, gemm], ranges)
    assert [n.op for n in q.nodes] == ["QuantizeLinear", "QConv2d", "GlobalAveragePool", "Flatten",
                                       "QuantizeLinear", "QDense"]
    assert all(n.attrs["out"] == "float" for n in q.nodes if n.op in ("QConv2d", "QDense"))
    assert q.values[q.outputs[0]].dtype == "float32"
    for want, got in _dequantized_reference(q, g, feeds).values():
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # and close to the float net (8-bit rounding of inputs and weights only)
    want, got = env[g.outputs[0]], ref.run(q, feeds)[q.outputs[0]]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_missing_range_and_non_weight_layers_are_refused():
    g, _ = _stem_net()
    with pytest.raises(ConfigError, match="no calibrated range"):
        int8_layers(g, _names(g, "Conv"), {})
    with pytest.raises(ConfigError, match="no node named"):
        int8_layers(g, ["nope"], {})
    with pytest.raises(UnsupportedError, match="not a weight layer"):
        int8_layers(g, _names(g, "GlobalAveragePool"), {})


def test_calibrated_entry_records_layers_it_keeps_float():
    g, b = _stem_net()
    batches = [{"x": b.rng.normal(size=(1, 3, 20, 18)).astype(np.float32)} for _ in range(2)]
    q = int8_layers_calibrated(g, _names(g, "Conv") + _names(g, "GlobalAveragePool"), batches)
    assert [n.op for n in q.nodes].count("QConv2d") == 1
    assert [f["node"] for f in q.meta["fallbacks"]] == _names(g, "GlobalAveragePool")


def _binary_net(seed=3):
    """float conv -> sign -> binary conv -> BN -> sign -> flatten -> dense (first and last kept)."""
    b = Builder(seed=seed)
    x = b.input("x", (1, 3, 8, 8))
    h = b.conv(x, 16)

    def sign(v):
        ge = b.node("GreaterOrEqual", [v, b.const(np.float32(0))])
        return b.node("Where", [ge, b.const(np.float32(1)), b.const(np.float32(-1))])

    w = np.where(b.rng.normal(size=(16, 16, 3, 3)) >= 0, 1, -1).astype(np.float32)
    y = b.conv(sign(h), 16, weights=w, bias=False)
    f = b.node("Flatten", [sign(b.bn(y))], axis=1)
    return b.done(b.gemm(f, 10)), b


@pytest.mark.parametrize("keep", [8, 32])
def test_quantize_w1a1_first_last_int8_or_float(keep):
    g, b = _binary_net()
    batches = [{"x": b.rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    q = qc.quantize(g, qc.QuantConfig(weights=1, activations=1, keep_first_last=keep), calibration=batches)
    ops = [n.op for n in q.nodes]
    assert "BinaryConv2d" in ops
    if keep == 8:
        assert "QConv2d" in ops and "QDense" in ops and "Conv" not in ops and "Gemm" not in ops, ops
        assert next(n for n in q.nodes if n.op == "QConv2d").attrs["out"] in ("int8", "uint8")   # first: int8 out
        assert next(n for n in q.nodes if n.op == "QDense").attrs["out"] == "float"              # last: float logits
    else:
        assert "Conv" in ops and "Gemm" in ops and "QConv2d" not in ops, ops


def test_quantize_w1a1_int8_ends_need_calibration_and_8_bits():
    g, _ = _binary_net()
    q = qc.quantize(g, qc.QuantConfig(weights=1, activations=1, keep_first_last=8))
    assert "Conv" in [n.op for n in q.nodes]
    assert any("no calibration data" in f["reason"] for f in q.meta["fallbacks"])
    with pytest.raises(ConfigError, match="keep_first_last"):
        qc.quantize(g, qc.QuantConfig(weights=1, activations=1, keep_first_last=4))


def test_int8_stem_and_dense_compile_bit_exact(tmp_path):
    """The C=3 7x7/2 stem and the dense layer through the native kernels, against the reference."""
    g, b = _stem_net(seed=1)
    batches = [{"x": b.rng.normal(size=(1, 3, 20, 18)).astype(np.float32)} for _ in range(2)]
    q = int8_layers_calibrated(g, _names(g, "Conv") + _names(g, "Gemm"), batches)
    feeds = {"x": b.rng.normal(size=(1, 3, 20, 18)).astype(np.float32)}
    lowered, got, exp = run_both(q, feeds, tmp_path)
    assert {r.op: r.impl for r in lowered.records}["QConv2d"].startswith("qconv2d")
    for name in q.outputs:
        np.testing.assert_array_equal(got[name], exp[name])


def test_quantize_w1a1_override_makes_a_real_valued_layer_int8():
    """A float layer of a binary net (Bi-Real's shortcut convs) becomes int8 by an override."""
    b = Builder(seed=3)
    x = b.input("x", (1, 8, 6, 6))
    h = b.conv(x, 16)                                            # first layer
    ge = b.node("GreaterOrEqual", [h, b.const(np.float32(0))])
    s = b.node("Where", [ge, b.const(np.float32(1)), b.const(np.float32(-1))])
    y = b.conv(s, 16)                                            # binarized
    z = b.conv(b.node("Relu", [y]), 16)                          # real-valued middle layer
    g = b.done(b.conv(z, 4))                                     # last layer
    middle = next(n.name for n in g.nodes if n.outputs[0] == z)
    batches = [{"x": b.rng.normal(size=(1, 8, 6, 6)).astype(np.float32)} for _ in range(2)]
    cfg = qc.QuantConfig(weights=1, activations=1, keep_first_last=32, overrides={middle: {"weights": 8}})
    q = qc.quantize(g, cfg, calibration=batches)
    kinds = {n.name: n.op for n in q.nodes}
    assert kinds[middle] == "QConv2d" and list(kinds.values()).count("Conv") == 2, kinds
    assert list(kinds.values()).count("BinaryConv2d") == 1


def test_int8_output_moves_the_max_pool_onto_integers(tmp_path):
    """int8_outputs: the layer requantizes to int8, its MaxPool runs on the integers, then one
    DequantizeLinear; compiled bit-exact against the reference, close to the float net."""
    b = Builder(seed=4)
    x = b.input("x", (1, 3, 22, 20))
    y = b.conv(x, 16, k=7, pad=3, stride=2)
    p = b.node("MaxPool", [y], kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1),
               ceil_mode=0, auto_pad="NOTSET", storage_order=0)
    g = b.done(b.node("Relu", [p]))
    conv = _names(g, "Conv")[0]
    batches = [{"x": b.rng.normal(size=(1, 3, 22, 20)).astype(np.float32)} for _ in range(8)]
    q = int8_layers_calibrated(g, [conv], batches, int8_outputs=[conv])
    ops = [n.op for n in q.nodes]
    assert ops == ["QuantizeLinear", "QConv2d", "MaxPool", "DequantizeLinear", "Relu"], ops
    qconv = next(n for n in q.nodes if n.op == "QConv2d")
    assert qconv.attrs["out"] in ("int8", "uint8") and qconv.attrs["requant"] == "fixed_point"
    feeds = {"x": b.rng.normal(size=(1, 3, 22, 20)).astype(np.float32)}
    want = ref.run(g, feeds)[g.outputs[0]]
    got_ref = ref.run(q, feeds)[q.outputs[0]]
    assert np.abs(got_ref - want).max() <= 0.08 * np.abs(want).max()   # 8-bit output, min-max range
    lowered, got, exp = run_both(q, feeds, tmp_path)
    np.testing.assert_array_equal(got[q.outputs[0]], exp[q.outputs[0]])
    with pytest.raises(ConfigError, match="not among the layers"):
        int8_layers(g, [], {}, int8_outputs=[conv])



def test_int8_output_of_a_graph_output_and_overflowing_weights_are_refused():
    g, _ = _stem_net()
    gemm = _names(g, "Gemm")[0]
    flat = next(n for n in g.nodes if n.op == "Flatten").outputs[0]
    one = (np.float32(-1), np.float32(1))
    with pytest.raises(ConfigError, match="graph output keeps the float epilogue"):
        int8_layers(g, [gemm], {flat: one, g.outputs[0]: one}, int8_outputs=[gemm])
    # |acc| <= 255 * sum |w_q|: 70000 weights of code 127 pass 2^31 - 1
    b = Builder()
    x = b.input("x", (1, 70000))
    g = b.done(b.gemm(x, 2))
    w = next(n for n in g.nodes if n.op == "Gemm").inputs[1]
    set_const(g, w, np.ones((2, 70000), np.float32))
    with pytest.raises(UnsupportedError, match="int32 accumulator could overflow"):
        int8_layers(g, _names(g, "Gemm"), {x: one})
