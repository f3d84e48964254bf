"""The low-bit kernels behind the lowering's :class:`~.kernel.KernelImpl` interface.

Kinds registered here for every family (x86, arm, riscv), selected by ``select.RULES``:

=================  ==================================  ============================================
kind               op                                  compute / schedule
=================  ==================================  ============================================
``bconv2d_nhwc``   BinaryConv2d                        ``compute_lowbit`` / ``lowbit_tiling``
``bsconv2d_nhwc``  BitserialConv2d                     same, bit-plane reduction
``bdense``         BinaryDense                         same (dense)
``bsdense``        BitserialDense                      same (dense)
``packed_maxpool`` PackedMaxPool                       ``compute_packed`` / ``lowbit_tiling``
``bitpack``        BitPack (sign / unsigned)           same
``bitunpack``      BitUnpack                           same
=================  ==================================  ============================================

Conv/dense knobs are :class:`~.lowbit_tiling.LowbitConfig`'s fields with the family's measured
defaults (``schedules/<family>/binary.py``). Constants prepared at compile time (named
``<input>__<tag>``, the tag naming the layout): the weights blocked per ``ov`` output channels,
the binary conv's padding-correction table, the epilogue vectors padded to the computed channels.
"""

from __future__ import annotations

import hashlib
import json
from typing import Union

import numpy as np

from qcompiler.errors import UnsupportedError

from . import compute_lowbit as L
from . import compute_packed as P
from .arm import binary as arm_binary
from .impls import register
from .kernel import Arg, KernelImpl, Plan, Stages, TensorSpec, Workload, identity_plan
from .lowbit_tiling import LowbitConfig, apply_conv_schedule, apply_dense_schedule, apply_packed_schedule, fit_config
from .riscv import binary as riscv_binary
from .x86 import binary as x86_binary

FAMILY_BINARY = {"x86": x86_binary, "arm": arm_binary, "riscv": riscv_binary}
CONV_OPS = ("BinaryConv2d", "BitserialConv2d")
DENSE_OPS = ("BinaryDense", "BitserialDense")

LowbitWorkload = Union[L.LowbitConvWorkload, L.LowbitDenseWorkload]


def lowbit_workload(wl: Workload) -> LowbitWorkload:
    """The kernel-side workload of a BinaryConv2d/BitserialConv2d/BinaryDense/BitserialDense node."""
    x, w = wl.inputs[0], wl.inputs[1]
    attrs = dict(wl.attrs)
    if wl.op in CONV_OPS:
        return L.conv_workload_from_attrs(wl.op, x.shape, x.dtype, w.shape, attrs)
    if wl.op in DENSE_OPS:
        return L.dense_workload_from_attrs(wl.op, x.shape, x.dtype, w.shape, attrs)
    raise UnsupportedError(f"{wl.op} is not a low-bit conv/dense")


def _fitted(lw: LowbitWorkload, cfg: dict) -> LowbitConfig:
    return fit_config(LowbitConfig(**cfg), lw)


def _stages(lw: LowbitWorkload, c: LowbitConfig):
    if isinstance(lw, L.LowbitConvWorkload):
        return L.lowbit_conv_compute(lw, c.channel_block, c.pixel_tile, c.layout == "pixels", c.unroll_taps)
    return L.lowbit_dense_compute(lw, c.channel_block, c.pixel_tile)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=repr).encode()).hexdigest()[:12]


# -- conv / dense -------------------------------------------------------------------------------------

def lowbit_default_config(wl: Workload, target) -> dict:
    word_bits = np.dtype(wl.inputs[0].dtype).itemsize * 8
    return FAMILY_BINARY[target.family].default_config(target, word_bits, lowbit_workload(wl)).as_dict()


