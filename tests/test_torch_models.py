"""Whole networks from PyTorch: import + reference executor must match onnxruntime and PyTorch.

The networks (ResNet-18, MobileNetV2, an MLP; random weights, randomised BN statistics) live in
``tests/nets.py``. Each is exported with the legacy exporter (BN folded into Conv, and with explicit
BatchNormalization nodes) and with the default dynamo exporter; the error bound is the issue's
1e-4 of the output scale (max |output|).
"""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import nets
import qcompiler as qc
from qcompiler import ref

REL_TOL = 1e-4

#: (network, exporter variant); "legacy_bn" keeps BatchNormalization nodes in the file
CASES = [
    ("resnet18", "legacy"), ("resnet18", "legacy_bn"), ("resnet18", "dynamo"),
    ("mobilenetv2", "legacy"), ("mobilenetv2", "legacy_bn"), ("mobilenetv2", "dynamo"),
    ("mlp", "legacy"), ("mlp", "dynamo"),
]


def _path(torch_net_onnx, name, variant):
    return torch_net_onnx(name, dynamo=variant == "dynamo", keep_batchnorm=variant == "legacy_bn")


def _rel_err(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name,variant", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_reference_matches_onnxruntime_and_torch(torch_net_onnx, name, variant):
    path = _path(torch_net_onnx, name, variant)
    x = nets.sample_input(name, seed=1)  # not the export's example input

    graph = qc.from_onnx(path)
    got = ref.run(graph, {nets.INPUT_NAME: x})[nets.OUTPUT_NAME]

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want_ort = sess.run([nets.OUTPUT_NAME], {nets.INPUT_NAME: x})[0]
    want_torch = nets.torch_output(name, x)

    assert got.shape == want_ort.shape == want_torch.shape
    assert got.dtype == np.float32
    assert np.abs(want_ort).max() > 1e-3, "degenerate network: output is ~0, the check would be vacuous"
    err_ort, err_torch = _rel_err(got, want_ort), _rel_err(got, want_torch)
    assert err_ort <= REL_TOL, f"{name}/{variant}: max abs error vs onnxruntime {err_ort:.2e} of scale"
    assert err_torch <= REL_TOL, f"{name}/{variant}: max abs error vs torch {err_torch:.2e} of scale"


def _onnx_ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_resnet18_has_the_resnet18_structure(torch_net_onnx):
    path = _path(torch_net_onnx, "resnet18", "legacy_bn")
    ops = _onnx_ops(path)
    # stem + 8 BasicBlocks x 2 convs + 3 projection shortcuts = 20 convs, each followed by BN
    assert ops["Conv"] == 20 and ops["BatchNormalization"] == 20
    assert ops["Add"] == 8 and ops["MaxPool"] == 1 and ops["Gemm"] == 1
    graph = qc.from_onnx(path)
    convs = [n for n in graph.nodes if n.op == "Conv"]
    projections = [n for n in convs if list(n.attrs["kernel_shape"]) == [1, 1]]
    assert len(projections) == 3
    assert all(list(n.attrs["strides"]) == [2, 2] for n in projections)
    widths = sorted({graph.values[n.inputs[1]].shape[0] for n in convs})
    assert widths == [64, 128, 256, 512]
    assert sum(v.size for v in graph.initializers() if v.dtype == "float32") > 11_000_000


def test_mobilenetv2_has_depthwise_relu6_and_residuals(torch_net_onnx):
    path = _path(torch_net_onnx, "mobilenetv2", "legacy_bn")
    ops = _onnx_ops(path)
    assert ops["Clip"] == 35 and ops["Add"] == 10 and ops["BatchNormalization"] == 52
    graph = qc.from_onnx(path)
    depthwise = [n for n in graph.nodes if n.op == "Conv" and n.attrs["group"] > 1]
    assert len(depthwise) == 17
    for n in depthwise:
        w = graph.values[n.inputs[1]].shape
        assert w[1] == 1 and n.attrs["group"] == w[0] and list(n.attrs["kernel_shape"]) == [3, 3]
    clips = [n for n in graph.nodes if n.op == "Clip"]
    assert all(graph.const(n.input(1)).item() == 0 and graph.const(n.input(2)).item() == 6 for n in clips)
