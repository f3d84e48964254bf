"""The fast ARM int8 kernels (schedules/arm/int8.py over schedules/compute_int8_fast.py): cross-compiled
for rpi5 (``sdot``), rpi4 (``smlal``/``smlal2``) and rpi3-armv7 (``vmlal.s16``), run under qemu-user
and compared bit-exactly with the reference executor, plus the instructions in the objects and the
kernel selection (no generic int8 conv / dense on ARM).

One graph per target holds every case (QConv2d with C = 3 / 70, stride 2, padding at every border,
int8 and uint8 activations, zero points, a nonzero weight zero point, int32 / float / fixed-point and
float requantization, groups 2 with dilation, a 1x1 stride-2 conv that reads 15 of 16 columns, a
7x7/2 C=3 stem and a 3x3 C=1 (on sdot: lane_over window / kc, checked in the manifest);
QDense with M = 1 and M > 1 and odd K), so a target costs one compile and one emulated run (2
threads). Other tiles / ISAs through the tuning override are the slow tests.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from lowering_helpers import single_node_graph
from qcompiler.codegen.lower import workload_of
from qcompiler.ref.ops.requant import quantize_multipliers
from qcompiler.schedules.select import select
from qcompiler.targets import get_target
from test_kernels_cross import (_compile, _Net, _run_and_compare, _skip_without, compiled_per_target,
                                kernel_mnemonics)

pytest.importorskip("tvm")

#: target -> (default ISA for symmetric weights, mnemonics that must appear, mnemonics that must not)
ARM = {
    "rpi5": ("sdot", {"sdot"}, set()),
    "rpi4": ("smlal", {"smlal", "smlal2"}, {"sdot"}),
    "rpi3-armv7": ("smlal", {"vmlal.s16"}, set()),
}
#: graph input -> the default lane_over of the sdot conv reading it (every other layer, and smlal: "c")
LANE_OVER_SDOT = {"x3": "window", "xs": "window", "x1": "kc"}
DOT_KERNELS = re.compile(r"kernel_\w*_(qconv2d_dot|qdense_dot)_")


def _epilogue(r, kind: str, o: int):
    """(attrs, constant inputs) of an int8 conv / dense epilogue."""
    if kind == "int32":
        return {"out": "int32"}, []
    if kind == "float":
        return {"out": "float"}, [r.uniform(1e-3, 2e-2, o).astype(np.float32), r.uniform(-1, 1, o).astype(np.float32)]
    requant, out = kind.split("_")                  # e.g. "fixed_int8", "float_uint8"
    zp, lo, hi = (120, 120, 255) if out == "uint8" else (-3, -128, 100)
    attrs = {"out": out, "out_zero_point": zp, "out_min": lo, "out_max": hi,
             "requant": "fixed_point" if requant == "fixed" else "float"}
    real = r.uniform(2e-4, 4e-3, o)
    if requant == "fixed":
        return attrs, list(quantize_multipliers(real))
    return attrs, [real.astype(np.float32)]


def _x(net, name, shape, dtype):
    info = np.iinfo(dtype)
    return net.input(name, net.rng.integers(info.min, info.max + 1, shape).astype(dtype))


def _qconv(net, x, o, k, strides, pads, xz, wz, bias, kind, groups=1, dilations=(1, 1)):
    r = net.rng
    c = net.g.value(x).shape[1]
    w = r.integers(-128, 128, (o, c // groups) + k).astype(np.int8)
    attrs, extra = _epilogue(r, kind, o)
    attrs.update(strides=strides, pads=pads, dilations=dilations, groups=groups, x_zero_point=xz,
                 w_zero_point=wz)
    b = net.const(r.integers(-3000, 3000, o).astype(np.int32)) if bias else ""
    return net.node("QConv2d", [x, net.const(w), b] + [net.const(e) for e in extra], attrs)


def _qdense(net, x, n, xz, wz, bias, kind):
    r = net.rng
    k = net.g.value(x).shape[1]
    attrs, extra = _epilogue(r, kind, n)
    attrs.update(x_zero_point=xz, w_zero_point=wz)
    b = net.const(r.integers(-3000, 3000, n).astype(np.int32)) if bias else ""
    w = net.const(r.integers(-128, 128, (n, k)).astype(np.int8))
    return net.node("QDense", [x, w, b] + [net.const(e) for e in extra], attrs)


def int8_graph(seed=0):
    """Every int8 conv / dense variant in one graph."""
    net = _Net("int8_ops", seed)
    x3 = _x(net, "x3", (1, 3, 13, 12), np.uint8)
    x70 = _x(net, "x70", (1, 70, 9, 11), np.int8)
    xw = _x(net, "xw", (1, 70, 6, 18), np.uint8)        # W >= 16: the 16-pixel interior pack path
    xb = _x(net, "xb", (2, 5, 7, 9), np.int8)
    # C = 3 / 70, stride 2 with padding at every border, all epilogues
    _qconv(net, x3, 5, (3, 3), (2, 2), (1, 2, 2, 1), 17, 0, True, "int32")
    _qconv(net, x70, 37, (3, 3), (2, 2), (2, 1, 1, 2), -5, 0, True, "fixed_int8")
    _qconv(net, x70, 20, (3, 3), (1, 1), (1, 1, 1, 1), 100, 0, False, "float")
    _qconv(net, xw, 40, (3, 3), (1, 2), (1, 0, 0, 1), 128, 0, True, "float_uint8")
    _qconv(net, xb, 9, (1, 1), (1, 1), (0, 0, 0, 0), 3, -2, True, "fixed_uint8")   # w_zero_point != 0
    # 1x1 stride 2 on an even width reads 15 of 16 columns (the pack stage once overran its planes)
    _qconv(net, _x(net, "x16", (1, 24, 16, 16), np.uint8), 32, (1, 1), (2, 2), (0, 0, 0, 0), 9, 0, True, "int32")
    # few input channels: on sdot the lanes group (kx, c) / the whole window (lane_over kc / window,
    # LANE_OVER_SDOT): the 7x7/2 C=3 stem with padding 3 and a 3x3 C=1 (x3's 3x3/2 above: window)
    _qconv(net, _x(net, "xs", (1, 3, 19, 18), np.uint8), 24, (7, 7), (2, 2), (3, 3, 3, 3), 11, 0, True, "fixed_int8")
    _qconv(net, _x(net, "x1", (1, 1, 10, 11), np.int8), 8, (3, 3), (1, 1), (1, 1, 1, 1), -7, 0, True, "float")
    # groups 2 (odd channels per group) with dilation
    _qconv(net, x70, 22, (3, 3), (1, 1), (2, 1, 0, 2), 6, 0, False, "fixed_int8", groups=2, dilations=(2, 1))
    # dense: M = 1 and M > 1, odd K
    _qdense(net, _x(net, "v1", (1, 100), np.int8), 40, -1, 0, False, "float")
    _qdense(net, _x(net, "v5", (5, 45), np.uint8), 19, 128, 0, True, "fixed_int8")
    _qdense(net, _x(net, "v3", (3, 67), np.uint8), 33, 7, 3, True, "int32")      # w_zero_point != 0
    _qdense(net, _x(net, "v2", (2, 33), np.int8), 16, 4, 0, True, "float_int8")
    return net.g, net.feeds


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """target -> (graph, feeds, module dir, manifest): the graph compiled once per target."""
    return compiled_per_target(tmp_path_factory, lambda target: int8_graph())


@pytest.mark.parametrize("target", list(ARM))
def test_int8_dot_kernels_bit_exact_under_qemu(target, built):
    graph, feeds, path, _ = built(target)
    _run_and_compare(path, graph, feeds)


@pytest.mark.parametrize("target", list(ARM))
def test_int8_dot_kernels_are_selected(target, built):
    """Every QConv2d / QDense takes the ARM dot kernel, with the target's ISA (smlal for w_zp != 0)."""
    graph, _, _, manifest = built(target)
    ops = {n.name: n for n in graph.nodes}
    isa = ARM[target][0]
    layers = [r for r in manifest["layers"] if ops[r["node"]].op in ("QConv2d", "QDense")]
    assert len(layers) == 13, manifest["layers"]
    for rec in layers:
        node = ops[rec["node"]]
        kind = "qconv2d_dot" if node.op == "QConv2d" else "qdense_dot"
        assert rec["impl"] == f"{kind}__arm", rec
        want = "smlal" if node.attrs["w_zero_point"] else isa
        assert rec["config"]["isa"] == want, rec
        lanes = LANE_OVER_SDOT.get(node.inputs[0], "c") if want == "sdot" else "c"
        assert rec["config"]["lane_over"] == lanes, rec
    if isa == "sdot":   # the few-channel convs really left "c"
        assert sum(r["config"]["lane_over"] != "c" for r in layers) == len(LANE_OVER_SDOT)


