"""The C runtime shim (qcompiler/runtime/shim.c): thread pool, barrier, errors, workspaces, CRC.

A small C driver calls the shim exactly as TVM-generated kernels do (through the
``__TVMBackend*`` function-pointer variables) and checks the results; it runs natively and, when
the cross toolchain and qemu are installed, on aarch64 under qemu-user. The shim must also compile
warning-free with every cross compiler qcompiler targets.
"""

import os
import shutil
import subprocess
import zlib

import pytest

RUNTIME = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "qcompiler", "runtime")
CROSS = ["aarch64-linux-gnu-gcc", "arm-linux-gnueabihf-gcc", "riscv64-linux-gnu-gcc"]
WARN = ["-std=gnu99", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC"]

DRIVER = r"""
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include "qc_runtime.h"

typedef struct { void* sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
extern int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void*, int);
extern int (*__TVMBackendParallelBarrier)(int, TVMParallelGroupEnv*);
extern void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);
extern int (*__TVMBackendFreeWorkspace)(int, int, void*);
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n);

#define CHECK(c) do { if (!(c)) { printf("FAIL line %d: %s\n", __LINE__, #c); return 1; } } while (0)

typedef struct { int hits[64]; int seen_num_task; volatile int counter; int after[64]; int nested_ok; } Job;

static int count_task(int t, TVMParallelGroupEnv* env, void* p) {
  Job* j = (Job*)p;
  __atomic_add_fetch(&j->hits[t], 1, __ATOMIC_SEQ_CST);
  j->seen_num_task = env->num_task;
  return 0;
}

static int barrier_task(int t, TVMParallelGroupEnv* env, void* p) {
  Job* j = (Job*)p;
  __atomic_add_fetch(&j->counter, 1, __ATOMIC_SEQ_CST);
  if (__TVMBackendParallelBarrier(t, env) != 0) return -1;
  j->after[t] = __atomic_load_n(&j->counter, __ATOMIC_SEQ_CST);  /* every task arrived first */
  return 0;
}

static int failing_task(int t, TVMParallelGroupEnv* env, void* p) {
  const char* parts[] = {"task ", "went ", NULL, "wrong"};
  (void)env; (void)p;
  if (t == 1) { TVMFFIErrorSetRaisedFromCStrParts("ValueError", parts, 4); return -1; }
  return 0;
}

static int inner_task(int t, TVMParallelGroupEnv* env, void* p) { (void)t; (void)env; (void)p; return 0; }
static int nesting_task(int t, TVMParallelGroupEnv* env, void* p) {
  Job* j = (Job*)p;
  (void)env;
  if (__TVMBackendParallelLaunch(inner_task, NULL, 3) == 0) __atomic_add_fetch(&j->nested_ok, 1, __ATOMIC_SEQ_CST);
  j->hits[t] = 1;
  return 0;
}

static int run_pool(int threads) {
  qc_pool* pool = NULL;
  qc_pool* prev;
  Job job;
  int t, n;
  CHECK(qc_rt_pool_create(threads, &pool) == 0 && pool != NULL);
  CHECK(qc_rt_pool_num_threads(pool) == threads);
  prev = qc_rt_enter(pool);
  for (n = 0; n <= 40; n += 7) {              /* n = 0: the pool picks one task per thread */
    int expect = n ? n : threads, rep;
    for (rep = 0; rep < 20; ++rep) {
      memset(&job, 0, sizeof job);
      CHECK(__TVMBackendParallelLaunch(count_task, &job, n) == 0);
      CHECK(job.seen_num_task == expect);
      for (t = 0; t < 64; ++t) CHECK(job.hits[t] == (t < expect ? 1 : 0));
    }
  }
  memset(&job, 0, sizeof job);
  CHECK(__TVMBackendParallelLaunch(barrier_task, &job, 0) == 0);
  for (t = 0; t < threads; ++t) CHECK(job.after[t] == threads);
  qc_rt_clear_error();
  CHECK(__TVMBackendParallelLaunch(failing_task, &job, 4) != 0);
  CHECK(strcmp(qc_rt_last_error(), "ValueError: task went wrong") == 0);
  memset(&job, 0, sizeof job);
  CHECK(__TVMBackendParallelLaunch(nesting_task, &job, 0) == 0);
  CHECK(job.nested_ok == threads);
  qc_rt_leave(prev);
  qc_rt_pool_destroy(pool);
  return 0;
}

int main(void) {
  int i;
  uint8_t data[1000];
  void* ws;
  for (i = 0; i < 1000; ++i) data[i] = (uint8_t)(i * 7 + 3);
  printf("crc %u\n", qc_rt_crc32(0, data, sizeof data));
  ws = __TVMBackendAllocWorkspace(1, 0, 1000, 2, 32);
  CHECK(ws != NULL && ((uintptr_t)ws) % QC_ALIGN == 0);
  CHECK(__TVMBackendFreeWorkspace(1, 0, ws) == 0);
  /* outside any pool: launches run serially, in order */
  {
    Job job;
    memset(&job, 0, sizeof job);
    CHECK(__TVMBackendParallelLaunch(count_task, &job, 5) == 0);
    CHECK(job.seen_num_task == 5 && job.hits[4] == 1);
  }
  for (i = 1; i <= 4; ++i) if (run_pool(i) != 0) return 1;
  {   /* two pools at once (two models), and a default-sized pool */
    qc_pool *a, *b, *c;
    CHECK(qc_rt_pool_create(2, &a) == 0 && qc_rt_pool_create(3, &b) == 0 && qc_rt_pool_create(0, &c) == 0);
    CHECK(qc_rt_pool_num_threads(c) >= 1);
    qc_rt_pool_destroy(b); qc_rt_pool_destroy(a); qc_rt_pool_destroy(c);
  }
  printf("OK\n");
  return 0;
}
"""


def _build_driver(tmp_path, cc, extra=()):
    src = tmp_path / "driver.c"
    src.write_text(DRIVER)
    exe = tmp_path / f"driver_{os.path.basename(cc)}"
    cmd = [cc] + WARN + ["-I", RUNTIME, str(src), os.path.join(RUNTIME, "shim.c"), "-o", str(exe), "-lpthread"]
    subprocess.run(cmd + list(extra), check=True, capture_output=True, text=True)
    return exe


def _expected_crc():
    data = bytes((i * 7 + 3) & 0xFF for i in range(1000))
    return zlib.crc32(data)


def test_shim_runs_natively(tmp_path):
    exe = _build_driver(tmp_path, shutil.which("cc") or "gcc")
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"crc {_expected_crc()}" in out.stdout
    assert out.stdout.strip().endswith("OK")


@pytest.mark.parametrize("cc", CROSS)
def test_shim_compiles_for_cross_targets(tmp_path, cc):
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    flags = ["-mfloat-abi=hard", "-mfpu=neon"] if cc.startswith("arm-") else []
    obj = tmp_path / "shim.o"
    subprocess.run([cc] + WARN + flags + ["-c", os.path.join(RUNTIME, "shim.c"), "-o", str(obj)], check=True,
                   capture_output=True, text=True)
    syms = subprocess.run(["nm", str(obj)], capture_output=True, text=True).stdout
    for sym in ("__TVMBackendParallelLaunch", "__TVMBackendParallelBarrier", "__TVMBackendAllocWorkspace",
                "__TVMBackendFreeWorkspace", "TVMFFIErrorSetRaisedFromCStrParts"):
        assert sym in syms


def test_shim_runs_on_aarch64_under_qemu(tmp_path):
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("aarch64 cross gcc or qemu-aarch64 not installed")
    exe = _build_driver(tmp_path, "aarch64-linux-gnu-gcc", extra=["-static"])
    out = subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"crc {_expected_crc()}" in out.stdout and out.stdout.strip().endswith("OK")
