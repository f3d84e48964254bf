"""Static memory plan of a lowered graph: where every tensor lives while the executor runs.

Every value named by a :class:`~qcompiler.codegen.lowered.KernelCall` gets a *storage*:

- ``input``  -- the caller's input buffer (graph inputs and views of them);
- ``const``  -- the weights blob (constants, at 64-byte aligned offsets, see ``weights.py``);
- ``output`` -- the caller's output buffer (graph outputs, and whatever views share their bytes);
- ``arena``  -- an offset into one arena allocated when the model is created.

Alias steps (Reshape/Flatten views) put ``src`` and ``dst`` in one storage class: they share bytes.
Arena classes are live from the step that first writes them to the step that last reads them
(inclusive), so a kernel never writes over its own inputs. Offsets are assigned greedily by size
(largest first, lowest free gap among the classes whose lifetimes overlap; the TFLite arena
planner's strategy), aligned to :data:`ALIGN` because TVM kernels assume aligned data.

A graph output whose class lives elsewhere (an output that is also a graph input, a constant, or a
second view of another output) is copied into the caller's buffer after the last kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import ModelError
from .lowered import LoweredGraph

#: alignment of every buffer a kernel sees (TVM's generated code assumes 64-byte aligned data)
ALIGN = 64


def align_up(n: int, alignment: int = ALIGN) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class TensorSlot:
    """Where one value lives: ``storage`` and ``index`` (input/output position) or ``offset``
    (bytes into the arena or the weights)."""

    name: str
    shape: Tuple[int, ...]
    dtype: str
    nbytes: int
    storage: str                 # input | const | output | arena
    index: int = -1              # input/output position for those storages
    offset: int = 0              # arena/weights byte offset (weights offsets are filled by weights.py)
    root: str = ""               # the storage class's representative value


@dataclass(frozen=True)
class ArenaBuffer:
    """One arena storage class: its size, lifetime in steps (inclusive) and offset."""

    root: str
    nbytes: int
    first: int
    last: int
    offset: int


@dataclass(frozen=True)
class MemoryPlan:
    slots: Dict[str, TensorSlot]          # every value the executor touches
    buffers: List[ArenaBuffer]            # arena classes, in definition order
    arena_bytes: int                      # size of the one arena
    intermediate_bytes: int               # sum of all arena classes' sizes (what no reuse would need)
    output_copies: List[Tuple[int, str]]  # (output index, value to copy from) after the last kernel

    def verify(self) -> None:
        """Assert the plan's invariant: classes live at the same time never share bytes."""
        for i, a in enumerate(self.buffers):
            if a.offset % ALIGN or a.offset + a.nbytes > self.arena_bytes:
                raise ModelError(f"memory plan: buffer {a.root!r} at {a.offset} is misaligned or outside "
                                 f"the arena of {self.arena_bytes} bytes")
            for b in self.buffers[i + 1:]:
                live_together = a.first <= b.last and b.first <= a.last
                overlap = a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes
                if live_together and overlap and a.nbytes and b.nbytes:
                    raise ModelError(f"memory plan: {a.root!r} and {b.root!r} are live together but overlap")


def plan_memory(lowered: LoweredGraph) -> MemoryPlan:
    """Compute the static memory plan of ``lowered`` (see the module docstring)."""
    graph = lowered.graph
    inputs = {n: i for i, n in enumerate(graph.inputs)}
    outputs = {n: i for i, n in enumerate(graph.outputs)}
    types = _value_types(lowered)

    # Storage classes: union-find over alias steps; steps where each value is touched.
    parent: Dict[str, str] = {}

    def find(v: str) -> str:
        while parent.setdefault(v, v) != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    touched: Dict[str, List[int]] = {}
    for step, call in enumerate(lowered.calls):
        if call.kind == "alias":
            if len(call.args) != 2:
                raise ModelError(f"node {call.node!r}: an alias step takes [src, dst], got {call.args}")
            src, dst = call.args
            if types[src][2] != types[dst][2]:
                raise ModelError(f"node {call.node!r}: view {dst!r} ({types[dst][2]} bytes) cannot alias "
                                 f"{src!r} ({types[src][2]} bytes)")
            parent[find(dst)] = find(src)
        elif call.kind != "kernel":
            raise ModelError(f"node {call.node!r}: unknown executor step kind {call.kind!r}")
        for name in call.args:
            find(name)
            touched.setdefault(name, []).append(step)
    for name in graph.inputs:          # an input no kernel reads still has a place in the signature
        find(name)
    for name in graph.outputs:
        if name not in touched and name not in inputs and not _is_const(lowered, name):
            raise ModelError(f"graph output {name!r} is produced by no executor step")
        find(name)

    members: Dict[str, List[str]] = {}
    for name in sorted(parent, key=_order_key(lowered, touched)):
        members.setdefault(find(name), []).append(name)

    slots: Dict[str, TensorSlot] = {}
    buffers: List[ArenaBuffer] = []
    output_copies: List[Tuple[int, str]] = []
    for root, names in members.items():
        storage, index, owner = _class_storage(lowered, names, inputs, outputs)
        for n in names:
            shape, dtype, nbytes = types[n]
            slots[n] = TensorSlot(n, shape, dtype, nbytes, storage, index, 0, owner or root)
            if n in outputs and not (storage == "output" and index == outputs[n]):
                output_copies.append((outputs[n], n))
        if storage == "arena":
            steps = [s for n in names for s in touched.get(n, [])]
            buffers.append(ArenaBuffer(root, max(types[n][2] for n in names), min(steps), max(steps), 0))

    buffers, arena_bytes = _assign_offsets(buffers)
    offsets = {b.root: b.offset for b in buffers}
    for name, slot in list(slots.items()):
        if slot.storage == "arena":
            slots[name] = _with_offset(slot, offsets[find(name)])
    output_copies.sort()
    plan = MemoryPlan(slots, buffers, arena_bytes, sum(b.nbytes for b in buffers), output_copies)
    plan.verify()
    return plan


