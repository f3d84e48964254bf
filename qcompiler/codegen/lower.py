"""Lowering: IR graph -> one TVM-compiled object per unique kernel workload (a :class:`LoweredGraph`).

For every node, in order:

1. view ops (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout) become ``"alias"`` calls;
2. the node is described by a constant-independent :class:`~qcompiler.schedules.kernel.Workload`;
3. ``schedules.select`` picks a kernel implementation for the target (op, dtypes, features);
4. its config is the implementation's default for the target family, overridden by ``tuning``;
5. its plan names the kernel's arguments; new constants (pre-packed weights) are made here;
6. the kernel is built with ``tvm.compile`` into an object exporting ``__tvm_ffi_<symbol>``, once per
   (implementation, workload, config) -- the symbol is a digest of those, so it is deterministic and
   identical workloads share one object (also across calls, through a small in-process cache).

Every node that cannot be lowered is reported in one :class:`~qcompiler.errors.UnsupportedError`.

>>> lowered = lower_graph(graph, "host")                       # doctest: +SKIP
>>> [c.symbol for c in lowered.calls]                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import QCompilerError, UnsupportedError
from ..ir import Graph, Node, Value
from .lowered import KernelCall, KernelRecord, LoweredGraph
from .macs import node_macs

log = logging.getLogger(__name__)

#: ops whose output is a view of their input's bytes (no kernel, no storage of their own)
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})


@dataclass(frozen=True)
class LowerConfig:
    """Options of :func:`lower_graph`.

    ``cache_size``: compiled kernels kept in this process (0 disables the cache).
    ``symbol_prefix``: prefix of every kernel symbol (``<prefix>_<kind>_<digest>``).
    """

    cache_size: int = 256
    symbol_prefix: str = "qc"

    def __post_init__(self):
        from ..errors import ConfigError

        if self.cache_size < 0:
            raise ConfigError(f"LowerConfig.cache_size must be >= 0, got {self.cache_size}")
        if not self.symbol_prefix.isidentifier():
            raise ConfigError(f"LowerConfig.symbol_prefix must be a C identifier, got {self.symbol_prefix!r}")


# -- workloads ---------------------------------------------------------------------------------------

def workload_of(graph: Graph, node: Node):
    """The node as a constant-independent Workload (scalar constants included by value)."""
    from ..schedules.kernel import TensorSpec, Workload

    inputs, scalars = [], {}
    for i, name in enumerate(node.inputs):
        if not name:
            inputs.append(None)
            continue
        v = graph.value(name)
        inputs.append(TensorSpec(v.shape, v.dtype, v.is_const))
        if v.is_const and v.size == 1:
            scalars[i] = v.data.reshape(-1)[0].item()
    outputs = [TensorSpec(graph.value(o).shape, graph.value(o).dtype) for o in node.outputs]
    attrs = {k: v for k, v in node.attrs.items() if not (isinstance(v, np.ndarray) and v.size > 64)}
    return Workload.make(node.op, inputs, outputs, attrs, scalars)


def _as_config(config) -> LowerConfig:
    from ..errors import ConfigError

    if config is None:
        return LowerConfig()
    if isinstance(config, LowerConfig):
        return config
    if isinstance(config, Mapping):
        unknown = sorted(set(config) - set(LowerConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown lowering option(s) {unknown}; known: "
                              f"{sorted(LowerConfig.__dataclass_fields__)}")
        return LowerConfig(**config)
    raise ConfigError(f"lowering config must be a LowerConfig or a dict, got {type(config).__name__}")


def _as_tuning(tuning):
    """A tuning mapping; a path names a JSON file holding one (``{"<impl>|<workload key>": knobs}``)."""
    from ..errors import ConfigError

    if tuning is None or isinstance(tuning, Mapping) or hasattr(tuning, "best_config"):
        return tuning
    if isinstance(tuning, (str, os.PathLike)):
        try:
            with open(tuning) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read tuning file {os.fspath(tuning)!r}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"tuning file {os.fspath(tuning)!r} must hold a JSON object")
        return data
    raise ConfigError(f"tuning must be a mapping, a path or a tuning log, got {type(tuning).__name__}")


def _tuned(tuning, impl_name: str, wl) -> Optional[Mapping[str, Any]]:
    if tuning is None:
        return None
    if hasattr(tuning, "best_config"):
        return tuning.best_config(impl_name, wl.key())
    return tuning.get(f"{impl_name}|{wl.key()}") or tuning.get(wl.key())


# -- building and the kernel cache ----------------------------------------------------------------

_CACHE: "OrderedDict[Tuple[str, str], bytes]" = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def _target_key(target) -> str:
    return json.dumps([target.mtriple, target.mcpu, list(target.mattr), target.float_abi, target.cores])


def build_kernel(impl, wl, plan, cfg: Dict[str, Any], target, symbol: str) -> bytes:
    """Compile one kernel to object code exporting ``__tvm_ffi_<symbol>``."""
    import tvm
    from tvm import te

    stages = impl.compute(wl, plan, cfg)
    func = te.create_prim_func(stages.args).with_attr("global_symbol", symbol)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    sch.work_on("main")
    impl.schedule(sch, stages, wl, target, cfg)
    ex = tvm.compile(sch.mod, target=target.tvm_target())
    with tempfile.TemporaryDirectory(prefix="qc_kernel_") as d:
        path = os.path.join(d, f"{symbol}.o")
        ex.mod.write_to_file(path)
        with open(path, "rb") as f:
            return f.read()


def cached_build(impl, wl, plan, cfg, target, symbol: str, cache_size: int) -> bytes:
    key = (_target_key(target), symbol)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    obj = build_kernel(impl, wl, plan, cfg, target, symbol)
    if cache_size:
        with _CACHE_LOCK:
            _CACHE[key] = obj
            while len(_CACHE) > cache_size:
                _CACHE.popitem(last=False)
    return obj


def kernel_symbol(prefix: str, kind: str, impl_name: str, wl, cfg: Mapping[str, Any]) -> str:
    digest = wl.digest(impl_name, json.dumps(cfg, sort_keys=True, default=repr))
    return f"{prefix}_{kind}_{digest[:16]}"


# -- the pass ----------------------------------------------------------------------------------------

def lower_graph(graph: Graph, target, config: Optional[LowerConfig] = None, tuning=None) -> LoweredGraph:
    """Lower every node of ``graph`` to a kernel call (or an alias) for ``target``.

    ``target``: a :class:`qcompiler.targets.Target` or a target name. ``config``: a
    :class:`LowerConfig` or a dict of its fields. ``tuning``: optional mapping from
    ``"<impl name>|<workload key>"`` (or just the workload key) to schedule knobs, a path to a JSON
    file holding such a mapping, or an object with ``best_config(impl_name, workload_key)``.
    """
    from ..schedules.select import select
    from ..targets import resolve

    target = resolve(target)
    config = _as_config(config)
    tuning = _as_tuning(tuning)
    out_graph = graph.copy()
    calls: List[KernelCall] = []
    records: List[KernelRecord] = []
    objects: Dict[str, bytes] = {}
    constants: Dict[str, np.ndarray] = {}
    problems: List[str] = []

    def use_const(name: str) -> None:
        v = out_graph.values[name]
        if v.is_const and name not in constants:
            constants[name] = v.data

    for node in graph.nodes:
        try:
            if node.op in VIEW_OPS:
                _lower_view(out_graph, node, calls, records, constants)
                continue
            wl = workload_of(graph, node)
            try:
                sel = select(wl, target)
            except LookupError as e:
                problems.append(f"node {node.name!r} ({node.op}): {e}")
                continue
            impl = sel.impl
            cfg = impl.config_for(wl, target, _tuned(tuning, impl.name, wl))
            plan = impl.plan(wl, cfg)
            symbol = kernel_symbol(config.symbol_prefix, sel.kind, impl.name, wl, cfg)
            if symbol not in objects:
                try:
                    objects[symbol] = cached_build(impl, wl, plan, cfg, target, symbol, config.cache_size)
                except QCompilerError:
                    raise
                except Exception as e:  # TVM errors: name the node and the kernel
                    raise QCompilerError(f"node {node.name!r} ({node.op}): building kernel {impl.name} "
                                         f"with config {cfg} failed: {type(e).__name__}: "
                                         f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
            args = _bind_args(graph, out_graph, node, plan, constants, use_const)
            calls.append(KernelCall(node.name, "kernel", symbol, args))
            if sel.fallback:
                log.warning("node %r (%s): fallback kernel %s: %s", node.name, node.op, impl.name, sel.fallback)
            records.append(KernelRecord(
                node=node.name, op=node.op, symbol=symbol, impl=impl.name, config=dict(cfg),
                fallback=sel.fallback, macs=node_macs(graph, node), bits=_bits(graph, node),
                shapes=_shapes(graph, node)))
        except UnsupportedError as e:
            problems.append(f"node {node.name!r} ({node.op}): {e}")
    if problems:
        raise UnsupportedError(f"{len(problems)} node(s) of graph {graph.name!r} cannot be compiled for "
                               f"target {target.name!r}:\n  " + "\n  ".join(problems))
    for name in graph.outputs:
        use_const(name)
    return LoweredGraph(graph=out_graph, target_name=target.name, calls=calls, objects=objects,
                        constants=constants, records=records)


def _lower_view(out_graph: Graph, node: Node, calls, records, constants) -> None:
    src, dst = node.inputs[0], node.outputs[0]
    vs, vd = out_graph.value(src), out_graph.value(dst)
    if vs.dtype != vd.dtype or vs.size != vd.size:
        raise UnsupportedError(f"view op output {vd.type_str()} is not a view of its input {vs.type_str()}")
    if vs.is_const:
        # a view of a constant is a constant of its own (no call, no aliasing of embedded data)
        vd.data = vs.data.reshape(vd.shape)
        constants[dst] = vd.data
    else:
        calls.append(KernelCall(node.name, "alias", None, [src, dst]))
    records.append(KernelRecord(node=node.name, op=node.op, symbol=None, impl="alias", config={},
                                shapes={src: list(vs.shape), dst: list(vd.shape)}))


def _bind_args(graph: Graph, out_graph: Graph, node: Node, plan, constants, use_const) -> List[str]:
    args = []
    const_data = None
    for a in plan.args:
        if a.kind == "input":
            name = node.inputs[a.index]
            use_const(name)
        elif a.kind == "output":
            name = node.outputs[a.index]
        else:
            name = f"{node.inputs[a.index]}__{a.tag}"
            if name not in out_graph.values:
                if const_data is None:
                    const_data = [graph.const(n) if n else None for n in node.inputs]
                data = np.ascontiguousarray(a.transform(const_data))
                if tuple(data.shape) != tuple(a.spec.shape) or str(data.dtype) != a.spec.dtype:
                    raise QCompilerError(f"internal: constant {name} is {data.dtype}{list(data.shape)}, the "
                                         f"kernel expects {a.spec.dtype}{list(a.spec.shape)}")
                out_graph.add_value(Value(name, data.shape, str(data.dtype), data=data))
            constants[name] = out_graph.values[name].data
        args.append(name)
    return args


def _bits(graph: Graph, node: Node) -> Dict[str, object]:
    bits = {}
    for role, name in (("x", node.input(0)), ("w", node.input(1)), ("out", node.outputs[0] if node.outputs else None)):
        v = graph.values.get(name) if name else None
        if v is None:
            continue
        if v.quant is not None:
            bits[role] = v.quant.bits
        elif v.dtype.startswith(("int", "uint")) and v.packing is None:
            bits[role] = np.dtype(v.dtype).itemsize * 8
    return bits


def _shapes(graph: Graph, node: Node) -> Dict[str, List[int]]:
    return {n: list(graph.values[n].shape) for n in list(node.inputs) + list(node.outputs) if n}
