"""Fast int8 depthwise QConv2d on x86: the kernel of ``schedules/compute_int8_depthwise.py`` with int32
operands (``vpmulld``) and the x86 vector widths.

Output columns in the int32 lanes (16 on AVX-512, 8 on AVX2), ``x - x_zero_point`` packed per
channel as int32 rows split into stride phases, each tap one ``vpmulld`` + ``vpaddd`` (the pack and
rows stages are described in the shared module).

Measured on Zen 4 (1 thread, ``benchmarks/kernels.py``: 144 channels 56x56, 3x3 pad 1, uint8
output with float requantization; medians of 25 single calls, onnxruntime int8 QLinearConv with
``group=144`` in the same run):

==========  ==========  ===========================  ================  ========
stride      this        generic qdepthwise_conv2d    onnxruntime int8  x ORT
==========  ==========  ===========================  ================  ========
1           0.185 ms    0.535 ms                     0.247 ms          1.34
2           0.074 ms    0.425 ms                     0.089 ms          1.20
==========  ==========  ===========================  ================  ========

Stride 2 first loaded its rows' phases as 31-byte vectors, which LLVM split into byte inserts
(0.146 ms, 0.61x ORT); whole 32-byte loads (shifted back by one byte at a row's end) fixed it.
No knob but ``lanes`` (the vector width) is exposed: each job holds one channel's rows in L1.

Smaller MobileNet layers (medians of 25 single calls, same run; ``lanes`` 16 / 8 / 4):

=================  ==============================  ========  ======
layer              ms                              ORT int8  x ORT
=================  ==============================  ========  ======
576x14x14 s1       16: 0.108, **8: 0.051**         0.063     1.23
576x14x14 s2       8: 0.036, 4: 0.031              0.030     0.83-0.97
960x7x7 s1         8: 0.047, 4: 0.045              0.031     0.66
144x56x56 s1       **16: 0.181**, 8: 0.175         0.245     1.36
=================  ==============================  ========  ======

Before the jobs ran several channels each, 576x14x14 took 0.076 ms and 960x7x7 0.083 ms. So
``lanes`` is 16 on AVX-512 rows of >= 32 outputs, else 8 on rows of >= 8, else 4 (a row narrower
than the vector stores through a lane mask, which TVM scalarizes). The 7-wide layers stay below
onnxruntime: ~170 cycles per channel of fixed work (9 packed rows, 7 output rows) against its ~110.
"""

from __future__ import annotations

from qcompiler.errors import UnsupportedError

from ..compute_int8_depthwise import compute, dw_shape, plan
from ..impls import register
from ..kernel import KernelImpl, Stages, Workload


def default_config(wl: Workload, target) -> dict:
    if not (target.has("avx512") or target.has("avx2")):
        raise UnsupportedError(f"target {target.name!r} has neither AVX2 nor AVX-512 for the int8 depthwise kernel")
    # no wider than the row: a row narrower than the vector stores through a lane mask (scalar)
    ow = dw_shape(wl).ow
    lanes = 16 if target.has("avx512") and ow >= 32 else 8 if ow >= 8 else 4
    return {"lanes": lanes, "parallel": True, "operands": "int32"}


def schedule(sch, stages: Stages, wl: Workload, target, cfg: dict) -> None:
    """Nothing to do: the loops, vectors and parallel jobs are in the generated TIR."""


register(KernelImpl("qdepthwise_rows__x86", plan, compute, schedule, default_config,
                    "int8 depthwise conv, output columns in int32 vector lanes (vpmulld)"),
         "qdepthwise_rows", "x86")
