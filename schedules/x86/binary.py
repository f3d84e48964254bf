"""Binary and bitserial conv/dense kernels for x86-64 (AVX-512 VPOPCNTDQ, AVX2, scalar POPCNT).

The loop nest is the shared register tile of ``schedules/lowbit_tiling.py``; this file picks the
knobs. How LLVM lowers the popcount of a vector of words here (checked in tests/test_kernels_asm.py):
AVX-512 VPOPCNTDQ -> ``vpopcntq``/``vpopcntd`` on zmm; AVX2 -> ``vpshufb`` nibble lookup.

Measured defaults (AMD Zen 4, 1 thread, 64-bit words, ``parallel="none"``; ms = min over 3
interleaved runs of TVM time_evaluator medians unless a bullet says otherwise — the machine is
shared, so only same-run comparisons count; ``benchmarks/kernels.py`` has the peer tables):

* AVX-512 binary, ``layout="channels"``: 8 lanes x 2 vectors x 4 pixels. Dense M64 K1024 N1024:
  (o_vectors, spatial_tile) (2,4) 0.0585 ms, (4,2) 0.0585, (2,2) 0.059, (3,2) 0.0595, (4,1) 0.0736
  — 8-16 zmm accumulators leave room for the loaded/broadcast operands.
* AVX-512 binary conv with one word per pixel (C <= 64, stride 1, no groups): ``layout="pixels"``,
  8 pixels per zmm x 4 channels x 1 vector, taps unrolled (``PIXELS_AVX512``). Conv3x3
  64x56x56->64, int32 NCHW out, two interleaved runs: channels (2,4) 0.125/0.126 ms; pixels
  (o_vectors, spatial_tile) (4,1) 0.103/0.103, (1,7) 0.106/0.106, (6,1) 0.109/0.111,
  (2,7) 0.112/0.109, (8,1) 0.128/0.105, (16,1) 0.114/0.110, (4,2) 0.122/0.124, (8,2) 0.127/0.126;
  (8,1) without tap unrolling 0.150/0.109. The channel layout spends a transpose per 8 outputs
  in the NCHW epilogue and one pixel broadcast per 2 popcounts; a pixel costs only 9 words here.
  Not the default elsewhere: C=32 in 32-bit words (16 pixels per zmm) 1.547 ms vs channels 0.107;
  AVX2 C=64 (min of 3) pixels (4,2) 1.122, (4,1) 1.147 vs channels 1.168 (within the noise).
* AVX-512 dense with one row (``DENSE_M1``): 1 row x 4 vectors; the 4-row tile computed 3 padding
  rows (M1 K1024 N1024: (2,4) 0.0034 ms, (2,1)/(4,1)/(8,1)/(16,1) 0.0012; K4096: 0.0554 vs
  0.0218-0.0220). M1 is then bound by streaming the weights (K4096: 2 MB from L3, ~96 GB/s
  achieved vs ~87 GB/s measured read bandwidth of a 2 MB buffer, ``popcount_peak.read_gbps``).
* AVX-512 bitserial (``BITSERIAL_AVX512``, A2W2, 4 plane pairs per word): 2 vectors x 2 pixels/rows.
  (o_vectors, spatial_tile) -> ms: conv 256x14x14->256 (2,2) 0.505, (4,2) 0.501, (4,1) 0.515,
  (3,2) 0.537, (2,4) 0.587; conv 64x56x56->64 (2,2) 0.552, (2,4) 0.555, (4,2) 0.564, (4,1) 0.574;
  dense M64 K1024 (2,2) 0.295, (4,1) 0.296, (2,4) 0.342; M64 K4096 (2,2) 4.73, (4,1) 4.82,
  (2,4) 5.46 — each plane pair keeps its own shifted partial live, so fewer accumulators win.
  The plane pairs run outside the words of a conv tap / of a dense ``plane_block`` (then one shift
  per plane pair and block, ``w_mult`` folded into it): conv 256x14x14 0.501 -> 0.431 ms;
  dense ``plane_block`` (1 / 2 / 4 / 8 words): M64 K1024 0.292 / 0.254 / 0.254 / 0.239 ms,
  M64 K4096 4.81 / 4.17 / 4.20 / 4.05, M1 K4096 0.0737 / 0.0684 / 0.0685 / 0.0742 -> 8, M1: 4.
  Taps unrolled with the plane pairs outside the whole window (one shift per pair and pixel
  tile), min / median of 5: conv 64x56x56 (1 word per tap) 0.515 / 0.521 vs 0.547 / 0.566 ms ->
  default when a tap is one word; conv 256x14x14 (4 words) 0.513 / 0.537 vs 0.430 / 0.434 -> not.
* AVX2: 4 lanes x 2 vectors x 4 pixels (ymm; the nibble-LUT popcount needs scratch registers);
  scalar POPCNT: 4 words x 2 pixels. Not re-measured with the layouts above.
"""

