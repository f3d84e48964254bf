"""``qcompiler quantize`` end to end: ONNX + calibration .npz -> .qir."""

import numpy as np

from qcompiler import ref
from qcompiler.cli import main
from qcompiler.ir.serialize import load

from _quant_models import small_cnn_onnx


def test_quantize_command(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(small_cnn_onnx())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((4, 2, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "q.qir"
    assert main(["quantize", str(model), "--wbits", "4", "--abits", "8", "--calib",
                 str(tmp_path / "calib.npz"), "--method", "kl", "--per-channel", "-o", str(out)]) == 0
    assert "QConv2d x3" in capsys.readouterr().out
    q = load(out)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert ref.run(q, {"input": x})["logits"].shape == (2, 10)


def test_quantize_command_errors(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(small_cnn_onnx())
    assert main(["quantize", str(model), "--wbits", "11", "-o", str(tmp_path / "q.qir")]) == 1
    assert "weights must be" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", image=np.zeros((1, 2, 3, 16, 16), np.float32))
    assert main(["quantize", str(model), "--calib", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "q.qir")]) == 1
    assert "missing ['input']" in capsys.readouterr().err


def test_quantize_command_packs_for_target(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(small_cnn_onnx())
    words = {}
    for target in (None, "x86-avx2"):
        out = tmp_path / f"q_{target}.qir"
        argv = ["quantize", str(model), "--wbits", "1", "--abits", "1", "-o", str(out)]
        assert main(argv + (["--target", target] if target else [])) == 0
        q = load(out)
        words[target] = {q.value(n.inputs[1]).dtype for n in q.nodes if n.op in ("BinaryConv2d", "BinaryDense")}
    assert words == {None: {"uint32"}, "x86-avx2": {"uint64"}}
    assert main(["quantize", str(model), "--wbits", "1", "--abits", "1", "--target", "z80",
                 "-o", str(tmp_path / "q.qir")]) == 1
    assert "z80" in capsys.readouterr().err
