"""The C runtime shim (qcompiler/runtime/shim.c): thread pool, barrier, errors, workspaces, CRC.

A small C driver calls the shim exactly as TVM-generated kernels do (through the
``__TVMBackend*`` function-pointer variables) and checks the results; it runs natively and, when
the cross toolchain and qemu are installed, on aarch64 under qemu-user. The shim must also compile
warning-free with every cross compiler qcompiler targets.

The pool's failure modes are hangs, so every driver runs as a subprocess with a timeout: a
deadlock fails the test instead of stalling CI. Sections of the driver (its first argument):
``basic`` (launch/barrier/errors/nesting), ``stress`` (pools created, launched at once, and
destroyed in a loop by several threads at a time; also run under ThreadSanitizer when gcc has it),
``fork`` (a pool inherited through fork() neither hangs nor is waited on), ``signals``
(workers leave asynchronous signals to the application's threads).
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
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "qc_runtime.h"

typedef struct { void* sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
extern int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void*, int);
extern int (*__TVMBackendParallelBarrier)(int, TVMParallelGroupEnv*);
extern void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);
extern int (*__TVMBackendFreeWorkspace)(int, int, void*);
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n);

#define CHECK(c) do { if (!(c)) { printf("FAIL line %d: %s\n", __LINE__, #c); fflush(stdout); return 1; } } while (0)

typedef struct { int hits[64]; int seen_num_task; volatile int counter; int after[64]; int nested_ok; } Job;

static int count_task(int t, TVMParallelGroupEnv* env, void* p) {
  Job* j = (Job*)p;
  __atomic_add_fetch(&j->hits[t], 1, __ATOMIC_SEQ_CST);
  __atomic_store_n(&j->seen_num_task, env->num_task, __ATOMIC_RELAXED);   /* every task writes it */
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

/* A task fails before the barrier that the others wait at: they must give up, not wait forever. */
static int broken_barrier_task(int t, TVMParallelGroupEnv* env, void* p) {
  Job* j = (Job*)p;
  if (t == 1) return -1;
  if (__TVMBackendParallelBarrier(t, env) == 0) __atomic_add_fetch(&j->counter, 1, __ATOMIC_SEQ_CST);
  return 0;
}

static int basic(void) {
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
  {   /* a failing task abandons the barrier; the pool stays usable */
    qc_pool* pool;
    qc_pool* prev;
    Job job;
    CHECK(qc_rt_pool_create(3, &pool) == 0);
    prev = qc_rt_enter(pool);
    for (i = 0; i < 20; ++i) {
      memset(&job, 0, sizeof job);
      CHECK(__TVMBackendParallelLaunch(broken_barrier_task, &job, 3) != 0);
      CHECK(job.counter == 0);
      memset(&job, 0, sizeof job);
      CHECK(__TVMBackendParallelLaunch(barrier_task, &job, 3) == 0);
      CHECK(job.after[0] == 3 && job.after[1] == 3 && job.after[2] == 3);
    }
    qc_rt_leave(prev);
    qc_rt_pool_destroy(pool);
  }
  return 0;
}

/* ---- stress: create, launch at once, destroy; several user threads, each with its own pool ---- */
static void* stress_user(void* arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  int iter;
  for (iter = 0; iter < 150; ++iter) {
    qc_pool* pool;
    qc_pool* prev;
    int threads = 1 + (int)(rand_r(&seed) % 4), r, runs = (int)(rand_r(&seed) % 20);
    if (qc_rt_pool_create(threads, &pool) != 0) return (void*)"pool create failed";
    prev = qc_rt_enter(pool);
    for (r = 0; r < runs; ++r) {        /* r == 0: a launch right after create (workers may not run yet) */
      Job job;
      int n = (int)(rand_r(&seed) % 9), expect = n ? n : threads, t;
      memset(&job, 0, sizeof job);
      if (rand_r(&seed) % 4 == 0) {
        if (__TVMBackendParallelLaunch(barrier_task, &job, 0) != 0) return (void*)"barrier launch failed";
        for (t = 0; t < threads; ++t) if (job.after[t] != threads) return (void*)"barrier let a task through early";
        continue;
      }
      if (__TVMBackendParallelLaunch(count_task, &job, n) != 0) return (void*)"launch failed";
      for (t = 0; t < 64; ++t) if (job.hits[t] != (t < expect ? 1 : 0)) return (void*)"a task ran twice or not at all";
    }
    qc_rt_leave(prev);
    qc_rt_pool_destroy(pool);          /* sometimes before its workers ever ran */
  }
  return NULL;
}

static int stress(void) {
  pthread_t users[3];
  void* result;
  int i;
  for (i = 0; i < 3; ++i) CHECK(pthread_create(&users[i], NULL, stress_user, (void*)(uintptr_t)(i + 1)) == 0);
  for (i = 0; i < 3; ++i) {
    CHECK(pthread_join(users[i], &result) == 0);
    if (result) { printf("FAIL stress: %s\n", (const char*)result); return 1; }
  }
  return 0;
}

/* ---- fork: the child has no workers; nothing may wait for them ---- */
static int fork_child(qc_pool* pool, int renew) {
  Job job;
  int t;
  memset(&job, 0, sizeof job);
  if (!renew) {          /* launching on the inherited pool fails clearly; destroying it returns */
    qc_rt_clear_error();
    CHECK(qc_rt_pool_inherited(pool));
    CHECK(__TVMBackendParallelLaunch(count_task, &job, 0) != 0);
    CHECK(strstr(qc_rt_last_error(), "fork") != NULL);
    qc_rt_pool_destroy(pool);
    return 0;
  }
  CHECK(qc_rt_pool_renew_after_fork(&pool) == 0 && !qc_rt_pool_inherited(pool));
  CHECK(qc_rt_pool_num_threads(pool) == 3);
  qc_rt_enter(pool);
  CHECK(__TVMBackendParallelLaunch(count_task, &job, 0) == 0);
  for (t = 0; t < 3; ++t) CHECK(job.hits[t] == 1);
  qc_rt_pool_destroy(pool);
  return 0;
}

static int fork_test(void) {
  qc_pool* pool;
  qc_pool* same;
  Job job;
  int renew, status;
  CHECK(qc_rt_pool_create(3, &pool) == 0);
  same = pool;
  CHECK(qc_rt_pool_renew_after_fork(&same) == 0 && same == pool);   /* not inherited: kept */
  qc_rt_enter(pool);
  memset(&job, 0, sizeof job);
  CHECK(__TVMBackendParallelLaunch(count_task, &job, 0) == 0);
  for (renew = 0; renew <= 1; ++renew) {
    pid_t pid;
    fflush(stdout);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) _exit(fork_child(pool, renew));
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  memset(&job, 0, sizeof job);                        /* the parent's pool is unaffected */
  CHECK(__TVMBackendParallelLaunch(count_task, &job, 0) == 0 && job.hits[2] == 1);
  qc_rt_leave(NULL);
  qc_rt_pool_destroy(pool);
  return 0;
}

/* ---- signals: workers block asynchronous signals, not faults ---- */
static int mask_task(int t, TVMParallelGroupEnv* env, void* p) {
  int* masks = (int*)p;
  sigset_t set;
  (void)env;
  pthread_sigmask(SIG_BLOCK, NULL, &set);
  masks[2 * t] = sigismember(&set, SIGINT) + 2 * sigismember(&set, SIGCHLD);
  masks[2 * t + 1] = sigismember(&set, SIGSEGV) + 2 * sigismember(&set, SIGFPE);
  return 0;
}

static int signals(void) {
  qc_pool* pool;
  int masks[4] = {-1, -1, -1, -1};
  CHECK(qc_rt_pool_create(2, &pool) == 0);
  qc_rt_enter(pool);
  CHECK(__TVMBackendParallelLaunch(mask_task, masks, 2) == 0);   /* task 0: caller, task 1: worker */
  CHECK(masks[0] == 0 && masks[1] == 0);      /* the caller's mask is untouched */
  CHECK(masks[2] == 3 && masks[3] == 0);      /* the worker: SIGINT/SIGCHLD blocked, faults not */
  qc_rt_leave(NULL);
  qc_rt_pool_destroy(pool);
  return 0;
}

int main(int argc, char** argv) {
  const char* only = argc > 1 ? argv[1] : "all";
  int all = strcmp(only, "all") == 0;
  if ((all || !strcmp(only, "basic")) && basic() != 0) return 1;
  if ((all || !strcmp(only, "stress")) && stress() != 0) return 1;
  if ((all || !strcmp(only, "fork")) && fork_test() != 0) return 1;
  if ((all || !strcmp(only, "signals")) && signals() != 0) return 1;
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


def _run(cmd, timeout):
    """Run a driver; a hang (deadlock) becomes a failure naming the section, not a stuck test run."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, cmd))} did not finish in {timeout} s: the thread pool deadlocked")


