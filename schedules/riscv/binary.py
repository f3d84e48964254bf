"""Binary and bitserial conv/dense kernels for RISC-V (rv64gc + Zbb scalar, RVV 1.0).

Scalar (Zbb): no vectors; a register tile of 4 channels x 2 pixels of 64-bit words, ``cpop`` per
word (31 integer registers: 8 accumulators + operands). RVV (VLEN >= 128): 2 lanes of 64-bit words
per vector, same tile as aarch64; LLVM emits a shift/and/add vector popcount (``vcpop.v`` needs
Zvbb, which qemu 7.2 cannot run).
"""

from __future__ import annotations

from ..compute_lowbit import LowbitConvWorkload, LowbitDenseWorkload, LowbitKernel
from ..lowbit_tiling import LowbitConfig, schedule_conv, schedule_dense


def default_config(target, word_bits: int) -> LowbitConfig:
    if target.has("rvv"):
        lanes = max(1, max(target.vector_bits, 128) // word_bits)
        return LowbitConfig(lanes=lanes, o_vectors=4, spatial_tile=3)
    return LowbitConfig(lanes=1, o_vectors=4, spatial_tile=2)


def _variant(target) -> str:
    return "rvv" if target.has("rvv") else "zbb" if target.has("zbb") else "rv64gc"


def build_conv2d(wl: LowbitConvWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    cfg = config or default_config(target, wl.word_bits)
    kind = "bconv2d" if wl.binary else "bsconv2d"
    return schedule_conv(wl, cfg, weights, epilogue_inputs, f"{kind}_nhwc__riscv_{_variant(target)}")


def build_dense(wl: LowbitDenseWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    cfg = config or default_config(target, wl.word_bits)
    kind = "bdense" if wl.binary else "bsdense"
    return schedule_dense(wl, cfg, weights, epilogue_inputs, f"{kind}__riscv_{_variant(target)}")
