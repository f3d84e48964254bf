/*
 * qcompiler's C runtime shim: what TVM-generated kernels need from a runtime, without TVM.
 *
 * A kernel object built by tvm.compile references (checked with nm on TVM 0.27):
 *   - TVMFFIErrorSetRaisedFromCStrParts  (undefined function: raise an error message)
 *   - __TVMBackendParallelLaunch / __TVMBackendParallelBarrier          (weak function-pointer
 *   - __TVMBackendAllocWorkspace / __TVMBackendFreeWorkspace             variables, NULL by default)
 * The signatures are those of tvm/runtime/c_backend_api.h and tvm/ffi/c_api.h. The strong
 * definitions below win over the kernels' weak ones at link time. All are hidden: each module's
 * library carries its own copy.
 *
 * Parallel launch semantics: task t of n runs on pool thread (t mod threads); tasks may run in any
 * order. With n <= threads every task has a thread of its own, which the barrier relies on.
 *
 * Pool synchronisation, in one place (qc_pool below): a launch publishes its job under `mu` and bumps
 * `generation`; each worker runs the job of every generation exactly once (it cannot miss one: the
 * next launch waits until all workers have finished this one) and decrements `pending`; the
 * launching thread waits for pending == 0. A failing task breaks the barrier so that no task waits
 * forever for one that has returned. Workers are started with asynchronous signals blocked (they
 * go to the application's threads) and exist only in the process that started them: after fork()
 * the child's copy of a pool is replaced (qc_rt_pool_renew_after_fork), never waited on.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L  /* posix_memalign, sysconf */
#endif
#include "qc_runtime.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- TVM backend ABI (tvm/runtime/c_backend_api.h) ----------------------------------------------- */
typedef struct {
  void* sync_handle;   /* the qc_pool running the group, NULL when run serially */
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

/* ---- errors ------------------------------------------------------------------------------------------ */
#define QC_ERR_CAP 1024
static __thread char qc_tls_error[QC_ERR_CAP];

void qc_rt_strcpy(char* dst, size_t cap, const char* src) {
  size_t n;
  if (cap == 0) return;
  n = src ? strlen(src) : 0;
  if (n >= cap) n = cap - 1;
  if (n) memcpy(dst, src, n);
  dst[n] = '\0';
}

void qc_rt_strcat(char* dst, size_t cap, const char* src) {
  size_t used = strlen(dst);
  if (used < cap) qc_rt_strcpy(dst + used, cap - used, src);
}

const char* qc_rt_last_error(void) { return qc_tls_error; }
void qc_rt_clear_error(void) { qc_tls_error[0] = '\0'; }

/* tvm/ffi/c_api.h: void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) */
QC_INTERNAL void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** message_parts,
                                                   int32_t num_parts);
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** message_parts, int32_t num_parts) {
  int32_t i;
  qc_rt_strcpy(qc_tls_error, QC_ERR_CAP, kind ? kind : "Error");
  qc_rt_strcat(qc_tls_error, QC_ERR_CAP, ": ");
  for (i = 0; i < num_parts; ++i) {
    if (message_parts && message_parts[i]) qc_rt_strcat(qc_tls_error, QC_ERR_CAP, message_parts[i]);
  }
}

/* ---- memory -------------------------------------------------------------------------------------------- */
void* qc_rt_aligned_alloc(size_t nbytes) {
  void* p = NULL;
  if (nbytes == 0) nbytes = 1;
  if (posix_memalign(&p, QC_ALIGN, nbytes) != 0) return NULL;
  memset(p, 0, nbytes);
  return p;
}

void qc_rt_aligned_free(void* ptr) { free(ptr); }

static void* qc_alloc_workspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                                int dtype_bits_hint) {
  void* p = NULL;
  (void)device_type; (void)device_id; (void)dtype_code_hint; (void)dtype_bits_hint;
  if (nbytes > (uint64_t)(size_t)-1) return NULL;
  if (posix_memalign(&p, QC_ALIGN, nbytes ? (size_t)nbytes : 1) != 0) {
    qc_rt_strcpy(qc_tls_error, QC_ERR_CAP, "MemoryError: workspace allocation failed");
    return NULL;
  }
  return p;
}

static int qc_free_workspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  free(ptr);
  return 0;
}

/* ---- CRC-32 (the zlib/PNG polynomial 0xEDB88320, reflected) --------------------------------------- */
static uint32_t qc_crc_table[256];
static pthread_once_t qc_crc_once = PTHREAD_ONCE_INIT;