def plan_lowbit(wl: Workload, cfg: dict) -> Plan:
    """x as is; weights (and the binary conv's correction table) and epilogue vectors prepared."""
    lw = lowbit_workload(wl)
    c = _fitted(lw, cfg)
    ov = c.channel_block
    st = _stages(lw, c)
    is_conv = isinstance(lw, L.LowbitConvWorkload)
    o = lw.geom.o if is_conv else lw.n
    o_pad = L.padded_channels(o, ov, lw.epilogue)
    if not wl.inputs[1].const:
        raise UnsupportedError(f"{wl.op}: the packed weights must be a compile-time constant")
    ep_names = L.epilogue_vector_names(lw.epilogue)
    for i, nm in enumerate(ep_names):
        spec = wl.input(2 + i)
        if spec is None or not spec.const:
            raise UnsupportedError(f"{wl.op}: the epilogue input {nm!r} (input {2 + i}) must be a constant")
    layout = _digest(wl.op, wl.inputs[1].shape, lw.geom.cg if is_conv else lw.k,
                     getattr(lw, "w_offset", 0), ov, o_pad)
    args = [Arg("input", 0, wl.inputs[0])]
    for name, t in zip(st.param_names, st.params):
        spec = TensorSpec(tuple(int(s) for s in t.shape), str(t.dtype), True)
        if name in ("x", "out"):
            continue
        if name == "w":
            fn = L.conv_weight_constant if is_conv else L.dense_weight_constant
            args.append(Arg("const", 1, spec, f"blk{layout}", lambda ins, fn=fn, lw=lw, ov=ov: fn(lw, ov, ins[1])))
        elif name == "ep_residual":
            # the fused residual Add's other operand: a runtime input, as is (NCHW float32)
            idx = 2 + len(ep_names)
            res = wl.input(idx)
            if res is None or res.shape != tuple(wl.outputs[0].shape) or res.dtype != "float32":
                raise UnsupportedError(f"{wl.op}: the residual (input {idx}) must be float32 of the output's "
                                       f"shape {list(wl.outputs[0].shape)}, got {res}")
            args.append(Arg("input", idx, res))
        elif name == "base":
            by_column = c.layout == "pixels"
            tag = f"base{_digest(layout, lw.geom, lw.pad_value, by_column)}"
            args.append(Arg("const", 1, spec, tag, lambda ins, lw=lw, ov=ov, bc=by_column:
                            L.conv_base_constant(lw, ov, ins[1], bc)))
        else:
            k = ep_names.index(name[len("ep_"):])
            args.append(Arg("const", 2 + k, spec, f"{name}{o_pad}",
                            lambda ins, k=k: L.epilogue_vector_constant(lw.epilogue, k, o, o_pad, ins[2 + k], wl.op)))
    args.append(Arg("output", 0, wl.outputs[0]))
    return Plan(tuple(args))


def compute_lowbit(wl: Workload, plan: Plan, cfg: dict) -> Stages:
    lw = lowbit_workload(wl)
    st = _stages(lw, _fitted(lw, cfg))
    return Stages(list(st.params), {"pad": st.pad, "pop": st.pop, "out": st.out, **st.extra})


def schedule_lowbit(sch, stages: Stages, wl: Workload, target, cfg: dict) -> None:
    lw = lowbit_workload(wl)
    c = _fitted(lw, cfg)
    if isinstance(lw, L.LowbitConvWorkload):
        apply_conv_schedule(sch, lw, c, (stages.block("pop"), stages.block("out"), stages.block("pad")),
                            stages.block("xsum") if "xsum" in stages.named else None,
                            epi=stages.block("epi") if "epi" in stages.named else None)
    else:
        apply_dense_schedule(sch, lw, c, (stages.block("pop"), stages.block("out")),
                             stages.block("xsum") if "xsum" in stages.named else None)


# -- packing ops ----------------------------------------------------------------------------------

def packed_default_config(wl: Workload, target) -> dict:
    """Threads only pay off past a few thousand output elements (the pool's wake-up costs ~us)."""
    elems = int(np.prod(wl.outputs[0].shape))
    return {"parallel": elems >= 4096 and target.cores > 1}


def plan_packed(wl: Workload, cfg: dict) -> Plan:
    return identity_plan(wl)


def schedule_packed(sch, stages: Stages, wl: Workload, target, cfg: dict) -> None:
    apply_packed_schedule(sch, stages.block("out"), len(stages.named["out"].op.reduce_axis), cfg["parallel"])


# -- registration ---------------------------------------------------------------------------------

KINDS = {
    "bconv2d_nhwc": ("binary conv2d on packed NHWC words", plan_lowbit, compute_lowbit, schedule_lowbit,
                     lowbit_default_config),
    "bsconv2d_nhwc": ("bitserial conv2d on packed bit planes", plan_lowbit, compute_lowbit, schedule_lowbit,
                      lowbit_default_config),
    "bdense": ("binary dense on packed words", plan_lowbit, compute_lowbit, schedule_lowbit,
               lowbit_default_config),
    "bsdense": ("bitserial dense on packed bit planes", plan_lowbit, compute_lowbit, schedule_lowbit,
                lowbit_default_config),
    "packed_maxpool": ("AND of packed sign words over the window", plan_packed, P.packed_maxpool,
                       schedule_packed, packed_default_config),
    "bitpack": ("sign/bit-plane packing into words", plan_packed, P.bitpack, schedule_packed,
                packed_default_config),
    "bitunpack": ("packed words back to +-1 floats or int codes", plan_packed, P.bitunpack, schedule_packed,
                  packed_default_config),
}

for _kind, (_doc, _plan, _compute, _schedule, _defaults) in KINDS.items():
    for _family in FAMILY_BINARY:
        register(KernelImpl(f"{_kind}__{_family}", _plan, _compute, _schedule, _defaults, _doc), _kind, _family)
