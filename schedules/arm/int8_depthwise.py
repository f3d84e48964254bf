"""Fast int8 depthwise QConv2d on ARM NEON: the kernel of ``schedules/compute_int8_depthwise.py`` with
int16 operands, so that each tap is LLVM's widening multiply-accumulate, ``smlal``/``smlal2``
(AArch64, int16 x int16 + int32, 4 lanes each) or ``vmlal.s16`` (armv7), on output columns in int32
lanes. The rows are packed once per channel as int16 ``x - x_zero_point`` (padding 0), the weights
``w - w_zero_point`` as int16 at compile time; |x - zp| * |w - zp| <= 255 * 255, exact in int32.

Defaults (nothing ARM can be timed here: chosen with ``llvm-mca`` on the innermost loop,
``python benchmarks/mca.py --int8``, 3x3 144x56x56 pad 1, 1 thread; cycles per int8 MAC, lower is
better; the generic ``qdepthwise_conv2d_nchw`` on the same layer in brackets):

=============  ===========  ===========================  ===================  ====================
target         cpu model    knobs (lanes x chunks, mul)  stride 1             stride 2
=============  ===========  ===========================  ===================  ====================
rpi5 / rpi4    cortex-a76   8x1, sext -> smlal/smlal2    0.250 (0.502) 2.0x   0.250 (1.281) 5.1x
               cortex-a72   8x1                          0.250 (0.502) 2.0x   0.250 (1.281) 5.1x
aarch64        cortex-a53   8x1                          0.413 (1.750) 4.2x   0.460 (3.056) 6.6x
rpi3-armv7     cortex-a57   4x2, vmulls -> vmlal.s16     0.320 (0.369) 1.15x  0.306 (1.974) 6.4x
=============  ===========  ===========================  ===================  ====================

* ``operands`` ``int16``: int32 operands give ``mla .4s`` / ``vmla.i32`` on twice the bytes: stride 1
  0.500 (A72), 0.603 (A53, 8x1), 0.486 (armv7 4x2).
* AArch64: the products as sign extensions in the IR; LLVM selects ``smlal``/``smlal2`` with the tap's
  weight as an element operand (``v.h[0]``) and unrolls a row's chunks itself, so ``chunks`` 1. The
  A72 / A76 loops run at the single multiply pipe's 1 ``smlal`` per cycle (0.25). On the in-order
  A53, lanes 4 (one accumulator chain) costs 1.750; lanes 4 x 2 / 4 chunks 0.96 / 0.69; 8x1 0.413;
  8x2 0.413; the ``smull`` intrinsic (``mull``) 0.70 (8x2) / 0.63 (4x4): it stops LLVM's unrolling.
* armv7 (LLVM 14 has no 32-bit A53 model: costed on A57, out of order, so optimistic for the
  in-order rpi3): ``mull`` = ``llvm.arm.neon.vmulls``, because from sign extensions LLVM hoists the
  widened weight broadcasts as int32 q registers (9 of the 16), spills, and emits ``vmovl`` +
  ``vmla.i32`` (0.756 at 4x1, 0.504 at 8x1). Stride 1: 4x1 0.340, **4x2 0.320**, 4x3 0.317, 4x4 0.349, 8x1
  0.399, 8x2 0.391; the loop is bound by its 9 ``vld1.16`` per chunk on the A57's load pipe. 2 chunks
  give the in-order A53 two independent ``vmlal.s16`` chains.
* ``lanes`` 4 on AArch64 rows narrower than 8 outputs (a row narrower than the chunk stores through
  a lane mask, which TVM scalarizes).
* ``parallel``: (image, channel) jobs over the module's threads, as on x86.
"""

from __future__ import annotations

from qcompiler.errors import UnsupportedError

from ..compute_int8_depthwise import compute, dw_shape, plan
from ..impls import register
from ..kernel import KernelImpl, Stages, Workload

#: architectures with the widening int16 multiply-accumulate the kernel relies on
ARCHES = ("aarch64", "armv7a", "armv7")

#: armv7's widening multiply (int16x4 x int16x4 -> int32x4), called explicitly: from plain sign
#: extensions LLVM hoists the widened weight broadcasts as int32 vectors and emits vmovl + vmla.i32
ARMV7_MULL = "llvm.arm.neon.vmulls"


def _check(target) -> None:
    if not target.has("neon") or target.arch not in ARCHES:
        raise UnsupportedError(f"the ARM int8 depthwise kernel needs NEON on {list(ARCHES)}; target "
                               f"{target.name!r} is {target.arch} with features {sorted(target.features)}")


def default_config(wl: Workload, target) -> dict:
    _check(target)
    if target.arch == "aarch64":
        # no wider than the row: a row narrower than the chunk stores through a lane mask (scalar)
        lanes = 8 if dw_shape(wl).ow >= 8 else 4
        return {"lanes": lanes, "parallel": True, "operands": "int16", "mull": "", "chunks": 1}
    return {"lanes": 4, "parallel": True, "operands": "int16", "mull": ARMV7_MULL, "chunks": 2}


def schedule(sch, stages: Stages, wl: Workload, target, cfg: dict) -> None:
    """The loops, vectors and parallel jobs are in the generated TIR; here only the target is checked."""
    _check(target)
    mull = cfg.get("mull", "")
    prefix = "llvm.aarch64." if target.arch == "aarch64" else "llvm.arm."
    if mull and not mull.startswith(prefix):
        raise UnsupportedError(f"ARM int8 depthwise mull {mull!r} is not a {target.arch} intrinsic ({prefix}*)")


register(KernelImpl("qdepthwise_rows__arm", plan, compute, schedule, default_config,
                    "int8 depthwise conv, output columns in int32 lanes, int16 operands (smlal / vmlal.s16)"),
         "qdepthwise_rows", "arm")
