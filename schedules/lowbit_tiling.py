"""The register-tiled schedule shared by the binary/bitserial kernels of every ISA family.

Shape of the inner loop (an outer product in the popcount semiring): a tile of ``spatial_tile``
output pixels (conv: consecutive ``ow``; dense: rows ``m``) times ``o_vectors`` vectors of ``lanes``
output channels. Per input word, each pixel's word is broadcast, XORed (ANDed for bitserial) with
``o_vectors`` weight vectors, popcounted and added to ``spatial_tile * o_vectors`` accumulator
registers; no horizontal reduction is ever needed. The family files (``schedules/<family>/binary.py``)
choose the knobs per ISA and keep their measured defaults next to them.

Conv ``layout="pixels"`` turns the tile around for convs whose pixel is one word (C <= word bits,
stride 1): a vector holds ``lanes`` consecutive output pixels (one contiguous load of the packed
NHWC row), each of ``o_vectors`` output channels' weight word is broadcast, and the accumulators
are ``o_vectors x spatial_tile`` vectors of pixels. Then no pixel word is broadcast, and the NCHW
epilogue stores whole vectors along ``ow`` instead of transposing channel vectors (with C = 64 a
pixel costs only 9 XOR+POPCNT words, so the epilogue is a large part of the work); the binary
correction table is then laid out per output column (``conv_base_constant(by_column=True)``).

A fused residual add (float epilogue with ``residual=1``, ``passes/fuse_residual.py``) costs the
``layout="pixels"`` tile nothing extra in shape (the epilogue already runs along ow: the residual is
one more contiguous vector load). With ``layout="channels"`` the residual loads would be channel-
strided gathers; instead the tile's epilogue goes to a local ``[channels, ow]`` row buffer and the
add runs along each finished output row (:func:`_residual_epilogue`). Measured on Zen 4 (AVX-512,
1 thread, one Bi-Real block incl. its BitPack, warm, median of 60x20 interleaved runs), unfused
conv + Add -> fused: 64x56x56 (pixels) 179 -> 165 us; 128x28x28 143 -> 137; 256x14x14 139 -> 136;
512x7x7 124 -> 124 (conv alone 131 / 132 / 121). Staging per register tile instead of per row (the
add over 4-pixel runs) was slower than unfused (154 / 150 us for 128x28 / 256x14: the partial last
tile of a 14-wide row keeps the predicated add scalar), and the inline channel-vector epilogue
with gathered residual loads too (161 / 144 us).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from qcompiler.errors import ConfigError

from .compute_lowbit import (LowbitConvWorkload, LowbitDenseWorkload, LowbitKernel, kernel_params,
                             lowbit_conv_compute, lowbit_dense_compute, prepare_conv_constants,
                             prepare_dense_constants)

PARALLEL = ("outer", "none")
LAYOUTS = ("channels", "pixels")


@dataclass(frozen=True)
class LowbitConfig:
    """Schedule knobs (what a tuner searches).

    lanes: output channels per vector register (= vector bits / word bits; 1 = scalar popcount);
        with ``layout="pixels"``, output pixels per vector register.
    o_vectors: vectors of output channels per register tile (``layout="pixels"``: output channels,
        each a broadcast weight word).
    spatial_tile: output pixels (conv, along ow) or rows (dense) per register tile
        (``layout="pixels"``: vectors of ``lanes`` pixels).
    unroll_reduce: fully unroll the innermost reduction loop (packed words of one tap).
    unroll_taps: also unroll the kernel-window loops (pays off when a tap is only a few words).
    plane_block: bitserial dense only: reduction words per block of the unrolled plane-pair loops
        (the K loop split as (blocks, planes, words in the block)); a plane pair's shift is then
        applied once per block of words. 1 = planes inside every word.
    layout: conv only: ``"channels"`` (vectors of output channels, pixels broadcast) or ``"pixels"``
        (vectors of output pixels, weights broadcast; see the module docstring).
    parallel: "outer" = a TVM parallel loop over the outermost tile loop, "none" = serial.
    vectorize_init: vectorize the accumulator zeroing. False keeps it an unrolled scalar loop: on
        RVV, TVM 0.27 turns a call-free vector loop into masked scalable accesses that StorageRewrite
        ignores, retypes the accumulator to uint64x2, and FP8ComputeLegalize's MatchType then fails.
    """

    lanes: int = 8
    o_vectors: int = 2
    spatial_tile: int = 4
    unroll_reduce: bool = True
    unroll_taps: bool = False
    parallel: str = "outer"
    vectorize_init: bool = True
    layout: str = "channels"
    plane_block: int = 1

    def __post_init__(self):
        for name in ("lanes", "o_vectors", "spatial_tile", "plane_block"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v > 64:
                raise ConfigError(f"schedule knob {name} must be an int in 1..64, got {v!r}")
        if self.lanes & (self.lanes - 1):
            raise ConfigError(f"lanes must be a power of two, got {self.lanes}")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def channel_block(self) -> int:
        """Output channels per register tile (the weights' blocking)."""
        return self.o_vectors if self.layout == "pixels" else self.lanes * self.o_vectors

    @property
    def pixel_tile(self) -> int:
        """Output pixels (conv) or rows (dense) per register tile."""
        return self.lanes * self.spatial_tile if self.layout == "pixels" else self.spatial_tile

    def as_dict(self):
        return asdict(self)

    def replace(self, **kw) -> "LowbitConfig":
        d = asdict(self)
        d.update(kw)
        return LowbitConfig(**d)


def _fit_lanes(cfg: LowbitConfig, channels_per_group: int, groups: int) -> LowbitConfig:
    """Grouped convs need the channel block inside one group: shrink lanes/o_vectors to divide it."""
    if groups == 1:
        return cfg
    if cfg.layout == "pixels":
        ov = cfg.o_vectors
        while ov > 1 and channels_per_group % ov:
            ov -= 1
        return cfg.replace(o_vectors=ov)
    lanes = cfg.lanes
    while lanes > 1 and channels_per_group % lanes:
        lanes //= 2
    ov = cfg.o_vectors
    while ov > 1 and channels_per_group % (lanes * ov):
        ov -= 1
    return cfg.replace(lanes=lanes, o_vectors=ov)


def fit_config(cfg: LowbitConfig, wl) -> LowbitConfig:
    """The knobs a workload can use: grouped convs keep each channel block inside one group."""
    if isinstance(wl, LowbitConvWorkload):
        return _fit_lanes(cfg, wl.geom.og, wl.geom.groups)
    if cfg.layout != "channels":
        raise ConfigError(f"layout={cfg.layout!r} is a conv layout; dense kernels take layout='channels'")
    return cfg


def conv_blocks(sch, pop: str = "pop", out: str = "out", pad: str = "pad"):
    return sch.get_sblock(pop), sch.get_sblock(out), sch.get_sblock(pad)


def apply_conv_schedule(sch, wl: LowbitConvWorkload, cfg: LowbitConfig, blocks=("pop", "out", "pad"),
                        xsum: Optional[str] = None, epi: Optional[str] = None) -> None:
    """Schedule the stages of :func:`lowbit_conv_compute` (blocks named ``blocks``) in ``sch``.

    ``cfg`` must already be fitted (:func:`fit_config`) and the compute built with its
    ``channel_block`` and ``pixel_tile`` (and ``base_by_column`` for ``layout="pixels"``).
    ``epi``: the float epilogue stage of a fused residual add (``out = epi + residual``); see
    :func:`_residual_epilogue`.
    """
    if epi is not None and cfg.layout == "pixels":
        sch.compute_inline(sch.get_sblock(epi))    # already whole pixel vectors along ow
    if cfg.layout == "pixels":
        _apply_conv_pixels(sch, wl, cfg, blocks, xsum)
        return
    pop, out, pad = conv_blocks(sch, *blocks)
    loops = sch.get_loops(pop)
    n, o, oh, ow = loops[:4]
    red = loops[4:]
    oo, ot, ol = sch.split(o, [None, cfg.o_vectors, cfg.lanes])
    owo, owi = sch.split(ow, [None, cfg.spatial_tile])
    sch.reorder(n, oh, owo, oo, *red, owi, ot, ol)
    sch.set_scope(pop, 0, "local")
    # accumulators with the channels innermost: a register tile is whole vectors (o-major, the
    # vectorized accumulator updates were lane-by-lane gathers/scatters through memory, ~10x slower)
    sch.transform_layout(pop, ("write", 0), lambda n_, o_, h_, w_: (n_, h_, w_, o_))
    # float/int epilogue per register tile, so the accumulators stay in registers; a packed output
    # word spans channel tiles: pack once the pixel tile has all its channels
    if epi is not None:
        _residual_epilogue(sch, cfg, sch.get_sblock(epi), out, oo, oh)
    else:
        sch.reverse_compute_at(out, owo if wl.epilogue.kind == "packed" else oo)
    if wl.epilogue.kind != "packed" and epi is None:
        _channel_vector_epilogue(sch, cfg, out)
    if cfg.lanes > 1:
        sch.vectorize(ol)
    sch.unroll(ot)
    sch.unroll(owi)
    _unroll_words_planes(sch, cfg, red)
    _finish_conv(sch, cfg, n, oh, pop, pad, red, xsum)


def _channel_vector_epilogue(sch, cfg: LowbitConfig, block) -> None:
    """NCHW epilogue of a channels-layout tile: pixels outer, channels inner and vectorized (strided
    stores, contiguous accumulator/epilogue-vector loads)."""
    inner = sch.get_loops(block)[4:]           # under (n, oh, owo, oo): (o, ow), or (o) when
    eo = inner[0]                              # the pixel tile is 1 wide
    if len(inner) == 2:
        sch.reorder(inner[1], eo)
    if cfg.lanes > 1:
        _, eol = sch.split(eo, [None, cfg.lanes])
        sch.vectorize(eol)


def _residual_epilogue(sch, cfg: LowbitConfig, epi, out, oo, oh) -> None:
    """Channels layout with a fused residual: each tile's float epilogue goes, as channel vectors,
    to a local ``[channels, ow]`` buffer of the output row (the strided stores the plain epilogue
    makes to the output, here into L1); once the row is done, the add runs per channel along the
    row, so the residual loads and the output stores are contiguous vectors."""
    sch.reverse_compute_at(epi, oo)
    sch.set_scope(epi, 0, "local")
    _channel_vector_epilogue(sch, cfg, epi)
    for loop in sch.get_loops(epi)[4:-1 if cfg.lanes > 1 else None]:
        sch.unroll(loop)
    sch.reverse_compute_at(out, oh)
    o_loop, w_loop = sch.get_loops(out)[2:]
    if int(sch.get(w_loop).extent) > 64:
        _, w_loop = sch.split(w_loop, [None, 16])
    sch.vectorize(w_loop)


def _conv_reduction(cfg: LowbitConfig, red):
    """(taps, planes, words) loops of the conv reduction: binary (rh, rw, rc); bitserial
    (rh, rw, ri, rj, rc), or (ri, rj, rh, rw, rc) when the taps are unrolled (``planes_outer``)."""
    if len(red) == 5 and cfg.unroll_taps:
        return red[2:4], red[0:2], red[-1]
    return red[0:2], red[2:-1], red[-1]


def _unroll_words_planes(sch, cfg: LowbitConfig, red) -> None:
    """The words of a tap (``unroll_reduce``) and the bit planes (always) unrolled."""
    _, planes, words = _conv_reduction(cfg, red)
    if cfg.unroll_reduce:
        sch.unroll(words)
    for plane_loop in planes:
        sch.unroll(plane_loop)


def _finish_conv(sch, cfg: LowbitConfig, n, oh, pop, pad, red, xsum: Optional[str]) -> None:
    """Both layouts: tap unrolling, threads over output rows, root stages, accumulator init."""
    if cfg.unroll_taps:
        for tap_loop in _conv_reduction(cfg, red)[0]:
            sch.unroll(tap_loop)
    outer = sch.fuse(n, oh)
    if cfg.parallel == "outer":
        sch.parallel(outer)
        pad_loops = sch.get_loops(pad)
        sch.parallel(sch.fuse(pad_loops[0], pad_loops[1]))
    if xsum is not None:
        # bitserial offset term per padded input pixel, a root stage like the padding
        xl = sch.get_loops(sch.get_sblock(xsum))
        sch.unroll(xl[-1])
        if cfg.parallel == "outer":
            sch.parallel(sch.fuse(xl[0], xl[1]))
    init = sch.decompose_reduction(pop, red[0])
    if cfg.lanes > 1 and not cfg.vectorize_init:
        sch.unroll(sch.get_loops(init)[-1])


def _apply_conv_pixels(sch, wl: LowbitConvWorkload, cfg: LowbitConfig, blocks, xsum: Optional[str]) -> None:
    """``layout="pixels"``: tile = ``o_vectors`` channels x ``spatial_tile`` vectors of ``lanes`` pixels."""
    pop, out, pad = conv_blocks(sch, *blocks)
    loops = sch.get_loops(pop)
    n, o, oh, ow = loops[:4]
    red = loops[4:]
    oo, ot = sch.split(o, [None, cfg.o_vectors])
    owo, owt, owl = sch.split(ow, [None, cfg.spatial_tile, cfg.lanes])
    sch.reorder(n, oh, owo, oo, *red, ot, owt, owl)
    # the accumulators' natural (n, o, oh, ow) order already has whole pixel vectors innermost
    sch.set_scope(pop, 0, "local")
    sch.reverse_compute_at(out, owo if wl.epilogue.kind == "packed" else oo)
    if wl.epilogue.kind != "packed" and cfg.lanes > 1:
        # NCHW epilogue along ow: whole vectors, contiguous stores
        _, eol = sch.split(sch.get_loops(out)[-1], [None, cfg.lanes])
        sch.vectorize(eol)
    if cfg.lanes > 1:
        sch.vectorize(owl)
    sch.unroll(owt)
    sch.unroll(ot)
    _unroll_words_planes(sch, cfg, red)
    _finish_conv(sch, cfg, n, oh, pop, pad, red, xsum)


def schedule_conv(wl: LowbitConvWorkload, cfg: LowbitConfig, weights, epilogue_inputs, impl: str
                  ) -> LowbitKernel:
    """Build the scheduled PrimFunc of a low-bit conv (see the module docstring for the loop nest)."""
    from tvm import te, s_tir

    cfg = fit_config(cfg, wl)
    ov = cfg.channel_block  # weight blocking = whole register tile of channels
    by_column = cfg.layout == "pixels"
    st = lowbit_conv_compute(wl, ov, cfg.pixel_tile, by_column, cfg.unroll_taps)
    consts = prepare_conv_constants(wl, ov, weights, epilogue_inputs, by_column)
    sch = s_tir.Schedule(te.create_prim_func(st.params))
    apply_conv_schedule(sch, wl, cfg, xsum="xsum" if "xsum" in st.extra else None,
                        epi="out_epi" if "epi" in st.extra else None)
    return LowbitKernel(impl=impl, func=sch.mod["main"],
                        params=kernel_params(st.param_names, st.params, consts),
                        config=dict(cfg.as_dict(), word_bits=wl.word_bits), macs=wl.geom.macs)


def apply_dense_schedule(sch, wl: LowbitDenseWorkload, cfg: LowbitConfig, blocks=("pop", "out"),
                         xsum: Optional[str] = None) -> None:
    """Schedule the stages of :func:`lowbit_dense_compute` in ``sch``."""
    pop = sch.get_sblock(blocks[0])
    out = sch.get_sblock(blocks[1])
    loops = sch.get_loops(pop)
    m, n = loops[:2]
    red = loops[2:]
    mo, mi = sch.split(m, [None, cfg.spatial_tile])
    no, nt, nl = sch.split(n, [None, cfg.o_vectors, cfg.lanes])
    kw = int(sch.get(red[0]).extent)
    block = cfg.plane_block
    while kw % block:                    # plane_block, halved until it divides Kw
        block //= 2
    if len(red) > 1 and block > 1:
        # bitserial (rk, ri, rj) -> (rk blocks, ri, rj, words of the block): see plane_block
        rko, rki = sch.split(red[0], [None, block])
        sch.reorder(mo, no, rko, *red[1:], rki, mi, nt, nl)
        sch.unroll(rki)
        red = [rko] + list(red[1:])
    else:
        sch.reorder(mo, no, *red, mi, nt, nl)
    sch.set_scope(pop, 0, "local")
    packed = wl.epilogue.kind == "packed"
    # a packed output word spans channel tiles: pack once the row tile has all its channels
    sch.reverse_compute_at(out, mo if packed else no)
    if cfg.lanes > 1:
        sch.vectorize(nl)
        if not packed:
            _, eol = sch.split(sch.get_loops(out)[-1], [None, cfg.lanes])
            sch.vectorize(eol)
    if xsum is not None:
        sch.unroll(sch.get_loops(sch.get_sblock(xsum))[-1])   # small root stage: one value per row
    sch.unroll(nt)
    sch.unroll(mi)
    for plane_loop in red[1:]:           # bitserial: (rk, ri, rj), planes unrolled
        sch.unroll(plane_loop)
    if cfg.parallel == "outer":
        sch.parallel(mo if packed else sch.fuse(mo, no))
    init = sch.decompose_reduction(pop, red[0])
    if cfg.lanes > 1 and not cfg.vectorize_init:
        sch.unroll(sch.get_loops(init)[-1])


def schedule_dense(wl: LowbitDenseWorkload, cfg: LowbitConfig, weights, epilogue_inputs, impl: str
                   ) -> LowbitKernel:
    """Build the scheduled PrimFunc of a low-bit dense layer."""
    from tvm import te, s_tir

    cfg = fit_config(cfg, wl)
    ov = cfg.channel_block
    st = lowbit_dense_compute(wl, ov, cfg.pixel_tile)
    consts = prepare_dense_constants(wl, ov, weights, epilogue_inputs)
    sch = s_tir.Schedule(te.create_prim_func(st.params))
    apply_dense_schedule(sch, wl, cfg, xsum="xsum" if "xsum" in st.extra else None)
    return LowbitKernel(impl=impl, func=sch.mod["main"],
                        params=kernel_params(st.param_names, st.params, consts),
                        config=dict(cfg.as_dict(), word_bits=wl.word_bits), macs=wl.macs)


def apply_packed_schedule(sch, block: str, n_reduce: int, parallel: bool) -> None:
    """BitPack / BitUnpack / PackedMaxPool: the (short) reduction loops unrolled, the two outermost
    output loops fused into one parallel loop, the innermost output loop vectorized when nothing
    reduces inside it (BitUnpack)."""
    blk = sch.get_sblock(block)
    loops = sch.get_loops(blk)
    spatial, red = loops[: len(loops) - n_reduce], loops[len(loops) - n_reduce:]
    for r in red:
        sch.unroll(r)
    inner = spatial[-1] if len(spatial) > 1 else None
    if parallel:
        sch.parallel(sch.fuse(spatial[0], spatial[1]) if len(spatial) > 2 else spatial[0])
    if not red and inner is not None and int(sch.get(inner).extent) % 8 == 0:
        _, lanes = sch.split(inner, [None, 8])
        sch.vectorize(lanes)
