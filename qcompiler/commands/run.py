"""``qcompiler run``: run a compiled module directory on .npy inputs and summarise its outputs."""

from __future__ import annotations

import logging
import os

import numpy as np

from qcompiler.commands.common import parse_input_files
from qcompiler.errors import ConfigError

log = logging.getLogger("qcompiler.run")


def add_arguments(p):
    p.add_argument("module", help="module directory written by `qcompiler compile`")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input of the module (repeatable; see `--input-info` for names, shapes, dtypes)")
    p.add_argument("--output", default=None, metavar="OUT.npz", help="write every output to this .npz")
    p.add_argument("--threads", type=int, default=None, help="threads (default: every online CPU)")
    p.add_argument("--input-info", action="store_true", help="print the module's signature and exit")
    p.add_argument("--remote", default=None, metavar="USER@HOST[:PORT]",
                   help="copy the module to a board over ssh and run its runner there (ssh keys, no passwords)")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="extra ssh/scp -o option for --remote, e.g. IdentityFile=~/.ssh/pi (repeatable)")


def summarize(name: str, x: np.ndarray) -> str:
    """One line about an output: dtype, shape, range, mean, and argmax for small score vectors."""
    head = f"{name}: {x.dtype}[{','.join(map(str, x.shape))}]"
    if x.size == 0:
        return head + " (empty)"
    vals = x.astype(np.float64)
    line = f"{head} min {vals.min():.6g} max {vals.max():.6g} mean {vals.mean():.6g}"
    if x.ndim >= 1 and x.shape[-1] > 1 and x.size // x.shape[-1] <= 8:
        line += f" argmax {np.argmax(x.reshape(-1, x.shape[-1]), axis=-1).tolist()}"
    flat = x.reshape(-1)
    line += f" first {np.array2string(flat[:6], precision=5, separator=', ')}"
    return line


def run(args):
    from qcompiler.runtime.loader import load

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.remote:
        from qcompiler.runtime.remote import RemoteModule

        module = RemoteModule(args.module, args.remote, num_threads=args.threads, ssh_options=args.ssh_option)
        try:
            return _run_module(module, args)
        finally:
            module.close()
    return _run_module(load(args.module, num_threads=args.threads), args)


def _run_module(module, args):
    if args.input_info:
        for kind, specs in (("input", module.inputs), ("output", module.outputs)):
            for s in specs:
                print(f"{kind} {s}")
        return 0
    feeds = parse_input_files(args.input)
    outputs = module.run(feeds)
    for name, x in outputs.items():
        print(summarize(name, x))
    if args.output:
        parent = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(parent):
            raise ConfigError(f"--output {args.output!r}: directory {parent!r} does not exist")
        np.savez(args.output, **outputs)
        log.info("wrote %s", args.output)
    return 0