static void qc_crc_init(void) {
  uint32_t n, k, c;
  for (n = 0; n < 256; ++n) {
    c = n;
    for (k = 0; k < 8; ++k) c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
    qc_crc_table[n] = c;
  }
}

uint32_t qc_rt_crc32(uint32_t crc, const void* data, size_t nbytes) {
  const uint8_t* p = (const uint8_t*)data;
  pthread_once(&qc_crc_once, qc_crc_init);
  crc = ~crc;
  while (nbytes--) crc = qc_crc_table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

/* ---- thread pool ------------------------------------------------------------------------------------ */
struct qc_pool {
  int num_threads;               /* including the caller */
  pthread_t* workers;            /* num_threads - 1 */
  int num_started;
  unsigned fork_epoch;           /* qc_fork_epoch when the workers were started */
  pthread_mutex_t mu;
  pthread_cond_t wake;           /* workers wait for a new generation */
  pthread_cond_t done;           /* the caller waits for pending == 0 */
  unsigned generation;
  int shutdown;
  /* the job of the current generation */
  FTVMParallelLambda fn;
  void* cdata;
  int num_task;
  int pending;
  int failed;
  char error[QC_ERR_CAP];
  /* barrier (reset by every launch) */
  pthread_mutex_t barrier_mu;
  pthread_cond_t barrier_cv;
  int barrier_count;
  unsigned barrier_generation;
  int barrier_broken;            /* a task failed: waiting tasks give up instead of waiting forever */
};

typedef struct { qc_pool* pool; int index; } qc_worker_arg;

static __thread qc_pool* qc_tls_pool;       /* pool that launches on this thread use */
static __thread int qc_tls_in_task;         /* nonzero inside a parallel task: nested launches run serially */

/* Run this thread's share of the current job: tasks index, index + T, index + 2T, ... */
static void qc_pool_run_share(qc_pool* pool, int index, FTVMParallelLambda fn, void* cdata, int num_task) {
  TVMParallelGroupEnv env;
  int t;
  env.sync_handle = pool;
  env.num_task = num_task;
  qc_tls_in_task = 1;
  for (t = index; t < num_task; t += pool->num_threads) {
    qc_tls_error[0] = '\0';      /* a message left by an earlier failure on this thread is not this one's */
    if (fn(t, &env, cdata) != 0) {
      pthread_mutex_lock(&pool->mu);
      if (!pool->failed) {
        pool->failed = 1;
        qc_rt_strcpy(pool->error, QC_ERR_CAP, qc_tls_error[0] ? qc_tls_error : "parallel task failed");
      }
      pthread_mutex_unlock(&pool->mu);
      /* tasks waiting at a barrier for this one would wait forever */
      pthread_mutex_lock(&pool->barrier_mu);
      pool->barrier_broken = 1;
      pthread_cond_broadcast(&pool->barrier_cv);
      pthread_mutex_unlock(&pool->barrier_mu);
    }
  }
  qc_tls_in_task = 0;
}

/* Waiting is plain mutex/condition-variable sleeping, no spinning. Spinning (even when it yields
 * the CPU) made a 2-thread ResNet-18 run 12x slower (168 ms vs 14 ms) when other processes kept the
 * cores busy: a spinning or yielding thread loses the wake-up preference the scheduler gives a
 * sleeper, so every parallel loop waited a full time slice; unloaded, spinning gained nothing
 * measurable. All pool state below is read and written under `mu`. */
static void* qc_worker_main(void* raw) {
  qc_worker_arg* arg = (qc_worker_arg*)raw;
  qc_pool* pool = arg->pool;
  int index = arg->index;
  /* The generation at creation (a new pool starts at 0), not the one this thread first sees: a
   * launch may already have bumped it, and that job is this thread's to run. */
  unsigned seen = 0;
  free(arg);
  pthread_mutex_lock(&pool->mu);
  for (;;) {
    FTVMParallelLambda fn;
    void* cdata;
    int num_task;
    while (pool->generation == seen && !pool->shutdown) pthread_cond_wait(&pool->wake, &pool->mu);
    if (pool->shutdown) break;   /* only when no launch is in progress (destroy follows a run) */
    seen = pool->generation;
    fn = pool->fn;
    cdata = pool->cdata;
    num_task = pool->num_task;
    pthread_mutex_unlock(&pool->mu);
    qc_pool_run_share(pool, index, fn, cdata, num_task);
    pthread_mutex_lock(&pool->mu);
    if (--pool->pending == 0) pthread_cond_signal(&pool->done);
  }
  pthread_mutex_unlock(&pool->mu);
  return NULL;
}

static int qc_online_cpus(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

/* fork(): a child process has only the thread that forked, so the workers of every pool it inherited
 * are gone (and a pool lock may have been copied while held). The child handler bumps the epoch;
 * a pool whose epoch is older is dead here (see qc_rt_pool_renew_after_fork). */
static unsigned qc_fork_epoch;
static pthread_once_t qc_atfork_once = PTHREAD_ONCE_INIT;

static void qc_on_fork_child(void) { __atomic_add_fetch(&qc_fork_epoch, 1, __ATOMIC_RELAXED); }
static void qc_register_atfork(void) { pthread_atfork(NULL, NULL, qc_on_fork_child); }

int qc_rt_pool_inherited(const qc_pool* pool) {
  return pool && pool->fork_epoch != __atomic_load_n(&qc_fork_epoch, __ATOMIC_RELAXED);
}

/* Start the workers with asynchronous signals blocked, so that signals (SIGINT, SIGCHLD, ...) reach
 * the application's own threads. Faults stay unblocked: a crash in a kernel must still be reported. */
static int qc_pool_start_workers(qc_pool* pool) {
  static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
  sigset_t blocked, previous;
  size_t k;
  int i, rc = 0;
  sigfillset(&blocked);
  for (k = 0; k < sizeof faults / sizeof faults[0]; ++k) sigdelset(&blocked, faults[k]);
  pthread_sigmask(SIG_SETMASK, &blocked, &previous);
  for (i = 1; i < pool->num_threads && rc == 0; ++i) {
    qc_worker_arg* arg = (qc_worker_arg*)malloc(sizeof(qc_worker_arg));
    if (!arg) { rc = 1; break; }
    arg->pool = pool;
    arg->index = i;
    if (pthread_create(&pool->workers[i - 1], NULL, qc_worker_main, arg) != 0) {
      free(arg);
      rc = 1;
      break;
    }
    pool->num_started++;
  }
  pthread_sigmask(SIG_SETMASK, &previous, NULL);
  return rc;
}

int qc_rt_pool_create(int num_threads, qc_pool** out) {
  qc_pool* pool;
  *out = NULL;
  pthread_once(&qc_atfork_once, qc_register_atfork);
  if (num_threads <= 0) num_threads = qc_online_cpus();
  if (num_threads > 1024) num_threads = 1024;
  pool = (qc_pool*)calloc(1, sizeof(qc_pool));
  if (!pool) return 1;
  pool->num_threads = num_threads;
  pool->fork_epoch = __atomic_load_n(&qc_fork_epoch, __ATOMIC_RELAXED);
  pthread_mutex_init(&pool->mu, NULL);
  pthread_cond_init(&pool->wake, NULL);
  pthread_cond_init(&pool->done, NULL);
  pthread_mutex_init(&pool->barrier_mu, NULL);
  pthread_cond_init(&pool->barrier_cv, NULL);
  if (num_threads > 1) {
    pool->workers = (pthread_t*)calloc((size_t)(num_threads - 1), sizeof(pthread_t));
    if (!pool->workers || qc_pool_start_workers(pool) != 0) {
      qc_rt_pool_destroy(pool);
      return 1;
    }
  }
  *out = pool;
  return 0;
}

void qc_rt_pool_destroy(qc_pool* pool) {
  int i;
  if (!pool) return;
  if (qc_rt_pool_inherited(pool)) {
    /* a copy made by fork(): its workers do not exist in this process (joining them would wait
     * forever) and its locks may be held by them; only the memory is ours to free */
    free(pool->workers);
    free(pool);
    return;
  }
  pthread_mutex_lock(&pool->mu);
  pool->shutdown = 1;
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->mu);
  for (i = 0; i < pool->num_started; ++i) pthread_join(pool->workers[i], NULL);
  free(pool->workers);
  pthread_mutex_destroy(&pool->mu);
  pthread_cond_destroy(&pool->wake);
  pthread_cond_destroy(&pool->done);
  pthread_mutex_destroy(&pool->barrier_mu);
  pthread_cond_destroy(&pool->barrier_cv);
  free(pool);
}

int qc_rt_pool_renew_after_fork(qc_pool** pool) {
  qc_pool* fresh;
  if (!*pool || !qc_rt_pool_inherited(*pool)) return 0;
  if (qc_rt_pool_create((*pool)->num_threads, &fresh) != 0) return 1;
  qc_rt_pool_destroy(*pool);
  *pool = fresh;
  return 0;
}

int qc_rt_pool_num_threads(const qc_pool* pool) { return pool ? pool->num_threads : 1; }

qc_pool* qc_rt_enter(qc_pool* pool) {
  qc_pool* previous = qc_tls_pool;
  qc_tls_pool = pool;
  return previous;
}

void qc_rt_leave(qc_pool* previous) { qc_tls_pool = previous; }

static int qc_run_serial(FTVMParallelLambda fn, void* cdata, int num_task) {
  TVMParallelGroupEnv env;
  int t;
  env.sync_handle = NULL;
  env.num_task = num_task;
  for (t = 0; t < num_task; ++t) {
    if (fn(t, &env, cdata) != 0) return -1;
  }
  return 0;
}

/* int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task) */
static int qc_parallel_launch(FTVMParallelLambda fn, void* cdata, int num_task) {
  qc_pool* pool = qc_tls_pool;
  int failed;
  if (!pool || qc_tls_in_task || pool->num_threads == 1) {
    return qc_run_serial(fn, cdata, num_task > 0 ? num_task : 1);
  }
  if (qc_rt_pool_inherited(pool)) {
    qc_rt_strcpy(qc_tls_error, QC_ERR_CAP, "RuntimeError: this thread pool was inherited through fork(): its "
                 "threads do not exist in this process (qc_rt_pool_renew_after_fork replaces it)");
    return -1;
  }
  if (num_task <= 0) num_task = pool->num_threads;
  /* no task of this pool is running: nobody waits at the barrier */
  pthread_mutex_lock(&pool->barrier_mu);
  pool->barrier_count = 0;
  pool->barrier_broken = 0;
  pthread_mutex_unlock(&pool->barrier_mu);
  pthread_mutex_lock(&pool->mu);
  pool->fn = fn;
  pool->cdata = cdata;
  pool->num_task = num_task;
  pool->failed = 0;
  pool->error[0] = '\0';
  pool->pending = pool->num_threads - 1;
  pool->generation++;               /* publishes the job: every worker runs it exactly once */
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->mu);

  qc_pool_run_share(pool, 0, fn, cdata, num_task);

  pthread_mutex_lock(&pool->mu);
  while (pool->pending > 0) pthread_cond_wait(&pool->done, &pool->mu);
  failed = pool->failed;
  if (failed) qc_rt_strcpy(qc_tls_error, QC_ERR_CAP, pool->error);
  pthread_mutex_unlock(&pool->mu);
  return failed ? -1 : 0;
}

