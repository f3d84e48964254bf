"""``QuantConfig``: what to quantize, to how many bits, calibrated how.

>>> import qcompiler as qc
>>> cfg = qc.QuantConfig(weights=4, activations=8, calibration="mse",
...                      overrides={"conv1": dict(weights=8), "layer4.*": dict(weights=2)})
>>> cfg.for_node("layer4.conv2").weights
2
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields, replace
from typing import Dict, Iterable, List, Mapping, Optional, Union

from ..errors import ConfigError

Bits = Union[int, str]

CALIBRATION_METHODS = ("minmax", "percentile", "mse", "kl")
MODES = ("static", "dynamic", "float16")
FLOAT_ACTIVATION_BITS = (16, 32)
#: ``keep_first_last`` value that keeps the first and last weight layers float
FLOAT_LAYER_BITS = 32
#: fields an override may set for the nodes its pattern matches
LAYER_FIELDS = ("weights", "activations", "per_channel", "symmetric_weights")


def check_weight_bits(value, what: str = "weights") -> Bits:
    if value == "ternary":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        raise ConfigError(f"{what} must be an int in 1..8 or 'ternary', got {value!r}")
    return value


def check_activation_bits(value, what: str = "activations") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (1 <= value <= 8 or
                                                                      value in FLOAT_ACTIVATION_BITS):
        raise ConfigError(f"{what} must be an int in 1..8, or 16/32 for float activations, got {value!r}")
    return value


def _check_bool(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class LayerQuant:
    """The resolved precision of one node (after keep_first_last and overrides).

    ``weights`` are the bits of the node's weights, ``activations`` those of its input
    activations (what its kernel reads).
    """

    weights: Bits
    activations: int
    per_channel: bool
    symmetric_weights: bool

    @property
    def float_activations(self) -> bool:
        return self.activations in FLOAT_ACTIVATION_BITS


@dataclass(frozen=True)
class QuantConfig:
    """How :func:`qcompiler.quantize` quantizes a graph.

    * ``weights``: bits per weight, 1..8, or ``"ternary"``.
    * ``activations``: bits per activation 1..8, or 16/32 to keep activations in float.
    * ``per_channel``: one weight scale per output channel (else per tensor).
    * ``symmetric_weights``: symmetric signed weights (zero point 0, range ±(2^(b-1)-1)).
    * ``calibration``: activation range method, ``"minmax" | "percentile" | "mse" | "kl"``;
      ``percentile`` is used by ``"percentile"``; ``num_bins`` is the histogram size of the
      histogram methods (TensorRT uses 2048).
    * ``equalize``: cross-layer equalization before quantizing; ``bias_correction``: correct the
      bias for the weights' quantization error.
    * ``keep_first_last``: bits for the first and last weight layers (XNOR-Net keeps them at
      higher precision), ``FLOAT_LAYER_BITS`` (32) to keep them float, or None to treat them like
      the others. W1A1 (binary) graphs: 8 makes them int8 (calibration data needed), 32 float.
    * ``overrides``: ``{fnmatch pattern on node names: {field: value}}`` with fields from
      ``LAYER_FIELDS``; later patterns win. A pattern that names no node is an error at quantize time.
    * ``mode``: ``"static"`` (calibrated full-integer), ``"dynamic"`` (weights only; activations
      stay float), ``"float16"``.
    """

    weights: Bits = 8
    activations: int = 8
    per_channel: bool = True
    symmetric_weights: bool = True
    calibration: str = "minmax"
    percentile: float = 99.99
    num_bins: int = 2048
    equalize: bool = False
    bias_correction: bool = False
    keep_first_last: Optional[int] = None
    overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    mode: str = "static"

    def __post_init__(self):
        check_weight_bits(self.weights)
        check_activation_bits(self.activations)
        for name in ("per_channel", "symmetric_weights", "equalize", "bias_correction"):
            _check_bool(getattr(self, name), name)
        if self.calibration not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration must be one of {list(CALIBRATION_METHODS)}, got {self.calibration!r}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 50.0 < float(self.percentile) <= 100.0:
            raise ConfigError(f"percentile must be a number in (50, 100], got {self.percentile!r}")
        if isinstance(self.num_bins, bool) or not isinstance(self.num_bins, int) or not 128 <= self.num_bins <= 65536:
            raise ConfigError(f"num_bins must be an int in 128..65536, got {self.num_bins!r}")
        if self.keep_first_last is not None and self.keep_first_last != FLOAT_LAYER_BITS:
            check_weight_bits(self.keep_first_last, "keep_first_last (or 32: float)")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if not isinstance(self.overrides, Mapping):
            raise ConfigError(f"overrides must be a dict {{pattern: {{field: value}}}}, got {type(self.overrides).__name__}")
        clean: Dict[str, Dict[str, object]] = {}
        for pattern, values in self.overrides.items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"override patterns must be non-empty strings, got {pattern!r}")
            if not isinstance(values, Mapping) or not values:
                raise ConfigError(f"override {pattern!r} must map to a non-empty dict of fields, got {values!r}")
            unknown = sorted(set(values) - set(LAYER_FIELDS))
            if unknown:
                raise ConfigError(f"override {pattern!r} sets unknown field(s) {unknown}; allowed: {list(LAYER_FIELDS)}")
            for k, v in values.items():
                if k == "weights":
                    check_weight_bits(v, f"override {pattern!r} weights")
                elif k == "activations":
                    check_activation_bits(v, f"override {pattern!r} activations")
                else:
                    _check_bool(v, f"override {pattern!r} {k}")
            clean[pattern] = dict(values)
        object.__setattr__(self, "overrides", clean)

    def __hash__(self):  # overrides is a dict: hash its items
        return hash(tuple((f.name, repr(getattr(self, f.name))) for f in fields(self)))

    # -- per-node resolution -------------------------------------------------------------------------
    def base_layer(self) -> LayerQuant:
        return LayerQuant(self.weights, self.activations, self.per_channel, self.symmetric_weights)

    def for_node(self, name: str, first_or_last: bool = False) -> LayerQuant:
        """The precision of node ``name``: the defaults, the first/last-layer policy, then overrides."""
        layer = self.base_layer()
        if first_or_last and self.keep_first_last is not None:
            layer = replace(layer, weights=self.keep_first_last,
                            activations=max(layer.activations, self.keep_first_last)
                            if layer.activations <= 8 else layer.activations)
        for pattern, values in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                layer = replace(layer, **values)
        return layer

    def check_overrides(self, node_names: Iterable[str]) -> None:
        """ConfigError naming every override pattern that matches none of ``node_names``."""
        names: List[str] = list(node_names)
        dead = [p for p in self.overrides if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if dead:
            sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ConfigError(f"override pattern(s) {dead} match no node of the graph (nodes: {sample})")

    @property
    def weights_only(self) -> bool:
        return self.mode == "dynamic" or self.activations in FLOAT_ACTIVATION_BITS
