"""``qcompiler info`` and the summary behind it (:mod:`qcompiler.summary`)."""

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler as qc
from qcompiler.cli import main
from qcompiler.summary import summarize

EXAMPLE = os.path.join(os.path.dirname(qc.__file__), "examples", "digits_mlp.onnx")


def _small_cnn(path, batch="N"):
    """Conv 3->4 (3x3, pad 1) on 8x8, Relu, Flatten, Gemm 256->5; batch dim symbolic by default."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("w", (4, 3, 3, 3)), ("b", (4,)), ("fc_w", (5, 256)), ("fc_b", (5,))]]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "small_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def _info(capsys, *argv):
    code = main(["info", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_example_model_text(capsys):
    code, out, err = _info(capsys, EXAMPLE)
    assert code == 0, err
    assert "input: float32[1,64]" in out and "logits: float32[1,10]" in out
    assert "ops: Gemm x3, Relu x2" in out
    # 64->128->128->10 with biases
    assert "parameters: 26,122 (26.12k), 104,488 bytes" in out
    assert "MACs: 25,856" in out and "total MACs: 25,856" in out
    fc1 = next(line for line in out.splitlines() if line.startswith("/0/Gemm"))
    assert fc1.split() == ["/0/Gemm", "Gemm", "float32[1,128]", "8,320", "8,192", "31.7"]


def test_example_model_json(capsys):
    code, out, _ = _info(capsys, EXAMPLE, "--json")
    assert code == 0
    s = json.loads(out)
    assert s["inputs"] == [{"name": "input", "shape": [1, 64], "dtype": "float32"}]
    assert s["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert s["ops"] == {"Gemm": 3, "Relu": 2}
    assert (s["params"], s["param_bytes"], s["macs"]) == (26122, 4 * 26122, 25856)
    assert [(r["op"], r["macs"], r["params"]) for r in s["layers"]] == [
        ("Gemm", 64 * 128, 64 * 128 + 128), ("Relu", 0, 0), ("Gemm", 128 * 128, 128 * 128 + 128),
        ("Relu", 0, 0), ("Gemm", 128 * 10, 128 * 10 + 10)]

    code, out, _ = _info(capsys, EXAMPLE, "--json", "--no-layers")
    assert code == 0 and "layers" not in json.loads(out) and json.loads(out)["macs"] == 25856


def test_conv_and_gemm_macs_with_input_shape(tmp_path, capsys):
    path = _small_cnn(tmp_path / "cnn.onnx")
    code, out, _ = _info(capsys, path, "--input-shape", "x=2,3,8,8", "--json")
    assert code == 0
    s = json.loads(out)
    layers = {r["name"]: r for r in s["layers"]}
    # conv: N * O * OH * OW * (C * KH * KW) = 2 * 4 * 8 * 8 * 27
    assert layers["conv"]["macs"] == 2 * 4 * 8 * 8 * 27 == 13824
    assert layers["conv"]["params"] == 4 * 27 + 4 and layers["conv"]["output_shape"] == [2, 4, 8, 8]
    assert layers["fc"]["macs"] == 2 * 5 * 256 and layers["fc"]["params"] == 5 * 256 + 5
    assert layers["relu"]["macs"] == layers["flatten"]["macs"] == 0
    assert s["macs"] == 13824 + 2560
    assert s["inputs"][0]["shape"] == [2, 3, 8, 8] and s["outputs"][0]["shape"] == [2, 5]


def test_dynamic_input_needs_a_shape(tmp_path, capsys):
    path = _small_cnn(tmp_path / "cnn.onnx")
    code, out, err = _info(capsys, path)
    assert code == 1 and out == ""
    assert err.startswith("qcompiler info: error:") and "Traceback" not in err
    assert "input 'x' has dynamic shape" in err and "--input-shape x=" in err


def test_bad_input_shape_argument(tmp_path, capsys):
    code, _, err = _info(capsys, EXAMPLE, "--input-shape", "input=1,x")
    assert code == 1
    assert "expected NAME=D0,D1" in err and "Traceback" not in err


@pytest.mark.parametrize("content", [None, b"this is not an onnx model\n", "truncated"])
def test_bad_model_file(tmp_path, capsys, content):
    path = tmp_path / "bad.onnx"
    if content == "truncated":
        data = open(EXAMPLE, "rb").read()
        path.write_bytes(data[: len(data) // 3])
    elif content is not None:
        path.write_bytes(content)
    code, out, err = _info(capsys, str(path))
    assert code == 1 and out == ""
    assert err.startswith("qcompiler info: error:") and "Traceback" not in err
    assert str(path) in err
    assert ("does not exist" in err) if content is None else ("not a valid ONNX model" in err)


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("info", "compile", "targets"):
        assert f"    {command} " in out
    assert main([]) == 2  # no command: help and a usage error code


def test_macs_are_logical_after_binarization():
    """A binarized graph keeps the float graph's MACs (packed outputs count channels, not words)."""
    from qcompiler.commands.common import load_npz_batches

    graph = qc.from_onnx(EXAMPLE)
    calib = load_npz_batches(os.path.join(os.path.dirname(EXAMPLE), "digits_calib.npz"))
    binary = qc.quantize(graph, qc.QuantConfig(weights=1, activations=1), calibration=calib)
    s = summarize(binary)
    assert "BinaryDense" in s["ops"]
    assert s["macs"] == summarize(graph)["macs"] == 25856
    assert s["param_bytes"] < summarize(graph)["param_bytes"] / 10


def test_summary_of_torch_resnet18_matches_torch(torch_net_onnx):
    """Parameters = torch's parameters + BN running statistics; MACs = what forward hooks count."""
    import torch

    import nets

    s = summarize(qc.from_onnx(torch_net_onnx("resnet18", keep_batchnorm=True)))
    model = nets.build("resnet18")
    expected_params = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    macs = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        macs.append(output.numel() * per_output)

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.from_numpy(nets.sample_input("resnet18")))
    # the exported graph's only other constants: none (BN epsilon and momentum are attributes)
    assert s["params"] == expected_params
    assert s["macs"] == sum(macs)
    assert s["ops"]["Conv"] == 20 and s["ops"]["BatchNormalization"] == 20
