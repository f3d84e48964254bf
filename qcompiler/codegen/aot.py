"""AOT executor: C source that runs a :class:`LoweredGraph` with a static memory plan.

``generate(lowered, name, weights_mode)`` returns the executor's C source, its public header and
the weights layout. The executor is table driven (one descriptor per tensor, one per call, one
flat argument list) so that its C stays small and compiles in well under a second even for large
networks; all per-run work is setting a few data pointers and calling the kernels in order.

The header declares the module's entry points, all prefixed ``qc_<name>_``: create/run/destroy,
``last_error``, and signature queries (names, ranks, shapes, dtypes, byte sizes of inputs and
outputs). ``run`` checks counts, NULL pointers and byte sizes and returns an error code instead of
reading out of bounds; buffers that are not 64-byte aligned are staged through aligned copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from ..errors import ModelError
from .lowered import LoweredGraph
from .memory_plan import ALIGN, MemoryPlan, align_up, plan_memory
from .weights import WeightsLayout, layout_weights

__all__ = ["AotSource", "generate", "plan_memory", "arena_size", "kernel_symbol", "DL_DTYPES"]

#: IR dtype -> DLPack (type code, bits), as TVM's kernels check them (bool is kDLBool, 8 bits)
DL_DTYPES = {
    "float16": (2, 16), "float32": (2, 32), "float64": (2, 64),
    "int8": (0, 8), "int16": (0, 16), "int32": (0, 32), "int64": (0, 64),
    "uint8": (1, 8), "uint16": (1, 16), "uint32": (1, 32), "uint64": (1, 64),
    "bool": (6, 8),
}
_STORAGE_CODES = {"arena": 0, "const": 1, "input": 2, "output": 3}

#: error codes of ``run``/``create`` (defined once, shared by every module header)
ERROR_CODES = [
    ("QC_OK", 0, "success"),
    ("QC_ERR_INVALID_ARGUMENT", 1, "NULL model/pointer or wrong number of inputs/outputs"),
    ("QC_ERR_SIZE_MISMATCH", 2, "a buffer's byte size differs from the signature"),
    ("QC_ERR_KERNEL", 3, "a kernel reported an error (see last_error)"),
    ("QC_ERR_OUT_OF_MEMORY", 4, "allocation failed"),
    ("QC_ERR_WEIGHTS", 5, "weights file missing, unreadable, corrupt or for another module"),
    ("QC_ERR_THREADS", 6, "the thread pool could not be started"),
    ("QC_ERR_BUSY", 7, "the model is running in another thread (see last_error(NULL)); nothing was done"),
]


def arena_size(lowered: LoweredGraph) -> int:
    """Bytes of the one arena the executor allocates (see ``memory_plan``)."""
    return plan_memory(lowered).arena_bytes


def kernel_symbol(symbol: str) -> str:
    """C name of a kernel's packed entry point."""
    return f"__tvm_ffi_{symbol}"


@dataclass(frozen=True)
class AotSource:
    name: str
    executor_c: str
    header: str
    plan: MemoryPlan
    weights: WeightsLayout
    weights_symbol: str
    api_symbols: Tuple[str, ...]          # the library's only exported symbols


def generate(lowered: LoweredGraph, name: str, weights_mode: str = "embedded") -> AotSource:
    """C executor + header for ``lowered``; ``weights_mode`` is ``"embedded"`` or ``"blob"``."""
    if weights_mode not in ("embedded", "blob"):
        raise ModelError(f"weights mode must be 'embedded' or 'blob', got {weights_mode!r}")
    plan = plan_memory(lowered)
    weights = layout_weights(lowered, plan)
    tables = _Tables(lowered, plan, weights)
    p = f"qc_{name}_"
    weights_symbol = f"qc_{name}_weights_data"
    header = _header(lowered, name, weights_mode, plan)
    executor = _executor(lowered, name, weights_mode, plan, weights, tables, weights_symbol)
    api = tuple(p + f for f in _API_FUNCTIONS)
    return AotSource(name, executor, header, plan, weights, weights_symbol, api)


