"""Binary and bitserial conv/dense kernels for ARM (aarch64 NEON, armv7 NEON).

Shared register tile (``schedules/lowbit_tiling.py``) with 128-bit NEON vectors: 2 lanes of 64-bit
words. LLVM lowers the vector popcount to ``cnt v.16b`` + ``uaddlp`` chains on aarch64 and ``vcnt.8``
+ ``vpaddl`` on armv7 (tests/test_kernels_asm.py).

Defaults (nothing can be timed here; chosen from register counts and llvm-mca):
* aarch64 (32 q registers): 2 lanes x 4 vectors x 3 pixels = 12 accumulators, 4 weight vectors,
  + broadcasts and popcount temporaries.
* armv7 (16 q registers): 2 lanes x 2 vectors x 2 pixels = 4 accumulators.
"""

from __future__ import annotations

from ..compute_lowbit import LowbitConvWorkload, LowbitDenseWorkload, LowbitKernel
from ..lowbit_tiling import LowbitConfig, schedule_conv, schedule_dense


def _is_aarch64(target) -> bool:
    return target.arch.startswith("aarch64")


def default_config(target, word_bits: int) -> LowbitConfig:
    lanes = max(1, 128 // word_bits) if target.has("neon") else 1
    if _is_aarch64(target):
        return LowbitConfig(lanes=lanes, o_vectors=4, spatial_tile=3)
    return LowbitConfig(lanes=lanes, o_vectors=2, spatial_tile=2)


def _variant(target) -> str:
    return "neon_a64" if _is_aarch64(target) else "neon_a32"


def build_conv2d(wl: LowbitConvWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    cfg = config or default_config(target, wl.word_bits)
    kind = "bconv2d" if wl.binary else "bsconv2d"
    return schedule_conv(wl, cfg, weights, epilogue_inputs, f"{kind}_nhwc__arm_{_variant(target)}")


def build_dense(wl: LowbitDenseWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    cfg = config or default_config(target, wl.word_bits)
    kind = "bdense" if wl.binary else "bsdense"
    return schedule_dense(wl, cfg, weights, epilogue_inputs, f"{kind}__arm_{_variant(target)}")
