"""ONNX's own node conformance cases, run through qcompiler (import + reference executor).

Each case of ``onnx.backend.test.loader.load_model_tests(kind="node")`` (model and numpy
inputs/outputs, built in memory from the onnx wheel) is imported with :func:`qcompiler.from_onnx`
and executed with :func:`qcompiler.ref.run`; outputs are compared like ONNX's own runner does
(dtype and shape equal; floats with rtol 1e-3 / atol 1e-7, everything else exactly).

A case ends as one of

* ``passed`` / ``failed``;
* ``unsupported``: the import refused it with an UnsupportedError/ShapeError whose reason is one of
  the documented limitations in :data:`KNOWN_LIMITATIONS` (a refusal for any other reason is a
  failure);
* ``not claimed``: the model uses an op qcompiler does not claim to support.

qcompiler compiles static graphs, so inputs that decide output shapes (Reshape's shape, Slice's
starts, ...: ``normalize.STATIC_INPUTS``) are bound to the case's data as initializers before import,
as a user would when compiling such a model, and models below opset 11 are first upgraded with
``onnx.version_converter``.

>>> from qcompiler.conformance import run_conformance, summarize, format_table  # doctest: +SKIP
>>> print(format_table(summarize(run_conformance(ops=["Conv"]))))               # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from . import ref
from .errors import QCompilerError, ShapeError, UnsupportedError
from .frontend import MIN_OPSET, from_onnx
from .frontend.normalize import NORMALIZERS, REMOVED_OPS, STATIC_INPUTS, SUPPORTED_ONNX_OPS
from .ref.registry import has_op

log = logging.getLogger(__name__)

#: Deliberate limitations: (regex on the error message, why). An UnsupportedError/ShapeError that
#: matches none of these means a claimed op is broken, and the case counts as failed.
KNOWN_LIMITATIONS: Tuple[Tuple[str, str], ...] = (
    (r"(?i)uses dtype (STRING|BFLOAT16|FLOAT8\w*|U?INT4|U?INT2|FLOAT4E2M1|COMPLEX\w*)",
     "dtype outside the IR (string, bfloat16, float8, int4, int2, float4, complex)"),
    (r"the model uses opset \d+; qcompiler supports opsets",
     "model opset below 11 (upgrade with onnx.version_converter)"),
    (r"is not a tensor", "sequence/optional/map values are not tensors"),
    (r"Dropout in training mode", "training-mode Dropout draws random masks"),
)

ONNX_RTOL = 1e-3
ONNX_ATOL = 1e-7

STATUSES = ("passed", "failed", "unsupported", "not claimed")


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one conformance case."""

    name: str
    op: str
    status: str
    detail: str = ""


@dataclass
class OpSummary:
    """Per-op counts, plus the reasons behind failures and refusals."""

    op: str
    counts: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    reasons: List[Tuple[str, str]] = field(default_factory=list)  # (case, reason)


def import_only_ops() -> frozenset:
    """ONNX ops that vanish at import (constants, aliases) and need no reference op."""
    return frozenset({"Constant"}) | REMOVED_OPS


def claimed_ops() -> frozenset:
    """ONNX ops qcompiler claims and implements: listed as supported and backed by a normaliser,
    a reference op of the same name, or handled by the importer itself."""
    return frozenset(o for o in SUPPORTED_ONNX_OPS
                     if o in import_only_ops() or o in NORMALIZERS or has_op(o))


def load_cases(pattern: Optional[str] = None) -> list:
    """ONNX's node test cases (optionally only names matching the regex ``pattern``)."""
    import warnings

    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # the case generators warn about their own overflow
        cases = load_model_tests(kind="node")
    if pattern:
        rx = re.compile(pattern)
        cases = [c for c in cases if rx.search(c.name)]
    return cases


def case_ops(case) -> List[str]:
    return [n.op_type for n in case.model.graph.node]


def case_op_map(cases: Sequence) -> Dict[str, str]:
    """Case name -> the ONNX op it tests. A case tests one node; its ``_expanded`` variants (the op's
    function body) are filed under the same op."""
    single = {c.name: c.model.graph.node[0].op_type for c in cases if "_expanded" not in c.name
              and len(c.model.graph.node) == 1}
    out = {}
    for c in cases:
        base = c.name.split("_expanded")[0]
        out[c.name] = single.get(base) or (case_ops(c)[-1] if c.model.graph.node else "?")
    return out


def _as_array(x) -> np.ndarray:
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


