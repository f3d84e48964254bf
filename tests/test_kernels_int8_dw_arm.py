"""The fast ARM int8 depthwise kernel (schedules/arm/int8_depthwise.py over
schedules/compute_int8_depthwise.py): cross-compiled for rpi4 (``smlal``/``smlal2``), rpi3-armv7
(``vmlal.s16``) and rpi5, run under qemu-user and compared bit-exactly with the reference executor,
plus the instructions in the kernel objects and the kernel selection (no generic int8 depthwise on ARM).

One graph per target holds every case (3x3 stride 1 and 2, padding at every border, odd widths 13 /
57, rows narrower than the vector, channel multipliers 1 and 2, dilation 2, int8 and uint8
activations, zero points, a nonzero weight zero point, int32 / float / fixed-point and float
requantization), so a target costs one compile and one emulated run (2 threads).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from lowering_helpers import single_node_graph
from qcompiler.codegen.lower import workload_of
from qcompiler.schedules.select import select
from qcompiler.targets import get_target
from test_kernels_cross import (_compile, _Net, _run_and_compare, _skip_without, compiled_per_target,
                                kernel_mnemonics)
from test_kernels_int8_arm import _epilogue, _x

pytest.importorskip("tvm")

#: target -> (mnemonics that must appear in the depthwise kernels, mnemonics that must not)
ARM = {
    "rpi4": ({"smlal", "smlal2"}, {"mla"}),
    "rpi3-armv7": ({"vmlal.s16"}, {"vmla.i32"}),
    "rpi5": ({"smlal", "smlal2"}, {"mla"}),
}
DW_KERNELS = re.compile(r"kernel_\w*_qdepthwise_rows_")

#: x shape, x dtype, channel multiplier, strides, pads (top, left, bottom, right), dilations,
#: x zero point, w zero point, bias, epilogue
CASES = [
    ((1, 6, 11, 13), np.uint8, 1, (1, 1), (1, 1, 1, 1), (1, 1), 128, 0, True, "fixed_int8"),
    ((1, 5, 9, 57), np.int8, 1, (2, 2), (1, 1, 1, 1), (1, 1), -5, 3, True, "float_int8"),
    ((1, 4, 7, 13), np.uint8, 2, (1, 1), (0, 2, 1, 1), (1, 1), 30, 0, False, "int32"),
    ((2, 3, 12, 20), np.int8, 2, (2, 2), (1, 0, 2, 1), (1, 1), 0, 0, True, "float"),
    ((1, 7, 8, 57), np.uint8, 1, (1, 1), (1, 1, 1, 1), (1, 1), 77, 0, True, "fixed_uint8"),
    ((1, 8, 6, 5), np.int8, 1, (1, 1), (1, 1, 1, 1), (1, 1), 9, -2, True, "fixed_int8"),       # 5 wide: 4 lanes
    ((1, 4, 9, 9), np.uint8, 1, (1, 1), (2, 2, 2, 2), (2, 2), 1, 0, True, "float_uint8"),     # dilation 2
    ((1, 3, 6, 6), np.uint8, 1, (2, 2), (1, 1, 1, 1), (1, 1), 200, 0, False, "int32"),        # 3 wide: masked
    ((1, 5, 10, 13), np.int8, 1, (2, 2), (1, 1, 1, 1), (1, 1), -128, 0, True, "int32"),
]


def dw_graph(seed=0):
    """Every depthwise variant in one graph."""
    net = _Net("int8_dw", seed)
    r = net.rng
    for i, (xs, xdt, mult, st, pads, dil, xz, wz, bias, kind) in enumerate(CASES):
        x = _x(net, f"x{i}", xs, xdt)
        c = xs[1]
        o = c * mult
        attrs, extra = _epilogue(r, kind, o)
        attrs.update(strides=st, pads=pads, dilations=dil, groups=c, x_zero_point=xz, w_zero_point=wz)
        w = net.const(r.integers(-128, 128, (o, 1, 3, 3)).astype(np.int8))
        b = net.const(r.integers(-3000, 3000, o).astype(np.int32)) if bias else ""
        net.node("QConv2d", [x, w, b] + [net.const(e) for e in extra], attrs)
    return net.g, net.feeds


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """target -> (graph, feeds, module dir, manifest): the graph compiled once per target."""
    return compiled_per_target(tmp_path_factory, lambda target: dw_graph())


@pytest.mark.parametrize("target", list(ARM))
def test_int8_depthwise_bit_exact_under_qemu(target, built):
    graph, feeds, path, _ = built(target)
    _run_and_compare(path, graph, feeds)


@pytest.mark.parametrize("target", list(ARM))
def test_int8_depthwise_kernel_is_selected(target, built):
    """Every depthwise QConv2d takes the ARM kernel with int16 operands."""
    _, _, _, manifest = built(target)
    layers = manifest["layers"]
    assert len(layers) == len(CASES), layers
    for rec in layers:
        assert rec["impl"] == "qdepthwise_rows__arm", rec
        assert rec["config"]["operands"] == "int16", rec


@pytest.mark.parametrize("target", list(ARM))
def test_int8_depthwise_uses_the_widening_multiply_accumulate(target, built):
    """int16 x int16 -> int32 multiply-accumulate, not int32 multiplies (mla / vmla.i32)."""
    _, _, path, _ = built(target)
    must, must_not = ARM[target]
    ops = kernel_mnemonics(path, DW_KERNELS, len(CASES), len(CASES))
    assert must <= ops, f"{target}: missing {sorted(must - ops)} in the int8 depthwise kernels"
    assert not must_not & ops, f"{target}: unexpected {sorted(must_not & ops)}"


@pytest.mark.parametrize("target", ["aarch64", "android-arm64", "android-armv7", "rpi4", "rpi5", "rpi3-armv7"])
def test_no_generic_int8_depthwise_on_arm(target):
    """Selection only (nothing compiled): depthwise QConv2d (multipliers 1 and 2) leaves the generic kernel."""
    t = get_target(target)
    for mult in (1, 2):
        g = single_node_graph("QConv2d", [(np.zeros((1, 8, 9, 9), np.uint8), False),
                                          (np.ones((8 * mult, 1, 3, 3), np.int8), True), (None, False)],
                              {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1), "groups": 8,
                               "x_zero_point": 3, "w_zero_point": 0, "out": "int32"})
        wl = workload_of(g, g.nodes[0])
        sel = select(wl, t)
        assert sel.kind == "qdepthwise_rows" and sel.impl.name == "qdepthwise_rows__arm", sel
        cfg = sel.impl.config_for(wl, t)
        assert cfg["operands"] == "int16"
        assert cfg["mull"] == ("" if t.arch == "aarch64" else "llvm.arm.neon.vmulls"), cfg


class _Knobs:
    """Tuning override: the same knobs for every ARM depthwise kernel."""

    def __init__(self, knobs: dict):
        self.knobs = knobs

    def best_config(self, impl_name, workload_key):
        return dict(self.knobs) if impl_name == "qdepthwise_rows__arm" else None


@pytest.mark.slow
@pytest.mark.parametrize("target,knobs", [
    ("rpi4", {"lanes": 16, "parallel": True, "operands": "int16", "mull": "", "chunks": 3}),
    ("rpi4", {"lanes": 8, "parallel": False, "operands": "int16", "mull": "llvm.aarch64.neon.smull.v4i32",
              "chunks": 2}),
    ("rpi4", {"lanes": 4, "parallel": True, "operands": "int32", "mull": "", "chunks": 1}),
    ("rpi3-armv7", {"lanes": 8, "parallel": True, "operands": "int16", "mull": "llvm.arm.neon.vmulls",
                    "chunks": 3}),
], ids=["rpi4-16x3", "rpi4-smull8x2", "rpi4-int32", "armv7-8x3"])
def test_int8_depthwise_knobs_bit_exact_under_qemu(target, knobs, tmp_path):
    """Lane / chunk tails of other tiles (rows narrower than 16 lanes), the smull intrinsic, int32 operands."""
    _skip_without(target)
    graph, feeds = dw_graph(seed=5)
    module = _compile(graph, target, tmp_path / "m", tuning=_Knobs(knobs))
    recs = module.manifest["layers"]
    assert len(recs) == len(CASES) and all(r["config"] == knobs for r in recs), recs
    _run_and_compare(tmp_path / "m", graph, feeds)