def test_shim_runs_natively(tmp_path):
    exe = _build_driver(tmp_path, shutil.which("cc") or "gcc")
    out = _run([str(exe)], timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"crc {_expected_crc()}" in out.stdout
    assert out.stdout.strip().endswith("OK")


@pytest.mark.parametrize("section", ["stress", "fork", "signals"])
def test_pool_never_hangs(tmp_path, section):
    """Regression tests for hangs: launch right after create, create/destroy churn on several
    threads at once, a pool inherited through fork() (run/destroy in the child used to wait forever
    for workers that only exist in the parent), signals. Repeated to shake out races."""
    exe = _build_driver(tmp_path, shutil.which("cc") or "gcc")
    for _ in range(3):
        out = _run([str(exe), section], timeout=60)
        assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout + out.stderr


def test_pool_has_no_data_races(tmp_path):
    """The stress and basic sections under ThreadSanitizer (skipped when gcc lacks libtsan)."""
    cc = shutil.which("gcc") or "cc"
    try:
        exe = _build_driver(tmp_path, cc, extra=["-fsanitize=thread", "-g"])
    except subprocess.CalledProcessError as e:
        pytest.skip(f"{cc} cannot build with -fsanitize=thread: {e.stderr.strip()[-200:]}")
    probe = _run([str(exe), "basic"], timeout=120)
    if "FATAL: ThreadSanitizer" in probe.stderr:      # e.g. an unsupported memory layout (ASLR)
        pytest.skip(f"ThreadSanitizer cannot run here: {probe.stderr.strip()[-200:]}")
    for section in ("basic", "stress"):
        out = probe if section == "basic" else _run([str(exe), section], timeout=120)
        assert out.returncode == 0 and "WARNING: ThreadSanitizer" not in out.stderr, out.stdout + out.stderr[-4000:]


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
    out = _run(["qemu-aarch64", str(exe)], timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"crc {_expected_crc()}" in out.stdout and out.stdout.strip().endswith("OK")