def bind_shape_inputs(model: onnx.ModelProto, feeds: Dict[str, object]) -> Tuple[onnx.ModelProto, List[str]]:
    """Turn graph inputs that decide shapes (directly or through computations) into initializers
    holding their data: the static specialisation a user makes when compiling such a model."""
    graph = model.graph
    # values whose data decides a shape, followed back through the nodes that compute them
    # (Shape needs only its input's shape, so the walk stops there)
    needed = {node.input[i] for node in graph.node for i in STATIC_INPUTS.get(node.op_type, ())
              if i < len(node.input) and node.input[i]}
    for node in reversed(graph.node):
        if node.op_type != "Shape" and any(o in needed for o in node.output):
            needed.update(i for i in node.input if i)
    wanted = needed & set(feeds)
    if not wanted:
        return model, []
    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep = [vi for vi in model.graph.input if vi.name not in wanted]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    for name in sorted(wanted):
        model.graph.initializer.append(numpy_helper.from_array(_as_array(feeds[name]), name))
    return model, sorted(wanted)


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Models below qcompiler's minimum opset are upgraded with onnx.version_converter first, as
    the importer's error message advises users; a model the converter cannot upgrade is left as
    is (and then refused by the importer)."""
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:  # the converter raises bare RuntimeErrors for adapters it lacks
        log.debug("cannot upgrade opset %d model %s: %s", opset, model.graph.name, e)
        return model


def compare_outputs(expected: Sequence, actual: Sequence[np.ndarray], rtol=ONNX_RTOL,
                    atol=ONNX_ATOL) -> Optional[str]:
    """None when ``actual`` matches ``expected`` as ONNX's runner judges it, else what differs."""
    if len(expected) != len(actual):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual)):
        e, a = _as_array(e), np.asarray(a)
        if e.dtype != a.dtype:
            return f"output {i}: dtype {a.dtype}, expected {e.dtype}"
        if e.shape != a.shape:
            return f"output {i}: shape {list(a.shape)}, expected {list(e.shape)}"
        try:
            if e.dtype.kind == "f":
                np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
            else:
                np.testing.assert_array_equal(a, e)
        except AssertionError as err:
            lines = [ln for ln in str(err).splitlines() if ln.strip()]
            return f"output {i}: " + " ".join(lines[1:4])
    return None


def known_limitation(message: str) -> Optional[str]:
    for pattern, why in KNOWN_LIMITATIONS:
        if re.search(pattern, message):
            return why
    return None


def run_case(case, op_name: str, claimed: Optional[frozenset] = None) -> CaseResult:
    """Import and run one case; never raises."""
    claimed = claimed_ops() if claimed is None else claimed
    unclaimed = sorted({o for o in case_ops(case) if o not in claimed}
                       | {n.domain for n in case.model.graph.node if n.domain not in ("", "ai.onnx")})
    if unclaimed:
        return CaseResult(case.name, op_name, "not claimed", f"uses {', '.join(unclaimed)}")
    try:
        for inputs, expected in case.data_sets:
            names = [vi.name for vi in case.model.graph.input]
            feeds = dict(zip(names, inputs))
            model, bound = bind_shape_inputs(upgrade_opset(case.model), feeds)
            graph = from_onnx(model)
            run_feeds = {n: _as_array(feeds[n]) for n in graph.inputs}
            outs = ref.run(graph, run_feeds)
            diff = compare_outputs(expected, [outs[o] for o in graph.outputs])
            if diff:
                return CaseResult(case.name, op_name, "failed", diff)
    except (UnsupportedError, ShapeError) as e:
        why = known_limitation(str(e))
        if why:
            return CaseResult(case.name, op_name, "unsupported", f"{why}: {e}")
        return CaseResult(case.name, op_name, "failed", f"{type(e).__name__}: {e}")
    except QCompilerError as e:
        return CaseResult(case.name, op_name, "failed", f"{type(e).__name__}: {e}")
    except Exception as e:  # a crash is a failure to report, not to propagate
        log.debug("case %s crashed", case.name, exc_info=True)
        return CaseResult(case.name, op_name, "failed", f"crash {type(e).__name__}: {e}")
    return CaseResult(case.name, op_name, "passed")


def run_conformance(ops: Optional[Iterable[str]] = None, pattern: Optional[str] = None,
                    cases: Optional[list] = None) -> List[CaseResult]:
    """Run ONNX node cases (all, those of ``ops``, and/or names matching ``pattern``)."""
    cases = load_cases(pattern) if cases is None else cases
    op_of = case_op_map(cases)
    wanted = set(ops) if ops else None
    claimed = claimed_ops()
    results = []
    for case in cases:
        op_name = op_of[case.name]
        if wanted is not None and op_name not in wanted:
            continue
        results.append(run_case(case, op_name, claimed))
    return results


def summarize(results: Iterable[CaseResult]) -> "OrderedDict[str, OpSummary]":
    out: Dict[str, OpSummary] = {}
    for r in results:
        s = out.setdefault(r.op, OpSummary(r.op))
        s.counts[r.status] += 1
        if r.status in ("failed", "unsupported"):
            s.reasons.append((r.name, r.detail))
    return OrderedDict(sorted(out.items()))


def format_table(summary: Dict[str, OpSummary], claimed_only: bool = True, reasons: bool = True) -> str:
    """Per-op counts as a text table; with ``reasons``, the failures and refusals below it."""
    rows = [s for s in summary.values()
            if not claimed_only or s.counts["passed"] + s.counts["failed"] + s.counts["unsupported"]]
    lines = [f"{'op':<22} {'passed':>6} {'failed':>6} {'unsupp':>6} {'unclaimed':>9}"]
    total = dict.fromkeys(STATUSES, 0)
    for s in rows:
        c = s.counts
        lines.append(f"{s.op:<22} {c['passed']:>6} {c['failed']:>6} {c['unsupported']:>6} "
                     f"{c['not claimed']:>9}")
        for k in STATUSES:
            total[k] += c[k]
    lines.append(f"{'TOTAL':<22} {total['passed']:>6} {total['failed']:>6} {total['unsupported']:>6} "
                 f"{total['not claimed']:>9}")
    if reasons:
        for s in rows:
            for name, why in s.reasons:
                lines.append(f"  {s.op}: {name}: {why[:300]}")
    return "\n".join(lines)
