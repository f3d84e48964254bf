/*
 * qcompiler's C runtime shim: the interface between a generated executor and shim.c.
 *
 * TVM-generated kernels (LLVM objects using the tvm-ffi packed ABI) need a handful of symbols from
 * a runtime: an error setter, parallel launch/barrier and workspace allocation. shim.c provides
 * them without the TVM runtime, plus a persistent pthread pool per model. Plain C99 + pthreads (GNU
 * __thread and __atomic builtins, which gcc and clang support on every target qcompiler knows).
 *
 * The structs below mirror dlpack.h (DLTensor, v1.x) and tvm/ffi/c_api.h (TVMFFIAny) field for
 * field; the static checks at the bottom pin their sizes.
 */
#ifndef QC_RUNTIME_H_
#define QC_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Everything the shim defines is internal to one module's library (hidden visibility), so that two
 * qcompiler modules can live in one process or one executable without symbol clashes. */
#if defined(__GNUC__)
#define QC_INTERNAL __attribute__((visibility("hidden")))
#else
#define QC_INTERNAL
#endif

/* ---- ABI structs (layouts of DLPack and tvm-ffi) ---------------------------------------------- */
typedef struct { int32_t device_type; int32_t device_id; } qc_dldevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } qc_dldtype;
typedef struct {
  void* data;
  qc_dldevice device;
  int32_t ndim;
  qc_dldtype dtype;
  int64_t* shape;
  int64_t* strides;      /* NULL: compact row-major */
  uint64_t byte_offset;
} qc_dltensor;

typedef struct {
  int32_t type_index;    /* QC_FFI_* below */
  uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; void* v_ptr; } v;
} qc_ffi_any;

enum { QC_FFI_NONE = 0, QC_FFI_DLTENSOR_PTR = 7 };
enum { QC_DL_CPU = 1 };
enum { QC_DL_INT = 0, QC_DL_UINT = 1, QC_DL_FLOAT = 2, QC_DL_BOOL = 6 };

/* int __tvm_ffi_<symbol>(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* ret) */
typedef int (*qc_kernel_fn)(void* self, const qc_ffi_any* args, int32_t num_args, qc_ffi_any* ret);

/* Buffers handed to kernels must be aligned to this: TVM's generated code assumes 64-byte aligned
 * data pointers (llvm.assume + aligned vector loads). */
#define QC_ALIGN 64

/* ---- thread pool ----------------------------------------------------------------------------------- */
typedef struct qc_pool qc_pool;

/* A pool of num_threads threads including the caller (num_threads - 1 workers). num_threads <= 0
 * means the number of online CPUs. Returns 0, or nonzero with *out == NULL. */
QC_INTERNAL int qc_rt_pool_create(int num_threads, qc_pool** out);
/* Stops and joins the workers; in a process that inherited the pool through fork() (its workers
 * do not exist there) it only frees the memory. */
QC_INTERNAL void qc_rt_pool_destroy(qc_pool* pool);
QC_INTERNAL int qc_rt_pool_num_threads(const qc_pool* pool);
/* If *pool was created before a fork() of this process (so its workers exist only in the parent),
 * replace it with a new pool of the same size. Launches on an inherited pool fail instead of
 * waiting forever. Returns 0, or nonzero (pool unchanged) when new threads cannot be started.
 * Call it from the thread that owns the pool, before entering it. */
QC_INTERNAL int qc_rt_pool_renew_after_fork(qc_pool** pool);
/* Nonzero if the pool was created before a fork() of this process. */
QC_INTERNAL int qc_rt_pool_inherited(const qc_pool* pool);

/* Make `pool` the one TVM's parallel launches use on the calling thread, until qc_rt_leave(previous).
 * Launches outside enter/leave (or nested inside a parallel task) run serially on the caller. */
QC_INTERNAL qc_pool* qc_rt_enter(qc_pool* pool);
QC_INTERNAL void qc_rt_leave(qc_pool* previous);

/* ---- errors ---------------------------------------------------------------------------------------- */
/* The message the last failing kernel on this thread raised ("" if none); qc_rt_clear_error resets. */
QC_INTERNAL const char* qc_rt_last_error(void);
QC_INTERNAL void qc_rt_clear_error(void);

/* ---- memory and checksums -------------------------------------------------------------------------- */
QC_INTERNAL void* qc_rt_aligned_alloc(size_t nbytes);   /* QC_ALIGN-aligned, zeroed; NULL on failure */
QC_INTERNAL void qc_rt_aligned_free(void* ptr);
QC_INTERNAL uint32_t qc_rt_crc32(uint32_t crc, const void* data, size_t nbytes);  /* zlib's CRC-32 */

/* Safe bounded string helpers (always NUL-terminate). */
QC_INTERNAL void qc_rt_strcpy(char* dst, size_t cap, const char* src);
QC_INTERNAL void qc_rt_strcat(char* dst, size_t cap, const char* src);

/* ---- layout checks (compile-time) ------------------------------------------------------------------ */
typedef char qc_check_ffi_any_is_16_bytes[(sizeof(qc_ffi_any) == 16) ? 1 : -1];
typedef char qc_check_dtype_is_4_bytes[(sizeof(qc_dldtype) == 4) ? 1 : -1];

#ifdef __cplusplus
}
#endif
#endif /* QC_RUNTIME_H_ */
