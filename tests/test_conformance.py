"""ONNX's own node conformance cases through qcompiler's importer and reference executor."""

import pytest

from qcompiler import cli
from qcompiler.conformance import (KNOWN_LIMITATIONS, claimed_ops, format_table, load_cases,
                                   run_conformance, summarize)


@pytest.fixture(scope="module")
def summary():
    return summarize(run_conformance(cases=load_cases()))


def test_every_claimed_case_passes(summary):
    failures = [(s.op, name, why) for s in summary.values() if s.counts["failed"]
                for name, why in s.reasons if not why.startswith(tuple(w for _, w in KNOWN_LIMITATIONS))]
    assert not failures and not any(s.counts["failed"] for s in summary.values()), (
        f"{len(failures)} conformance failure(s):\n" + "\n".join(f"{o}: {n}: {w}" for o, n, w in failures))


def test_every_claimed_op_with_cases_passes_some(summary):
    claimed = claimed_ops()
    never = [s.op for s in summary.values() if s.op in claimed and s.counts["passed"] == 0
             and s.counts["unsupported"] + s.counts["failed"] > 0]
    assert not never, f"claimed ops that pass none of their cases: {never}\n{format_table(summary)}"


def test_unsupported_cases_are_few_and_documented(summary):
    unsupported = [(s.op, n, w) for s in summary.values() for n, w in s.reasons
                   if s.counts["unsupported"] and any(w.startswith(why) for _, why in KNOWN_LIMITATIONS)]
    n_unsupported = sum(s.counts["unsupported"] for s in summary.values())
    assert len(unsupported) == n_unsupported
    passed = sum(s.counts["passed"] for s in summary.values())
    # refusals are about dtypes/types/training outside the IR, never a whole op
    assert passed > n_unsupported


def test_cli_prints_counts(capsys):
    assert cli.main(["conformance", "--op", "Conv", "--op", "Softmax", "--no-reasons"]) == 0
    out = capsys.readouterr().out
    assert "Conv" in out and "Softmax" in out and "TOTAL" in out
    assert "passed" in out.splitlines()[0]
