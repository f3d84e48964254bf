"""``qcompiler conformance``: run ONNX's node conformance cases and print per-op counts."""

import logging

from qcompiler.conformance import format_table, run_conformance, summarize

log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--op", action="append", default=None, metavar="OP",
                   help="only the cases of this ONNX op (repeatable)")
    p.add_argument("-k", "--pattern", default=None, help="only cases whose name matches this regex")
    p.add_argument("--all-ops", action="store_true",
                   help="also list ops qcompiler does not claim (all their cases 'not claimed')")
    p.add_argument("--no-reasons", action="store_true",
                   help="do not list the failed and unsupported cases under the table")


def run(args):
    results = run_conformance(ops=args.op, pattern=args.pattern)
    summary = summarize(results)
    print(format_table(summary, claimed_only=not args.all_ops, reasons=not args.no_reasons))
    failed = sum(s.counts["failed"] for s in summary.values())
    if failed:
        log.error("%d conformance case(s) failed", failed)
    return 1 if failed else 0
