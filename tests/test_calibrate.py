"""Calibration over batches: statistics per value, clear errors for bad batches."""

import numpy as np
import pytest

from qcompiler.errors import ConfigError
from qcompiler.ir import Graph, Node, Value
from qcompiler.quant import QuantConfig
from qcompiler.quant.calibrate import calibrate


def _graph():
    g = Graph("g")
    g.add_value(Value("x", (2, 3), "float32"))
    g.inputs.append("x")
    g.add_value(Value("y", (2, 3), "float32"))
    g.add_node(Node("Relu", "relu", ["x"], ["y"]))
    g.outputs.append("y")
    return g


def test_calibrate_collects_ranges_and_splits_batches():
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((2, 3)).astype(np.float32)} for _ in range(3)]
    batches.append({"x": np.full((4, 3), 7.0, np.float32)})  # two graph batches at once
    obs = calibrate(_graph(), batches, QuantConfig())
    assert obs["x"].batches == 5 and float(obs["y"].range()[0]) == 0.0
    assert float(obs["y"].range()[1]) == 7.0


@pytest.mark.parametrize("batch,match", [
    ({"z": np.zeros((2, 3), np.float32)}, "missing \\['x'\\]"),
    ({"x": np.zeros((2, 4), np.float32)}, "shape"),
    ({"x": np.zeros((3, 3), np.float32)}, "multiple"),
    ({"x": np.zeros((2, 3), np.float64)}, "dtype float64"),
    ([1, 2], "must be a dict"),
])
def test_bad_batches(batch, match):
    with pytest.raises(ConfigError, match=match):
        calibrate(_graph(), [batch], QuantConfig())


def test_empty_calibration():
    with pytest.raises(ConfigError, match="empty"):
        calibrate(_graph(), [], QuantConfig())
