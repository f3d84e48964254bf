"""Schedule templates shared by the CPU families: loop transformations driven only by config knobs.

Each family module (``schedules/x86``, ``schedules/arm``, ``schedules/riscv``) binds these templates
to the computes with its own default knobs (vector width, tiles, unroll), so a family can replace a
template with a specialised schedule without touching the others. Knobs used here:

* ``vec``: lanes of the innermost vectorised loop of injective stages (0 leaves it to LLVM's loop
  vectoriser, which also handles remainders);
* ``vo`` / ``vn``: output-channel block of conv / dense (the vector axis of the accumulators);
* ``tile_ow`` / ``tile_m`` / ``tile_nb``: register tile along output columns / rows / vector blocks
  (unrolled);
* ``parallel``: 1 to run the outermost fused loop on the thread pool, 0 for a serial kernel;
* ``unroll``: 1 to unroll the register tile loops.
"""

from __future__ import annotations

from typing import List

import numpy as np

from tvm import s_tir

from .kernel import Stages, Workload


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _parallel(sch, loops: List, cfg) -> None:
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if cfg.get("parallel", 1) and _extent(sch, fused) > 1:
        sch.parallel(fused)


def injective(sch, block: str, cfg: dict) -> None:
    """Parallel over all but the innermost loop; the innermost split by ``vec`` and vectorised when
    it divides evenly (remainders are left to LLVM's vectoriser rather than predicated). When ``vec``
    does not divide the innermost extent (NCHW 56x56 maps), trailing loops are fused until it does:
    LLVM did not vectorise the short rows inside TVM's parallel closures (an Add ran 4x slower)."""
    blk = sch.get_sblock(block)
    loops = sch.get_loops(blk)
    if not loops:
        return
    vec = int(cfg.get("vec", 0))
    k = len(loops) - 1
    fused_extent = _extent(sch, loops[k])
    while vec > 1 and fused_extent % vec and k > 0:
        k -= 1
        fused_extent *= _extent(sch, loops[k])
    if vec > 1 and fused_extent % vec == 0 and k < len(loops) - 1:
        loops = list(loops[:k]) + [sch.fuse(*loops[k:])]
    inner = loops[-1]
    n = _extent(sch, inner)
    outer = list(loops[:-1])
    if vec > 1 and n % vec == 0 and n >= vec:
        io, ii = sch.split(inner, [None, vec])
        sch.vectorize(ii)
        if not outer:
            outer = [io]
    elif not outer and n >= 4096 and cfg.get("parallel", 1):
        io, _ = sch.split(inner, [None, 1024])
        outer = [io]
    _parallel(sch, outer, cfg)


def reduction(sch, block: str, cfg: dict) -> None:
    """Parallel over the spatial loops of a reduction block (its reduction loops stay serial)."""
    blk = sch.get_sblock(block)
    loops = sch.get_loops(blk)
    kinds = _iter_kinds(sch, blk)
    spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
    if len(spatial) == len(loops) or not spatial:
        return _parallel(sch, spatial, cfg)
    # keep spatial loops outermost (they already are, TE puts reduce axes last)
    _parallel(sch, spatial, cfg)


def _iter_kinds(sch, blk) -> List[str]:
    b = sch.get(blk)
    return ["R" if iv.iter_type == 2 else "S" for iv in b.iter_vars]


def tile_loops(sch, block, names_extents) -> dict:
    """The innermost loops of ``block`` after ``compute_at``, by name.

    ``compute_at`` drops loops of extent 1, so ``names_extents`` lists the expected inner loops in
    order with their extents; the ones of extent 1 map to ``None``.
    """
    loops = sch.get_loops(block)
    kept = [(nm, e) for nm, e in names_extents if e > 1]
    inner = loops[len(loops) - len(kept):] if kept else []
    got = [_extent(sch, lp) for lp in inner]
    if got != [e for _, e in kept]:
        raise RuntimeError(f"internal: expected inner loops {kept}, found extents {got}")
    found = {nm: lp for (nm, _), lp in zip(kept, inner)}
    return {nm: found.get(nm) for nm, _ in names_extents}