def arena_size(lowered: LoweredGraph) -> int:
    """Bytes of the arena the executor of ``lowered`` allocates."""
    return plan_memory(lowered).arena_bytes


# -- helpers -----------------------------------------------------------------------------------------
def _is_const(lowered: LoweredGraph, name: str) -> bool:
    return name in lowered.constants or (name in lowered.graph.values and lowered.graph.values[name].is_const)


def const_data(lowered: LoweredGraph, name: str) -> np.ndarray:
    """The bytes to embed for constant ``name``: ``lowered.constants`` first (it may hold pre-packed
    layouts), else the graph's own constant data."""
    if name in lowered.constants:
        return np.asarray(lowered.constants[name], order="C")  # keeps 0-d (ascontiguousarray would not)
    value = lowered.graph.values.get(name)
    if value is None or value.data is None:
        raise ModelError(f"{name!r} is neither a constant nor a value of graph {lowered.graph.name!r}")
    return np.asarray(value.data, order="C")


def _value_types(lowered: LoweredGraph) -> Dict[str, Tuple[Tuple[int, ...], str, int]]:
    """(shape, dtype, nbytes) of every value the executor touches; a constant's shape is that of the
    data being embedded (lowering may have packed or transposed it)."""
    names = {n for c in lowered.calls for n in c.args} | set(lowered.graph.inputs) | set(lowered.graph.outputs)
    types = {}
    for n in sorted(names):
        if _is_const(lowered, n):
            data = const_data(lowered, n)
            types[n] = (tuple(int(d) for d in data.shape), str(data.dtype), int(data.nbytes))
        elif n in lowered.graph.values:
            v = lowered.graph.values[n]
            types[n] = (tuple(v.shape), v.dtype, int(v.nbytes))
        else:
            raise ModelError(f"executor step argument {n!r} has no value in graph {lowered.graph.name!r}")
    return types


def _order_key(lowered: LoweredGraph, touched: Dict[str, List[int]]):
    inputs = {n: i for i, n in enumerate(lowered.graph.inputs)}

    def key(name: str):
        steps = touched.get(name)
        return (steps[0] if steps else -1, inputs.get(name, len(inputs)), name)

    return key


def _class_storage(lowered: LoweredGraph, names: List[str], inputs: Dict[str, int],
                   outputs: Dict[str, int]) -> Tuple[str, int, Optional[str]]:
    """Storage of one alias class: inputs and constants are fixed; else the first graph output in it
    (kernels then write straight into the caller's buffer); else the arena."""
    for n in names:
        if n in inputs:
            return "input", inputs[n], n
    for n in names:
        if _is_const(lowered, n):
            return "const", -1, n
    outs = sorted((outputs[n], n) for n in names if n in outputs)
    if outs:
        return "output", outs[0][0], outs[0][1]
    return "arena", -1, None


def _assign_offsets(buffers: List[ArenaBuffer]) -> Tuple[List[ArenaBuffer], int]:
    """Greedy by size: place each class (largest first) at the lowest aligned offset that does not
    overlap a placed class whose lifetime intersects its own."""
    placed: List[ArenaBuffer] = []
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i].nbytes, buffers[i].first, i))
    result: Dict[int, ArenaBuffer] = {}
    for i in order:
        b = buffers[i]
        size = align_up(max(b.nbytes, 1))
        busy = sorted((p for p in placed if p.first <= b.last and b.first <= p.last), key=lambda p: p.offset)
        offset = 0
        for p in busy:
            if offset + size <= p.offset:
                break
            offset = max(offset, align_up(p.offset + max(p.nbytes, 1)))
        placed_b = ArenaBuffer(b.root, b.nbytes, b.first, b.last, offset)
        placed.append(placed_b)
        result[i] = placed_b
    arena = max((align_up(p.offset + max(p.nbytes, 1)) for p in placed), default=0)
    return [result[i] for i in range(len(buffers))], arena


def _with_offset(slot: TensorSlot, offset: int) -> TensorSlot:
    return TensorSlot(slot.name, slot.shape, slot.dtype, slot.nbytes, slot.storage, slot.index, offset, slot.root)
