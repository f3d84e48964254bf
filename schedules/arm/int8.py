"""Fast int8 QConv2d / QDense on ARM: the dot-product micro-kernel of ``schedules/compute_int8_fast.py``
with the NEON instructions and the default tiles.

ISAs (``isa`` knob), picked from the target's features:

=========  ==============================================  ==========================================
name       instruction                                      when
=========  ==============================================  ==========================================
``sdot``   ``sdot v.4s, v.16b, v.16b`` (s8 x s8, 4 per      AArch64 with ``dotprod`` (ARMv8.2, e.g.
           lane; uint8 activations flipped to ``x - 128``)  Cortex-A76 / rpi5) and symmetric weights
``smlal``  ``smlal`` + ``smlal2`` (AArch64) / ``vmlal.s16``  every other NEON core (Cortex-A53/A72,
           (armv7): int16 x int16 widened into int32        armv7) or w_zero_point != 0
=========  ==============================================  ==========================================

``smlal`` works on int16 operands (activations ``x - x_zero_point``, weights ``w - w_zero_point``,
widened once at pack time / compile time) with one output channel per int32 lane; its accumulator
``vector`` is int32x8 (two q registers), its weight operand one q register of 8 int16.

Default tiles (nothing ARM can be timed here: chosen with ``llvm-mca`` on the kernel's innermost loop,
``python benchmarks/mca.py --int8``, conv3x3 64x14x14->64, 1 thread; cycles per int8 MAC, lower is
better). Accumulators + weight vectors + activation broadcasts must fit the 32 q registers of AArch64
(16 on armv7) without spills:

* ``sdot`` (cortex-a76 model): tile_p x vectors 6x4 0.0507, 5x4 0.0543, 7x4 0.0640, 8x2 0.0679,
  8x3 0.0686, 12x2 0.0691, 4x4 0.0738, 16x1 0.159. So 16 channels x 6 pixels (24 accumulator
  registers); the model's peak (2 sdot per cycle) would be 0.031.
* ``smlal`` AArch64: cortex-a72 5x2 / 6x2 / 4x2 / 3x3 / 3x4 all 0.2505-0.2507 (one ``smlal`` per
  cycle: the A72's single integer-multiply pipe is the bound), 10x1 0.259, 12x1 0.268;
  cortex-a53 6x2 0.517, 5x2 0.529, 4x2 0.589, 10x1 0.704. Default 6x2 (24 of the 32 registers
  hold accumulators, an int32x8 accumulator being two q registers).
* ``smlal`` armv7 (``vmlal.s16``, costed on the cortex-a57 model; LLVM 14 has no 32-bit A53 model):
  5x1 0.284, 4x1 0.293, 3x1 0.302, 6x1 0.320, 2x2 0.501, 3x2 0.665. Default 5x1 (10 of the 16 q
  registers hold accumulators).
* ``vectors`` shrinks (4 -> 2 -> 1) when the wider block would pad away a lane or more of the
  layer's output channels; ``tile_p`` then grows to keep the accumulator budget (at most 12).
* ``parallel``: the (output-channel block, pixel tile) jobs over the module's threads, as on x86;
  the tests run the modules on 2 threads under qemu.

``lane_over`` (``compute_int8_fast``; rule ``default_lane_over``, shared with x86: the fewest
reduction steps, ties to the smaller pack): ``sdot`` lanes hold 4 bytes, so convs with few input
channels group (kx, c) (``"kc"``) or the whole window (``"window"``) as on VNNI; groups, horizontal
dilation, more than 16 channels per group (and 16: ``c`` wastes nothing) keep ``"c"``. ``smlal``
has one element per lane: every choice has the same steps, so it stays ``"c"``. llvm-mca,
cortex-a76, stem 3x224x224->64 7x7/2 pad 3 (uint8, int32 out), 1 thread, innermost loop of the dot
stage, cycles per real MAC (147 per output; padded lanes are not MACs):

=========  =====  =========  =================  ===============
lane_over  steps  tile       cycles / step       cycles / MAC
=========  =====  =========  =================  ===============
``c``      49     6x4        18.09 (24 sdot)    0.0628
``kc``     42     6x4        (row unrolled)     0.0522
``window`` 37     **6x4**    18.09 (24 sdot)    **0.0474**
``window`` 37     12x2       24.10              0.0632
=========  =====  =========  =================  ===============

So window does the stem's dot stage in 0.75x the cycles of ``c`` (the packs and epilogue are not
costed); the ``c`` tile rule (6x4) stays, unlike x86's 2 vectors for short reductions.
"""

from __future__ import annotations

from typing import Dict

from qcompiler.errors import UnsupportedError

from .. import compute_int8_fast as F
from ..kernel import Workload, ceil_div

ISAS: Dict[str, F.DotIsa] = {
    "sdot": F.DotIsa("sdot", "s8s8", 4, "llvm.aarch64.neon.sdot"),
    # plain sext * sext + acc in the IR: LLVM selects smlal/smlal2 (AArch64) and vmlal.s16 (armv7)
    "smlal": F.DotIsa("smlal", "s16mla", 8, ""),
}

#: (target features, architectures) each ISA needs
NEEDS = {"sdot": (("neon", "dotprod"), ("aarch64",)), "smlal": (("neon",), ("aarch64", "armv7a", "armv7"))}

#: q registers the default tile's accumulators may use (the rest: weights, broadcasts)
ACC_REGS = {"aarch64": 24, "armv7": 10}


def _arch(target) -> str:
    return "aarch64" if target.arch == "aarch64" else "armv7"


def isa_for(wl: Workload, target) -> str:
    """The default ISA of ``target`` for ``wl`` (sdot needs symmetric weights and dotprod)."""
    if not target.has("neon"):
        raise UnsupportedError(f"target {target.name!r} has no NEON for the int8 dot kernel")
    if target.arch == "aarch64" and target.has("dotprod") and int(wl.attr("w_zero_point", 0)) == 0:
        return "sdot"
    return "smlal"


def default_config(wl: Workload, target) -> dict:
    name = isa_for(wl, target)
    isa = ISAS[name]
    s = F.dot_shape(wl)
    regs_per_vector = isa.lanes // 4          # q registers per accumulator vector
    budget = ACC_REGS[_arch(target)]
    vectors = 1
    for v in (4, 2):
        wasted = ceil_div(s.og, v * isa.lanes) * v * isa.lanes - s.og
        # at least 4 pixels per tile, or every weight vector is reloaded too often
        if wasted < isa.lanes and v * regs_per_vector * 4 <= budget:
            vectors = v
            break
    tile_p = max(1, min(budget // (vectors * regs_per_vector), 12, s.pixels))
    # few input channels: sdot lanes over (kx, c) / the whole window (fewer steps, docstring);
    # smlal has one element per lane, every lane_over ties, and ties go to "c"
    return {"isa": name, "tile_p": tile_p, "vectors": vectors, "parallel": True,
            "lane_over": F.default_lane_over(s, isa)}


def schedule(sch, stages, wl: Workload, target, cfg: dict) -> None:
    """The tiling lives in the generated TIR; here only the ISA is checked against the target."""
    features, arches = NEEDS[cfg["isa"]]
    missing = [f for f in features if not target.has(f)]
    if missing or target.arch not in arches:
        raise UnsupportedError(f"ARM int8 dot ISA {cfg['isa']!r} needs {list(features)} on {list(arches)}; "
                               f"target {target.name!r} is {target.arch} with features {sorted(target.features)}")


F.register_dot_kernels("arm", ISAS, schedule, default_config, "sdot / smlal", isa_label="ARM ")