def _present(*loops):
    return [lp for lp in loops if lp is not None]


def inline_all(sch, stages: Stages, names) -> None:
    for name in names:
        if name in stages.named:
            sch.compute_inline(sch.get_sblock(stages.block(name)))


def conv2d_ocvec(sch, st: Stages, wl: Workload, target, cfg: dict) -> None:
    """Direct conv, ``vo`` output channels in a vector register, ``tile_ow`` columns unrolled.

    out loops: parallel(n, ob, oh) / owo / [owi, oi]; the accumulator tile ``[tile_ow, vo]`` is
    computed at ``owo`` (reduction rc, ky, kx outside the unrolled/vectorised ``ow``/``vi``).
    """
    vo, t = cfg["vo"], cfg["tile_ow"]
    if "pad" in st.named:
        injective(sch, st.block("pad"), cfg)
    out = sch.get_sblock(st.block("out"))
    n, o, oh, ow = sch.get_loops(out)
    ob, oi = sch.split(o, [None, vo])
    owo, owi = sch.split(ow, [None, t])
    sch.reorder(n, ob, oh, owo, owi, oi)
    fused = sch.fuse(n, ob, oh)
    if cfg.get("parallel", 1):
        sch.parallel(fused)
    acc = sch.get_sblock(st.block("acc"))
    sch.compute_at(acc, owo)
    g = wl.inputs[1].shape  # [O, Cg, KH, KW]
    lp = tile_loops(sch, acc, [("ow", t), ("vi", vo), ("rc", g[1]), ("ky", g[2]), ("kx", g[3])])
    red = _present(lp["rc"], lp["ky"], lp["kx"])
    order = red + _present(lp["ow"], lp["vi"])
    if len(order) > 1:
        sch.reorder(*order)
    if lp["ow"] is not None and cfg.get("unroll", 1):
        sch.unroll(lp["ow"])
    if lp["vi"] is not None:
        sch.vectorize(lp["vi"])
    if red:
        init = sch.decompose_reduction(acc, red[0])
        if lp["vi"] is not None:
            sch.vectorize(sch.get_loops(init)[-1])
    if cfg.get("unroll", 1) and t * vo <= 256:
        sch.unroll(oi)
        sch.unroll(owi)


def depthwise_conv2d(sch, st: Stages, wl: Workload, target, cfg: dict) -> None:
    """Depthwise conv: parallel over (n, c), ``vw`` output columns per vector (over padded columns)."""
    vw = cfg["vw"]
    if "pad" in st.named:
        injective(sch, st.block("pad"), cfg)
    out = sch.get_sblock(st.block("out"))
    n, c, oh, ow = sch.get_loops(out)
    owo, owi = sch.split(ow, [None, vw])
    fused = sch.fuse(n, c)
    if cfg.get("parallel", 1):
        sch.parallel(fused)
    acc = sch.get_sblock(st.block("acc"))
    sch.compute_at(acc, owo)
    kh, kw = wl.inputs[1].shape[2:]
    lp = tile_loops(sch, acc, [("ow", vw), ("ky", kh), ("kx", kw)])
    red = _present(lp["ky"], lp["kx"])
    if lp["ow"] is not None:
        if red:
            sch.reorder(*red, lp["ow"])
        sch.vectorize(lp["ow"])
    if red:
        init = sch.decompose_reduction(acc, red[0])
        if lp["ow"] is not None:
            sch.vectorize(sch.get_loops(init)[-1])


