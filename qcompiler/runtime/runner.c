/* qcompiler module runner: run a compiled module on .npy inputs, on the board, with no Python.
 *
 *   runner [--threads N] [--bench N] [--warmup N] [--weights FILE] [-o DIR] NAME=input.npy ...
 *   runner --info
 *
 * --threads 0 (the default) uses every online CPU. A module whose weights live in a separate file
 * finds weights.bin next to the runner unless --weights names it.
 * Reads each input from a .npy file (dtype and shape must match the module's signature), runs the
 * module, writes every output to DIR/<output name>.npy (DIR defaults to "."; characters of the name
 * other than [A-Za-z0-9._-] become '_', see output_file), and with --bench N
 * prints the latency of N further runs (after --warmup runs, default 1): a "times_ms" line with each
 * run's milliseconds, then "latency_ms median .. mean .. min .. max .. runs .. threads ..". Compiled once per module against its generated header:
 *
 *   cc -O2 -DQC_HEADER='"net.h"' -DQC_PREFIX=qc_net_ runner.c libnet.a -lpthread -lm -o runner
 *
 * Exit codes: 0 ok, 2 bad command line, 3 bad input file (missing, unreadable, wrong dtype/shape),
 * 4 the module failed (create or run), 5 an output could not be written.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef QC_HEADER
#error "compile with -DQC_HEADER='\"<module>.h\"' -DQC_PREFIX=qc_<module>_"
#endif
#include QC_HEADER

/* The module's entry points are qc_<name>_<fn>: paste the prefix once here. */
#define QC_CAT2(a, b) a##b
#define QC_CAT(a, b) QC_CAT2(a, b)
#define QC_FN(fn) QC_CAT(QC_PREFIX, fn)

enum { EXIT_USAGE = 2, EXIT_INPUT = 3, EXIT_MODULE = 4, EXIT_OUTPUT = 5 };
enum { MAX_NDIM = 16 };

static void die(int code, const char* fmt, const char* a, const char* b) {
  fprintf(stderr, "runner: error: ");
  fprintf(stderr, fmt, a, b);
  fputc('\n', stderr);
  exit(code);
}

/* ------------------------------------------------------------------------- dtypes and .npy */

typedef struct { const char* name; const char* descr; size_t size; } DType;

/* numpy dtype name (as the header's signature queries give it) -> .npy descr, item size */
static const DType DTYPES[] = {
    {"float32", "<f4", 4}, {"float16", "<f2", 2}, {"float64", "<f8", 8}, {"int8", "|i1", 1},
    {"uint8", "|u1", 1},   {"int16", "<i2", 2},   {"uint16", "<u2", 2},  {"int32", "<i4", 4},
    {"uint32", "<u4", 4},  {"int64", "<i8", 8},   {"uint64", "<u8", 8},  {"bool", "|b1", 1},
};

static const DType* dtype_by_name(const char* name) {
  for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; ++i)
    if (strcmp(DTYPES[i].name, name) == 0) return &DTYPES[i];
  return NULL;
}

static const DType* dtype_by_descr(const char* descr) {
  /* "<i1" and "|i1" are the same thing; "=" means native, which every supported board is little */
  for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; ++i)
    if (strcmp(DTYPES[i].descr + 1, descr + 1) == 0 &&
        (descr[0] == '<' || descr[0] == '|' || descr[0] == '=' || DTYPES[i].size == 1))
      return &DTYPES[i];
  return NULL;
}

typedef struct {
  const DType* dtype;
  int ndim;
  int64_t shape[MAX_NDIM];
  size_t nbytes;
  void* data; /* 64-byte aligned: TVM kernels assume it */
} Array;

static void* aligned_buffer(size_t n) {
  void* p = NULL;
  if (posix_memalign(&p, 64, n ? (n + 63) / 64 * 64 : 64) != 0) return NULL;
  return p;
}

