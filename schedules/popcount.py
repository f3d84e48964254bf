"""Popcount as each ISA family gets it, and the instructions the assembly checks expect.

``tirx.popcount`` on a vector of words lowers to ``llvm.ctpop.v*``, which LLVM 22 (bundled with TVM
0.27) already turns into the best instruction sequence of every target we ship (checked by
``tests/test_kernels_asm.py`` on emitted assembly), so the kernels use it directly instead of
hand-written intrinsics:

=================  ===========================================================
x86 AVX-512        ``vpopcntq`` / ``vpopcntd`` on zmm (VPOPCNTDQ), ``vpopcntb`` (BITALG)
x86 AVX2           ``vpshufb`` nibble lookup + ``vpsadbw`` (64-bit lanes)
aarch64 NEON       ``cnt v.16b`` + ``uaddlp`` / ``uadalp`` pairwise widening adds
armv7 NEON         ``vcnt.8`` + ``vpaddl`` / ``vpadal``
riscv64 Zbb        ``cpop`` (scalar); without Zbb an inline shift/and/mul popcount
riscv64 RVV        vector shift/and/add nibble popcount (``vcpop.v`` needs Zvbb)
=================  ===========================================================
"""

from __future__ import annotations

from typing import Tuple


def popcount(expr):
    """Per-lane population count of an integer TIR expression (scalar or vector)."""
    from tvm import tirx

    return tirx.popcount(expr)


def expected_popcount_asm(target) -> Tuple[str, ...]:
    """Mnemonics (substrings of the assembly) that must appear in a binary kernel for ``target``."""
    if target.family == "x86":
        if target.has("vpopcntdq"):
            return ("vpopcntq",)
        if target.has("avx2"):
            return ("vpshufb",)
        return ("popcnt",)
    if target.family == "arm":
        if target.arch.startswith("aarch64"):
            return ("cnt\tv", "uaddlp")
        return ("vcnt.8",)
    if target.family == "riscv":
        if target.has("rvv"):
            return ("vsetvli",)
        if target.has("zbb"):
            return ("cpop",)
        return ("srli",)  # rv64gc without Zbb: LLVM's inline bit-trick popcount (no libcall)
    raise ValueError(f"no popcount expectation for family {target.family!r}")
