"""Fast int8 QConv2d / QDense on x86: the dot-product micro-kernel of ``schedules/compute_int8_fast.py``
with the x86 instructions and the measured default tiles.

ISAs (``isa`` knob), picked from the target's features:

===========  ======================================  =========================================
name         instruction                              when
===========  ======================================  =========================================
``vnni512``  ``vpdpbusd zmm`` (u8 x s8, 4 per lane)   AVX-512 VNNI and symmetric weights
``vnni256``  ``vpdpbusd ymm``                         (a knob for tuning; not a default)
``madd512``  ``vpmaddwd zmm`` + ``vpaddd`` (i16 x i16)  AVX-512 without VNNI, or w_zero_point != 0
``madd256``  ``vpmaddwd ymm`` + ``vpaddd``             AVX2 (exact: no ``vpmaddubsw``, whose int16
                                                      pair sums saturate)
===========  ======================================  =========================================

Default tiles, measured on Zen 4 (1 thread, ``benchmarks/kernels.py``, min of 30 runs; the machine
is shared, so differences under ~3 % are noise):

* conv3x3 256x14x14->256, ``vnni512``: tile_p x vectors 6x4 0.525 ms, 12x2 0.540, 4x6 0.588,
  8x3 0.598, 7x4 0.64 (28 accumulators + 4 weights spill); ``vnni256`` 6x4 0.545.
* conv3x3 64x56x56->64: 12x2 0.575 ms, 6x4 0.60 (its 64 channels x 144 steps of weights, 37 KB,
  no longer fit the 32 KB L1; 2 vectors use 18 KB), 8x3 / 4x6 0.89 (channels padded to 96).
  So ``vectors`` is the largest of 4, 2, 1 that wastes no channels and, when the layer's weights
  for a block can fit L1 at all, keeps them under ~24 KB; ``tile_p`` fills ~24 accumulators.
* AVX2 (16 ymm): 4 x 2 accumulators + 2 weights + broadcast + product temporaries.

Re-measured after the epilogue / store rework of the dot stage (vectorized float requantization,
byte outputs transposed 4 pixels per channel store, 32 jobs of several tiles), min of 100 single
calls, onnxruntime int8 in the same run (it reaches ~222 GMAC/s on the 3x3 convs):

=============================  =========================================================  ========
workload                       tile_p x vectors: ms                                       ORT int8
=============================  =========================================================  ========
conv3x3 256x14x14->256         6x4 0.518, **4x4 0.504**, 7x3 0.571                        0.519
conv3x3 64x56x56->64           12x2 0.556, **8x2 0.549**, 4x4 0.557, 8x4 0.731             0.564
dense M64 K1024->N1024         6x4 0.304, **4x4 0.289**, 8x2 0.289, 16x1 0.292, 8x3 0.300   0.306
=============================  =========================================================  ========

A ``tile_p`` that divides the pixels (rows) leaves no clamped last tile (6 on 196 pixels computes
198, on 64 rows 66), which beats the larger tile down to half the accumulators: ``tile_p`` is the
largest divisor of the pixel count in [top/2, top], else top (top = 24 accumulators / vectors).
Before the rework the same run gave 6x4 0.534 ms and 12x2 0.645 ms on the two convs.

``lane_over`` (what a 32-bit lane groups; ``compute_int8_fast``): ``"c"`` puts ``group`` input
channels of one tap in a lane, so a 3-channel conv pads every tap to 4 (VNNI) or 2 x 2 (vpmaddwd);
``"kc"`` packs the image NHWC and a lane holds ``group`` consecutive (kx, c) of a window row
(``KH * ceil(KW * C / group)`` steps); ``"window"`` packs, per output row, the KH input rows it reads
interleaved per column, and a lane holds consecutive (kx, ky, c) of the whole window
(``ceil(KH * KW * C / group)`` steps; the pack is KH / stride copies of the image). Measured (1
thread, int8 fixed-point output, each row's knob sets interleaved in one process, median of
~20 x 5 calls; ``tile_p x vectors`` the default's):

==========================================  =======  ==========  ==========  ==============
workload                                    ISA      ``c``       ``kc``      ``window``
                                                     steps ms    steps ms    steps ms
==========================================  =======  ==========  ==========  ==============
stem 3x224x224->64 7x7/2 pad 3, 4x4         vnni512  49 0.924    42 0.840    37 0.794
  same, window tiles 8x2 / 16x1 / 6x4       vnni512                          **0.758** / 0.764 / 0.849
stem, 4x4 (another run)                     madd512  98 1.705    77 1.357    74 1.343
stem, window 8x2 vs 4x4 (another run)       madd512                          **1.337** / 1.383
stem, 4x2                                   madd256  98 1.871    77 1.506    (74 1.385, vs kc 1.397)
3x3/2 C=3 224x224->32 pad 1, 8x2            vnni512  9 0.186     9 0.188     **7 0.175**
3x3 C=3 56x56->32 pad 1, 8x2                vnni512  9 0.053     9 0.053     **7 0.044**
3x3 C=1 28x28->32 pad 1, 8x2                vnni512  9 0.013     **3 0.011** 3 0.011
5x5 C=1 28x28->32 pad 2, 8x2                vnni512              10 0.014    **7 0.013**
5x5 C=1 64x64->32 pad 2, 8x2                vnni512  25 0.177    10 0.147    7 0.159
==========================================  =======  ==========  ==========  ==============

So the default (``compute_int8_fast.default_lane_over``, shared with ARM) is the fewest steps, ties to
the smaller pack (c, kc, window), and
kc / window tiles keep 2 vectors (8x2 beat 4x4 by 4-5 % on the stem for window, ~2 % for kc, 3 %
on madd512). The time is not proportional to the steps: the epilogue and stores stay (the stem's
fixed-point requantization: float requantization measured 0.09 ms less on the same kernel), and the
packs cost (stem: c 0.004 ms, kc 0.021, window 0.035; 5x5 C=1 64x64: 0.0003 / 0.0003 / 0.005, there
window loses to kc; that layer's 32 output planes of 4096 bytes also alias in L1: it runs 2x the time
per pixel of the 28x28 one).
"""

