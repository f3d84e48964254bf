"""XOR + POPCNT + ADD peak throughput of this machine's widest vector unit (1 thread).

Binary kernels are stated as a fraction of this peak: one "binary MAC" is one bit of XOR+POPCNT,
and "GOPS" counts 2 ops per binary MAC (as PEERS.md does). The loop keeps 12 independent register
chains ``x_i ^= k; acc_i += popcount(x_i)`` so neither loads nor latency limit it.
Also the read bandwidth of one core over a buffer of a given size (:func:`read_gbps`: 256-bit loads
XORed into 8 registers, the buffer re-read after a warm-up pass, so it measures the cache level the
buffer fits in): the bound of kernels that stream their weights once per call (dense M1).
Run: ``python benchmarks/popcount_peak.py``.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

_SRC = r"""
#include <immintrin.h>
#include <stdint.h>
#define CHAINS 12
uint64_t peak_avx512(uint64_t iters, uint64_t seed) {
  __m512i k = _mm512_set1_epi64((long long)(seed * 0x9E3779B97F4A7C15ull));
  __m512i x[CHAINS], a[CHAINS];
  for (int i = 0; i < CHAINS; i++) { x[i] = _mm512_set1_epi64((long long)(seed + i)); a[i] = _mm512_setzero_si512(); }
  for (uint64_t n = 0; n < iters; n++) {
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; i++) {
      x[i] = _mm512_xor_si512(x[i], k);
      a[i] = _mm512_add_epi64(a[i], _mm512_popcnt_epi64(x[i]));
    }
  }
  __m512i s = a[0];
  for (int i = 1; i < CHAINS; i++) s = _mm512_add_epi64(s, a[i]);
  return (uint64_t)_mm512_reduce_add_epi64(s);
}
__attribute__((target("avx512f,avx512vnni")))
uint64_t peak_vnni(uint64_t iters, uint64_t seed) {
  __m512i a = _mm512_set1_epi32((int)seed), b = _mm512_set1_epi32((int)(seed * 3)), acc[CHAINS];
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_epi32(i);
  for (uint64_t n = 0; n < iters; n++) {
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  }
  __m512i s = acc[0];
  for (int i = 1; i < CHAINS; i++) s = _mm512_add_epi32(s, acc[i]);
  return (uint64_t)_mm512_reduce_add_epi32(s);
}
__attribute__((target("avx2")))
uint64_t read_avx2(const uint8_t *p, uint64_t nbytes, uint64_t reps) {
  __m256i a[8];
  for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_si256();
  for (uint64_t r = 0; r < reps; r++)
    for (uint64_t off = 0; off + 256 <= nbytes; off += 256)
#pragma GCC unroll 8
      for (int i = 0; i < 8; i++)
        a[i] = _mm256_xor_si256(a[i], _mm256_loadu_si256((const __m256i *)(p + off + 32 * i)));
  for (int i = 1; i < 8; i++) a[0] = _mm256_xor_si256(a[0], a[i]);
  return (uint64_t)_mm256_extract_epi64(a[0], 0) ^ (uint64_t)_mm256_extract_epi64(a[0], 3);
}
uint64_t peak_scalar(uint64_t iters, uint64_t seed) {
  uint64_t x[CHAINS], a[CHAINS], k = seed * 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < CHAINS; i++) { x[i] = seed + i; a[i] = 0; }
  for (uint64_t n = 0; n < iters; n++) {
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; i++) { x[i] ^= k; a[i] += (uint64_t)__builtin_popcountll(x[i]); }
  }
  uint64_t s = 0;
  for (int i = 0; i < CHAINS; i++) s += a[i];
  return s;
}
"""
CHAINS = 12


def build(tmpdir: str) -> ctypes.CDLL:
    src = os.path.join(tmpdir, "peak.c")
    lib = os.path.join(tmpdir, "peak.so")
    with open(src, "w") as f:
        f.write(_SRC)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-mavx512f", "-mavx512vpopcntdq", "-mpopcnt",
                    src, "-o", lib], check=True)
    dll = ctypes.CDLL(lib)
    for name in ("peak_avx512", "peak_scalar", "peak_vnni"):
        fn = getattr(dll, name)
        fn.restype = ctypes.c_uint64
        fn.argtypes = [ctypes.c_uint64, ctypes.c_uint64]
    dll.read_avx2.restype = ctypes.c_uint64
    dll.read_avx2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
    return dll


def measure(fn, bits_per_op: int, iters: int = 200_000, runs: int = 21) -> float:
    """Median binary-op throughput in GOPS (2 ops per XOR+POPCNT bit)."""
    times = []
    for r in range(runs):
        t0 = time.perf_counter()
        fn(iters, r + 1)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return 2.0 * iters * CHAINS * bits_per_op / med / 1e9


def peak_gops() -> dict:
    """{"avx512": GOPS, "scalar": GOPS} on this machine (avx512 only when the CPU has VPOPCNTDQ)."""
    from qcompiler.targets import get_target

    out = {}
    with tempfile.TemporaryDirectory() as d:
        dll = build(d)
        out["scalar"] = measure(dll.peak_scalar, 64)
        if get_target("x86-avx512").runs_natively():
            out["avx512"] = measure(dll.peak_avx512, 512)
    return out


def vnni_gmacs() -> float:
    """u8 x s8 MAC peak of AVX-512 VNNI ``vpdpbusd`` on zmm (64 MACs each), 1 thread, GMAC/s: the
    ceiling of the int8 peers, to compare the bitserial kernels' bound with (0.0 without VNNI)."""
    from qcompiler.targets import get_target

    t = get_target("x86-avx512")
    if not (t.runs_natively() and t.has("vnni")):
        return 0.0
    with tempfile.TemporaryDirectory() as d:
        # 12 chains x 1 vpdpbusd; reuse measure(): it counts 2 ops per bit, so halve and scale
        ops = measure(build(d).peak_vnni, 1)
    return ops / 2 * 64


def read_gbps(nbytes: int, runs: int = 21) -> float:
    """Median read bandwidth (GB/s, 1 thread) re-reading a warm buffer of ``nbytes`` (rounded up to
    256 bytes): the bandwidth of the cache level (or DRAM) such a buffer lives in."""
    nbytes = -(-int(nbytes) // 256) * 256
    buf = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    reps = max(1, (64 << 20) // nbytes)            # ~64 MB read per timed run
    with tempfile.TemporaryDirectory() as d:
        dll = build(d)
        ptr = buf.ctypes.data
        dll.read_avx2(ptr, nbytes, 1)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            dll.read_avx2(ptr, nbytes, reps)
            times.append(time.perf_counter() - t0)
    return nbytes * reps / float(np.median(times)) / 1e9


def main() -> int:
    res = peak_gops()
    print("XOR+POPCNT+ADD peak, 1 thread, median of 21 runs")
    for k, v in res.items():
        print(f"  {k:8s} {v:10.0f} GOPS  ({v / 2:.0f} G binary MAC/s)")
    vnni = vnni_gmacs()
    if vnni:
        print(f"  vnni     {vnni:10.0f} GMAC/s u8xs8 (vpdpbusd zmm)")
    print("read bandwidth, 1 thread (warm buffer)")
    for kb in (32, 128, 512, 2048, 8192, 65536):
        print(f"  {kb:6d} KB {read_gbps(kb << 10):8.1f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