_API_FUNCTIONS = ("create", "run", "destroy", "last_error", "num_threads", "num_inputs", "num_outputs",
                  "input_name", "input_ndim", "input_shape", "input_dtype", "input_nbytes",
                  "output_name", "output_ndim", "output_shape", "output_dtype", "output_nbytes",
                  "arena_bytes", "weights_external")


# -- tables ------------------------------------------------------------------------------------------
class _Tables:
    """Flattened descriptors: tensors (index order = ``order``), shapes, calls, call arguments."""

    def __init__(self, lowered: LoweredGraph, plan: MemoryPlan, weights: WeightsLayout):
        self.order: List[str] = list(plan.slots)
        self.index = {n: i for i, n in enumerate(self.order)}
        self.shapes: List[int] = []
        self.tensors: List[Tuple[int, int, int, int, int, int, int]] = []
        for n in self.order:
            slot = plan.slots[n]
            if slot.dtype not in DL_DTYPES:
                raise ModelError(f"value {n!r}: dtype {slot.dtype} has no DLPack code")
            code, bits = DL_DTYPES[slot.dtype]
            offset = weights.offsets[slot.root] if slot.storage == "const" else slot.offset
            self.tensors.append((_STORAGE_CODES[slot.storage], code, bits, len(slot.shape), slot.index,
                                 len(self.shapes), offset))
            self.shapes.extend(slot.shape)
        self.symbols = sorted({c.symbol for c in lowered.calls if c.kind == "kernel"})
        missing = [s for s in self.symbols if s not in lowered.objects]
        if missing:
            raise ModelError(f"lowered graph calls kernels with no object code: {missing}")
        self.calls: List[Tuple[int, int, int, int]] = []      # (kernel, first arg, n args, node name idx)
        self.args: List[int] = []
        self.node_names: List[str] = []
        for c in lowered.calls:
            if c.kind != "kernel":
                continue
            if not c.symbol:
                raise ModelError(f"node {c.node!r}: a kernel step needs a symbol")
            self.calls.append((self.symbols.index(c.symbol), len(self.args), len(c.args), len(self.node_names)))
            self.node_names.append(c.node)
            self.args.extend(self.index[a] for a in c.args)
        self.max_args = max((c[2] for c in self.calls), default=1)


# -- C text helpers ----------------------------------------------------------------------------------
def c_string(s: str) -> str:
    """A C string literal for any text (non-printable and non-ASCII bytes as octal escapes)."""
    out = []
    for b in s.encode("utf-8"):
        ch = chr(b)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 32 <= b < 127:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _rows(items: List[str], per_line: int = 8, indent: str = "  ") -> str:
    if not items:
        return ""
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return indent + (",\n" + indent).join(lines)


def _array(ctype: str, name: str, items: List[str], per_line: int = 8) -> str:
    if not items:   # C99 has no empty arrays
        items = ["0"]
    return f"static const {ctype} {name}[] = {{\n{_rows(items, per_line)}\n}};\n"


def _type_str(shape, dtype) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]"


