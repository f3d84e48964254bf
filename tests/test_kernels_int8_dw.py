"""The channels-in-lanes x86 int8 depthwise kernel (schedules/x86/int8_depthwise_cl.py): bit-exact
against the reference executor (strides 1/2, odd sizes, padding on every border, channel counts
that are not a multiple of the lanes, int8/uint8 activations, every epilogue), on the AVX-512 (16
lanes) and AVX2 (8 lanes) paths, its selection rule, and a 2-thread native-module run."""

import numpy as np
import pytest

from lowering_helpers import assert_close, feeds_of, run_both, single_node_graph
from qcompiler.codegen.lower import workload_of
from qcompiler.errors import UnsupportedError
from qcompiler.schedules import impls
from qcompiler.schedules import select as select_mod
from qcompiler.schedules.select import select
from qcompiler.targets import get_target
from test_kernels_int8 import TARGETS, epilogue, geometry

rng = np.random.default_rng(6060)

CL = "qdepthwise_cl"


def _dw_inputs(xs, xdt, bias, kind, k=3):
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, xs).astype(xdt)
    c = xs[1]
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    b = (rng.integers(-3000, 3000, c).astype(np.int32), True) if bias else (None, False)
    extra, eattrs = epilogue(kind, c)
    return [(x, False), (w, True), b] + extra, eattrs


@pytest.fixture
def force_cl(monkeypatch):
    """Lower every node with the channels-in-lanes kernel, whatever the selection rule says (the
    kernel symbol names the kind, so the build cache keeps both kernels apart)."""
    monkeypatch.setattr(select_mod, "select",
                        lambda wl, t: select_mod.Selection(impls.get_impl(CL, t.family), CL, "test", None))


DW_CL = [
    # x shape, geometry (pads: top, left, bottom, right), x dtype, bias, epilogue, kernel size
    ((1, 20, 7, 7), geometry(pads=(1, 1, 1, 1), xz=128), "uint8", True, "fixed_uint8", 3),
    ((2, 35, 13, 13), geometry((2, 2), (1, 1, 1, 1), xz=-5, wz=3), "int8", True, "float_int8", 3),
    ((1, 16, 13, 13), geometry(pads=(2, 0, 0, 2), xz=30), "uint8", False, "int32", 3),
    ((1, 24, 7, 9), geometry((2, 2), (0, 1, 2, 1), xz=-1), "int8", True, "float", 3),
    ((1, 17, 13, 13), geometry(pads=(2, 2, 2, 2), dil=(2, 2), xz=9), "uint8", True, "fixed_int8", 3),
    ((1, 48, 14, 14), geometry((2, 2), (1, 1, 1, 1), xz=128), "uint8", True, "float_uint8", 3),
    ((1, 40, 11, 10), geometry((1, 2), (2, 1, 2, 2), xz=0, wz=-2), "uint8", True, "fixed_uint8", 5),
    ((2, 9, 7, 7), geometry((2, 1), (0, 0, 1, 0), xz=-128), "int8", False, "float_uint8", 3),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(DW_CL)), ids=[f"dwcl{i}" for i in range(len(DW_CL))])
def test_qdepthwise_cl_exact(case, target, tmp_path, force_cl):
    """7x7 / 13x13 / odd widths, strides 1, 2 and (2, 1), dilation 2, a 5x5 kernel, asymmetric
    padding on every side, channel counts that leave an overlapping last block (20, 35, 17, 9 on AVX2)
    or need a second image (batch 2), every epilogue."""
    xs, geo, xdt, bias, kind, k = DW_CL[case]
    if target == "x86-avx512" and xs[1] < 16:
        pytest.skip("fewer channels than the 16 AVX-512 lanes")
    inputs, eattrs = _dw_inputs(xs, xdt, bias, kind, k)
    g = single_node_graph("QConv2d", inputs, {**geo, "groups": xs[1], **eattrs})
    lowered, got, exp = run_both(g, feeds_of(g, inputs), tmp_path, target)
    assert_close(got, exp, what=f"{DW_CL[case]} on {target}")
    rec = lowered.records[0]
    assert rec.impl == "qdepthwise_cl__x86"
    assert rec.config["lanes"] == (16 if target == "x86-avx512" else 8)


@pytest.mark.parametrize("knobs", [{"lanes": 16, "vnni": False, "parallel": True},
                                   {"lanes": 8, "vnni": False, "parallel": False}], ids=["mulld16", "mulld8"])
def test_qdepthwise_cl_knobs(knobs, tmp_path, force_cl):
    """vpmulld taps on AVX-512 (no VNNI) and 8 lanes there, through the tuning override."""
    if not get_target("x86-avx512").runs_natively():
        pytest.skip("the CPU has no AVX-512 VNNI")
    from qcompiler import ref
    from qcompiler.codegen.hostrun import run_lowered
    from qcompiler.codegen.lower import lower_graph

    inputs, eattrs = _dw_inputs((1, 37, 9, 8), "int8", True, "fixed_int8")
    g = single_node_graph("QConv2d", inputs, {**geometry((2, 2), (1, 0, 1, 2), xz=-7), "groups": 37, **eattrs})
    lowered = lower_graph(g, "x86-avx512", tuning={workload_of(g, g.nodes[0]).key(): knobs})
    feeds = feeds_of(g, inputs)
    assert_close(run_lowered(lowered, feeds, str(tmp_path / "t")), ref.run(g, feeds), what=str(knobs))
    assert lowered.records[0].config == knobs


