"""XOR + POPCNT + ADD peak throughput of this machine's widest vector unit (1 thread).

Binary kernels are stated as a fraction of this peak: one "binary MAC" is one bit of XOR+POPCNT,
and "GOPS" counts 2 ops per binary MAC (as PEERS.md does). The loop keeps 12 independent register
chains ``x_i ^= k; acc_i += popcount(x_i)`` so neither loads nor latency limit it.
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
    for name in ("peak_avx512", "peak_scalar"):
        fn = getattr(dll, name)
        fn.restype = ctypes.c_uint64
        fn.argtypes = [ctypes.c_uint64, ctypes.c_uint64]
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


def main() -> int:
    res = peak_gops()
    print("XOR+POPCNT+ADD peak, 1 thread, median of 21 runs")
    for k, v in res.items():
        print(f"  {k:8s} {v:10.0f} GOPS  ({v / 2:.0f} G binary MAC/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