# -- the header --------------------------------------------------------------------------------------
def _header(lowered: LoweredGraph, name: str, weights_mode: str, plan: MemoryPlan) -> str:
    g = lowered.graph
    P = f"qc_{name}_"
    guard = f"QC_{name.upper()}_H_"
    sig_lines = []
    for kind, names in (("input", g.inputs), ("output", g.outputs)):
        for i, n in enumerate(names):
            s = plan.slots[n]
            sig_lines.append(f" *   {kind} {i}: {n!r} {_type_str(s.shape, s.dtype)} ({s.nbytes} bytes)")
    codes = "\n".join(f"#define {c} {v}  /* {doc} */" for c, v, doc in ERROR_CODES)
    weights_doc = ("weights are embedded in the library: pass NULL as weights_path" if weights_mode == "embedded"
                   else "weights live in a separate file (weights.bin next to the library): pass its path")
    return f"""/*
 * {name}.h: entry points of the qcompiler module "{name}" (target {lowered.target_name}).
 * Generated by qcompiler; do not edit.
 *
 * Signature:
{chr(10).join(sig_lines)}
 * Buffers are dense row-major arrays of the dtype shown. Weights: {weights_doc}.
 *
 * Thread safety: a model (qc_{name}_t) runs for one caller thread at a time: a run that overlaps
 * another run of the same model returns QC_ERR_BUSY without touching anything (use one model per
 * thread, or a lock). Separate models are independent and may run concurrently (each has its own
 * arena and thread pool). The signature queries are pure and thread-safe. Input and output buffers
 * must not overlap. destroy must not overlap a run of the same model.
 *
 * fork(): a model created before fork() works in the child (its first run there starts new pool
 * threads) and may be destroyed there; the parent's copy is unaffected.
 *
 * Linking the static library: cc app.c lib{name}.a -lm -lpthread (armv7 with gcc: also -lgcc).
 */
#ifndef {guard}
#define {guard}

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#ifndef QC_API
#if defined(__GNUC__)
#define QC_API __attribute__((visibility("default")))
#else
#define QC_API
#endif
#endif

#ifndef QC_OK
{codes}
#endif

#define QC_{name.upper()}_NUM_INPUTS {len(g.inputs)}
#define QC_{name.upper()}_NUM_OUTPUTS {len(g.outputs)}

typedef struct qc_{name} qc_{name}_t;

/* Create a model: *out receives it (NULL on failure). weights_path: see above. num_threads <= 0
 * uses every online CPU. Returns QC_OK or an error code; qc_{name}_last_error(NULL) then says why. */
QC_API int {P}create(qc_{name}_t** out, const char* weights_path, int num_threads);

/* Run once. inputs[i] points at input_nbytes[i] bytes (must equal {P}input_nbytes(i)); outputs
 * likewise. Returns QC_OK or an error code; {P}last_error(model) then says why. */
QC_API int {P}run(qc_{name}_t* model, int n_inputs, const void* const* inputs, const size_t* input_nbytes,
                  int n_outputs, void* const* outputs, const size_t* output_nbytes);

/* The last error of this model ("" if none); with NULL, the last create failure (or QC_ERR_BUSY)
 * on this thread. */
QC_API const char* {P}last_error(const qc_{name}_t* model);
QC_API void {P}destroy(qc_{name}_t* model);
QC_API int {P}num_threads(const qc_{name}_t* model);

/* Signature queries; out-of-range indices give NULL / -1 / 0. */
QC_API int {P}num_inputs(void);
QC_API int {P}num_outputs(void);
QC_API const char* {P}input_name(int i);
QC_API int {P}input_ndim(int i);
QC_API const int64_t* {P}input_shape(int i);
QC_API const char* {P}input_dtype(int i);
QC_API size_t {P}input_nbytes(int i);
QC_API const char* {P}output_name(int i);
QC_API int {P}output_ndim(int i);
QC_API const int64_t* {P}output_shape(int i);
QC_API const char* {P}output_dtype(int i);
QC_API size_t {P}output_nbytes(int i);
QC_API size_t {P}arena_bytes(void);      /* bytes of the intermediate-tensor arena */
QC_API int {P}weights_external(void);    /* 1: create needs the weights file's path */

#ifdef __cplusplus
}}
#endif
#endif /* {guard} */
"""


