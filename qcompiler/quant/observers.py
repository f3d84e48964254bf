"""Calibration observers: watch a tensor over calibration batches, then propose its quantization range.

Small strategy classes behind one interface, looked up by name in :data:`OBSERVERS` (onnxruntime's
calibrators ``collect_data``/``compute_data`` are the model): ``collect(x)`` once per batch, then
``range() -> (lo, hi)``, float64 arrays of shape ``()`` (per tensor) or ``[C]`` (per channel along
``axis``). Every method returns a range inside the observed [min, max].

* ``minmax``: the observed min and max.
* ``percentile``: clip |x| at the given percentile of its histogram.
* ``mse``: clip |x| at the threshold (searched over ``mse_grid`` ratios of max|x|) that minimises the
  expected squared quantization error (rounding + clipping) over the histogram.
* ``kl``: TensorRT's entropy calibration: clip |x| at the threshold whose quantized distribution
  (``2^(bits-1)`` levels signed, ``2^bits - 1`` unsigned) is closest in KL divergence to the
  clipped reference distribution (outliers folded into the last bin), over a 2048-bin histogram.

Histograms are of the non-zero |x| per channel over ``[0, R]`` (exact zeros, e.g. after ReLU, are
counted apart: they are representable at any threshold and would otherwise drag KL towards tiny
thresholds); when a batch exceeds R, R doubles and pairs of bins merge, which is exact, so the
observers need only one pass over the calibration data.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Type

import numpy as np

from ..errors import ConfigError, ShapeError


class Observer:
    """Tracks per-channel (or per-tensor) min and max; subclasses refine :meth:`range`."""

    method = "minmax"

    def __init__(self, axis: Optional[int] = None, bits: int = 8, percentile: float = 99.99,
                 num_bins: int = 2048, mse_grid: int = 100):
        self.axis = axis
        self.bits = int(bits)
        self.percentile = float(percentile)
        self.num_bins = int(num_bins)
        self.mse_grid = int(mse_grid)
        self.lo: Optional[np.ndarray] = None
        self.hi: Optional[np.ndarray] = None
        self.batches = 0

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """x as [C, -1] float64 (C = 1 per tensor)."""
        x = np.asarray(x, np.float64)
        if self.axis is None:
            return x.reshape(1, -1)
        if not -x.ndim <= self.axis < x.ndim:
            raise ShapeError(f"observer axis {self.axis} is out of range for shape {list(x.shape)}")
        return np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1)

    def collect(self, x: np.ndarray) -> None:
        rows = self._rows(x)
        if rows.shape[1] == 0:
            return
        if not np.all(np.isfinite(rows)):
            raise ShapeError("calibration saw NaN or infinite values")
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        if self.lo is not None and self.lo.shape != lo.shape:
            raise ShapeError(f"observer saw {lo.shape[0]} channels after {self.lo.shape[0]}")
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        self.batches += 1
        self._collect_rows(rows)

    def _collect_rows(self, rows: np.ndarray) -> None:
        pass

    def _shape(self, arr: np.ndarray) -> np.ndarray:
        return arr.reshape(()) if self.axis is None else arr

    def range(self) -> Tuple[np.ndarray, np.ndarray]:
        if self.lo is None:
            raise ConfigError("the observer saw no data (empty calibration set?)")
        return self._shape(self.lo.copy()), self._shape(self.hi.copy())

    @property
    def signed(self) -> np.ndarray:
        """Per channel: does the tensor take negative values (then it is quantized symmetric signed)?"""
        return self.lo < 0


class HistogramObserver(Observer):
    """Keeps a ``num_bins`` histogram of |x| per channel; subclasses choose a clip threshold."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.hist: Optional[np.ndarray] = None   # [C, num_bins] counts of the non-zero |x|
        self.zeros: Optional[np.ndarray] = None  # [C] counts of exact zeros
        self.top: Optional[np.ndarray] = None    # [C] histogram range [0, top]

    def _collect_rows(self, rows: np.ndarray) -> None:
        a = np.abs(rows)
        amax = a.max(axis=1)
        c, nb = rows.shape[0], self.num_bins
        if self.hist is None:
            self.hist = np.zeros((c, nb), np.float64)
            self.zeros = np.zeros(c, np.float64)  # exact zeros (ReLU): representable at any threshold
            self.top = np.where(amax > 0, amax, 0.0)
        for ch in range(c):
            if self.top[ch] == 0 and amax[ch] > 0:
                self.top[ch] = amax[ch]  # all earlier values were 0: they stay in bin 0
            while amax[ch] > self.top[ch]:  # double the range: merge pairs of bins (exact)
                merged = self.hist[ch].reshape(nb // 2, 2).sum(axis=1)
                self.hist[ch] = np.concatenate([merged, np.zeros(nb - nb // 2)])
                self.top[ch] *= 2.0
            nonzero = a[ch][a[ch] != 0]
            self.zeros[ch] += a.shape[1] - nonzero.size
            if nonzero.size:
                self.hist[ch] += np.histogram(nonzero, bins=nb, range=(0.0, self.top[ch]))[0]

    def range(self) -> Tuple[np.ndarray, np.ndarray]:
        lo, hi = super().range()
        lo, hi = lo.reshape(-1), hi.reshape(-1)
        t = np.array([self._threshold(ch, max(-lo[ch], hi[ch]), bool(lo[ch] < 0))
                      if self.top[ch] > 0 and self.hist[ch].any() else 0.0 for ch in range(lo.size)])
        return self._shape(np.maximum(lo, -t)), self._shape(np.minimum(hi, t))

    def _threshold(self, ch: int, amax: float, signed: bool) -> float:
        """The clip threshold T of channel ``ch`` (its histogram: ``self.hist[ch]`` over [0, top])."""
        raise NotImplementedError

    def levels(self, signed: bool) -> int:
        """Quantization steps on [0, T]: symmetric signed has 2^(b-1) - 1, unsigned 2^b - 1."""
        return (1 << (self.bits - 1)) - 1 if signed else (1 << self.bits) - 1


class PercentileObserver(HistogramObserver):
    method = "percentile"

    def _threshold(self, ch, amax, signed):
        hist, top = self.hist[ch], self.top[ch]
        cdf = (self.zeros[ch] + np.cumsum(hist)) / (self.zeros[ch] + hist.sum())
        idx = int(np.searchsorted(cdf, self.percentile / 100.0))
        return min(amax, (idx + 1) * top / hist.size)


class MSEObserver(HistogramObserver):
    method = "mse"

    def _threshold(self, ch, amax, signed):
        hist, top = self.hist[ch], self.top[ch]
        centers = (np.arange(hist.size) + 0.5) * (top / hist.size)
        steps = max(self.levels(signed), 1)
        best_t, best_err = amax, np.inf
        for ratio in np.linspace(1.0 / self.mse_grid, 1.0, self.mse_grid):
            t = amax * ratio
            step = t / steps
            q = np.minimum(np.round(centers / step) * step, t)
            err = float(np.dot(hist, (centers - q) ** 2))
            if err < best_err:
                best_t, best_err = t, err
        return best_t


class KLObserver(HistogramObserver):
    method = "kl"

    def _threshold(self, ch, amax, signed):
        hist, top = self.hist[ch], self.top[ch]
        nq = self.levels(signed) + (1 if signed else 0)  # TensorRT: 128 bins for int8
        nb = hist.size
        last = int(np.nonzero(hist)[0][-1]) + 1 if hist.any() else nb
        if last <= nq:
            return amax  # the data already fits the quantized bins: no clipping
        stride = max(1, (last - nq) // 256)  # ~256 candidate thresholds keep this fast
        best_i, best_kl = last, np.inf
        for i in list(range(nq, last, stride)) + [last]:
            kl = _kl_divergence(hist, i, nq)
            if kl < best_kl:
                best_i, best_kl = i, kl
        return min(amax, (best_i + 0.5) * top / nb)


def _kl_divergence(hist: np.ndarray, i: int, nq: int) -> float:
    """KL(P || Q) of the reference distribution clipped at bin ``i`` and its ``nq``-level quantization."""
    ref = hist[:i].astype(np.float64).copy()
    ref[i - 1] += hist[i:].sum()
    sliced = hist[:i]
    nonzero = sliced > 0
    edges = (np.arange(nq + 1) * i) // nq
    sums = np.add.reduceat(sliced, edges[:-1])
    counts = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
    per_bin = np.repeat(np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), np.diff(edges))
    q = np.where(nonzero, per_bin, 0.0)
    p = ref / ref.sum()
    if q.sum() == 0:
        return np.inf
    q = q / q.sum()
    mask = p > 0
    q_m = np.maximum(q[mask], 1e-12)  # smoothing where the quantized distribution is empty
    return float(np.sum(p[mask] * np.log(p[mask] / q_m)))


#: calibration method name -> observer class
OBSERVERS: Dict[str, Type[Observer]] = {
    "minmax": Observer,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver,
}


def make_observer(method: str, axis: Optional[int] = None, bits: int = 8, **params) -> Observer:
    """An observer for calibration ``method`` (one of :data:`OBSERVERS`)."""
    try:
        cls = OBSERVERS[method]
    except KeyError:
        raise ConfigError(f"unknown calibration method {method!r}; choose from {sorted(OBSERVERS)}") from None
    return cls(axis=axis, bits=bits, **params)


def observe(x: np.ndarray, method: str = "minmax", axis: Optional[int] = None, bits: int = 8,
            **params) -> Tuple[np.ndarray, np.ndarray]:
    """One-shot range of a tensor (e.g. weights) with ``method``."""
    obs = make_observer(method, axis=axis, bits=bits, **params)
    obs.collect(x)
    return obs.range()
