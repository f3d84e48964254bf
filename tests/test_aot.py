"""AOT executor generation: the static memory plan, the weights layout and the generated C.

The plan tests use lowered graphs with fake kernel symbols (planning and C generation do not need
object code); every plan is checked against an independent step-by-step simulation.
"""

import os
import shutil
import subprocess
import zlib

import numpy as np
import pytest

from qcompiler.codegen.aot import arena_size, c_string, generate
from qcompiler.codegen.lowered import KernelCall, LoweredGraph
from qcompiler.codegen.memory_plan import ALIGN, plan_memory
from qcompiler.codegen.weights import BLOB_HEADER_BYTES, blob_bytes, layout_weights
from qcompiler.errors import ModelError
from qcompiler.ir import Graph, Value

RUNTIME = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "qcompiler", "runtime")


class Net:
    """A lowered graph built step by step: ``kernel(op, inputs, shape)`` appends a call."""

    def __init__(self, name="net"):
        self.g = Graph(name)
        self.calls = []
        self.constants = {}
        self.n = 0

    def input(self, name, shape, dtype="float32"):
        self.g.add_value(Value(name, shape, dtype))
        self.g.inputs.append(name)
        return name

    def const(self, shape, seed=0, dtype="float32"):
        self.n += 1
        name = f"w{self.n}"
        data = np.random.default_rng(seed).normal(size=shape).astype(dtype)
        self.g.add_const(name, data)
        self.constants[name] = data
        return name

    def kernel(self, op, inputs, shape, dtype="float32"):
        self.n += 1
        out = f"{op}{self.n}"
        self.g.add_value(Value(out, shape, dtype))
        sym = f"{op}_" + "x".join(map(str, shape))
        self.calls.append(KernelCall(f"node_{out}", "kernel", sym, list(inputs) + [out]))
        return out

    def alias(self, src, shape):
        self.n += 1
        out = f"view{self.n}"
        self.g.add_value(Value(out, shape, self.g.values[src].dtype))
        self.calls.append(KernelCall(f"node_{out}", "alias", None, [src, out]))
        return out

    def lowered(self, outputs):
        self.g.outputs = list(outputs)
        syms = {c.symbol for c in self.calls if c.kind == "kernel"}
        return LoweredGraph(self.g, "host", self.calls, {s: b"" for s in syms}, dict(self.constants), [])


def resnet_style(blocks=4, c=16, hw=8):
    """stem conv, ``blocks`` residual blocks (conv-relu-conv-add-relu), flatten view, dense head."""
    net = Net("resnetish")
    x = net.input("input", (1, c, hw, hw))
    act = (1, c, hw, hw)
    h = net.kernel("conv", [x, net.const((c, c, 3, 3))], act)
    for b in range(blocks):
        a = net.kernel("conv", [h, net.const((c, c, 3, 3), seed=b)], act)
        a = net.kernel("relu", [a], act)
        a = net.kernel("conv", [a, net.const((c, c, 3, 3), seed=b + 10)], act)
        h = net.kernel("relu", [net.kernel("add", [a, h], act)], act)
    flat = net.alias(h, (1, c * hw * hw))
    logits = net.kernel("dense", [flat, net.const((c * hw * hw, 10))], (1, 10))
    return net.lowered([logits])


def simulate(lowered, plan):
    """Independent check: at every step, arena bytes of values still needed never overlap."""
    first, last = {}, {}
    for step, call in enumerate(lowered.calls):
        for name in call.args:
            root = plan.slots[name].root
            first.setdefault(root, step)
            last[root] = step
    arena = {plan.slots[n].root: plan.slots[n] for n in plan.slots if plan.slots[n].storage == "arena"}
    for step in range(len(lowered.calls)):
        live = [s for r, s in arena.items() if first[r] <= step <= last[r]]
        for i, a in enumerate(live):
            assert a.offset % ALIGN == 0 and a.offset + a.nbytes <= plan.arena_bytes
            for b in live[i + 1:]:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (step, a, b)