# -- the executor ------------------------------------------------------------------------------------
def _executor(lowered: LoweredGraph, name: str, weights_mode: str, plan: MemoryPlan, weights: WeightsLayout,
              t: _Tables, weights_symbol: str) -> str:
    g = lowered.graph
    P = f"qc_{name}_"
    T = f"qc_{name}_t"
    io = []
    for kind, names in (("in", g.inputs), ("out", g.outputs)):
        rows = []
        staging = 0
        for n in names:
            s = plan.slots[n]
            shape_at = t.tensors[t.index[n]][5]
            rows.append(f"{{{c_string(n)}, {c_string(s.dtype)}, {len(s.shape)}, {shape_at}, {s.nbytes}u, "
                        f"{staging}u, {t.index[n]}}}")
            staging += align_up(max(s.nbytes, 1), ALIGN)
        io.append((rows, staging))
    (in_rows, in_staging), (out_rows, out_staging) = io
    copies = [f"{{{j}, {t.index[n]}}}" for j, n in plan.output_copies]

    externs = "\n".join(f"extern int {kernel_symbol(s)}(void*, const qc_ffi_any*, int32_t, qc_ffi_any*);"
                        for s in t.symbols)
    tensor_rows = [f"{{{st}, {code}, {bits}, {ndim}, {idx}, {sh}, {off}u}}" for st, code, bits, ndim, idx, sh, off
                   in t.tensors]
    if weights_mode == "embedded" and weights.nbytes:
        weights_decl = (f"QC_INTERNAL extern const uint8_t {weights_symbol}[];\n"
                        f"static const uint8_t* qc_embedded_weights(void) {{ return {weights_symbol}; }}")
    else:
        weights_decl = "static const uint8_t* qc_embedded_weights(void) { return NULL; }"

    return f"""/* Executor of the qcompiler module "{name}" (target {lowered.target_name}). Generated; do not edit.
 * {len(t.calls)} kernel calls, {len(t.symbols)} kernels, {len(t.order)} tensors, arena {plan.arena_bytes} bytes
 * (intermediates total {plan.intermediate_bytes} bytes), weights {weights.nbytes} bytes ({weights_mode}). */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qc_runtime.h"
#include "{name}.h"

#define QC_NUM_TENSORS {len(t.order)}
#define QC_NUM_CALLS {len(t.calls)}
#define QC_NUM_INPUTS {len(g.inputs)}
#define QC_NUM_OUTPUTS {len(g.outputs)}
#define QC_NUM_COPIES {len(copies)}
#define QC_MAX_ARGS {t.max_args}
#define QC_ARENA_BYTES {plan.arena_bytes}u
#define QC_IN_STAGING_BYTES {in_staging}u
#define QC_OUT_STAGING_BYTES {out_staging}u
#define QC_WEIGHTS_BYTES {weights.nbytes}u
#define QC_WEIGHTS_CRC32 0x{weights.crc32:08X}u
#define QC_WEIGHTS_EXTERNAL {1 if weights_mode == "blob" else 0}
#define QC_ERROR_CAP 1024

enum {{ QC_ST_ARENA = 0, QC_ST_CONST = 1, QC_ST_INPUT = 2, QC_ST_OUTPUT = 3 }};

/* storage, DLPack type code, bits, ndim, input/output index, first dim in qc_shapes, byte offset */
typedef struct {{ uint8_t storage, code, bits, ndim; int32_t index; int32_t shape_at; uint64_t offset; }} qc_tensor_desc;
/* kernel, first argument in qc_call_args, number of arguments, node name */
typedef struct {{ int32_t kernel, first_arg, num_args, node; }} qc_call_desc;
/* name, dtype, ndim, first dim in qc_shapes, bytes, staging offset, tensor */
typedef struct {{ const char* name; const char* dtype; int32_t ndim; int32_t shape_at; size_t nbytes; size_t staging; int32_t tensor; }} qc_io_desc;
typedef struct {{ int32_t output, tensor; }} qc_copy_desc;

{externs}

{weights_decl}

{_array("int64_t", "qc_shapes", [str(d) for d in t.shapes], 12)}
{_array("qc_tensor_desc", "qc_tensors", tensor_rows, 3)}
{_array("qc_kernel_fn", "qc_kernels", [kernel_symbol(s) for s in t.symbols], 2)}
{_array("char* const", "qc_kernel_names", [c_string(s) for s in t.symbols], 2)}
{_array("char* const", "qc_node_names", [c_string(n) for n in t.node_names], 4)}
{_array("qc_call_desc", "qc_calls", [f"{{{a}, {b}, {c}, {d}}}" for a, b, c, d in t.calls], 4)}
{_array("int32_t", "qc_call_args", [str(a) for a in t.args], 16)}
{_array("qc_io_desc", "qc_inputs", in_rows, 1)}
{_array("qc_io_desc", "qc_outputs", out_rows, 1)}
{_array("qc_copy_desc", "qc_copies", copies, 8)}
struct qc_{name} {{
  qc_pool* pool;
  int busy;                        /* nonzero while a run is in progress (atomic) */
  uint8_t* arena;
  uint8_t* owned_weights;          /* the loaded blob, if weights are external */
  const uint8_t* weights;
  uint8_t* staging;                /* aligned copies of misaligned caller buffers */
  const void* input_ptrs[QC_NUM_INPUTS > 0 ? QC_NUM_INPUTS : 1];
  void* output_ptrs[QC_NUM_OUTPUTS > 0 ? QC_NUM_OUTPUTS : 1];
  qc_dltensor tensors[QC_NUM_TENSORS > 0 ? QC_NUM_TENSORS : 1];
  qc_ffi_any args[QC_MAX_ARGS];
  char error[QC_ERROR_CAP];
}};

static __thread char qc_create_error[QC_ERROR_CAP];

static int qc_fail(char* buf, int code, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static int qc_fail(char* buf, int code, const char* fmt, ...) {{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, QC_ERROR_CAP, fmt, ap);
  va_end(ap);
  return code;
}}

static uint32_t qc_le32(const uint8_t* p) {{
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}}

/* Read and check a weights blob (see qcompiler/codegen/weights.py for the format). */
static int qc_load_weights(const char* path, uint8_t** out) {{
  uint8_t header[64];
  uint8_t* data;
  uint64_t size;
  FILE* f;
  int extra;
  *out = NULL;
  f = fopen(path, "rb");
  if (!f) return qc_fail(qc_create_error, QC_ERR_WEIGHTS, "cannot open weights file '%s'", path);
  if (fread(header, 1, sizeof header, f) != sizeof header || memcmp(header, "QCWEIGHT", 8) != 0) {{
    fclose(f);
    return qc_fail(qc_create_error, QC_ERR_WEIGHTS, "'%s' is not a qcompiler weights file", path);
  }}
  size = (uint64_t)qc_le32(header + 16) | ((uint64_t)qc_le32(header + 20) << 32);
  if (qc_le32(header + 8) != 1u || size != (uint64_t)QC_WEIGHTS_BYTES || qc_le32(header + 12) != QC_WEIGHTS_CRC32) {{
    fclose(f);
    return qc_fail(qc_create_error, QC_ERR_WEIGHTS, "weights file '%s' belongs to another module (or another "
                   "build of it) than \\"%s\\"", path, "{name}");
  }}
  data = (uint8_t*)qc_rt_aligned_alloc((size_t)QC_WEIGHTS_BYTES);
  if (!data) {{ fclose(f); return qc_fail(qc_create_error, QC_ERR_OUT_OF_MEMORY, "out of memory for weights"); }}
  if (fread(data, 1, (size_t)QC_WEIGHTS_BYTES, f) != (size_t)QC_WEIGHTS_BYTES) {{
    fclose(f); qc_rt_aligned_free(data);
    return qc_fail(qc_create_error, QC_ERR_WEIGHTS, "weights file '%s' is truncated", path);
  }}
  extra = fgetc(f);
  fclose(f);
  if (extra != EOF || qc_rt_crc32(0, data, (size_t)QC_WEIGHTS_BYTES) != QC_WEIGHTS_CRC32) {{
    qc_rt_aligned_free(data);
    return qc_fail(qc_create_error, QC_ERR_WEIGHTS, "weights file '%s' is corrupt (size or checksum)", path);
  }}
  *out = data;
  return QC_OK;
}}

int {P}create({T}** out, const char* weights_path, int num_threads) {{
  {T}* m;
  int i, rc;
  qc_create_error[0] = '\\0';
  if (!out) return qc_fail(qc_create_error, QC_ERR_INVALID_ARGUMENT, "create: out is NULL");
  *out = NULL;
  m = ({T}*)calloc(1, sizeof({T}));
  if (!m) return qc_fail(qc_create_error, QC_ERR_OUT_OF_MEMORY, "out of memory for the model");
  if (QC_WEIGHTS_EXTERNAL) {{
    if (!weights_path) {{
      free(m);
      return qc_fail(qc_create_error, QC_ERR_WEIGHTS, "module \\"%s\\" keeps its weights in a separate file: "
                     "pass the path of its weights.bin", "{name}");
    }}
    rc = qc_load_weights(weights_path, &m->owned_weights);
    if (rc != QC_OK) {{ free(m); return rc; }}
    m->weights = m->owned_weights;
  }} else {{
    if (weights_path) {{
      free(m);
      return qc_fail(qc_create_error, QC_ERR_WEIGHTS, "module \\"%s\\" has its weights embedded: pass NULL, "
                     "not '%s'", "{name}", weights_path);
    }}
    m->weights = qc_embedded_weights();
  }}
  m->arena = (uint8_t*)qc_rt_aligned_alloc((size_t)QC_ARENA_BYTES);
  m->staging = (uint8_t*)qc_rt_aligned_alloc((size_t)(QC_IN_STAGING_BYTES + QC_OUT_STAGING_BYTES));
  if (!m->arena || !m->staging) {{
    {P}destroy(m);
    return qc_fail(qc_create_error, QC_ERR_OUT_OF_MEMORY, "out of memory for the arena (%zu bytes)",
                   (size_t)QC_ARENA_BYTES);
  }}
  if (qc_rt_pool_create(num_threads, &m->pool) != 0) {{
    {P}destroy(m);
    return qc_fail(qc_create_error, QC_ERR_THREADS, "cannot start the thread pool");
  }}
  for (i = 0; i < QC_NUM_TENSORS; ++i) {{
    const qc_tensor_desc* d = &qc_tensors[i];
    qc_dltensor* x = &m->tensors[i];
    x->device.device_type = QC_DL_CPU;
    x->device.device_id = 0;
    x->ndim = d->ndim;
    x->dtype.code = d->code;
    x->dtype.bits = d->bits;
    x->dtype.lanes = 1;
    x->shape = (int64_t*)(qc_shapes + d->shape_at);
    x->strides = NULL;
    x->byte_offset = 0;
    if (d->storage == QC_ST_ARENA) x->data = m->arena + d->offset;
    else if (d->storage == QC_ST_CONST) x->data = (void*)(m->weights + d->offset);
    else x->data = NULL;  /* bound per run */
  }}
  *out = m;
  return QC_OK;
}}

void {P}destroy({T}* m) {{
  if (!m) return;
  qc_rt_pool_destroy(m->pool);
  qc_rt_aligned_free(m->arena);
  qc_rt_aligned_free(m->staging);
  qc_rt_aligned_free(m->owned_weights);
  free(m);
}}

const char* {P}last_error(const {T}* m) {{ return m ? m->error : qc_create_error; }}
int {P}num_threads(const {T}* m) {{ return m ? qc_rt_pool_num_threads(m->pool) : -1; }}

static int qc_check_io(char* err, const char* kind, int n, int expected, const void* const* ptrs,
                       const size_t* nbytes, const qc_io_desc* desc) {{
  int i;
  if (n != expected) {{
    char text[64];
    snprintf(text, sizeof text, "%d, got %d", expected, n);
    return qc_fail(err, QC_ERR_INVALID_ARGUMENT, "expected %s %s", kind, text);
  }}
  if (expected == 0) return QC_OK;
  if (!ptrs || !nbytes) return qc_fail(err, QC_ERR_INVALID_ARGUMENT, "the %s array or its byte sizes is NULL", kind);
  for (i = 0; i < expected; ++i) {{
    if (!ptrs[i]) return qc_fail(err, QC_ERR_INVALID_ARGUMENT, "%s '%s' is NULL", kind, desc[i].name);
    if (nbytes[i] != desc[i].nbytes)
      return qc_fail(err, QC_ERR_SIZE_MISMATCH, "%s '%s' has %zu bytes, expected %zu", kind, desc[i].name,
                     nbytes[i], desc[i].nbytes);
  }}
  return QC_OK;
}}

static int qc_run_owned({T}* m, int n_inputs, const void* const* inputs, const size_t* input_nbytes,
                        int n_outputs, void* const* outputs, const size_t* output_nbytes);

int {P}run({T}* m, int n_inputs, const void* const* inputs, const size_t* input_nbytes, int n_outputs,
          void* const* outputs, const size_t* output_nbytes) {{
  int rc;
  if (!m) return QC_ERR_INVALID_ARGUMENT;
  if (qc_rt_pool_inherited(m->pool)) {{
    /* the model came through fork(): its pool's threads, and any run the parent had in progress,
     * exist only in the parent */
    __atomic_store_n(&m->busy, 0, __ATOMIC_RELAXED);
    if (qc_rt_pool_renew_after_fork(&m->pool) != 0)
      return qc_fail(m->error, QC_ERR_THREADS, "cannot start the thread pool in this (forked) "
                     "process; create the model here, or with 1 thread (which needs no pool threads)");
  }}
  if (__atomic_exchange_n(&m->busy, 1, __ATOMIC_ACQUIRE))
    return qc_fail(qc_create_error, QC_ERR_BUSY, "model \\"%s\\" is already running in another thread: a model "
                   "runs for one caller at a time; use one model per thread, or a lock", "{name}");
  rc = qc_run_owned(m, n_inputs, inputs, input_nbytes, n_outputs, outputs, output_nbytes);
  __atomic_store_n(&m->busy, 0, __ATOMIC_RELEASE);
  return rc;
}}

/* run, with the model to itself */
static int qc_run_owned({T}* m, int n_inputs, const void* const* inputs, const size_t* input_nbytes,
                        int n_outputs, void* const* outputs, const size_t* output_nbytes) {{
  int i, rc;
  qc_pool* previous;
  m->error[0] = '\\0';
  rc = qc_check_io(m->error, "inputs", n_inputs, QC_NUM_INPUTS, inputs, input_nbytes, qc_inputs);
  if (rc != QC_OK) return rc;
  rc = qc_check_io(m->error, "outputs", n_outputs, QC_NUM_OUTPUTS, (const void* const*)outputs, output_nbytes,
                   qc_outputs);
  if (rc != QC_OK) return rc;
  /* Kernels assume 64-byte aligned data: stage misaligned caller buffers through aligned copies. */
  for (i = 0; i < QC_NUM_INPUTS; ++i) {{
    const void* p = inputs[i];
    if (((uintptr_t)p) % QC_ALIGN != 0) {{
      uint8_t* s = m->staging + qc_inputs[i].staging;
      memcpy(s, p, qc_inputs[i].nbytes);
      p = s;
    }}
    m->input_ptrs[i] = p;
  }}
  for (i = 0; i < QC_NUM_OUTPUTS; ++i) {{
    void* p = outputs[i];
    if (((uintptr_t)p) % QC_ALIGN != 0) p = m->staging + QC_IN_STAGING_BYTES + qc_outputs[i].staging;
    m->output_ptrs[i] = p;
  }}
  for (i = 0; i < QC_NUM_TENSORS; ++i) {{
    const qc_tensor_desc* d = &qc_tensors[i];
    if (d->storage == QC_ST_INPUT) m->tensors[i].data = (void*)m->input_ptrs[d->index];
    else if (d->storage == QC_ST_OUTPUT) m->tensors[i].data = m->output_ptrs[d->index];
  }}
  previous = qc_rt_enter(m->pool);
  for (i = 0; i < QC_NUM_CALLS; ++i) {{
    const qc_call_desc* c = &qc_calls[i];
    qc_ffi_any ret;
    int a;
    for (a = 0; a < c->num_args; ++a) {{
      m->args[a].type_index = QC_FFI_DLTENSOR_PTR;
      m->args[a].zero_padding = 0;
      m->args[a].v.v_int64 = 0;
      m->args[a].v.v_ptr = &m->tensors[qc_call_args[c->first_arg + a]];
    }}
    memset(&ret, 0, sizeof ret);
    ret.type_index = QC_FFI_NONE;
    qc_rt_clear_error();
    if (qc_kernels[c->kernel](NULL, m->args, c->num_args, &ret) != 0) {{
      char where[512];
      snprintf(where, sizeof where, "node '%s' (kernel %s)", qc_node_names[c->node], qc_kernel_names[c->kernel]);
      qc_rt_leave(previous);
      return qc_fail(m->error, QC_ERR_KERNEL, "%s failed: %s", where, qc_rt_last_error());
    }}
  }}
  qc_rt_leave(previous);
  for (i = 0; i < QC_NUM_COPIES; ++i) {{
    const qc_copy_desc* c = &qc_copies[i];
    memcpy(m->output_ptrs[c->output], m->tensors[c->tensor].data, qc_outputs[c->output].nbytes);
  }}
  for (i = 0; i < QC_NUM_OUTPUTS; ++i) {{
    if (m->output_ptrs[i] != outputs[i]) memcpy(outputs[i], m->output_ptrs[i], qc_outputs[i].nbytes);
  }}
  return QC_OK;
}}

int {P}num_inputs(void) {{ return QC_NUM_INPUTS; }}
int {P}num_outputs(void) {{ return QC_NUM_OUTPUTS; }}
const char* {P}input_name(int i) {{ return i >= 0 && i < QC_NUM_INPUTS ? qc_inputs[i].name : NULL; }}
int {P}input_ndim(int i) {{ return i >= 0 && i < QC_NUM_INPUTS ? qc_inputs[i].ndim : -1; }}
const int64_t* {P}input_shape(int i) {{ return i >= 0 && i < QC_NUM_INPUTS ? qc_shapes + qc_inputs[i].shape_at : NULL; }}
const char* {P}input_dtype(int i) {{ return i >= 0 && i < QC_NUM_INPUTS ? qc_inputs[i].dtype : NULL; }}
size_t {P}input_nbytes(int i) {{ return i >= 0 && i < QC_NUM_INPUTS ? qc_inputs[i].nbytes : 0; }}
const char* {P}output_name(int i) {{ return i >= 0 && i < QC_NUM_OUTPUTS ? qc_outputs[i].name : NULL; }}
int {P}output_ndim(int i) {{ return i >= 0 && i < QC_NUM_OUTPUTS ? qc_outputs[i].ndim : -1; }}
const int64_t* {P}output_shape(int i) {{ return i >= 0 && i < QC_NUM_OUTPUTS ? qc_shapes + qc_outputs[i].shape_at : NULL; }}
const char* {P}output_dtype(int i) {{ return i >= 0 && i < QC_NUM_OUTPUTS ? qc_outputs[i].dtype : NULL; }}
size_t {P}output_nbytes(int i) {{ return i >= 0 && i < QC_NUM_OUTPUTS ? qc_outputs[i].nbytes : 0; }}
size_t {P}arena_bytes(void) {{ return (size_t)QC_ARENA_BYTES; }}
int {P}weights_external(void) {{ return QC_WEIGHTS_EXTERNAL; }}
"""

