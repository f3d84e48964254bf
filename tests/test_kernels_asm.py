"""The binary kernels compile for every target family and their assembly shows the intended popcount."""

import numpy as np
import pytest

from qcompiler.ref.ops.bits import pack_weight_sign
from qcompiler.schedules import popcount
from qcompiler.schedules.arm import binary as arm_binary
from qcompiler.schedules.compute_lowbit import ConvGeometry, LowbitConvWorkload, LowbitDenseWorkload
from qcompiler.schedules.riscv import binary as riscv_binary
from qcompiler.schedules.x86 import binary as x86_binary
from qcompiler.targets import get_target

tvm = pytest.importorskip("tvm")

FAMILY = {"x86": x86_binary, "arm": arm_binary, "riscv": riscv_binary}
TARGETS = ["x86-avx512", "x86-avx2", "rpi4", "rpi3-armv7", "riscv64", "riscv64-rvv"]


def asm_of(kern, target) -> str:
    ex = tvm.compile(tvm.IRModule({"main": kern.func}), target=target.tvm_target())
    return ex.mod.inspect_source("s")


@pytest.mark.parametrize("name", TARGETS)
def test_binary_conv_asm(name):
    target = get_target(name)
    rng = np.random.default_rng(0)
    geom = ConvGeometry(1, 128, 6, 6, 32, 3, 3, (1, 1), (1, 1, 1, 1))
    wl = LowbitConvWorkload(geom, 64)
    w = pack_weight_sign(np.where(rng.random((32, 128, 3, 3)) < 0.5, -1.0, 1.0), 64)
    asm = asm_of(FAMILY[target.family].build_conv2d(wl, target, weights=w), target)
    for mnemonic in popcount.expected_popcount_asm(target):
        assert mnemonic in asm, f"{name}: {mnemonic!r} not in the binary conv's assembly"
    assert "__popcount" not in asm, f"{name}: popcount became a library call"
    if name == "x86-avx512":
        assert "zmm" in asm


@pytest.mark.parametrize("name", ["x86-avx512", "rpi4", "rpi3-armv7", "riscv64-rvv"])
def test_binary_dense_asm(name):
    target = get_target(name)
    wl = LowbitDenseWorkload(4, 512, 64, 64)
    w = np.random.default_rng(1).integers(0, 2**63, (64, 8), dtype=np.uint64)
    asm = asm_of(FAMILY[target.family].build_dense(wl, target, weights=w), target)
    for mnemonic in popcount.expected_popcount_asm(target):
        assert mnemonic in asm, f"{name}: {mnemonic!r} not in the binary dense's assembly"
