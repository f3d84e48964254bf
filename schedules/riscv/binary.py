"""Binary and bitserial conv/dense kernels for RISC-V (rv64gc, + Zbb scalar ``cpop``, + RVV 1.0).

The loop nest is the shared register tile of ``schedules/lowbit_tiling.py``; this file picks the
knobs. Nothing can be timed on RISC-V here: the defaults come from register counts and from the
instructions per 64-bit word of the inner loop in the emitted assembly (LLVM 22 as bundled with TVM
0.27; dense M24 K4096 N96, 64-bit words; knobs as lanes x o_vectors x spatial_tile):

* rv64gc without Zbb, 1 x 4 x 2: LLVM's SWAR popcount (shift/and/mul), ~16 instr/word; 8
  accumulators + 4 weights + 2 inputs + 4 mask constants of 31 integer registers.
* Zbb scalar, 1 x 4 x 2: ``xor``, ``cpop``, ``add``: 4.1 instr/word, no spill (1 x 4 x 4: 5.1,
  accumulators spill).
* RVV, e64 at LMUL 1, 2 x 4 x 3: 7.9 instr/word; LMUL 2, 4 x 2 x 3: 4.2; LMUL 4 (the default),
  8 x 1 x 3: 2.3 -- 3 accumulator groups + 1 weight group + ~3 popcount temporaries of the 8
  register groups LMUL 4 leaves (8 x 2 x 2 is also 2.3 but spills a group).

RVV without Zvbb has no vector popcount: LLVM expands ``ctpop`` into 11 shift/and/add/mul ops
(``vcpop.v`` needs Zvbb, which qemu 7.2 cannot run), so the vector kernel pays ~13 vector ops per
register of words and the widest register group (LMUL 4) gives the fewest instructions. A caveat we
cannot measure here: an LMUL-4 op occupies a 128-bit datapath for 4 beats, so per *cycle* the Zbb
scalar kernel (3 ALU ops per word) is likely faster on VLEN-128 cores; ``lanes=1`` selects it.

RVV lanes are counted in accumulator lanes: 8- and 16-bit words accumulate in int32
(``compute_lowbit._popcount_acc_dtype``), so they get as many lanes as 32-bit words.
"""

from __future__ import annotations


from ..compute_lowbit import LowbitConvWorkload, LowbitDenseWorkload, LowbitKernel
from ..lowbit_tiling import LowbitConfig, schedule_conv, schedule_dense


#: RVV register group used by the vector kernels (fewest instructions per word, see above)
RVV_LMUL = 4
#: accumulator tile of the RVV kernel: 1 vector group x 3 pixels (3 + 1 + 3 temps <= 8 groups)
RVV_TILE = (1, 3)
#: scalar tile: 4 channels x 2 pixels = 8 accumulators (a 4 x 4 tile spills)
SCALAR_TILE = (4, 2)

# RVV keeps the accumulator zeroing scalar (LowbitConfig.vectorize_init says why).


def _acc_bits(word_bits: int) -> int:
    return max(word_bits, 32)


def default_config(target, word_bits: int, wl=None) -> LowbitConfig:
    """Default knobs for ``target`` (see the module docstring for where they come from); the same
    for every workload ``wl`` (nothing timed here to choose per shape)."""
    if target.has("rvv"):
        vbits = max(target.vector_bits, 128)
        lanes = min(64, RVV_LMUL * vbits // _acc_bits(word_bits))
        ov, st = RVV_TILE
        return LowbitConfig(lanes=lanes, o_vectors=ov, spatial_tile=st, vectorize_init=False)
    ov, st = SCALAR_TILE
    return LowbitConfig(lanes=1, o_vectors=ov, spatial_tile=st)


def _variant(target) -> str:
    return "rvv" if target.has("rvv") else "zbb" if target.has("zbb") else "rv64gc"


def build_conv2d(wl: LowbitConvWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    """Binary or bitserial conv2d (packed NHWC) for RISC-V; ``config`` overrides the default knobs."""
    cfg = config or default_config(target, wl.word_bits, wl)
    kind = "bconv2d" if wl.binary else "bsconv2d"
    return schedule_conv(wl, cfg, weights, epilogue_inputs, f"{kind}_nhwc__riscv_{_variant(target)}")


def build_dense(wl: LowbitDenseWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    """Binary or bitserial dense for RISC-V."""
    cfg = config or default_config(target, wl.word_bits, wl)
    kind = "bdense" if wl.binary else "bsdense"
    return schedule_dense(wl, cfg, weights, epilogue_inputs, f"{kind}__riscv_{_variant(target)}")
