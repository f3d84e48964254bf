"""Calibration observers: ranges on known distributions, per-channel, one-pass histograms."""

import numpy as np
import pytest

from qcompiler.errors import ConfigError
from qcompiler.quant.observers import OBSERVERS, make_observer, observe
from qcompiler.quant.qparams import qparams_from_range, weight_qparams

RNG = np.random.default_rng(3)


@pytest.mark.parametrize("method", sorted(OBSERVERS))
def test_ranges_inside_minmax_and_clip_outliers(method):
    obs = make_observer(method, bits=8)
    data = [RNG.standard_normal(20000) for _ in range(3)]
    data[1][0] = 40.0  # one outlier
    for d in data:
        obs.collect(d)
    lo, hi = obs.range()
    assert lo.shape == () and -40 <= lo < 0 < hi <= 40
    if method in ("percentile", "kl"):
        assert 3.0 < hi < 10.0  # the outlier is clipped
    if method == "minmax":
        assert hi == 40.0


@pytest.mark.parametrize("method", sorted(OBSERVERS))
def test_relu_outputs_stay_non_negative_and_per_channel(method):
    x = np.maximum(RNG.standard_normal((2, 3, 500)), 0) * np.array([1.0, 4.0, 9.0])[None, :, None]
    lo, hi = observe(x, method, axis=1, bits=8)
    assert lo.shape == (3,) and np.all(lo == 0)
    assert np.all(np.diff(hi) > 0) and np.all(hi <= x.max(axis=(0, 2)))
    if method == "kl":
        assert hi[0] > 2.0  # the zeros of ReLU do not drag the threshold down


def test_histogram_range_doubling_is_one_pass_exact():
    a = RNG.uniform(0, 1, 5000)
    b = RNG.uniform(0, 3.5, 5000)
    one = make_observer("percentile", percentile=99.0)
    one.collect(a), one.collect(b)
    both = make_observer("percentile", percentile=99.0)
    both.collect(np.concatenate([a, b]))
    assert one.hist.sum() == both.hist.sum() == 10000
    assert abs(float(one.range()[1]) - float(both.range()[1])) < 4 * 3.5 * 2 / 2048


def test_mse_beats_minmax_on_heavy_tails():
    x = RNG.laplace(size=50000)
    def mse(lo, hi):
        qp = qparams_from_range(lo, hi, 4, signed=True, symmetric=True)
        return float(np.mean((qp.dequantize(qp.quantize(x)) - x) ** 2))
    assert mse(*observe(x, "mse", bits=4)) < 0.8 * mse(*observe(x, "minmax", bits=4))


def test_weight_qparams_and_errors():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    qp = weight_qparams(w, 8, per_channel=True, symmetric=True)
    assert qp.scale.shape == (4,) and qp.dtype == "int8" and qp.qmin == -127
    q = qp.quantize(w)
    assert np.abs(qp.dequantize(q) - w).max() <= qp.scale.max() / 2 + 1e-6
    with pytest.raises(ConfigError, match="unknown calibration method"):
        make_observer("entropy")
    with pytest.raises(ConfigError, match="no data"):
        make_observer("kl").range()
