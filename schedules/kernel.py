"""The interface every kernel implementation in ``schedules/`` offers to the lowering.

A kernel implementation (:class:`KernelImpl`) turns one IR node, described by a constant-independent
:class:`Workload`, into a TVM PrimFunc in four pure steps:

1. ``default_config(workload, target) -> dict``: the schedule knobs (tile sizes, vector width,
   unroll, parallel axis...). A tuner replaces it with a searched dict; every knob is explicit.
2. ``plan(workload, config) -> Plan``: the kernel's argument list. Each argument is a node input
   passed as is, a node output, or a *new constant* computed at compile time from a constant node
   input (pre-transposed / pre-packed weights). Constant-data-dependent transforms live only here.
3. ``compute(workload, plan, config) -> Stages``: the TE compute (``schedules/compute*.py``), with
   the stage tensors the schedule needs passed explicitly by name (never found by tag strings).
4. ``schedule(sch, stages, workload, target, config)``: mutates a ``tvm.s_tir.Schedule`` of the
   PrimFunc made from ``stages.args`` (``schedules/<family>/*.py``).

Everything is a pure function of (workload, target, config), so identical workloads share one
compiled kernel and a tuning log can name a workload by :meth:`Workload.key`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qcompiler.errors import UnsupportedError


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one kernel operand; ``const`` marks a compile-time constant node input."""

    shape: Tuple[int, ...]
    dtype: str
    const: bool = False

    def to_json(self) -> list:
        return [list(self.shape), self.dtype] + (["const"] if self.const else [])


def _freeze(v):
    """Attribute values as hashable, JSON-able plain Python values."""
    if isinstance(v, np.ndarray):
        return tuple(_freeze(x) for x in v.reshape(-1).tolist()) if v.ndim else _freeze(v.item())
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    return v


@dataclass(frozen=True)
class Workload:
    """What a kernel computes, independent of constant data: op, operand specs and attributes.

    ``inputs`` follow the node's inputs (``None`` for an absent optional input). Scalar constant
    inputs (Clip's min/max, Pow's exponent...) are part of the workload through ``scalars`` (input
    index -> value) because kernels bake them in as immediates; tensor constants never are.
    """

    op: str
    inputs: Tuple[Optional[TensorSpec], ...]
    outputs: Tuple[TensorSpec, ...]
    attrs: Tuple[Tuple[str, Any], ...] = ()
    scalars: Tuple[Tuple[int, Any], ...] = ()

    @staticmethod
    def make(op: str, inputs: Sequence[Optional[TensorSpec]], outputs: Sequence[TensorSpec],
             attrs: Mapping[str, Any], scalars: Mapping[int, Any] = None) -> "Workload":
        return Workload(op, tuple(inputs), tuple(outputs),
                        tuple(sorted((k, _freeze(v)) for k, v in attrs.items())),
                        tuple(sorted((int(i), _freeze(v)) for i, v in (scalars or {}).items())))

    def attr(self, name: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == name:
                return v
        return default

    def scalar(self, index: int, default: Any = None) -> Any:
        for i, v in self.scalars:
            if i == index:
                return v
        return default

    def input(self, i: int) -> Optional[TensorSpec]:
        return self.inputs[i] if i < len(self.inputs) else None

    def key(self) -> str:
        """A canonical string naming this workload (tuning logs and the kernel cache use it)."""
        return json.dumps({
            "op": self.op,
            "in": [None if s is None else s.to_json() for s in self.inputs],
            "out": [s.to_json() for s in self.outputs],
            "attrs": [[k, v] for k, v in self.attrs],
            "scalars": [[i, v] for i, v in self.scalars],
        }, sort_keys=True, separators=(",", ":"), default=repr)

    def digest(self, *extra: str) -> str:
        h = hashlib.sha256(self.key().encode())
        for e in extra:
            h.update(b"\0" + e.encode())
        return h.hexdigest()


# -- plans: a kernel's argument list ----------------------------------------------------------------

@dataclass(frozen=True)
class Arg:
    """One kernel argument.

    ``kind``: ``"input"`` (node input ``index`` as is), ``"output"`` (node output ``index``) or
    ``"const"`` (a new constant ``transform(node_input_data)`` -- the list of the node's constant
    input arrays, ``None`` where an input is not constant -- named ``<name of input index>__<tag>``,
    so two nodes sharing weights and layout share the constant; ``tag`` must name the layout).
    """

    kind: str
    index: int
    spec: TensorSpec
    tag: str = ""
    transform: Optional[Callable[[List[Optional[np.ndarray]]], np.ndarray]] = field(default=None, compare=False)


@dataclass(frozen=True)
class Plan:
    args: Tuple[Arg, ...]

    @property
    def inputs(self) -> Tuple[Arg, ...]:
        return tuple(a for a in self.args if a.kind != "output")


def identity_plan(wl: Workload, skip: Sequence[int] = ()) -> Plan:
    """Every present node input (but ``skip``, e.g. baked scalars), then every output."""
    args = [Arg("input", i, s) for i, s in enumerate(wl.inputs) if s is not None and i not in skip]
    args += [Arg("output", j, s) for j, s in enumerate(wl.outputs)]
    return Plan(tuple(args))


@dataclass
class Stages:
    """A TE compute: ``args`` are the PrimFunc parameters in plan order (placeholders, then the
    outputs); ``named`` gives the schedule the stages it works on by name."""

    args: List[Any]
    named: Dict[str, Any] = field(default_factory=dict)

    def block(self, name: str) -> str:
        """The s_tir block name of stage ``name`` (TE names blocks after their op)."""
        return self.named[name].op.name


# -- the implementation record ------------------------------------------------------------------

PlanFn = Callable[[Workload, Dict[str, Any]], Plan]
ComputeFn = Callable[[Workload, Plan, Dict[str, Any]], Stages]
ScheduleFn = Callable[[Any, Stages, Workload, Any, Dict[str, Any]], None]
DefaultsFn = Callable[[Workload, Any], Dict[str, Any]]


@dataclass(frozen=True)
class KernelImpl:
    """One way to compute an op on one target family; see the module docstring.

    ``name`` follows ``<op>_<layout>__<family>_<variant>`` (e.g. ``conv2d_nchw__x86_ocvec``); it is
    recorded per layer in the manifest, so keep it stable.
    """

    name: str
    plan: PlanFn
    compute: ComputeFn
    schedule: ScheduleFn
    default_config: DefaultsFn
    doc: str = ""

    def config_for(self, wl: Workload, target, override: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """The default config of ``wl`` with ``override``'s knobs on top (unknown knobs refused)."""
        cfg = dict(self.default_config(wl, target))
        if override:
            unknown = sorted(set(override) - set(cfg))
            if unknown:
                raise UnsupportedError(f"kernel {self.name}: unknown schedule knob(s) {unknown}; "
                                       f"known: {sorted(cfg)}")
            cfg.update(override)
        return cfg


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is <= ``at_most`` (>= 1)."""
    for d in range(max(1, min(n, at_most)), 0, -1):
        if n % d == 0:
            return d
    return 1


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def vector_lanes(target, dtype: str = "float32") -> int:
    """SIMD lanes of ``dtype`` in one vector register of ``target`` (at least 1)."""
    bits = int(getattr(target, "vector_bits", 128) or 128)
    return max(1, bits // (np.dtype(dtype).itemsize * 8))
