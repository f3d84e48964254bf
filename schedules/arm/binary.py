"""Binary and bitserial conv/dense kernels for ARM (aarch64 NEON, armv7 NEON).

Shared register tile (``schedules/lowbit_tiling.py``) with 128-bit NEON vectors: ``128 / word_bits``
words per q register, so every ``eor``/``cnt`` works on 128 bits whatever the word width. LLVM lowers
the vector popcount to ``cnt v.16b`` + ``uaddlp``/``uadalp`` chains on aarch64 and ``vcnt.8`` +
``vpaddl`` on armv7 (tests/test_kernels_asm.py, tests/test_kernels_cross.py).

Defaults: nothing can be timed here, so the tiles (``o_vectors`` x ``spatial_tile`` accumulator
vectors) come from register counts, checked on the emitted inner loop (LLVM 22 from TVM 0.27,
dense M24 K4096 N96; instructions per binary MAC, and ``llvm-mca -mcpu=cortex-a72`` cycles per MAC
for aarch64 -- LLVM 14's llvm-mca has no 32-bit Cortex-A53 model):

* aarch64, 32 q registers. 64/32/16-bit words: 4 x 3 = 12 accumulators + 4 weight vectors + popcount
  temporaries, no spill: 64-bit 0.047 instr/MAC (0.021 cyc/MAC; 4x2 0.049, 2x4 0.051, 6x2 0.046),
  32-bit 0.039 (0.017). 8-bit words accumulate in int32, 4 q registers per vector of 16 words: the
  4 x 3 tile (48 accumulators) spills, 0.098 instr/MAC (0.052 cyc/MAC); 2 x 2 (16) does not, 0.078
  (0.035 cyc/MAC).
* armv7, 16 q registers. 2 x 2 = 4 accumulators + 2 weights + 2 broadcasts + 4 temporaries:
  32-bit 0.055 instr/MAC dense, 0.050 conv (2 x 3: 0.052 dense but 0.070 conv; 64-bit 2 x 3
  spills). 8-bit: 1 x 3 (12 accumulator registers), 0.086 instr/MAC (2 x 2: 0.107).

32-bit words are the cheaper NEON layout: the per-lane widening chain after ``cnt`` is one step
shorter than for 64-bit lanes (0.039 vs 0.047 instr/MAC on aarch64).
"""

from __future__ import annotations

from ..compute_lowbit import LowbitConvWorkload, LowbitDenseWorkload, LowbitKernel
from ..lowbit_tiling import LowbitConfig, schedule_conv, schedule_dense

NEON_BITS = 128
#: (o_vectors, spatial_tile) per packing word width, from the register counts above
AARCH64_TILES = {64: (4, 3), 32: (4, 3), 16: (4, 3), 8: (2, 2)}
ARMV7_TILES = {64: (2, 2), 32: (2, 2), 16: (2, 2), 8: (1, 3)}


def _is_aarch64(target) -> bool:
    return target.arch.startswith("aarch64")


def default_config(target, word_bits: int, wl=None) -> LowbitConfig:
    """Default knobs for ``target`` (see the module docstring for where they come from); the same
    for every workload ``wl`` (nothing timed here to choose per shape)."""
    if not target.has("neon"):
        return LowbitConfig(lanes=1, o_vectors=4, spatial_tile=2)
    tiles = AARCH64_TILES if _is_aarch64(target) else ARMV7_TILES
    ov, st = tiles.get(word_bits, (2, 2))
    return LowbitConfig(lanes=max(1, NEON_BITS // word_bits), o_vectors=ov, spatial_tile=st)


def _variant(target) -> str:
    return "neon_a64" if _is_aarch64(target) else "neon_a32"


def build_conv2d(wl: LowbitConvWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    """Binary or bitserial conv2d (packed NHWC) for ARM; ``config`` overrides the default knobs."""
    cfg = config or default_config(target, wl.word_bits, wl)
    kind = "bconv2d" if wl.binary else "bsconv2d"
    return schedule_conv(wl, cfg, weights, epilogue_inputs, f"{kind}_nhwc__arm_{_variant(target)}")


def build_dense(wl: LowbitDenseWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    """Binary or bitserial dense for ARM."""
    cfg = config or default_config(target, wl.word_bits, wl)
    kind = "bdense" if wl.binary else "bsdense"
    return schedule_dense(wl, cfg, weights, epilogue_inputs, f"{kind}__arm_{_variant(target)}")
