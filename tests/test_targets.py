"""Targets as data: the registry, and every target's description checked for real.

For each target, two small TVM kernels (a vectorized binary dense with ``tirx.popcount`` and a
parallel float kernel) are compiled with ``Target.tvm_target()``, linked with the target's C
compiler against a tiny harness and a minimal runtime shim (the ABI in DESIGN.md "Facts verified"),
run under the target's emulator command (qemu-user with the board's own CPU model) or natively, and
compared with numpy. Android targets cannot run here: their objects are checked by inspection.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import numpy as np
import pytest

from qcompiler.errors import TargetError
from qcompiler.targets import Target, get_target, list_targets

tvm = pytest.importorskip("tvm")

BD_M, BD_N, BD_KW = 4, 16, 4      # binary dense: (M x 32*KW bits) . (N x 32*KW bits)^T
PF_M, PF_N = 16, 32               # parallel float kernel: y = 2x + 1
L2F_N = 16                        # int64 -> float32 (a libgcc call on armv7: checks the float ABI)

LINUX_TARGETS = [n for n in list_targets() if get_target(n).os == "linux"]
ANDROID_TARGETS = [n for n in list_targets() if get_target(n).os == "android"]

# The harness: calls the kernels through the tvm-ffi packed ABI, with the runtime symbols a TVM LLVM
# object needs defined here (a thread per parallel task, so parallel code really runs in threads).
HARNESS_C = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int32_t type_index; uint32_t pad; union { int64_t i; double f; void* p; } v; } TVMFFIAny;
typedef struct { int32_t device_type, device_id; } DLDevice;
typedef struct { uint8_t code, bits; uint16_t lanes; } DLDataType;
typedef struct { void* data; DLDevice device; int32_t ndim; DLDataType dtype; int64_t* shape;
                 int64_t* strides; uint64_t byte_offset; } DLTensor;
typedef struct { void* sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

static const char* g_err = "";
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  g_err = n > 0 ? parts[0] : kind;
}
typedef struct { FTVMParallelLambda f; void* cdata; int id; TVMParallelGroupEnv* env; int rc; } Task;
static void* task_main(void* p) { Task* t = p; t->rc = t->f(t->id, t->env, t->cdata); return NULL; }
static int parallel_launch(FTVMParallelLambda f, void* cdata, int num_task) {
  enum { MAX_TASKS = 8 };
  int n = num_task > 0 && num_task < MAX_TASKS ? num_task : 3;
  TVMParallelGroupEnv env = {NULL, n};
  pthread_t th[MAX_TASKS]; Task tasks[MAX_TASKS]; int rc = 0;
  for (int i = 0; i < n; ++i) {
    tasks[i] = (Task){f, cdata, i, &env, 0};
    if (pthread_create(&th[i], NULL, task_main, &tasks[i])) return -1;
  }
  for (int i = 0; i < n; ++i) { pthread_join(th[i], NULL); rc |= tasks[i].rc; }
  return rc;
}
static int parallel_barrier(int task_id, TVMParallelGroupEnv* penv) { (void)task_id; (void)penv; return 0; }
static void* alloc_ws(int dt, int di, uint64_t n, int c, int b) {
  (void)dt; (void)di; (void)c; (void)b; return aligned_alloc(64, (n + 63) / 64 * 64);
}
static int free_ws(int dt, int di, void* p) { (void)dt; (void)di; free(p); return 0; }
void* __TVMBackendParallelLaunch = (void*)parallel_launch;
void* __TVMBackendParallelBarrier = (void*)parallel_barrier;
void* __TVMBackendAllocWorkspace = (void*)alloc_ws;
void* __TVMBackendFreeWorkspace = (void*)free_ws;

typedef int (*PackedFn)(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_qc_bdense(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_qc_pfloat(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_qc_l2f(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);

/* TVM assumes 64-byte aligned tensor data: armv7 NEON :128 loads raise SIGBUS and AVX-512 aligned
   moves SIGSEGV on malloc's 16-byte alignment. */
static void* buffer(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64); }
static void* slurp(const char* path, size_t n) {
  void* p = buffer(n); FILE* f = fopen(path, "rb");
  if (!f || fread(p, 1, n, f) != n) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
  fclose(f); return p;
}
static void spill(const char* path, const void* p, size_t n) {
  FILE* f = fopen(path, "wb"); fwrite(p, 1, n, f); fclose(f);
}
static DLTensor tensor(void* data, int64_t* shape, uint8_t code) {
  DLTensor t = {data, {1, 0}, 2, {code, 32, 1}, shape, NULL, 0}; return t;
}
static DLTensor tensor1d(void* data, int64_t* shape, uint8_t code, uint8_t bits) {
  DLTensor t = {data, {1, 0}, 1, {code, bits, 1}, shape, NULL, 0}; return t;
}
static int call(PackedFn fn, DLTensor* ts, int n) {
  TVMFFIAny args[4], ret; memset(args, 0, sizeof args); memset(&ret, 0, sizeof ret);
  for (int i = 0; i < n; ++i) { args[i].type_index = 7; args[i].v.p = &ts[i]; }
  int rc = fn(NULL, args, n, &ret);
  if (rc) fprintf(stderr, "kernel failed (%d): %s\n", rc, g_err);
  return rc;
}
int main(void) {
  int64_t sa[2] = {BD_M, BD_KW}, sw[2] = {BD_KW, BD_N}, sc[2] = {BD_M, BD_N}, sf[2] = {PF_M, PF_N};
  DLTensor bd[3] = {tensor(slurp("a.bin", 4 * BD_M * BD_KW), sa, 1),
                    tensor(slurp("wt.bin", 4 * BD_KW * BD_N), sw, 1), tensor(buffer(4 * BD_M * BD_N), sc, 0)};
  DLTensor pf[2] = {tensor(slurp("x.bin", 4 * PF_M * PF_N), sf, 2), tensor(buffer(4 * PF_M * PF_N), sf, 2)};
  int64_t sl[1] = {L2F_N};
  DLTensor lf[2] = {tensor1d(slurp("l.bin", 8 * L2F_N), sl, 0, 64), tensor1d(buffer(4 * L2F_N), sl, 2, 32)};
  if (call(__tvm_ffi_qc_bdense, bd, 3) || call(__tvm_ffi_qc_pfloat, pf, 2) || call(__tvm_ffi_qc_l2f, lf, 2)) return 3;
  spill("c.bin", bd[2].data, 4 * BD_M * BD_N);
  spill("y.bin", pf[1].data, 4 * PF_M * PF_N);
  spill("f.bin", lf[1].data, 4 * L2F_N);
  return 0;
}
"""