def test_resnet_style_plan_reuses_memory():
    lowered = resnet_style()
    plan = plan_memory(lowered)
    simulate(lowered, plan)
    act_bytes = 16 * 8 * 8 * 4
    n_intermediates = 1 + 4 * 5
    assert plan.intermediate_bytes == n_intermediates * act_bytes
    # a residual block needs the block input plus two working buffers at a time
    assert plan.arena_bytes <= 3 * act_bytes < plan.intermediate_bytes
    assert arena_size(lowered) == plan.arena_bytes
    assert plan.slots["input"].storage == "input"
    assert plan.slots["w1"].storage == "const"


def test_views_share_storage_and_outputs_are_written_in_place():
    lowered = resnet_style(blocks=1)
    plan = plan_memory(lowered)
    view = next(c for c in lowered.calls if c.kind == "alias")
    src, dst = view.args
    assert plan.slots[src].offset == plan.slots[dst].offset and plan.slots[src].root == plan.slots[dst].root
    out = lowered.graph.outputs[0]
    assert plan.slots[out].storage == "output" and plan.slots[out].index == 0
    assert plan.output_copies == []


def test_output_that_is_a_view_gets_the_caller_buffer():
    net = Net()
    x = net.input("x", (2, 8))
    h = net.kernel("relu", [x], (2, 8))
    flat = net.alias(h, (16,))
    lowered = net.lowered([flat])
    plan = plan_memory(lowered)
    assert plan.slots[h].storage == "output" and plan.slots[flat].storage == "output"
    assert plan.arena_bytes == 0 and plan.output_copies == []


def test_outputs_that_need_copies():
    net = Net()
    x = net.input("x", (4,))
    h = net.kernel("relu", [x], (4,))
    hv = net.alias(h, (2, 2))
    xv = net.alias(x, (2, 2))
    lowered = net.lowered([h, hv, x, xv])
    plan = plan_memory(lowered)
    # h is written in place into output 0; its view, the input and the input's view are copied
    assert plan.slots[h].storage == "output" and plan.slots[h].index == 0
    assert plan.output_copies == [(1, hv), (2, x), (3, xv)]
    assert plan.slots[xv].storage == "input"


def test_unused_inputs_keep_their_place_in_the_signature(tmp_path):
    net = Net()
    x = net.input("x", (4,))
    net.input("unused", (3,), "int8")
    lowered = net.lowered([net.kernel("relu", [x], (4,))])
    plan = plan_memory(lowered)
    assert plan.slots["unused"].storage == "input" and plan.slots["unused"].index == 1
    assert "QC_NET_NUM_INPUTS 2" in generate(lowered, "net").header


def test_a_value_is_never_written_over_its_own_inputs():
    net = Net()
    x = net.input("x", (64,))
    a = net.kernel("relu", [x], (64,))
    b = net.kernel("relu", [a], (64,))      # a dies here, but b must not take a's bytes
    c = net.kernel("relu", [b], (64,))
    lowered = net.lowered([net.kernel("relu", [c], (64,))])
    plan = plan_memory(lowered)
    simulate(lowered, plan)
    assert plan.slots[a].offset != plan.slots[b].offset
    assert plan.slots[a].offset == plan.slots[c].offset       # ...but c may
    assert plan.arena_bytes == 2 * 256


def test_multi_output_kernels_and_dead_values():
    net = Net()
    x = net.input("x", (32,))
    net.g.add_value(Value("lo", (32,), "float32"))
    net.g.add_value(Value("hi", (32,), "float32"))
    net.g.add_value(Value("unused", (100,), "float32"))
    net.calls.append(KernelCall("split", "kernel", "split2", [x, "lo", "hi", "unused"]))
    y = net.kernel("add", ["lo", "hi"], (32,))
    lowered = net.lowered([y])
    plan = plan_memory(lowered)
    simulate(lowered, plan)
    assert plan.slots["unused"].storage == "arena"


