"""The ``qcompiler`` command line.

Each command lives in its own module under ``qcompiler/commands/`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; this file only lists them. A command that is not
implemented yet is simply not listed, so ``qcompiler --help`` shows what exists.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

from .errors import QCompilerError

#: (command, module under qcompiler.commands, one-line help)
COMMANDS = [
    ("info", "info", "print a model's graph summary: ops, parameters, MACs per layer, inputs/outputs"),
    ("quantize", "quantize", "quantize a model and write the quantized IR"),
    ("compile", "compile", "compile a model into a native module directory"),
    ("run", "run", "run a compiled module on .npy inputs"),
    ("bench", "bench", "measure a compiled module's latency"),
    ("targets", "targets", "list the compilation targets and their features"),
    ("conformance", "conformance", "run ONNX's node conformance cases through qcompiler"),
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="qcompiler", description="Low-bit inference compiler: ONNX "
                                     "to quantized, bit-packed native modules.")
    parser.add_argument("--version", action="version", version=f"qcompiler {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        try:
            mod = importlib.import_module(f"qcompiler.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"qcompiler.commands.{module}":
                raise
            continue  # command not built yet: not listed

        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except QCompilerError as e:
        print(f"qcompiler {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout piped into e.g. `head`, which exited early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # silence the flush at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
