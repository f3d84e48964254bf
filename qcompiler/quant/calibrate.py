"""Calibration: run the reference executor over calibration batches and observe activation ranges.

``batches`` is an iterable of ``{input_name: ndarray}``. Each batch is checked against the graph's
inputs (names, shapes, dtypes) with a ConfigError naming the batch and what is wrong. A batch whose
leading dimension is a multiple of the graph's batch size is split into graph-sized pieces, so a
whole calibration set can be handed over as one array.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from .. import ref
from ..errors import ConfigError
from ..ir import Graph
from .config import QuantConfig
from .observers import Observer, make_observer

log = logging.getLogger(__name__)


def check_batch(graph: Graph, batch: Mapping[str, np.ndarray], index: int) -> List[Dict[str, np.ndarray]]:
    """Validate one calibration batch; returns it split into graph-batch-sized feeds."""
    if not isinstance(batch, Mapping):
        raise ConfigError(f"calibration batch {index} must be a dict {{input_name: array}}, got "
                          f"{type(batch).__name__}")
    unknown = sorted(set(batch) - set(graph.inputs))
    missing = [i for i in graph.inputs if i not in batch]
    if unknown or missing:
        raise ConfigError(f"calibration batch {index}: the graph's inputs are {graph.inputs}"
                          + (f"; missing {missing}" if missing else "")
                          + (f"; unknown {unknown}" if unknown else ""))
    pieces = None
    arrays = {}
    for name in graph.inputs:
        v = graph.values[name]
        x = np.asarray(batch[name])
        if str(x.dtype) != v.dtype:
            raise ConfigError(f"calibration batch {index}, input {name!r}: dtype {x.dtype}, the graph "
                              f"expects {v.dtype} (convert with .astype(np.{v.dtype}))")
        ok_rank = x.ndim == len(v.shape) and x.shape[1:] == v.shape[1:]
        if not ok_rank or not v.shape or x.shape[0] % v.shape[0]:
            raise ConfigError(f"calibration batch {index}, input {name!r}: shape {list(x.shape)} does not "
                              f"fit the graph's {list(v.shape)} (the leading dimension may be a multiple "
                              f"of {v.shape[0] if v.shape else 1})")
        n = x.shape[0] // v.shape[0]
        if pieces is not None and n != pieces:
            raise ConfigError(f"calibration batch {index}: inputs hold different numbers of samples")
        pieces = n
        arrays[name] = x
    b = {name: graph.values[name].shape[0] for name in graph.inputs}
    return [{name: arrays[name][k * b[name]:(k + 1) * b[name]] for name in graph.inputs}
            for k in range(pieces or 0)]


def iter_feeds(graph: Graph, batches: Iterable[Mapping[str, np.ndarray]]) -> Iterator[Dict[str, np.ndarray]]:
    if isinstance(batches, Mapping):
        batches = [batches]
    count = 0
    for index, batch in enumerate(batches):
        for feed in check_batch(graph, batch, index):
            count += 1
            yield feed
    if count == 0:
        raise ConfigError("the calibration data is empty")


def observable_values(graph: Graph) -> List[str]:
    """Every non-constant float32 value (inputs and node outputs)."""
    return [name for name, v in graph.values.items() if not v.is_const and v.dtype == "float32"]


def calibrate(graph: Graph, batches: Iterable[Mapping[str, np.ndarray]], config: QuantConfig,
              values: Optional[Sequence[str]] = None,
              bits: Optional[Mapping[str, int]] = None) -> Dict[str, Observer]:
    """Observe ``values`` (default: every float activation) over the calibration batches.

    ``bits`` gives the target bits of a value (default ``config.activations``; the MSE and KL
    methods depend on it). Returns ``{value_name: observer}``; ``observer.range()`` is the range.
    """
    names = list(values) if values is not None else observable_values(graph)
    for n in names:
        if n not in graph.values:
            raise ConfigError(f"cannot calibrate {n!r}: the graph has no such value")
    act_bits = config.activations if config.activations <= 8 else 8
    observers = {n: make_observer(config.calibration, bits=(bits or {}).get(n, act_bits),
                                  percentile=config.percentile, num_bins=config.num_bins)
                 for n in names}
    samples = 0
    for feed in iter_feeds(graph, batches):
        env = ref.run(graph, feed, keep_all=True)
        for n, obs in observers.items():
            obs.collect(env[n])
        samples += 1
    log.info("calibrated %d values over %d batches with method %r", len(names), samples, config.calibration)
    return observers