static void shape_str(char* out, size_t cap, int ndim, const int64_t* shape) {
  size_t len = (size_t)snprintf(out, cap, "(");
  for (int i = 0; i < ndim && len < cap; ++i)
    len += (size_t)snprintf(out + len, cap - len, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (len < cap) snprintf(out + len, cap - len, ndim == 1 ? ",)" : ")");
}

/* Value of 'key' in the header dict, as text up to the next top-level ',' or '}'. */
static const char* dict_value(const char* dict, const char* key) {
  const char* k = strstr(dict, key);
  if (!k) return NULL;
  k = strchr(k + strlen(key), ':');
  if (!k) return NULL;
  ++k;
  while (*k == ' ') ++k;
  return k;
}

/* Parse a .npy file (format 1.0, 2.0 or 3.0). Returns an error message, or NULL on success. */
static const char* read_npy(const char* path, Array* a) {
  static char msg[512];
  FILE* f = fopen(path, "rb");
  if (!f) {
    snprintf(msg, sizeof msg, "cannot open %s: %s", path, strerror(errno));
    return msg;
  }
  unsigned char pre[10];
  if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
    fclose(f);
    snprintf(msg, sizeof msg, "%s is not a .npy file (no \\x93NUMPY magic)", path);
    return msg;
  }
  size_t hlen;
  if (pre[6] == 1) {
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
  } else {
    unsigned char ext[2];
    if (fread(ext, 1, 2, f) != 2) { fclose(f); snprintf(msg, sizeof msg, "%s: truncated header", path); return msg; }
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)ext[0] << 16 | (size_t)ext[1] << 24;
  }
  char* h = malloc(hlen + 1);
  if (!h || fread(h, 1, hlen, f) != hlen) {
    free(h); fclose(f);
    snprintf(msg, sizeof msg, "%s: truncated .npy header", path);
    return msg;
  }
  h[hlen] = 0;
  const char* v = dict_value(h, "'descr'");
  char descr[16] = {0};
  if (!v || sscanf(v, "'%15[^']'", descr) != 1) {
    free(h); fclose(f);
    snprintf(msg, sizeof msg, "%s: .npy header has no readable 'descr'", path);
    return msg;
  }
  a->dtype = dtype_by_descr(descr);
  if (!a->dtype) {
    free(h); fclose(f);
    snprintf(msg, sizeof msg, "%s: unsupported dtype %s (structured, big-endian or object arrays are not "
             "module inputs)", path, descr);
    return msg;
  }
  v = dict_value(h, "'fortran_order'");
  if (!v || strncmp(v, "False", 5) != 0) {
    free(h); fclose(f);
    snprintf(msg, sizeof msg, "%s: Fortran-ordered array; save it with np.save(path, np.ascontiguousarray(x))", path);
    return msg;
  }
  v = dict_value(h, "'shape'");
  if (!v || *v != '(') {
    free(h); fclose(f);
    snprintf(msg, sizeof msg, "%s: .npy header has no readable 'shape'", path);
    return msg;
  }
  a->ndim = 0;
  size_t count = 1;
  for (++v; *v && *v != ')';) {
    char* end;
    long long d = strtoll(v, &end, 10);
    if (end == v) { ++v; continue; }  /* ',' or ' ' */
    if (a->ndim == MAX_NDIM || d < 0) { free(h); fclose(f); snprintf(msg, sizeof msg, "%s: bad shape", path); return msg; }
    a->shape[a->ndim++] = d;
    count *= (size_t)d;
    v = end;
  }
  free(h);
  a->nbytes = count * a->dtype->size;
  a->data = aligned_buffer(a->nbytes);
  if (!a->data) { fclose(f); snprintf(msg, sizeof msg, "%s: out of memory", path); return msg; }
  if (fread(a->data, 1, a->nbytes, f) != a->nbytes) {
    fclose(f);
    snprintf(msg, sizeof msg, "%s: truncated data (%zu bytes expected)", path, a->nbytes);
    return msg;
  }
  fclose(f);
  return NULL;
}

static int write_npy(const char* path, const Array* a) {
  char dict[256], shape[192];
  shape_str(shape, sizeof shape, a->ndim, a->shape);
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                   a->dtype->descr, shape);
  /* magic(6) + version(2) + len(2) + dict + spaces + '\n' = a multiple of 64, as numpy writes it */
  size_t total = (10 + (size_t)n + 1 + 63) / 64 * 64;
  size_t hlen = total - 10;
  FILE* f = fopen(path, "wb");
  if (!f) return -1;
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                           (unsigned char)(hlen >> 8)};
  int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
  for (size_t i = (size_t)n; ok && i + 1 < hlen; ++i) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF && fwrite(a->data, 1, a->nbytes, f) == a->nbytes;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* ------------------------------------------------------------------------ the module's signature */

/* Fill 'a' with the expected dtype/shape of input (is_input) or output i, from the header's queries. */
static void expected(int is_input, int i, Array* a) {
  const char* dt = is_input ? QC_FN(input_dtype)(i) : QC_FN(output_dtype)(i);
  a->dtype = dtype_by_name(dt);
  if (!a->dtype) die(EXIT_MODULE, "module uses dtype %s, which this runner does not know%s", dt, "");
  a->ndim = is_input ? QC_FN(input_ndim)(i) : QC_FN(output_ndim)(i);
  const int64_t* s = is_input ? QC_FN(input_shape)(i) : QC_FN(output_shape)(i);
  size_t count = 1;
  for (int d = 0; d < a->ndim; ++d) count *= (size_t)(a->shape[d] = s[d]);
  a->nbytes = count * a->dtype->size;
}