from __future__ import annotations

from typing import Dict

from qcompiler.errors import UnsupportedError

from .. import compute_int8_fast as F
from ..kernel import Workload, ceil_div

ISAS: Dict[str, F.DotIsa] = {
    "vnni512": F.DotIsa("vnni512", "u8s8", 16, "llvm.x86.avx512.vpdpbusd.512"),
    "vnni256": F.DotIsa("vnni256", "u8s8", 8, "llvm.x86.avx512.vpdpbusd.256"),
    "madd512": F.DotIsa("madd512", "s16", 16, "llvm.x86.avx512.pmaddw.d.512"),
    "madd256": F.DotIsa("madd256", "s16", 8, "llvm.x86.avx2.pmadd.wd"),
}

#: target features each ISA needs (``Target.features``)
NEEDS = {"vnni512": ("avx512", "vnni"), "vnni256": ("avx512", "vnni"), "madd512": ("avx512",),
         "madd256": ("avx2",)}

L1_WEIGHT_BUDGET = 24 * 1024


def isa_for(wl: Workload, target) -> str:
    """The default ISA of ``target`` for ``wl`` (VNNI needs symmetric weights)."""
    if target.has("avx512") and target.has("vnni") and int(wl.attr("w_zero_point", 0)) == 0:
        return "vnni512"
    if target.has("avx512"):
        return "madd512"
    if target.has("avx2"):
        return "madd256"
    raise UnsupportedError(f"target {target.name!r} has neither AVX2 nor AVX-512 for the int8 dot kernel")


def default_config(wl: Workload, target) -> dict:
    name = isa_for(wl, target)
    isa = ISAS[name]
    s = F.dot_shape(wl)
    regs = 32 if isa.lanes == 16 or target.has("avx512") else 16
    lanes_over = F.default_lane_over(s, isa)
    step_bytes = F.reduction_steps(s, isa, lanes_over) * isa.lanes * isa.group * (2 if isa.scheme == "s16" else 1)
    fits_l1 = step_bytes * 2 <= L1_WEIGHT_BUDGET
    vectors = 1
    # short reductions (kc / window lanes): 2 vectors x more pixels measured faster (docstring)
    for v in ((4, 2) if lanes_over == "c" else (2,)):
        wasted = ceil_div(s.og, v * isa.lanes) * v * isa.lanes - s.og
        if wasted < isa.lanes and (not fits_l1 or step_bytes * v <= L1_WEIGHT_BUDGET) and 2 * v <= regs // 4:
            vectors = v
            break
    budget = 24 if regs == 32 else 8
    top = max(1, min(budget // vectors, 16, s.pixels))
    # a tile that divides the pixels (rows) wastes no clamped last tile: worth down to half the
    # accumulators (conv 14x14: 4 beats 6, 56x56: 8 beats 12, dense M64: 4 beats 6)
    tile_p = next((t for t in range(top, max(1, top // 2) - 1, -1) if s.pixels % t == 0), top)
    return {"isa": name, "tile_p": tile_p, "vectors": vectors, "parallel": True, "lane_over": lanes_over}


def schedule(sch, stages, wl: Workload, target, cfg: dict) -> None:
    """The tiling lives in the generated TIR; here only the ISA is checked against the target."""
    missing = [f for f in NEEDS[cfg["isa"]] if not target.has(f)]
    if missing:
        raise UnsupportedError(f"int8 dot ISA {cfg['isa']!r} needs target features {missing}, which "
                               f"target {target.name!r} lacks")


F.register_dot_kernels("x86", ISAS, schedule, default_config, "vpdpbusd / vpmaddwd")