def test_qdepthwise_cl_refuses(force_cl, tmp_path):
    """Channel multiplier 2 and fewer channels than lanes are not this kernel's: a clear error."""
    inputs, eattrs = _dw_inputs((1, 12, 7, 7), "uint8", False, "int32")
    w2 = rng.integers(-128, 128, (24, 1, 3, 3)).astype(np.int8)
    g = single_node_graph("QConv2d", [inputs[0], (w2, True), (None, False)],
                          {**geometry(pads=(1, 1, 1, 1)), "groups": 12, **eattrs})
    with pytest.raises(Exception, match="channel multiplier 2"):
        run_both(g, feeds_of(g, [inputs[0]]), tmp_path, "x86-avx2")
    s_impl = impls.get_impl(CL, "x86")
    g1 = single_node_graph("QConv2d", inputs, {**geometry(pads=(1, 1, 1, 1)), "groups": 12, **eattrs})
    wl = workload_of(g1, g1.nodes[0])
    cfg = s_impl.config_for(wl, get_target("x86-avx512"))
    with pytest.raises(UnsupportedError, match="fewer than the 16 lanes"):
        s_impl.compute(wl, s_impl.plan(wl, cfg), cfg)


def _wl(c, h, w, stride=1, mult=1):
    x = np.zeros((1, c, h, w), np.uint8)
    wt = np.zeros((c * mult, 1, 3, 3), np.int8)
    g = single_node_graph("QConv2d", [(x, False), (wt, True), (None, False)],
                          {**geometry((stride, stride), (1, 1, 1, 1), groups=c), "out": "int32"})
    return workload_of(g, g.nodes[0])


def test_qdepthwise_cl_selection():
    """Outputs of <= 64 pixels per channel take the channels-in-lanes kernel (960x7x7, 576x14x14 s2),
    with VNNI up to 28x28 (576x14x14 s1, 144x56x56 s2), larger ones the row kernel; too few channels
    or multiplier 2 stay rows; non-x86 targets never take it."""
    avx512, avx2 = get_target("x86-avx512"), get_target("x86-avx2")
    assert select(_wl(960, 7, 7), avx512).kind == CL
    assert select(_wl(960, 7, 7), avx2).kind == CL
    assert select(_wl(576, 14, 14, 2), avx512).kind == CL
    assert select(_wl(576, 14, 14, 2), avx2).kind == CL
    assert select(_wl(576, 14, 14), avx512).kind == CL
    assert select(_wl(576, 14, 14), avx2).kind == "qdepthwise_rows"
    assert select(_wl(144, 56, 56, 2), avx512).kind == CL
    assert select(_wl(144, 56, 56, 2), avx2).kind == "qdepthwise_rows"
    assert select(_wl(144, 56, 56), avx512).kind == "qdepthwise_rows"
    assert select(_wl(12, 7, 7), avx512).kind == "qdepthwise_rows"      # 12 < 16 lanes
    assert select(_wl(12, 7, 7), avx2).kind == CL                       # 12 >= 8 lanes
    assert select(_wl(32, 7, 7, mult=2), avx512).kind == "qdepthwise_rows"
    assert select(_wl(960, 7, 7), get_target("rpi5")).kind != CL


def test_qdepthwise_cl_two_threads_exact(tmp_path):
    """The selected kernel in a native module on 2 threads, several runs: jobs of (image, channel
    block), the last block of 72 channels overlapping the one before (written by another job)."""
    import qcompiler as qc
    from qcompiler import ref

    inputs, eattrs = _dw_inputs((2, 72, 7, 7), "uint8", True, "fixed_uint8")
    g = single_node_graph("QConv2d", inputs, {**geometry(pads=(1, 1, 1, 1), xz=100), "groups": 72, **eattrs})
    feeds = feeds_of(g, inputs)
    want = ref.run(g, feeds)["out0"]
    host = get_target("host")
    wl = workload_of(g, g.nodes[0])
    sel = select(wl, host)
    assert sel.impl.name == "qdepthwise_cl__x86" and sel.impl.config_for(wl, host)["parallel"]
    module = qc.compile(g, target="host", name="dwcl_threads")
    loaded = qc.load(module.export(str(tmp_path / "m")), num_threads=2)
    for run in range(8):
        got = loaded.run(feeds)["out0"]
        assert np.array_equal(got, want), f"run {run}: {int(np.sum(got != want))} elements differ"


@pytest.mark.parametrize("target", ["x86-avx512", "x86-avx2"])
def test_qdepthwise_cl_assembly(target):
    """Cross-compiled only: the taps are AVX-512 VNNI vpdpwssd on zmm / AVX2 vpmulld on ymm, the
    transposes whole-vector byte shuffles (AVX-512 VBMI vpermt2b / vpermb; AVX2 vpshufb), not byte
    inserts and extracts."""
    from test_kernels_int8 import _assembly

    inputs, eattrs = _dw_inputs((1, 64, 7, 7), "uint8", True, "float_uint8")
    asm = _assembly("QConv2d", inputs, {**geometry(pads=(1, 1, 1, 1), xz=128), "groups": 64, **eattrs}, target)
    reg, instr = ("zmm", "vpdpwssd") if target == "x86-avx512" else ("ymm", "vpmulld")
    muls = [ln for ln in asm.splitlines() if instr in ln]
    assert len(muls) >= 9 and all(reg in ln for ln in muls), muls[:3]
    if target == "x86-avx512":
        assert "vpmulld" not in asm
    shuffles = ("vpermt2b", "vpermb", "vpermi2b") if target == "x86-avx512" else ("vpshufb",)
    assert any(s in asm for s in shuffles), f"no {shuffles} in the {target} kernel"
    assert "vpinsrb" not in asm and "vpextrb" not in asm, "byte-wise transposes are back"
    if target == "x86-avx2":
        assert "zmm" not in asm
