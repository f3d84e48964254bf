"""Kernel implementations: plan + compute + schedule template, one :class:`KernelImpl` per
(kind, family). A family's default knobs come from its package (``schedules/<family>/defaults.py``,
function ``defaults(kind, workload, target)``), so the same template can carry different tiles on
x86, ARM and RISC-V, and a family can register its own schedule for a kind (``FAMILY_SCHEDULES``).

Implementation names are ``<kind>__<family>`` (e.g. ``conv2d_nchw_ocvec__x86``); they are what the
manifest records per layer.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Tuple

import numpy as np

from . import compute as C
from . import compute_injective as CI
from . import compute_int8 as Q
from . import templates as T
from .kernel import Arg, KernelImpl, Plan, TensorSpec, Workload, ceil_div, identity_plan

FAMILIES = ("x86", "arm", "riscv")


# -- plans ----------------------------------------------------------------------------------------

def _outputs(wl: Workload):
    return [Arg("output", j, s) for j, s in enumerate(wl.outputs)]


def _inputs(wl: Workload, indices):
    return [Arg("input", i, wl.inputs[i]) for i in indices if wl.input(i) is not None]


def plan_conv_ocvec(wl: Workload, cfg: dict) -> Plan:
    """x, weights packed ``[O/vo, Cg, KH, KW, vo]`` (tag ``ocvec<vo>``), bias?, epilogue inputs."""
    w = wl.inputs[1]
    vo = cfg["vo"]
    o = w.shape[0]
    packed = TensorSpec((ceil_div(o, vo),) + tuple(w.shape[1:]) + (vo,), w.dtype, True)
    args = _inputs(wl, [0])
    args.append(Arg("const", 1, packed, f"ocvec{vo}", lambda ins, vo=vo: C.pack_conv_weights(ins[1], vo)))
    args += _inputs(wl, range(2, len(wl.inputs)))
    return Plan(tuple(args + _outputs(wl)))


def _gemm_b_nk(ins, trans_b: int) -> np.ndarray:
    b = ins[1]
    return b if trans_b else b.T


def plan_dense(wl: Workload, cfg: dict) -> Plan:
    """Gemm / MatMul with a constant B: B packed ``[N/vn, K, vn]`` (tag ``nvec<vn>``)."""
    vn = cfg["vn"]
    b = wl.inputs[1]
    if wl.op == "Gemm":
        trans_b = int(wl.attr("transB", 0))
    else:  # QDense weights are [N, K]; MatMul's are [K, N]
        trans_b = 1 if wl.op == "QDense" else 0
    n = b.shape[0] if trans_b else b.shape[-1]
    k = b.shape[1] if trans_b else b.shape[0]
    args = _inputs(wl, [0])
    if b.const:
        spec = TensorSpec((ceil_div(n, vn), k, vn), b.dtype, True)
        args.append(Arg("const", 1, spec, f"nvec{vn}",
                        lambda ins, tb=trans_b, vn=vn: C.pack_dense_weights(_gemm_b_nk(ins, tb), vn)))
    else:
        args += _inputs(wl, [1])
    args += _inputs(wl, range(2, len(wl.inputs)))
    return Plan(tuple(args + _outputs(wl)))


def plan_bn(wl: Workload, cfg: dict) -> Plan:
    x = wl.inputs[0]
    eps = float(wl.attr("epsilon"))
    c = x.shape[1]
    inv = Arg("const", 1, TensorSpec((c,), x.dtype, True), "bn_inv",
              lambda ins, eps=eps, dt=x.dtype: CI.bn_inv(ins, eps, dt))
    return Plan(tuple(_inputs(wl, [0]) + [inv] + _inputs(wl, [2, 3]) + _outputs(wl)))


def plan_data_only(wl: Workload, cfg: dict) -> Plan:
    """Only the data input (the other inputs are shape carriers or baked scalars)."""
    return Plan(tuple(_inputs(wl, [0]) + _outputs(wl)))


def plan_no_scalars(wl: Workload, cfg: dict) -> Plan:
    """Every input but the scalar constants the compute bakes in."""
    return identity_plan(wl, skip=[i for i, _ in wl.scalars])


def plan_identity(wl: Workload, cfg: dict) -> Plan:
    return identity_plan(wl)


# -- computes bound to workloads -------------------------------------------------------------------

def compute_dense(wl: Workload, plan: Plan, cfg: dict):
    a = wl.inputs[0]
    if wl.op == "Gemm":
        ta, tb = int(wl.attr("transA", 0)), int(wl.attr("transB", 0))
        m, k = (a.shape[1], a.shape[0]) if ta else a.shape
        n = wl.outputs[0].shape[1]
        a_index = (lambda t, i, r: t[r, i]) if ta else (lambda t, i, r: t[i, r])
        b_index = (lambda t, r, j: t[j, r]) if tb else (lambda t, r, j: t[r, j])
        ph = C.placeholders(plan)
        c_t = C.arg_for(plan, ph, "input", 2)
        epi = C.gemm_epilogue(wl, plan, c_t, m, n)
        return C.dense_nvec(wl, plan, cfg, m, k, n, a_index, b_index, epilogue=epi, ph=ph)
    # MatMul with a 2-D B: A [..., M, K] flattened to rows
    k = a.shape[-1]
    lead = a.shape[:-1]
    m = int(np.prod(lead)) if lead else 1
    n = wl.outputs[0].shape[-1]

    def a_index(t, i, r):
        idx = []
        for d in reversed(lead):
            idx.append(i % d)
            i = i // d
        return t[tuple(reversed(idx)) + (r,)]

    return C.dense_nvec(wl, plan, cfg, m, k, n, a_index, lambda t, r, j: t[r, j],
                        epilogue=lambda v, i, j: v)


def _compute(fn: Callable, **kw):
    return lambda wl, plan, cfg: fn(wl, plan, cfg, **kw)


#: kind -> (plan, compute, schedule template)
KINDS: Dict[str, Tuple[Callable, Callable, Callable]] = {
    "conv2d_nchw_ocvec": (plan_conv_ocvec, C.conv2d_ocvec, T.conv2d_ocvec),
    "depthwise_conv2d_nchw": (plan_identity, C.depthwise_conv2d, T.depthwise_conv2d),
    "dense_nvec": (plan_dense, compute_dense, T.dense_nvec),
    "batch_matmul": (plan_identity, C.batch_matmul, T.batch_matmul),
    "maxpool2d": (plan_data_only, _compute(C.pool2d, kind="max"), T.pool),
    "avgpool2d": (plan_data_only, _compute(C.pool2d, kind="avg"), T.pool),
    "global_avgpool": (plan_data_only, _compute(C.global_pool, kind="avg"), T.pool),
    "global_maxpool": (plan_data_only, _compute(C.global_pool, kind="max"), T.pool),
    "softmax": (plan_data_only, C.softmax, T.softmax),
    "elementwise": (plan_no_scalars, CI.elementwise, T.all_injective),
    "batch_norm": (plan_bn, CI.batch_norm, T.all_injective),
    "transpose": (plan_data_only, CI.transpose, T.all_injective),
    "concat": (plan_identity, CI.concat, T.all_injective),
    "pad": (plan_data_only, CI.pad, T.all_injective),
    "slice": (plan_data_only, CI.slice_, T.all_injective),
    "gather": (plan_identity, CI.gather, T.all_injective),
    "expand": (plan_data_only, CI.expand, T.all_injective),
    "tile": (plan_data_only, CI.tile, T.all_injective),
    "split": (plan_data_only, CI.split, T.all_injective),
    "reduce": (plan_data_only, CI.reduce, T.reduce_op),
    "qconv2d_nchw_ocvec": (plan_conv_ocvec, Q.qconv2d, T.conv2d_ocvec),
    "qdepthwise_conv2d_nchw": (plan_identity, _compute(Q.qconv2d, depthwise=True), T.depthwise_conv2d),
    "qdense_nvec": (plan_dense, Q.qdense, T.dense_nvec),
    "qadd": (plan_identity, Q.qadd, T.all_injective),
    "quantize_linear": (plan_identity, Q.quantize_linear, T.all_injective),
    "dequantize_linear": (plan_identity, Q.dequantize_linear, T.all_injective),
}

_IMPLS: Dict[Tuple[str, str], KernelImpl] = {}


def register(impl: KernelImpl, kind: str, family: str) -> KernelImpl:
    """Register a family's implementation of ``kind`` (another engineer's kernels use this too)."""
    _IMPLS[(kind, family)] = impl
    return impl


def get_impl(kind: str, family: str) -> KernelImpl:
    """The ``family``'s implementation of ``kind``: a registered one, else the shared template with
    the family's default knobs."""
    key = (kind, family)
    if key not in _IMPLS:
        if kind not in KINDS:
            raise KeyError(f"no kernel kind {kind!r}")
        plan, comp, sched = KINDS[kind]
        defaults = importlib.import_module(f"qcompiler.schedules.{family}.defaults").defaults
        _IMPLS[key] = KernelImpl(name=f"{kind}__{family}", plan=plan, compute=comp, schedule=sched,
                                 default_config=lambda wl, target, kind=kind, d=defaults: d(kind, wl, target))
    return _IMPLS[key]


# the low-bit kinds register themselves (bottom import: they use ``register`` above)
from . import lowbit_impls as _lowbit_impls  # noqa: E402,F401
from . import compute_pool as _compute_pool  # noqa: E402,F401  registers maxpool2d_rows
from . import compute_bitpack as _compute_bitpack  # noqa: E402,F401  registers bitpack_pixels
