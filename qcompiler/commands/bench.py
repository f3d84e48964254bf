"""``qcompiler bench``: latency of a compiled module (median and p90 over N runs)."""

from __future__ import annotations

import logging

import numpy as np

from qcompiler.commands.common import parse_input_files
from qcompiler.errors import ConfigError

log = logging.getLogger("qcompiler.bench")


def add_arguments(p):
    p.add_argument("module", help="module directory written by `qcompiler compile`")
    p.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: every online CPU)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="use this input instead of random data (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")


def random_input(spec, rng: np.random.Generator) -> np.ndarray:
    """Random data of the input's shape and dtype: N(0,1) floats, full-range integers, random bools."""
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, spec.shape).astype(bool)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, spec.shape, dtype=dtype, endpoint=True)


def run(args):
    from qcompiler.runtime.loader import load

    if args.runs < 1 or args.warmup < 0:
        raise ConfigError(f"--runs must be >= 1 and --warmup >= 0 (got {args.runs}, {args.warmup})")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    module = load(args.module, num_threads=args.threads)
    feeds = parse_input_files(args.input)
    rng = np.random.default_rng(args.seed)
    for spec in module.inputs:
        if spec.name not in feeds:
            feeds[spec.name] = random_input(spec, rng)
    times_ms = np.asarray(module.time_runs(feeds, runs=args.runs, warmup=args.warmup)) * 1e3
    print(f"{module.name}: {args.runs} runs ({args.warmup} warmup), {module.num_threads} threads")
    print(f"latency ms: median {np.median(times_ms):.4f}  p90 {np.percentile(times_ms, 90):.4f}  "
          f"min {times_ms.min():.4f}  mean {times_ms.mean():.4f}")
    return 0