def dense_nvec(sch, st: Stages, wl: Workload, target, cfg: dict) -> None:
    """Dense with packed weights: parallel over (m-tiles, n-block groups); accumulators
    ``[tile_m, tile_nb, vn]`` with ``vn`` vectorised and the rest unrolled; k outermost in the tile."""
    vn, tm, tnb = cfg["vn"], cfg["tile_m"], cfg["tile_nb"]
    if "bpack" in st.named:
        injective(sch, st.block("bpack"), cfg)
    out = sch.get_sblock(st.block("out"))
    loops = sch.get_loops(out)
    m = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    n = loops[-1]
    mo, mi = sch.split(m, [None, tm])
    no, ni = sch.split(n, [None, vn * tnb])
    sch.reorder(mo, no, mi, ni)
    fused = sch.fuse(mo, no)
    if cfg.get("parallel", 1):
        sch.parallel(fused)
    acc = sch.get_sblock(st.block("acc"))
    sch.compute_at(acc, fused)
    k = st.named["acc"].op.reduce_axis[0].dom.extent
    lp = tile_loops(sch, acc, [("m", tm), ("nb", tnb), ("vi", vn), ("rk", int(k))])
    order = _present(lp["rk"], lp["m"], lp["nb"], lp["vi"])
    if len(order) > 1:
        sch.reorder(*order)
    if cfg.get("unroll", 1):
        for name in ("m", "nb"):
            if lp[name] is not None:
                sch.unroll(lp[name])
    if lp["vi"] is not None:
        sch.vectorize(lp["vi"])
    if lp["rk"] is not None:
        init = sch.decompose_reduction(acc, lp["rk"])
        if lp["vi"] is not None:
            sch.vectorize(sch.get_loops(init)[-1])
    n_total = wl.outputs[0].shape[-1]
    m_total = int(np.prod(wl.outputs[0].shape[:-1]))
    if n_total % (vn * tnb) == 0 and m_total % tm == 0 and vn > 1:
        nio, nii = sch.split(ni, [None, vn])
        sch.vectorize(nii)


def batch_matmul(sch, st: Stages, wl: Workload, target, cfg: dict) -> None:
    """Generic matmul: parallel over batch and rows, k outside the contiguous n loop (which LLVM
    vectorises); the accumulator row is initialised once."""
    acc = sch.get_sblock(st.block("acc"))
    loops = sch.get_loops(acc)
    *outer, n, k = loops
    sch.reorder(k, n)
    _parallel(sch, outer, cfg)
    sch.decompose_reduction(acc, k)
    if "out" in st.named:
        injective(sch, st.block("out"), cfg)


def pool(sch, st: Stages, wl: Workload, target, cfg: dict) -> None:
    """2-D pools: parallel over (n, c, oh); the window taps unrolled outside the output row, so the
    inner loop runs along ``ow`` (2-3x faster than one parallel loop over every output element).
    Each output still takes its taps in (ky, kx) order, so float sums round as before."""
    acc = sch.get_sblock(st.block("acc"))
    loops = sch.get_loops(acc)
    if _iter_kinds(sch, acc) == ["S", "S", "S", "S", "R", "R"] and len(loops) == 6:
        n, c, oh, ow, ky, kx = loops
        _parallel(sch, [n, c, oh], cfg)
        sch.reorder(ky, kx, ow)
        sch.decompose_reduction(acc, ky)
        sch.unroll(ky)
        sch.unroll(kx)
    else:
        reduction(sch, st.block("acc"), cfg)
    if "out" in st.named:
        injective(sch, st.block("out"), cfg)


def softmax(sch, st: Stages, wl: Workload, target, cfg: dict) -> None:
    for name in ("maxv", "sumv"):
        reduction(sch, st.block(name), cfg)
    for name in ("expv", "out"):
        injective(sch, st.block(name), cfg)


def all_injective(sch, st: Stages, wl: Workload, target, cfg: dict) -> None:
    """Every stage of an injective compute (several for Split)."""
    for name in st.named:
        injective(sch, st.block(name), cfg)


def reduce_op(sch, st: Stages, wl: Workload, target, cfg: dict) -> None:
    reduction(sch, st.block("acc"), cfg)
    if "out" in st.named:
        injective(sch, st.block("out"), cfg)


__all__ = ["injective", "reduction", "conv2d_ocvec", "depthwise_conv2d", "dense_nvec", "batch_matmul",
           "pool", "softmax", "all_injective", "reduce_op", "s_tir"]