@pytest.mark.parametrize("target", list(ARM))
def test_int8_dot_kernels_use_the_intended_instructions(target, built):
    _, _, path, _ = built(target)
    _, must, must_not = ARM[target]
    ops = kernel_mnemonics(path, DOT_KERNELS, 2, mattr="+dotprod" if target == "rpi5" else None)
    assert must <= ops, f"{target}: missing {sorted(must - ops)} in the int8 dot kernels"
    assert not must_not & ops, f"{target}: unexpected {sorted(must_not & ops)}"


@pytest.mark.parametrize("target", ["aarch64", "android-arm64", "android-armv7", "rpi4", "rpi5", "rpi3-armv7"])
def test_no_generic_int8_conv_or_dense_on_arm(target):
    """Selection only (nothing compiled): QConv2d and QDense (M = 1 too) leave the generic kernels."""
    t = get_target(target)
    conv = single_node_graph("QConv2d", [(np.zeros((1, 3, 8, 8), np.uint8), False),
                                         (np.ones((8, 3, 3, 3), np.int8), True), (None, False)],
                             {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1), "groups": 1,
                              "x_zero_point": 0, "w_zero_point": 0, "out": "int32"})
    dense = single_node_graph("QDense", [(np.zeros((1, 33), np.int8), False),
                                         (np.ones((16, 33), np.int8), True), (None, False)],
                              {"x_zero_point": 0, "w_zero_point": 0, "out": "int32"})
    for g, kind in ((conv, "qconv2d_dot"), (dense, "qdense_dot")):
        wl = workload_of(g, g.nodes[0])
        sel = select(wl, t)
        assert sel.kind == kind and sel.impl.name == f"{kind}__arm"
        cfg = sel.impl.config_for(wl, t)
        assert cfg["isa"] == ("sdot" if t.has("dotprod") else "smlal")