/* int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) */
static int qc_parallel_barrier(int task_id, TVMParallelGroupEnv* penv) {
  qc_pool* pool = (qc_pool*)penv->sync_handle;
  unsigned generation;
  int broken;
  (void)task_id;
  if (penv->num_task <= 1) return 0;
  if (!pool || penv->num_task > pool->num_threads) {
    /* Tasks that share a thread cannot all wait at a barrier: refuse rather than deadlock. */
    qc_rt_strcpy(qc_tls_error, QC_ERR_CAP,
                 "RuntimeError: parallel barrier with more tasks than threads (or serial execution)");
    return -1;
  }
  pthread_mutex_lock(&pool->barrier_mu);
  generation = pool->barrier_generation;
  if (!pool->barrier_broken && ++pool->barrier_count == penv->num_task) {
    pool->barrier_count = 0;
    pool->barrier_generation++;
    pthread_cond_broadcast(&pool->barrier_cv);
  } else {
    while (generation == pool->barrier_generation && !pool->barrier_broken)
      pthread_cond_wait(&pool->barrier_cv, &pool->barrier_mu);
  }
  broken = generation == pool->barrier_generation;   /* left without the barrier completing */
  pthread_mutex_unlock(&pool->barrier_mu);
  if (broken) {
    qc_rt_strcpy(qc_tls_error, QC_ERR_CAP, "RuntimeError: parallel barrier abandoned: another task failed");
    return -1;
  }
  return 0;
}

/* ---- the symbols kernels look up (strong definitions of their weak variables) ------------------ */
QC_INTERNAL int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void*, int);
QC_INTERNAL int (*__TVMBackendParallelBarrier)(int, TVMParallelGroupEnv*);
QC_INTERNAL void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);
QC_INTERNAL int (*__TVMBackendFreeWorkspace)(int, int, void*);

int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void*, int) = qc_parallel_launch;
int (*__TVMBackendParallelBarrier)(int, TVMParallelGroupEnv*) = qc_parallel_barrier;
void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = qc_alloc_workspace;
int (*__TVMBackendFreeWorkspace)(int, int, void*) = qc_free_workspace;
