"""Argument groups and input loading shared by several commands."""

from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from qcompiler.errors import ConfigError, RuntimeInputError


def add_model_arguments(p) -> None:
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="fix a dynamic input's shape, e.g. input=1,3,224,224 (repeatable)")


def parse_input_shapes(items: List[str]) -> Dict[str, tuple]:
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape {item!r}: expected NAME=D0,D1,... e.g. input=1,3,224,224") from None
    return shapes


def add_quant_arguments(p) -> None:
    g = p.add_argument_group("quantization")
    g.add_argument("--wbits", default=None, help="weight bits: 1..8, or 'ternary' (default: keep float)")
    g.add_argument("--abits", type=int, default=None, help="activation bits: 1..8 (default: 8 if --wbits)")
    g.add_argument("--calib", default=None, metavar="DATA.npz",
                   help="calibration data: one array per input name; the first axis indexes batches")
    g.add_argument("--method", default="minmax", choices=["minmax", "percentile", "mse", "kl"],
                   help="calibration method (default minmax)")
    g.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default per-channel)")


def load_npz_batches(path: str) -> List[Dict[str, np.ndarray]]:
    """Calibration batches from an .npz: key = input name, axis 0 = batch index."""
    if not os.path.isfile(path):
        raise ConfigError(f"calibration file {path!r} does not exist")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:
        raise ConfigError(f"calibration file {path!r} is not a readable .npz: {e}") from None
    if not data:
        raise ConfigError(f"calibration file {path!r} holds no arrays")
    counts = {k: v.shape[0] if v.ndim else 0 for k, v in data.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise ConfigError(f"calibration file {path!r}: every array needs the same number of batches "
                          f"along axis 0, got {counts}")
    n = next(iter(counts.values()))
    return [{k: v[i] for k, v in data.items()} for i in range(n)]


def parse_input_files(items: List[str]) -> Dict[str, np.ndarray]:
    feeds = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise RuntimeInputError(f"--input {item!r}: expected NAME=file.npy")
        if not os.path.isfile(path):
            raise RuntimeInputError(f"--input {name}: file {path!r} does not exist")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except Exception as e:
            raise RuntimeInputError(f"--input {name}: {path!r} is not a readable .npy file: {e}") from None
    return feeds