def _conv_wl(c, o, k, strides, pads, groups=1, dilations=(1, 1), w_zero_point=0):
    g = single_node_graph("QConv2d", [(np.zeros((1, c, 16, 16), np.uint8), False),
                                      (np.ones((o, c // groups) + k, np.int8), True), (None, False)],
                          {"strides": strides, "pads": pads, "dilations": dilations, "groups": groups,
                           "x_zero_point": 0, "w_zero_point": w_zero_point, "out": "int32"})
    return workload_of(g, g.nodes[0])


@pytest.mark.parametrize("case,want", [
    ((3, 64, (7, 7), (2, 2), (3, 3, 3, 3)), "window"),               # stem: 37 steps vs kc 42, c 49
    ((1, 32, (3, 3), (1, 1), (1, 1, 1, 1)), "kc"),                   # 3 steps, tied with window; c 9
    ((3, 8, (3, 3), (1, 1), (2, 1, 2, 1), 1, (2, 1)), "window"),     # vertical dilation is taken
    ((6, 6, (3, 3), (1, 1), (1, 1, 1, 1), 2), "c"),                  # groups
    ((3, 8, (3, 3), (1, 1), (1, 2, 1, 2), 1, (1, 2)), "c"),          # horizontal dilation
    ((17, 8, (3, 3), (1, 1), (1, 1, 1, 1)), "c"),                    # > KC_MAX_CHANNELS
    ((16, 8, (3, 3), (1, 1), (1, 1, 1, 1)), "c"),                    # c lanes waste nothing
    ((3, 8, (7, 7), (2, 2), (3, 3, 3, 3), 1, (1, 1), 2), "c"),       # w_zero_point != 0: smlal
], ids=["stem", "3x3c1", "dilh", "groups", "dilw", "c17", "c16", "wzp"])
def test_default_lane_over_on_arm(case, want):
    """Selection only: sdot (rpi5) takes the fewest-step lane_over; refusals and smlal stay on "c"."""
    wl = _conv_wl(*case)
    for target in ("rpi5", "rpi4", "rpi3-armv7"):
        t = get_target(target)
        cfg = select(wl, t).impl.config_for(wl, t)
        sdot = target == "rpi5" and wl.attr("w_zero_point") == 0
        assert cfg["isa"] == ("sdot" if sdot else "smlal"), (target, cfg)
        assert cfg["lane_over"] == (want if sdot else "c"), (target, cfg)


class _Knobs:
    """Tuning override: the same knobs for every int8 dot kernel."""

    def __init__(self, knobs: dict):
        self.knobs = knobs

    def best_config(self, impl_name, workload_key):
        return dict(self.knobs) if impl_name.startswith(("qconv2d_dot__arm", "qdense_dot__arm")) else None


@pytest.mark.slow
@pytest.mark.parametrize("target,knobs", [
    ("rpi5", {"isa": "sdot", "tile_p": 5, "vectors": 3, "parallel": True}),
    ("rpi5", {"isa": "smlal", "tile_p": 3, "vectors": 2, "parallel": False}),
    ("rpi4", {"isa": "smlal", "tile_p": 7, "vectors": 1, "parallel": True}),
    ("rpi3-armv7", {"isa": "smlal", "tile_p": 2, "vectors": 2, "parallel": True}),
], ids=["rpi5-sdot5x3", "rpi5-smlal3x2", "rpi4-smlal7x1", "armv7-smlal2x2"])
def test_int8_dot_knobs_bit_exact_under_qemu(target, knobs, tmp_path):
    """Pixel / channel tails of other tiles, and smlal on a dotprod core."""
    _skip_without(target)
    graph, feeds = int8_graph(seed=5)
    if knobs["isa"] == "sdot":      # sdot needs symmetric weights: drop the w_zero_point != 0 nodes
        for n in [n for n in graph.nodes if n.attrs.get("w_zero_point")]:
            graph.nodes.remove(n)
            graph.outputs.remove(n.outputs[0])
    module = _compile(graph, target, tmp_path / "m", tuning=_Knobs(knobs))
    dots = [r for r in module.manifest["layers"] if r["impl"].endswith("_dot__arm")]
    # knobs not overridden (lane_over) keep the default's
    assert len(dots) == len(graph.nodes) and all({k: r["config"][k] for k in knobs} == knobs for r in dots), dots
    _run_and_compare(tmp_path / "m", graph, feeds)
