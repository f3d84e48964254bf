"""Instructions and cycles per binary MAC of the binary dense inner loop on ARM / RISC-V (llvm-mca),
and per int8 MAC of the int8 conv inner loop on ARM.

Nothing can be timed here for aarch64, armv7 and riscv64, so the kernels are compared statically:
our binary dense (``schedules/<family>/binary.py`` defaults) and TVM's own
``topi.nn.bitserial_dense`` (A1W1, its binary-weight "unipolar" mode, uint32 packing, the same
simple schedule as the x86 peer in ``benchmarks/kernels.py``) are compiled for the same triple; the
innermost loop that contains popcounts is cut from the assembly and given to Debian's ``llvm-mca``
with the CPU model. Binary MACs per loop iteration = bits entering popcount instructions per
iteration / popcounts per MAC (ours: 1, XOR then popcount; TVM unipolar: 2,
``popcount(x & w) - popcount(x & ~w)``).

int8 section: conv3x3 64x14x14->64 (uint8 activations, symmetric int8 weights, int32 out), our
``qconv2d_dot`` (``schedules/arm/int8.py`` defaults: ``sdot`` with dotprod, else ``smlal``/``smlal2``,
armv7 ``vmlal.s16``) next to the generic ``qconv2d_nchw_ocvec`` (int32 ``mla`` / ``vmla.i32``), same
triple, 1 thread. int8 MACs per iteration = lanes x products of the multiply-accumulate instructions
(``sdot .4s``: 16, ``smlal .4s`` / ``mla .4s`` / ``vmlal.s16 q`` / ``vmla.i32 q``: 4).

int8 depthwise (printed with ``--int8``): 3x3 144x56x56 pad 1, strides 1 and 2, our ``qdepthwise_rows``
(``schedules/arm/int8_depthwise.py`` defaults: lanes L x chunks U per iteration, int16 ``smlal`` from
sign extensions on AArch64, ``llvm.arm.neon.vmulls`` on armv7) next to the generic
``qdepthwise_conv2d_nchw``; MACs also count the plain multiply (``smull``, ``vmull.s16``, ``mul``,
``vmul.i32``) that starts each chunk's sum. Work outside that loop (our per-channel int16 pack, the
generic kernel's padding and zero-point reads) is not costed.

Run: ``python benchmarks/mca.py`` (both tables), ``--binary`` or ``--int8`` for one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

M, K, N = 6, 1024, 64


@dataclass(frozen=True)
class Triple:
    name: str                 # qcompiler target whose defaults our kernel uses
    mca_triple: str
    mca_cpu: str
    tvm_target: dict
    popcount: Tuple[Tuple[str, int], ...]   # (regex of a popcount instruction, bits it counts)


def _triples() -> List[Triple]:
    return [
        Triple("rpi4", "aarch64-linux-gnu", "cortex-a72",
               {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]},
               ((r"\bcnt\s+v\d+\.16b", 128), (r"\bcnt\s+v\d+\.8b", 64))),
        # LLVM 14 has no 32-bit Cortex-A53 scheduling model: the code is built for -mcpu=cortex-a53 and
        # costed with the closest 32-bit ARMv8 model it has, Cortex-A57 (out of order, so optimistic)
        Triple("rpi3-armv7", "armv7a-linux-gnueabihf", "cortex-a57",
               {"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mcpu": "cortex-a53",
                "mattr": ["+neon"], "mfloat-abi": "hard"},
               ((r"\bvcnt\.8\s+q", 128), (r"\bvcnt\.8\s+d", 64))),
        # rv64gc + Zbb (scalar cpop) on the SiFive U74 model (LLVM's RISC-V in-order model with Zbb)
        Triple("riscv64", "riscv64-unknown-linux-gnu", "sifive-u74",
               {"kind": "llvm", "mtriple": "riscv64-unknown-linux-gnu", "mcpu": "sifive-u74",
                "mattr": ["+m", "+a", "+f", "+d", "+c", "+zbb"]},
               ((r"\bcpop\s", 64), (r"\bcpopw\s", 32))),
    ]


# -- kernels --------------------------------------------------------------------------------------

def ours_asm(t: Triple) -> str:
    import tvm

    from qcompiler.schedules.compute_lowbit import LowbitDenseWorkload
    from qcompiler.schedules.lowbit_tiling import schedule_dense
    from qcompiler.targets import get_target

    target = get_target(t.name)
    fam = __import__(f"qcompiler.schedules.{target.family}.binary", fromlist=["default_config"])
    cfg = fam.default_config(target, 64)
    if t.name == "riscv64":
        cfg = cfg.replace(lanes=1)
    w = np.random.default_rng(0).integers(0, 2**63, (N, K // 64), dtype=np.uint64)
    kern = schedule_dense(LowbitDenseWorkload(M, K, N, 64), cfg.replace(parallel="none"), w, (), "bdense")
    ex = tvm.compile(tvm.IRModule({"main": kern.func}), target=tvm.target.Target(t.tvm_target))
    return ex.mod.inspect_source("s")


def tvm_asm(t: Triple) -> str:
    import tvm
    from tvm import te, topi

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from kernels import _schedule_peer

    x = te.placeholder((M, K), "int32", name="x")
    wpk = te.placeholder((N, 1, K // 32), "uint32", name="wpk")
    out = topi.nn.bitserial_dense(x, wpk, 1, 1, pack_dtype="uint32", out_dtype="int32", unipolar=True)
    mod = _schedule_peer([x, wpk, out])
    return tvm.compile(mod, target=tvm.target.Target(t.tvm_target)).mod.inspect_source("s")


# -- the inner loop -------------------------------------------------------------------------------

_LABEL = re.compile(r"^(\.?L\w+|\.LBB\d+_\d+):")
_BRANCH_TARGET = re.compile(r"\s(\.LBB\d+_\d+)\s*$")


def _is_instruction(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith((".", "#", "//", "@", ";")) and not _LABEL.match(s)


def inner_popcount_loop(asm: str, popcount) -> Optional[List[str]]:
    """Instructions of the smallest loop (label ... backward branch to it) containing a popcount."""
    lines = [ln.split("//")[0].split("@")[0].rstrip() for ln in asm.splitlines()]
    labels = {}
    for i, ln in enumerate(lines):
        m = _LABEL.match(ln.strip())
        if m:
            labels[m.group(1)] = i
    best = None
    for j, ln in enumerate(lines):
        if not _is_instruction(ln):
            continue
        m = _BRANCH_TARGET.search(ln)
        if not m or m.group(1) not in labels or labels[m.group(1)] >= j:
            continue
        body = [x.strip() for x in lines[labels[m.group(1)]:j + 1] if _is_instruction(x)]
        if any(re.search(rx, b) for b in body for rx, _ in popcount) and (best is None or len(body) < len(best)):
            best = body
    return best


def popcount_bits(body: List[str], popcount) -> int:
    return sum(bits for b in body for rx, bits in popcount if re.search(rx, b))


def mca_cycles(body: List[str], t: Triple, iterations: int = 200) -> Optional[float]:
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        f.write("\n".join(body) + "\n")
        path = f.name
    try:
        r = subprocess.run(["llvm-mca", f"-mtriple={t.mca_triple}", f"-mcpu={t.mca_cpu}",
                            f"-iterations={iterations}", path], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(path)
    m = re.search(r"Total Cycles:\s+(\d+)", r.stdout)
    if not m:
        sys.stderr.write(f"llvm-mca failed for {t.name}: {r.stderr.strip()[:300]}\n")
        return None
    return int(m.group(1)) / iterations


def row(t: Triple, asm: str, pops_per_mac: int):
    body = inner_popcount_loop(asm, t.popcount)
    if body is None:
        return None
    macs = popcount_bits(body, t.popcount) / pops_per_mac
    cycles = mca_cycles(body, t)
    return len(body), macs, cycles


def binary_table() -> None:
    print(f"binary dense M{M} K{K} N{N}, innermost popcount loop, llvm-mca (Debian LLVM)")
    print(f"{'target':12s} {'cpu':14s} | {'ours: insns':>11s} {'MAC/it':>7s} {'insn/MAC':>9s} {'cyc/MAC':>8s} | "
          f"{'TVM: insns':>10s} {'MAC/it':>7s} {'insn/MAC':>9s} {'cyc/MAC':>8s} | {'x cyc':>6s}")
    for t in _triples():
        cells = []
        for asm_fn, per in ((ours_asm, 1), (tvm_asm, 2)):
            try:
                cells.append(row(t, asm_fn(t), per))
            except Exception as e:  # a peer that does not build for this triple is reported, not hidden
                sys.stderr.write(f"{t.name}: {asm_fn.__name__} failed: {type(e).__name__}: {str(e)[:200]}\n")
                cells.append(None)
        out = f"{t.name:12s} {t.tvm_target['mcpu'] + ('' if t.mca_cpu == t.tvm_target['mcpu'] else '/' + t.mca_cpu[7:]):14s} |"
        for c in cells:
            if c is None:
                out += f" {'n/a':>11s} {'':>7s} {'':>9s} {'':>8s} |"
            else:
                n, macs, cyc = c
                cyc_s = f"{cyc / macs:8.4f}" if cyc else f"{'n/a':>8s}"
                out += f" {n:11d} {macs:7.0f} {n / macs:9.4f} {cyc_s} |"
        ratio = "n/a"
        if all(c is not None and c[2] for c in cells):
            ratio = f"{(cells[1][2] / cells[1][1]) / (cells[0][2] / cells[0][1]):6.2f}"
        print(out + f" {ratio:>6s}")


# -- int8 conv ------------------------------------------------------------------------------------

I8_C, I8_H, I8_W, I8_O = 64, 14, 14, 64

#: multiply-accumulate instructions on int8 data (widened) and the MACs each does
I8_MACS = ((r"\bsdot\s+v\d+\.4s", 16), (r"\bsmlal2?\s+v\d+\.4s", 4), (r"\bmla\s+v\d+\.4s", 4),
           (r"\bvmlal\.s16\s+q", 4), (r"\bvmla\.i32\s+q", 4), (r"\bvmla\.i32\s+d", 2))


def _int8_triples() -> List[Triple]:
    """(qcompiler target, llvm-mca model); the kernels are built with the qcompiler target's own TVM
    target (``tvm_target`` unused). rpi3-armv7 is costed on the 32-bit Cortex-A57 model (see above)."""
    return [Triple("rpi5", "aarch64-linux-gnu", "cortex-a76", {}, I8_MACS),
            Triple("rpi4", "aarch64-linux-gnu", "cortex-a72", {}, I8_MACS),
            Triple("aarch64", "aarch64-linux-gnu", "cortex-a53", {}, I8_MACS),
            Triple("rpi3-armv7", "armv7a-linux-gnueabihf", "cortex-a57", {}, I8_MACS)]


def int8_workload():
    from qcompiler.codegen.lower import workload_of
    from qcompiler.ir import Graph, Node, Value

    g = Graph("int8conv")
    g.add_value(Value("x", (1, I8_C, I8_H, I8_W), "uint8"))
    g.inputs.append("x")
    g.add_const("w", np.random.default_rng(0).integers(-128, 128, (I8_O, I8_C, 3, 3)).astype(np.int8))
    g.add_value(Value("y", (1, I8_O, I8_H, I8_W), "int32"))
    g.outputs.append("y")
    g.add_node(Node("QConv2d", "conv", ["x", "w"], ["y"],
                    {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1), "groups": 1,
                     "x_zero_point": 128, "w_zero_point": 0, "out": "int32"}))
    return workload_of(g, g.nodes[0])


def int8_asm(t: Triple, kind: str, override: Optional[dict] = None, wl=None) -> Tuple[str, dict]:
    """Assembly of the ``kind`` kernel (arm implementation, 1 thread) for ``t`` on ``wl`` (default: the
    int8 conv), and its knobs."""
    import tvm
    from tvm import te

    from qcompiler.schedules import select  # noqa: F401  registers the ARM int8 kernels
    from qcompiler.schedules.impls import get_impl
    from qcompiler.targets import get_target

    target = get_target(t.name)
    wl = int8_workload() if wl is None else wl
    impl = get_impl(kind, "arm")
    cfg = dict(impl.config_for(wl, target), **(override or {}))
    cfg["parallel"] = type(cfg["parallel"])(0)
    stages = impl.compute(wl, impl.plan(wl, cfg), cfg)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func(stages.args)}))
    sch.work_on("main")
    impl.schedule(sch, stages, wl, target, cfg)
    return tvm.compile(sch.mod, target=target.tvm_target()).mod.inspect_source("s"), cfg


def int8_row(t: Triple, kind: str, override: Optional[dict] = None):
    """(insns, MACs, cycles per iteration of the innermost MAC loop, knobs) or None."""
    asm, cfg = int8_asm(t, kind, override)
    c = row(t, asm, 1)
    return None if c is None else c + (cfg,)


def int8_table() -> None:
    print(f"int8 conv3x3 {I8_C}x{I8_H}x{I8_W}->{I8_O}, innermost multiply-accumulate loop, llvm-mca (Debian LLVM)")
    print(f"{'target':11s} {'cpu':10s} | {'ours: isa':>9s} {'tile':>5s} {'insns':>5s} {'MAC/it':>6s} {'insn/MAC':>8s} "
          f"{'cyc/MAC':>7s} | {'generic: insns':>14s} {'MAC/it':>6s} {'insn/MAC':>8s} {'cyc/MAC':>7s} | "
          f"{'x insn':>6s} {'x cyc':>6s}")
    for t in _int8_triples():
        cells = []
        for kind in ("qconv2d_dot", "qconv2d_nchw_ocvec"):
            try:
                cells.append(int8_row(t, kind))
            except Exception as e:  # reported, not hidden
                sys.stderr.write(f"{t.name}: {kind} failed: {type(e).__name__}: {str(e)[:200]}\n")
                cells.append(None)
        out = f"{t.name:11s} {t.mca_cpu:10s} |"
        c = cells[0]
        if c is None:
            out += f" {'n/a':>9s} {'':>5s} {'':>5s} {'':>6s} {'':>8s} {'':>7s} |"
        else:
            n, macs, cyc, cfg = c
            tile = f"{cfg['tile_p']}x{cfg['vectors']}"
            cyc_s = f"{cyc / macs:7.4f}" if cyc else f"{'n/a':>7s}"
            out += f" {cfg['isa']:>9s} {tile:>5s} {n:5d} {macs:6.0f} {n / macs:8.4f} {cyc_s} |"
        g = cells[1]
        if g is None:
            out += f" {'n/a':>14s} {'':>6s} {'':>8s} {'':>7s} |"
        else:
            n, macs, cyc, _ = g
            cyc_s = f"{cyc / macs:7.4f}" if cyc else f"{'n/a':>7s}"
            out += f" {n:14d} {macs:6.0f} {n / macs:8.4f} {cyc_s} |"
        if c is not None and g is not None:
            out += f" {(g[0] / g[1]) / (c[0] / c[1]):6.2f}"
            out += f" {(g[2] / g[1]) / (c[2] / c[1]):6.2f}" if c[2] and g[2] else f" {'n/a':>6s}"
        print(out)


# -- int8 depthwise -------------------------------------------------------------------------------

DW_C, DW_H, DW_W = 144, 56, 56

#: the depthwise loops start each output chunk with a plain multiply (first tap): MACs too
DW_MACS = I8_MACS + ((r"\bsmull2?\s+v\d+\.4s", 4), (r"\bmul\s+v\d+\.4s", 4), (r"\bvmull\.s16\s+q", 4),
                     (r"\bvmul\.i32\s+q", 4))


def dw_workload(stride: int = 1):
    from qcompiler.codegen.lower import workload_of
    from qcompiler.ir import Graph, Node, Value

    g = Graph("int8dw")
    g.add_value(Value("x", (1, DW_C, DW_H, DW_W), "uint8"))
    g.inputs.append("x")
    g.add_const("w", np.random.default_rng(0).integers(-128, 128, (DW_C, 1, 3, 3)).astype(np.int8))
    oh, ow = (DW_H - 1) // stride + 1, (DW_W - 1) // stride + 1
    g.add_value(Value("y", (1, DW_C, oh, ow), "int32"))
    g.outputs.append("y")
    g.add_node(Node("QConv2d", "dw", ["x", "w"], ["y"],
                    {"strides": (stride, stride), "pads": (1, 1, 1, 1), "dilations": (1, 1), "groups": DW_C,
                     "x_zero_point": 128, "w_zero_point": 0, "out": "int32"}))
    return workload_of(g, g.nodes[0])


def dw_row(t: Triple, kind: str, stride: int, override: Optional[dict] = None):
    """(insns, MACs, cycles per iteration of the innermost MAC loop, knobs) or None."""
    asm, cfg = int8_asm(t, kind, override, dw_workload(stride))
    tm = Triple(t.name, t.mca_triple, t.mca_cpu, t.tvm_target, DW_MACS)
    c = row(tm, asm, 1)
    return None if c is None else c + (cfg,)


def dw_table() -> None:
    print(f"\nint8 depthwise 3x3 {DW_C}x{DW_H}x{DW_W} pad 1 (uint8, int32 out), innermost multiply-accumulate "
          f"loop, llvm-mca: ours = qdepthwise_rows (schedules/arm/int8_depthwise.py defaults), generic = "
          f"qdepthwise_conv2d_nchw")
    print(f"{'target':11s} {'cpu':10s} {'s':>1s} | {'ours: mul':>12s} {'LxU':>4s} {'insns':>5s} {'MAC/it':>6s} "
          f"{'cyc/MAC':>7s} | {'generic: insns':>14s} {'MAC/it':>6s} {'cyc/MAC':>7s} | {'x cyc':>6s}")
    for t in _int8_triples():
        for stride in (1, 2):
            cells = []
            for kind in ("qdepthwise_rows", "qdepthwise_conv2d_nchw"):
                try:
                    cells.append(dw_row(t, kind, stride))
                except Exception as e:  # reported, not hidden
                    sys.stderr.write(f"{t.name}: {kind} failed: {type(e).__name__}: {str(e)[:200]}\n")
                    cells.append(None)
            out = f"{t.name:11s} {t.mca_cpu:10s} {stride:1d} |"
            c, g = cells
            if c is None:
                out += f" {'n/a':>12s} {'':>4s} {'':>5s} {'':>6s} {'':>7s} |"
            else:
                n, macs, cyc, cfg = c
                mul = cfg["mull"].rsplit(".", 1)[-1] if cfg.get("mull") else "sext"
                cyc_s = f"{cyc / macs:7.4f}" if cyc else f"{'n/a':>7s}"
                tile = f"{cfg['lanes']}x{cfg.get('chunks', 1)}"
                out += f" {mul:>12s} {tile:>4s} {n:5d} {macs:6.0f} {cyc_s} |"
            if g is None:
                out += f" {'n/a':>14s} {'':>6s} {'':>7s} |"
            else:
                n, macs, cyc, _ = g
                cyc_s = f"{cyc / macs:7.4f}" if cyc else f"{'n/a':>7s}"
                out += f" {n:14d} {macs:6.0f} {cyc_s} |"
            if c is not None and g is not None and c[2] and g[2]:
                out += f" {(g[2] / g[1]) / (c[2] / c[1]):6.2f}"
            print(out)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    unknown = [a for a in argv if a not in ("--binary", "--int8")]
    if unknown:
        sys.stderr.write(f"unknown arguments {unknown}; use --binary and/or --int8 (default: both)\n")
        return 2
    if "--int8" not in argv or "--binary" in argv:
        binary_table()
    if "--binary" not in argv or "--int8" in argv:
        if "--int8" not in argv:
            print()
        int8_table()
        dw_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