from __future__ import annotations

from ..compute_lowbit import LowbitConvWorkload, LowbitDenseWorkload, LowbitKernel
from ..lowbit_tiling import LowbitConfig, schedule_conv, schedule_dense


#: layout="pixels" (o_vectors channels, spatial_tile pixel vectors), see the module docstring
PIXELS_AVX512 = (4, 1)
#: dense with one row (o_vectors, spatial_tile)
DENSE_M1 = (4, 1)
#: bitserial conv/dense (o_vectors, spatial_tile)
BITSERIAL_AVX512 = (2, 2)
#: bitserial dense words per plane block (LowbitConfig.plane_block): M1, more rows
PLANE_BLOCK_M1, PLANE_BLOCK = 4, 8


def _vector_bits(target) -> int:
    if target.has("avx512"):
        return 512
    if target.has("avx2"):
        return 256
    return 64  # scalar POPCNT on 64-bit words


def pixel_layout_fits(wl) -> bool:
    """Convs whose input pixel is one packed 64-bit word, read as contiguous vectors of pixels
    (stride 1); 32-bit words (16 pixels per zmm) measured 14x slower than the channel layout."""
    return (isinstance(wl, LowbitConvWorkload) and wl.binary and wl.word_bits == 64 and wl.cw == 1
            and wl.geom.groups == 1 and wl.geom.strides[1] == 1)


def default_config(target, word_bits: int, wl=None) -> LowbitConfig:
    """Default knobs for ``target``; ``wl`` (the workload, when known) picks the conv layout."""
    vbits = _vector_bits(target)
    lanes = max(1, vbits // word_bits)
    if vbits == 512 and wl is not None and pixel_layout_fits(wl):
        return LowbitConfig(lanes=lanes, o_vectors=PIXELS_AVX512[0], spatial_tile=PIXELS_AVX512[1],
                            unroll_taps=True, layout="pixels")
    if vbits == 64:
        ov, st = 4, 2
    elif vbits == 512 and wl is not None and not wl.binary:
        ov, st = BITSERIAL_AVX512
    else:
        ov, st = 2, 4
    if isinstance(wl, LowbitDenseWorkload) and wl.m < st:
        # fewer rows than the tile: the padded rows would be computed and thrown away (M1: 4x the work)
        ov, st = (DENSE_M1 if wl.m == 1 else (ov, wl.m))
    block, taps = 1, False
    if vbits == 512 and wl is not None and not wl.binary:
        block = PLANE_BLOCK_M1 if getattr(wl, "m", 0) == 1 else PLANE_BLOCK   # (dense only)
        # one word per tap: plane pairs outside the unrolled window (more words: code too large)
        taps = isinstance(wl, LowbitConvWorkload) and wl.cgw == 1
    return LowbitConfig(lanes=lanes, o_vectors=ov, spatial_tile=st, plane_block=block, unroll_taps=taps)


def _variant(target) -> str:
    return {512: "avx512", 256: "avx2"}.get(_vector_bits(target), "popcnt")


def build_conv2d(wl: LowbitConvWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    """Binary or bitserial conv2d (packed NHWC) for x86; ``config`` overrides the default knobs."""
    cfg = config or default_config(target, wl.word_bits, wl)
    kind = "bconv2d" if wl.binary else "bsconv2d"
    return schedule_conv(wl, cfg, weights, epilogue_inputs, f"{kind}_nhwc__x86_{_variant(target)}")


def build_dense(wl: LowbitDenseWorkload, target, config=None, *, weights, epilogue_inputs=()) -> LowbitKernel:
    """Binary or bitserial dense for x86."""
    cfg = config or default_config(target, wl.word_bits, wl)
    kind = "bdense" if wl.binary else "bsdense"
    return schedule_dense(wl, cfg, weights, epilogue_inputs, f"{kind}__x86_{_variant(target)}")
