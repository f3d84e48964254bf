import numpy as np
import pytest

from qcompiler.errors import ConfigError
from qcompiler.passes.ternarize import ternarize, ternary_codes
from qcompiler.ref.ops.bits import unpack_planes

from test_quantize_bitserial import _feeds, _net, _rel_err


def test_ternary_codes_twn():
    rows = np.array([[1.0, -0.1, 0.5, -2.0], [0.0, 0.0, 0.0, 0.0]])
    u, alpha, mult, off = ternary_codes(rows)
    # delta = 0.7 * 0.9 = 0.63: keep 1.0 and -2.0, alpha = 1.5
    np.testing.assert_array_equal(u[0] - 1, [1, 0, 0, -1])
    assert alpha[0] == pytest.approx(1.5) and (mult, off) == (1, 1) and np.all(u[1] == 1)


def test_ternarize_graph_and_errors():
    g = _net()
    t = ternarize(g, calibration=[_feeds(1)], act_bits=8)
    n = next(n for n in t.nodes if n.op == "BitserialConv2d")
    assert (n.attrs["weight_bits"], n.attrs["w_mult"], n.attrs["w_offset"], n.attrs["act_bits"]) == (2, 1, 1, 8)
    assert set(np.unique(unpack_planes(t.const(n.inputs[1]), 8))) <= {0, 1, 2}
    assert _rel_err(g, t) < 1.0  # random Gaussian weights: TWN keeps the gist, not the detail
    with pytest.raises(ConfigError, match="threshold_ratio"):
        ternarize(g, calibration=[_feeds(1)], threshold_ratio=2.0)
