"""``qcompiler targets``: list targets and their features."""

import json

from qcompiler.targets import get_target, list_targets


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args):
    rows = [get_target(n) for n in list_targets()]
    if args.json:
        print(json.dumps([t.summary() for t in rows], indent=1))
        return 0
    print(f"{'target':<15} {'family':<6} {'triple':<28} {'cpu':<16} {'vec':>4}  features")
    for t in rows:
        print(f"{t.name:<15} {t.family:<6} {t.mtriple:<28} {t.mcpu:<16} {t.vector_bits:>4}  "
              f"{','.join(t.features)}  - {t.description}")
    return 0
