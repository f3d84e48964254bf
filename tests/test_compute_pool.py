"""The row-wise MaxPool kernel (schedules/compute_pool.py) against the reference executor."""

import numpy as np
import pytest

from lowering_helpers import run_both, single_node_graph


@pytest.mark.parametrize("shape,k,s,pads,ceil,dtype", [
    ((1, 4, 112, 112), 3, 2, (1, 1, 1, 1), 0, "float32"),   # Bi-Real / ResNet stem pool
    ((2, 3, 17, 21), 3, 2, (1, 0, 0, 1), 0, "float32"),     # odd sizes, asymmetric pads
    ((1, 2, 9, 13), 2, 2, (0, 0, 0, 0), 1, "float32"),      # ceil_mode overhang
    ((1, 3, 5, 6), 3, 1, (1, 1, 1, 1), 0, "float32"),       # rows narrower than a vector
    ((1, 5, 20, 40), 3, 1, (0, 2, 1, 0), 0, "uint8"),
    ((1, 2, 31, 33), 5, 2, (2, 2, 2, 2), 0, "int8"),
])
def test_maxpool_rows_bit_exact(shape, k, s, pads, ceil, dtype, tmp_path):
    rng = np.random.default_rng(0)
    if dtype == "float32":
        x = rng.normal(size=shape).astype(np.float32) - 3.0   # all-negative windows are common
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    g = single_node_graph("MaxPool", [(x, False)], dict(kernel_shape=(k, k), strides=(s, s), pads=pads,
                                                        dilations=(1, 1), ceil_mode=ceil, auto_pad="NOTSET",
                                                        storage_order=0), n_outputs=1)
    lowered, got, exp = run_both(g, {"in0": x}, tmp_path)
    assert lowered.records[0].impl.startswith("maxpool2d_rows"), lowered.records[0].impl
    np.testing.assert_array_equal(got["out0"], exp["out0"])


def test_dilated_pool_takes_the_template(tmp_path):
    x = np.random.default_rng(1).normal(size=(1, 2, 9, 9)).astype(np.float32)
    g = single_node_graph("MaxPool", [(x, False)], dict(kernel_shape=(2, 2), strides=(1, 1), pads=(0, 0, 0, 0),
                                                        dilations=(2, 2), ceil_mode=0, auto_pad="NOTSET",
                                                        storage_order=0), n_outputs=1)
    lowered, got, exp = run_both(g, {"in0": x}, tmp_path)
    assert lowered.records[0].impl.startswith("maxpool2d__"), lowered.records[0].impl
    np.testing.assert_array_equal(got["out0"], exp["out0"])


@pytest.mark.parametrize("target", ["rpi4", "rpi3-armv7", "riscv64-rvv"])
def test_maxpool_rows_and_bitpack_pixels_bit_exact_under_qemu(target, tmp_path):
    """The TIR kernels (this file's max and average pools, compute_bitpack's in 32- and 64-bit words)
    cross-compiled and run under qemu-user."""
    import shutil

    import qcompiler as qc
    from qcompiler import ref
    from qcompiler.ir import Graph, Node, Value
    from qcompiler.ref import infer_outputs
    from qcompiler.targets import get_target

    t = get_target(target)
    missing = [c for c in (t.cc[0], t.emulator[0] if t.emulator else None) if c and shutil.which(c) is None]
    if missing:
        pytest.skip(f"{target} needs {missing}")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 80, 13, 18)).astype(np.float32) - 1.0
    thr = (rng.normal(size=80) * 0.3).astype(np.float32)
    g = Graph("cross")
    g.add_value(Value("x", x.shape, "float32"))
    g.inputs.append("x")
    g.add_const("thr", thr)
    nodes = [("MaxPool", ["x"], dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1),
                                     ceil_mode=0, auto_pad="NOTSET", storage_order=0)),
             ("BitPack", ["x", "thr"], dict(mode="sign", word_bits=32)),
             ("AveragePool", ["x"], dict(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1),
                                         ceil_mode=0, count_include_pad=0, auto_pad="NOTSET")),
             ("BitPack", ["x", "thr"], dict(mode="sign", word_bits=64))]     # two 32-bit halves per word
    for i, (op, ins, attrs) in enumerate(nodes):
        specs = [(g.values[n].shape, g.values[n].dtype, g.values[n].data) for n in ins]
        shape, dtype = infer_outputs(op, specs, attrs)[0]
        g.add_value(Value(f"y{i}", shape, dtype))
        g.add_node(Node(op, f"n{i}", ins, [f"y{i}"], attrs))
        g.outputs.append(f"y{i}")
    module = qc.compile(g, target=target)
    impls = {layer["node"]: layer["impl"] for layer in module.manifest["layers"]}
    assert impls["n0"].startswith("maxpool2d_rows") and impls["n1"].startswith("bitpack_pixels"), impls
    assert impls["n2"].startswith("avgpool2d_rows") and impls["n3"].startswith("bitpack_pixels"), impls
    path = module.export(str(tmp_path / "m"))
    loaded = qc.load(path, num_threads=2)
    got = loaded.run({"x": x})
    want = ref.run(g, {"x": x})
    for name in ("y0", "y1", "y3"):
        np.testing.assert_array_equal(got[name], want[name])
    # the average is bit-identical to the template's, not to the float64 reference (host test below)
    np.testing.assert_allclose(got["y2"], want["y2"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,k,s", [
    ((1, 8, 56, 56), 2, 2),      # Bi-Real's shortcut pool
    ((2, 3, 17, 33), 2, 2),      # odd sizes: the last column dropped, last load clamped
    ((1, 2, 9, 40), 3, 2),
    ((1, 3, 10, 12), 3, 1),
])
def test_avgpool_rows_matches_template_bit_for_bit(shape, k, s, tmp_path):
    from qcompiler.codegen.hostrun import run_lowered
    from qcompiler.codegen.lower import lower_graph
    import qcompiler.schedules.select as S

    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    g = single_node_graph("AveragePool", [(x, False)], dict(kernel_shape=(k, k), strides=(s, s),
                                                            pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=0,
                                                            count_include_pad=0, auto_pad="NOTSET"))
    lowered, got, exp = run_both(g, {"in0": x}, tmp_path)
    assert lowered.records[0].impl.startswith("avgpool2d_rows"), lowered.records[0].impl
    np.testing.assert_allclose(got["out0"], exp["out0"], rtol=1e-6, atol=1e-6)
    rules = list(S.RULES)
    try:
        S.RULES[:] = [r for r in rules if r.kind != "avgpool2d_rows"]
        low2 = lower_graph(g, "host")
        assert low2.records[0].impl.startswith("avgpool2d__")
        tmpl = run_lowered(low2, {"in0": x}, str(tmp_path / "tmpl"))
    finally:
        S.RULES[:] = rules
    np.testing.assert_array_equal(got["out0"], tmpl["out0"])