def test_plan_is_deterministic():
    a, b = plan_memory(resnet_style()), plan_memory(resnet_style())
    assert a == b


@pytest.mark.parametrize("case", ["alias_size", "kind", "unproduced_output", "unknown_value"])
def test_inconsistent_lowered_graphs_are_refused(case):
    net = Net()
    x = net.input("x", (4,))
    h = net.kernel("relu", [x], (4,))
    outputs = [h]
    if case == "alias_size":
        net.g.add_value(Value("bad", (5,), "float32"))
        net.calls.append(KernelCall("v", "alias", None, [h, "bad"]))
    elif case == "kind":
        net.calls.append(KernelCall("v", "fused", None, [h]))
    elif case == "unproduced_output":
        net.g.add_value(Value("never", (4,), "float32"))
        outputs.append("never")
    else:
        net.calls.append(KernelCall("v", "kernel", "relu_4", [h, "ghost"]))
    with pytest.raises(ModelError):
        plan_memory(net.lowered(outputs))


def test_weights_layout_is_aligned_deduplicated_and_checksummed():
    net = Net()
    x = net.input("x", (3,))
    w_a = net.const((3,), seed=1)
    w_b = net.const((5, 7), seed=2)
    w_same = net.const((3,), seed=1)                         # same bytes as w_a
    h = net.kernel("mul", [x, w_a], (3,))
    h = net.kernel("mul", [h, w_same], (3,))
    lowered = net.lowered([net.kernel("mm", [h, w_b], (5,))])
    plan = plan_memory(lowered)
    layout = layout_weights(lowered, plan)
    assert layout.offsets[w_a] == layout.offsets[w_same] == 0
    assert layout.offsets[w_b] == ALIGN
    assert layout.nbytes % ALIGN == 0 and layout.nbytes == ALIGN + 5 * 7 * 4 + (-(5 * 7 * 4)) % ALIGN
    assert layout.crc32 == zlib.crc32(layout.payload)
    blob = blob_bytes(layout, "net")
    assert blob[:8] == b"QCWEIGHT" and blob[BLOB_HEADER_BYTES:] == layout.payload
    assert int.from_bytes(blob[12:16], "little") == layout.crc32
    stored = np.frombuffer(layout.payload, np.float32, count=5 * 7, offset=layout.offsets[w_b]).reshape(5, 7)
    np.testing.assert_array_equal(stored, net.constants[w_b])


def test_c_string_escapes_anything():
    assert c_string('a"b\\c?') == '"a\\"b\\\\c\\?"'
    assert c_string("é\n") == '"\\303\\251\\012"'


@pytest.mark.parametrize("cc", ["cc", "aarch64-linux-gnu-gcc", "arm-linux-gnueabihf-gcc", "riscv64-linux-gnu-gcc"])
def test_generated_executor_compiles_cleanly(tmp_path, cc):
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    net = Net("odd")
    x = net.input('in"put\\ü', (2, 3))                     # names are data, not C: escaped
    h = net.kernel("relu", [x], (2, 3))
    lowered = net.lowered([net.alias(h, (6,)), h])
    for weights in ("embedded", "blob"):
        src = generate(lowered, "odd", weights)
        (tmp_path / "odd.h").write_text(src.header)
        (tmp_path / "odd_executor.c").write_text(src.executor_c)
        flags = ["-mfloat-abi=hard"] if cc.startswith("arm-") else []
        subprocess.run([cc, "-std=gnu99", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                        "-I", RUNTIME, "-I", str(tmp_path), str(tmp_path / "odd_executor.c")] + flags,
                       check=True, capture_output=True, text=True)
    assert "QC_API int qc_odd_run(" in src.header and "Thread safety" in src.header
    assert src.api_symbols[0] == "qc_odd_create"


def test_generate_rejects_bad_weights_mode():
    with pytest.raises(ModelError):
        generate(resnet_style(blocks=1), "net", "inline")
