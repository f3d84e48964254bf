"""Knob heuristics shared by the families' defaults: tiles that waste little on odd shapes."""

from __future__ import annotations

from .kernel import Workload, ceil_div, largest_divisor, vector_lanes


def least_waste_tile(n: int, lo: int, hi: int) -> int:
    """The tile in [lo, hi] that pads ``n`` least (ties: the larger tile); ``n`` itself if smaller."""
    if n <= hi:
        return n
    return min(range(lo, hi + 1), key=lambda t: (ceil_div(n, t) * t - n, -t))


def conv_knobs(wl: Workload, lanes: int, max_tile: int) -> dict:
    o = wl.inputs[1].shape[0]
    groups = int(wl.attr("group", wl.attr("groups", 1)))
    vo = lanes
    if groups > 1:
        mg = o // groups
        vo = 1
        while vo * 2 <= lanes and mg % (vo * 2) == 0:
            vo *= 2
    elif o < lanes:
        vo = max(4, 1 << (o - 1).bit_length()) if o > 1 else 1
    ow = wl.outputs[0].shape[3]
    return {"vo": vo, "tile_ow": least_waste_tile(ow, max(1, max_tile // 2), max_tile), "unroll": 1,
            "parallel": 1}


def dense_knobs(wl: Workload, lanes: int, max_acc: int) -> dict:
    n = wl.outputs[0].shape[-1]
    m = 1
    for d in wl.outputs[0].shape[:-1]:
        m *= d
    vn = lanes if n >= lanes else max(4, 1 << (n - 1).bit_length())
    nb = ceil_div(n, vn)
    tile_m = largest_divisor(m, 4)
    tile_nb = largest_divisor(nb, max(1, max_acc // tile_m))
    return {"vn": vn, "tile_m": tile_m, "tile_nb": tile_nb, "unroll": 1, "parallel": 1}


def injective_knobs(wl: Workload, target) -> dict:
    dtype = wl.outputs[0].dtype if wl.outputs else "float32"
    dtype = "int8" if dtype == "bool" else dtype
    return {"vec": vector_lanes(target, dtype), "parallel": 1}


def template_defaults(kind: str, wl: Workload, target, vector_registers: int) -> dict:
    """Default knobs of the float/int8 templates, given the family's vector register count.

    Register budget of the conv/dense tiles: ``tile_ow`` (conv) or ``tile_m * tile_nb`` (dense)
    accumulator vectors, plus one weight vector and one broadcast, within ``vector_registers``.
    """
    lanes = vector_lanes(target, "float32")
    if kind in ("conv2d_nchw_ocvec", "qconv2d_nchw_ocvec"):
        return conv_knobs(wl, lanes, max_tile=min(12, vector_registers - 4))
    if kind in ("depthwise_conv2d_nchw", "qdepthwise_conv2d_nchw"):
        ow = wl.outputs[0].shape[-1]
        return {"vw": lanes if ow >= lanes else max(4, 1 << (ow - 1).bit_length()), "parallel": 1}
    if kind in ("dense_nvec", "qdense_nvec"):
        return dense_knobs(wl, lanes, max_acc=vector_registers // 2)
    return injective_knobs(wl, target)
