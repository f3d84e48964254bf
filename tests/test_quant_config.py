"""QuantConfig validation and per-node resolution."""

import pytest

from qcompiler.errors import ConfigError
from qcompiler.quant import QuantConfig


def test_defaults_and_resolution():
    cfg = QuantConfig(weights=4, activations=8, keep_first_last=8,
                      overrides={"conv1": dict(weights=8), "layer4.*": dict(weights=2, per_channel=False)})
    assert cfg.for_node("conv2").weights == 4
    assert cfg.for_node("conv1").weights == 8
    lay = cfg.for_node("layer4.0.conv")
    assert (lay.weights, lay.per_channel) == (2, False)
    assert cfg.for_node("fc", first_or_last=True).weights == 8
    assert QuantConfig(weights="ternary").weights == "ternary"
    assert QuantConfig(activations=32).weights_only and QuantConfig(mode="dynamic").weights_only
    hash(cfg)


@pytest.mark.parametrize("kw,match", [
    (dict(weights=0), "weights"), (dict(weights=9), "weights"), (dict(weights="binary"), "weights"),
    (dict(weights=True), "weights"), (dict(activations=12), "activations"),
    (dict(calibration="entropy"), "calibration"), (dict(percentile=101), "percentile"),
    (dict(mode="int4"), "mode"), (dict(keep_first_last=0), "keep_first_last"),
    (dict(per_channel="yes"), "per_channel"), (dict(overrides={"c*": dict(bits=3)}), "unknown field"),
    (dict(overrides={"c*": dict(weights=11)}), "weights"), (dict(overrides={"c*": {}}), "non-empty"),
    (dict(overrides=[("c", 1)]), "overrides"),
])
def test_bad_values_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kw)


def test_override_naming_no_node():
    cfg = QuantConfig(overrides={"conv*": dict(weights=2), "nothing.here": dict(weights=8)})
    with pytest.raises(ConfigError, match="nothing.here"):
        cfg.check_overrides(["conv1", "fc"])
    QuantConfig(overrides={"conv*": dict(weights=2)}).check_overrides(["conv1"])