static void print_info(FILE* to) {
  char shape[192];
  Array a;
  for (int io = 1; io >= 0; --io) {
    int n = io ? QC_FN(num_inputs)() : QC_FN(num_outputs)();
    for (int i = 0; i < n; ++i) {
      expected(io, i, &a);
      shape_str(shape, sizeof shape, a.ndim, a.shape);
      fprintf(to, "%s %s %s %s\n", io ? "input" : "output", io ? QC_FN(input_name)(i) : QC_FN(output_name)(i),
             a.dtype->name, shape);
    }
  }
}

/* File name of output i: its name with characters other than [A-Za-z0-9._-] replaced by '_' (ONNX
 * names often hold '/' or ':'), plus "_<i>" if an earlier output already took that name; ".npy". */
static void sanitize(const char* name, char* out, size_t cap) {
  size_t k = 0;
  for (; name[k] && k + 1 < cap; ++k) {
    char c = name[k];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
             c == '-';
    out[k] = ok ? c : '_';
  }
  out[k] = 0;
  if (k == 0 || out[0] == '.') out[0] = '_';  /* no hidden or empty names */
  if (k == 0 && cap > 1) out[1] = 0;
}

static void output_file(int i, char* out, size_t cap) {
  char mine[400], other[400];
  sanitize(QC_FN(output_name)(i), mine, sizeof mine);
  int taken = 0;
  for (int j = 0; j < i && !taken; ++j) {
    sanitize(QC_FN(output_name)(j), other, sizeof other);
    taken = strcmp(mine, other) == 0;
  }
  if (taken) snprintf(out, cap, "%s_%d.npy", mine, i);
  else snprintf(out, cap, "%s.npy", mine);
}

/* --------------------------------------------------------------------------------------- main */

