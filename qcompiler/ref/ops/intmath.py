"""Exact integer convolution and matrix products for the reference ops.

numpy has no BLAS for integers, so these run the product in float64 (BLAS) and check that every
partial sum stays below 2^53, where float64 arithmetic on integers is exact; the result is then
converted back to int64 without loss.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import ShapeError

_EXACT_LIMIT = float(2 ** 53)


def conv_output_size(size: int, k: int, stride: int, pad_begin: int, pad_end: int, dilation: int) -> int:
    return (size + pad_begin + pad_end - dilation * (k - 1) - 1) // stride + 1


def conv_output_shape(spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                      pads: Sequence[int], dilations: Sequence[int]) -> tuple:
    nd = len(spatial)
    if not (len(kernel) == len(strides) == len(dilations) == nd and len(pads) == 2 * nd):
        raise ShapeError(f"kernel {list(kernel)}, strides {list(strides)}, pads {list(pads)} and "
                         f"dilations {list(dilations)} do not fit {nd} spatial dims")
    if min(strides) < 1 or min(dilations) < 1 or min(kernel) < 1 or min(pads) < 0:
        raise ShapeError(f"strides/dilations/kernel must be >= 1 and pads >= 0, got strides "
                         f"{list(strides)}, dilations {list(dilations)}, kernel {list(kernel)}, pads {list(pads)}")
    out = tuple(conv_output_size(spatial[i], kernel[i], strides[i], pads[i], pads[nd + i], dilations[i])
                for i in range(nd))
    if min(out) < 1:
        raise ShapeError(f"the kernel {list(kernel)} (dilations {list(dilations)}) does not fit the "
                         f"padded input {list(spatial)} (pads {list(pads)})")
    return out


def conv_nd(x: np.ndarray, w: np.ndarray, strides, pads, dilations, groups: int,
            pad_value: float = 0.0) -> np.ndarray:
    """Grouped N-d convolution (cross-correlation) by im2col, in the dtype of ``x`` (float64 here).

    x ``[N, C, *S]``, w ``[O, C/groups, *K]``, pads ``[begin..., end...]`` filled with ``pad_value``.
    """
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    o, cg = w.shape[:2]
    ks = w.shape[2:]
    if len(ks) != nd:
        raise ShapeError(f"input rank {x.ndim} and weight rank {w.ndim} differ")
    if groups < 1 or c % groups or o % groups or c // groups != cg:
        raise ShapeError(f"{c} input channels, {o} output channels and weights with {cg} channels per "
                         f"group do not fit groups={groups}")
    out_sp = conv_output_shape(spatial, ks, strides, pads, dilations)
    widths = [(0, 0), (0, 0)] + [(int(pads[i]), int(pads[nd + i])) for i in range(nd)]
    xp = np.pad(x, widths, constant_values=pad_value)
    cols = np.empty((n, c) + tuple(ks) + out_sp, x.dtype)
    for tap in np.ndindex(*ks):
        window = tuple(slice(tap[i] * dilations[i], tap[i] * dilations[i] + (out_sp[i] - 1) * strides[i] + 1,
                             strides[i]) for i in range(nd))
        cols[(slice(None), slice(None)) + tap] = xp[(slice(None), slice(None)) + window]
    kk = int(np.prod(ks, dtype=np.int64))
    p = int(np.prod(out_sp, dtype=np.int64))
    cols = cols.reshape(n, groups, cg * kk, p)
    wm = w.reshape(groups, o // groups, cg * kk).astype(x.dtype)
    out = np.matmul(wm[None], cols)
    return out.reshape((n, o) + out_sp)


def _check_exact(a: np.ndarray, b: np.ndarray, terms: int, what: str) -> None:
    amax = float(np.max(np.abs(a))) if a.size else 0.0
    bmax = float(np.max(np.abs(b))) if b.size else 0.0
    if amax * bmax * max(terms, 1) >= _EXACT_LIMIT:
        raise ShapeError(f"{what}: the accumulation could exceed 2^53 ({terms} terms, |a| <= {amax}, "
                         f"|b| <= {bmax}); too large for the reference executor")


def int_conv(x: np.ndarray, w: np.ndarray, strides, pads, dilations, groups: int,
             pad_value: int = 0) -> np.ndarray:
    """Exact integer conv of integer arrays (padding value ``pad_value``) -> int64."""
    xf = x.astype(np.float64)
    wf = w.astype(np.float64)
    terms = int(np.prod(w.shape[1:], dtype=np.int64))
    _check_exact(np.append(xf.reshape(-1), float(pad_value)), wf, terms, "integer conv")
    return np.rint(conv_nd(xf, wf, strides, pads, dilations, groups, float(pad_value))).astype(np.int64)


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer ``a @ b`` (numpy matmul broadcasting) -> int64."""
    af = a.astype(np.float64)
    bf = b.astype(np.float64)
    _check_exact(af, bf, a.shape[-1] if a.ndim else 1, "integer matmul")
    return np.rint(np.matmul(af, bf)).astype(np.int64)
