"""Binary and bitserial conv/dense kernels for x86-64 (AVX-512 VPOPCNTDQ, AVX2, scalar POPCNT).

The loop nest is the shared register tile of ``schedules/lowbit_tiling.py``; this file picks the
knobs. How LLVM lowers the popcount of a vector of words here (checked in tests/test_kernels_asm.py):
AVX-512 VPOPCNTDQ -> ``vpopcntq``/``vpopcntd`` on zmm; AVX2 -> ``vpshufb`` nibble lookup.

Measured defaults (AMD Zen 4, 1 thread, ``benchmarks/kernels.py``; 64-bit words):
* AVX-512: 8 lanes x 2 vectors x 4 pixels. Dense M64 K1024 N1024: (4,2) 0.072 ms, (4,1)x8 0.077,
  (6,2) 0.077, (8,2) 0.081 — 16 zmm accumulators leave room for the loaded/broadcast operands.
* AVX2: 4 lanes x 2 vectors x 4 pixels (ymm; the nibble-LUT popcount needs scratch registers).
"""

from __future__ import annotations

from ..compute_lowbit import LowbitConvWorkload, LowbitDenseWorkload, LowbitKernel
from ..lowbit_tiling import LowbitConfig, schedule_conv, schedule_dense


def _vector_bits(target) -> int:
    if target.has("avx512"):
        return 512
    if target.has("avx2"):
        return 256
    return 64  # scalar POPCNT on 64-bit words


def default_config(target, word_bits: int) -> LowbitConfig:
    vbits = _vector_bits(target)
    lanes = max(1, vbits // word_bits)
    if vbits == 512:
        return LowbitConfig(lanes=lanes, o_vectors=2, spatial_tile=4)
    if vbits == 256:
        return LowbitConfig(lanes=lanes, o_vectors=2, spatial_tile=4)
    return LowbitConfig(lanes=1, o_vectors=4, spatial_tile=2)


def _variant(target) -> str:
    return {512: "avx512", 256: "avx2"}.get(_vector_bits(target), "popcnt")


def build_conv2d(wl: LowbitConvWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    """Binary or bitserial conv2d (packed NHWC) for x86; ``config`` overrides the default knobs."""
    cfg = config or default_config(target, wl.word_bits)
    kind = "bconv2d" if wl.binary else "bsconv2d"
    return schedule_conv(wl, cfg, weights, epilogue_inputs, f"{kind}_nhwc__x86_{_variant(target)}")


def build_dense(wl: LowbitDenseWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    """Binary or bitserial dense for x86."""
    cfg = config or default_config(target, wl.word_bits)
    kind = "bdense" if wl.binary else "bsdense"
    return schedule_dense(wl, cfg, weights, epilogue_inputs, f"{kind}__x86_{_variant(target)}")