static int run_once(QC_FN(t)* m, int n_in, const void** in, const size_t* in_sizes, int n_out, void** out,
                    const size_t* out_sizes) {
  return QC_FN(run)(m, n_in, (const void* const*)in, in_sizes, n_out, (void* const*)out, out_sizes);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static long parse_count(const char* flag, const char* value, long min) {
  char* end;
  long v = value ? strtol(value, &end, 10) : -1;
  if (!value || *end || v < min) {
    fprintf(stderr, "runner: error: %s needs an integer >= %ld, got %s\n", flag, min, value ? value : "nothing");
    exit(EXIT_USAGE);
  }
  return v;
}

static void usage(FILE* to) {
  fprintf(to, "usage: runner [--threads N] [--bench N] [--warmup N] [--weights FILE] [-o DIR] NAME=input.npy ...\n"
              "       runner --info   (print the inputs and outputs: name, dtype, shape)\n");
}

int main(int argc, char** argv) {
  int n_in = QC_FN(num_inputs)(), n_out = QC_FN(num_outputs)();
  long threads = 0, bench = 0, warmup = 1;
  const char* out_dir = ".";
  const char* weights_path = NULL;
  const char** paths = calloc((size_t)n_in + 1, sizeof *paths);
  for (int k = 1; k < argc; ++k) {
    const char* arg = argv[k];
    if (!strcmp(arg, "--info")) { print_info(stdout); return 0; }
    if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) { usage(stdout); print_info(stdout); return 0; }
    if (!strcmp(arg, "--threads")) { threads = parse_count(arg, k + 1 < argc ? argv[++k] : NULL, 0); continue; }
    if (!strcmp(arg, "--bench")) { bench = parse_count(arg, k + 1 < argc ? argv[++k] : NULL, 1); continue; }
    if (!strcmp(arg, "--warmup")) { warmup = parse_count(arg, k + 1 < argc ? argv[++k] : NULL, 0); continue; }
    if (!strcmp(arg, "--weights")) {
      if (++k >= argc) die(EXIT_USAGE, "%s needs a file%s", arg, "");
      weights_path = argv[k];
      continue;
    }
    if (!strcmp(arg, "-o") || !strcmp(arg, "--out-dir")) {
      if (++k >= argc) die(EXIT_USAGE, "%s needs a directory%s", arg, "");
      out_dir = argv[k];
      continue;
    }
    const char* eq = strchr(arg, '=');
    if (arg[0] == '-' || !eq) { usage(stderr); die(EXIT_USAGE, "unexpected argument %s%s", arg, ""); }
    int found = -1;
    for (int i = 0; i < n_in; ++i) {
      const char* name = QC_FN(input_name)(i);
      if (strlen(name) == (size_t)(eq - arg) && !strncmp(name, arg, (size_t)(eq - arg))) found = i;
    }
    if (found < 0) {
      fprintf(stderr, "runner: error: the module has no input named %.*s; its signature:\n", (int)(eq - arg), arg);
      print_info(stderr);
      return EXIT_USAGE;
    }
    paths[found] = eq + 1;
  }

  /* inputs: read and check every one against the signature */
  Array* in = calloc((size_t)n_in + 1, sizeof *in);
  const void** in_ptrs = calloc((size_t)n_in + 1, sizeof *in_ptrs);
  size_t* in_sizes = calloc((size_t)n_in + 1, sizeof *in_sizes);
  char got[192], want[192];
  for (int i = 0; i < n_in; ++i) {
    const char* name = QC_FN(input_name)(i);
    Array exp;
    expected(1, i, &exp);
    if (!paths[i]) {
      shape_str(want, sizeof want, exp.ndim, exp.shape);
      fprintf(stderr, "runner: error: missing input %s (%s %s): pass %s=file.npy\n", name, exp.dtype->name, want, name);
      return EXIT_USAGE;
    }
    const char* err = read_npy(paths[i], &in[i]);
    if (err) die(EXIT_INPUT, "input %s: %s", name, err);
    int same = in[i].ndim == exp.ndim && in[i].dtype == exp.dtype;
    for (int d = 0; same && d < exp.ndim; ++d) same = in[i].shape[d] == exp.shape[d];
    if (!same) {
      shape_str(got, sizeof got, in[i].ndim, in[i].shape);
      shape_str(want, sizeof want, exp.ndim, exp.shape);
      fprintf(stderr, "runner: error: input %s from %s is %s %s, the module expects %s %s\n", name, paths[i],
              in[i].dtype->name, got, exp.dtype->name, want);
      return EXIT_INPUT;
    }
    in_ptrs[i] = in[i].data;
    in_sizes[i] = in[i].nbytes;
  }
  Array* out = calloc((size_t)n_out + 1, sizeof *out);
  void** out_ptrs = calloc((size_t)n_out + 1, sizeof *out_ptrs);
  size_t* out_sizes = calloc((size_t)n_out + 1, sizeof *out_sizes);
  for (int i = 0; i < n_out; ++i) {
    expected(0, i, &out[i]);
    out_sizes[i] = out[i].nbytes;
    out_ptrs[i] = out[i].data = aligned_buffer(out[i].nbytes);
    if (!out[i].data) die(EXIT_MODULE, "out of memory for output %s%s", QC_FN(output_name)(i), "");
  }

  char weights[4096] = "";
  if (QC_FN(weights_external)()) {
    if (weights_path) {
      snprintf(weights, sizeof weights, "%s", weights_path);
    } else { /* weights.bin next to the runner */
      const char* slash = strrchr(argv[0], '/');
      snprintf(weights, sizeof weights, "%.*s%s", slash ? (int)(slash - argv[0] + 1) : 0, argv[0], "weights.bin");
    }
  }
  QC_FN(t)* m = NULL;
  if (QC_FN(create)(&m, weights[0] ? weights : NULL, (int)threads) != QC_OK || !m)
    die(EXIT_MODULE, "creating the module failed: %s%s", QC_FN(last_error)(NULL), "");
  if (run_once(m, n_in, in_ptrs, in_sizes, n_out, out_ptrs, out_sizes) != QC_OK)
    die(EXIT_MODULE, "run failed: %s%s", QC_FN(last_error)(m), "");

  char path[4096], file[512];
  for (int i = 0; i < n_out; ++i) {
    output_file(i, file, sizeof file);
    snprintf(path, sizeof path, "%s/%s", out_dir, file);
    if (write_npy(path, &out[i]) != 0) die(EXIT_OUTPUT, "cannot write %s: %s", path, strerror(errno));
  }

  if (bench > 0) {
    for (long r = 0; r < warmup; ++r)
      if (run_once(m, n_in, in_ptrs, in_sizes, n_out, out_ptrs, out_sizes) != QC_OK)
        die(EXIT_MODULE, "run failed: %s%s", QC_FN(last_error)(m), "");
    double* ms = malloc(sizeof(double) * (size_t)bench);
    for (long r = 0; r < bench; ++r) {
      double t0 = now_ms();
      if (run_once(m, n_in, in_ptrs, in_sizes, n_out, out_ptrs, out_sizes) != QC_OK)
        die(EXIT_MODULE, "run failed: %s%s", QC_FN(last_error)(m), "");
      ms[r] = now_ms() - t0;
    }
    printf("times_ms");
    for (long r = 0; r < bench; ++r) printf(" %.4f", ms[r]);
    printf("\n");
    qsort(ms, (size_t)bench, sizeof *ms, cmp_double);
    double sum = 0;
    for (long r = 0; r < bench; ++r) sum += ms[r];
    printf("latency_ms median %.4f mean %.4f min %.4f max %.4f runs %ld threads %d\n", ms[bench / 2], sum / bench,
           ms[0], ms[bench - 1], bench, QC_FN(num_threads)(m));
    free(ms);
  }
  QC_FN(destroy)(m);
  return 0;
}