def _binary_dense():
    """Binary dense over packed words, pre-transposed weights, the output row vectorized."""
    from tvm import te, tirx

    a = te.placeholder((BD_M, BD_KW), "uint32", name="A")
    wt = te.placeholder((BD_KW, BD_N), "uint32", name="Wt")

    def dot(i, j):  # K is small: the sum is written out, so the j loop stays a plain spatial loop
        acc = tirx.popcount(a[i, 0] ^ wt[0, j]).astype("int32")
        for k in range(1, BD_KW):
            acc = acc + tirx.popcount(a[i, k] ^ wt[k, j]).astype("int32")
        return acc

    c = te.compute((BD_M, BD_N), dot, name="C")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, wt, c]))
    _, j = sch.get_loops(sch.get_sblock("C"))
    _, ji = sch.split(j, [None, 4])
    sch.vectorize(ji)
    return sch.mod["main"].with_attr("global_symbol", "qc_bdense")


def _parallel_float():
    from tvm import te

    x = te.placeholder((PF_M, PF_N), "float32", name="X")
    y = te.compute((PF_M, PF_N), lambda i, j: x[i, j] * 2.0 + 1.0, name="Y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    i, j = sch.get_loops(sch.get_sblock("Y"))
    sch.parallel(i)
    _, ji = sch.split(j, [None, 4])
    sch.vectorize(ji)
    return sch.mod["main"].with_attr("global_symbol", "qc_pfloat")


def _int64_to_float():
    from tvm import te

    x = te.placeholder((L2F_N,), "int64", name="X")
    y = te.compute((L2F_N,), lambda i: x[i].astype("float32") * 0.5, name="Y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    _, ii = sch.split(sch.get_loops(sch.get_sblock("Y"))[0], [None, 4])
    sch.vectorize(ii)
    return sch.mod["main"].with_attr("global_symbol", "qc_l2f")


def _build(target: Target):
    """The test kernels compiled for ``target`` (a tvm Executable: object file and assembly)."""
    mod = tvm.IRModule({"qc_bdense": _binary_dense(), "qc_pfloat": _parallel_float(), "qc_l2f": _int64_to_float()})
    return tvm.compile(mod, target=target.tvm_target())


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 2**32, (BD_M, BD_KW), dtype=np.uint32)
    wt = rng.integers(0, 2**32, (BD_KW, BD_N), dtype=np.uint32)
    x = rng.standard_normal((PF_M, PF_N)).astype(np.float32)
    big = rng.integers(-(2**40), 2**40, L2F_N, dtype=np.int64)
    bits = np.unpackbits((a[:, :, None] ^ wt[None, :, :]).view(np.uint8).reshape(BD_M, BD_KW, BD_N, 4), axis=-1)
    return {"a": a, "wt": wt, "x": x, "c": bits.sum(axis=(1, 3)).astype(np.int32), "y": x * 2 + 1,
            "l": big, "f": big.astype(np.float32) * np.float32(0.5)}


def _run_harness(target: Target, tmp_path, inputs, emulator=None):
    ex = _build(target)
    obj = tmp_path / "kernels.o"
    ex.mod.write_to_file(str(obj))
    src = tmp_path / "harness.c"
    src.write_text(HARNESS_C)
    exe = tmp_path / "harness"
    sizes = dict(BD_M=BD_M, BD_N=BD_N, BD_KW=BD_KW, PF_M=PF_M, PF_N=PF_N, L2F_N=L2F_N)
    defs = [f"-D{k}={v}" for k, v in sizes.items()]
    cmd = [target.find_cc(), *target.cc[1:], *target.cflags, *defs, str(src), str(obj), "-o", str(exe),
           "-lpthread"]
    link = subprocess.run(cmd, capture_output=True, text=True)
    assert link.returncode == 0, f"{target.name}: link failed:\n{' '.join(cmd)}\n{link.stderr[-2000:]}"
    for key in ("a", "wt", "x", "l"):
        inputs[key].tofile(tmp_path / f"{key}.bin")
    prefix = emulator if emulator is not None else (target.find_emulator() or [])
    run = subprocess.run([*prefix, str(exe)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"{target.name}: {' '.join(prefix)} harness exited {run.returncode}: {run.stderr}"
    c = np.fromfile(tmp_path / "c.bin", np.int32).reshape(BD_M, BD_N)
    y = np.fromfile(tmp_path / "y.bin", np.float32).reshape(PF_M, PF_N)
    np.testing.assert_array_equal(c, inputs["c"], err_msg=f"{target.name}: binary dense")
    np.testing.assert_allclose(y, inputs["y"], rtol=1e-6, err_msg=f"{target.name}: parallel float kernel")
    f = np.fromfile(tmp_path / "f.bin", np.float32)
    np.testing.assert_array_equal(f, inputs["f"], err_msg=f"{target.name}: int64 -> float32 (libgcc call ABI)")
    return ex


# ---------------------------------------------------------------------------------------- registry


def test_every_target_loads_and_makes_a_tvm_target():
    names = list_targets()
    for required in ("host", "x86-avx2", "x86-avx512", "rpi3-armv7", "rpi4", "rpi5", "android-arm64",
                     "android-armv7", "riscv64", "riscv64-rvv"):
        assert required in names
    for n in names:
        t = get_target(n)
        assert t.name == n and t.family in ("x86", "arm", "riscv")
        tt = t.tvm_target()
        assert str(tt.attrs["mtriple"]) == t.mtriple
    assert not any(n.endswith("-base") for n in names), "abstract bases are not targets"


def test_unknown_and_abstract_targets_are_clear_errors():
    with pytest.raises(TargetError, match="unknown target 'rpi9'.*known targets: host"):
        get_target("rpi9")
    with pytest.raises(TargetError, match="base description, not a target"):
        get_target("arm64-base")


def test_bad_fields_are_rejected():
    t = get_target("rpi4")
    with pytest.raises(TargetError, match="float_abi"):
        dataclasses.replace(t, float_abi="softfp")
    with pytest.raises(TargetError, match="family"):
        dataclasses.replace(t, family="mips")
    with pytest.raises(TargetError, match="emulator_cpu"):
        dataclasses.replace(t, emulator=())


def test_triples_have_four_parts():
    """TVM gives LLVM the triple unnormalized; a 3-part one loses its OS and environment (on armv7
    that silently broke int64 -> float: libgcc's __floatdisf called with the VFP convention)."""
    for n in list_targets():
        assert len(get_target(n).mtriple.split("-")) == 4, n
    with pytest.raises(TargetError, match="four parts"):
        dataclasses.replace(get_target("rpi4"), mtriple="aarch64-linux-gnu")
    asm = _build(get_target("rpi3-armv7")).mod.inspect_source("s")
    assert "__aeabi_l2f" in asm and "__floatdisf" not in asm


def test_board_files_merge_onto_their_base():
    rpi4, rpi5 = get_target("rpi4"), get_target("rpi5")
    assert rpi4.cc == rpi5.cc == ("aarch64-linux-gnu-gcc",)
    assert rpi4.mcpu == "cortex-a72" and rpi5.has("dotprod") and not rpi4.has("dotprod")
    armv7 = get_target("rpi3-armv7")
    assert armv7.float_abi == "hard" and "-mfloat-abi=hard" in armv7.cflags
    assert str(armv7.tvm_target().attrs["mfloat-abi"]) == "hard"


def test_emulators_model_the_board_cpu():
    assert get_target("rpi4").emulator_command()[:3] == ("qemu-aarch64", "-cpu", "cortex-a72")
    assert get_target("aarch64").emulator_command()[:3] == ("qemu-aarch64", "-cpu", "cortex-a53")
    rv = get_target("riscv64").emulator_command()
    assert "zbb=false" in rv[2] and "v=true" not in rv[2]
    assert "v=true,vlen=128" in get_target("riscv64-rvv").emulator_command()[2]


def test_host_is_detected():
    host = get_target("host")
    assert host.runs_natively() and host.find_emulator() is None
    import llvmlite.binding as llvm

    assert host.mcpu == llvm.get_host_cpu_name()
    if host.family == "x86":
        assert ("+avx2" in host.mattr) == host.has("avx2")
        assert ("+avx512f" in host.mattr) == host.has("avx512")


def test_missing_toolchain_names_the_debian_package():
    t = dataclasses.replace(get_target("rpi4"), cc=("no-such-aarch64-gcc",))
    with pytest.raises(TargetError, match=r"apt-get install gcc-aarch64-linux-gnu"):
        t.find_cc()
    t = dataclasses.replace(get_target("riscv64"), emulator=("no-such-qemu-riscv64",))
    with pytest.raises(TargetError, match=r"apt-get install qemu-user"):
        t.find_emulator()


def test_android_cannot_run_here_and_says_why():
    for n in ANDROID_TARGETS:
        t = get_target(n)
        assert not t.links_binaries and not t.runs_natively()
        with pytest.raises(TargetError, match="NDK"):
            t.find_emulator()


def test_targets_cli_lists_everything(capsys):
    from qcompiler.cli import main

    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for n in list_targets():
        assert n in out


# ------------------------------------------------------------------- every target, built and run


def _runnable(name: str) -> Target:
    t = get_target(name)
    if shutil.which(t.cc[0]) is None:
        pytest.skip(f"{name}: {t.cc[0]} is not installed (apt-get install {t.cc_package})")
    try:
        t.find_emulator()
    except TargetError as e:
        pytest.skip(str(e))
    return t


@pytest.mark.parametrize("name", LINUX_TARGETS)
def test_kernels_run_on_target(name, tmp_path, inputs):
    _run_harness(_runnable(name), tmp_path, inputs)


def test_rvv_code_is_vlen_agnostic(tmp_path, inputs):
    """RVV code built for VLEN >= 128 must also run on wider-vector boards."""
    t = _runnable("riscv64-rvv")
    emu = [c.replace("vlen=128", "vlen=256") for c in t.find_emulator()]
    _run_harness(t, tmp_path, inputs, emulator=emu)


def test_emulated_cpu_rejects_foreign_instructions(tmp_path, inputs):
    """The board CPU models are a real check: rpi5 code (ARMv8.2) must not run on a Cortex-A72."""
    t = _runnable("rpi5")
    emu = [c.replace("cortex-a76", "cortex-a72") for c in t.find_emulator()]
    with pytest.raises(AssertionError, match="exited"):
        _run_harness(t, tmp_path, inputs, emulator=emu)


# ------------------------------------------------------------------------ assembly per target


def _mnemonics(name: str) -> set:
    asm = _build(get_target(name)).mod.inspect_source("s")
    return set(re.findall(r"^\s+([a-z][a-z0-9.]*)\s", asm, re.M))


def test_popcount_instructions_per_target():
    assert "cnt" in _mnemonics("rpi4")                        # NEON cnt v.16b
    assert "vcnt.8" in _mnemonics("rpi3-armv7")
    rvv = _mnemonics("riscv64-rvv")
    assert {"vsetivli", "vxor.vx"} <= rvv or {"vsetvli", "vxor.vv"} <= rvv, sorted(rvv)
    rv64gc = _mnemonics("riscv64")
    assert not {m for m in rv64gc if m.startswith(("cpop", "vset"))}, "rv64gc has neither Zbb nor V"
    assert "vpshufb" in _mnemonics("x86-avx2")
    assert any(m.startswith("vpopcnt") for m in _mnemonics("x86-avx512"))


# ------------------------------------------------------------------------- Android: inspection


def _readelf(path, *flags) -> str:
    exe = shutil.which("readelf") or shutil.which("llvm-readelf")
    if exe is None:
        pytest.skip("readelf is not installed (apt-get install binutils)")
    return subprocess.run([exe, *flags, str(path)], capture_output=True, text=True, check=True).stdout


def test_android_arm64_objects(tmp_path, inputs):
    t = get_target("android-arm64")
    obj = tmp_path / "k.o"
    ex = _build(t)
    ex.mod.write_to_file(str(obj))
    assert "AArch64" in _readelf(obj, "-h")
    assert "cnt" in set(re.findall(r"^\s+([a-z][a-z0-9.]*)\s", ex.mod.inspect_source("s"), re.M))
    # The kernels are libc-free: the only undefined symbol is the tvm-ffi error hook the shim defines.
    undefined = re.findall(r"UND (\S+)$", _readelf(obj, "-s", "-W"), re.M)
    assert set(undefined) <= {"TVMFFIErrorSetRaisedFromCStrParts"}, undefined
    # Same ELF ABI as aarch64 Linux: the Android objects link into a glibc harness and run correctly
    # on the ARMv8.0 baseline core (arm64-v8a promises no more).
    linux = get_target("aarch64")
    if shutil.which(linux.cc[0]) and shutil.which(linux.emulator[0]):
        ex.mod.write_to_file(str(obj))
        proxy = dataclasses.replace(t, os="linux", emulator=linux.emulator, emulator_cpu="cortex-a53")
        _run_harness(proxy, tmp_path, inputs)


def test_android_armv7_objects_use_softfp(tmp_path):
    t = get_target("android-armv7")
    obj = tmp_path / "k.o"
    ex = _build(t)
    ex.mod.write_to_file(str(obj))
    attrs = _readelf(obj, "-A")
    assert "Tag_CPU_arch: v7" in attrs and "NEON" in attrs
    # armeabi-v7a passes floats in core registers: no Tag_ABI_VFP_args (that tag means hard-float)
    assert "Tag_ABI_VFP_args" not in attrs
    assert "vcnt.8" in ex.mod.inspect_source("s")
    hard = tmp_path / "hard.o"
    _build(get_target("rpi3-armv7")).mod.write_to_file(str(hard))
    assert "Tag_ABI_VFP_args: VFP registers" in _readelf(hard, "-A")
