"""Tutorial: from an ONNX model to native modules for this machine and for a Raspberry Pi.

Run it from anywhere: ``python tutorials/compile_and_deploy.py``. It writes into ./build.

1. Import the shipped example (a 64-128-128-10 MLP trained on scikit-learn's 8x8 digits).
2. Quantize it to full-integer int8 with calibration data, and check it against the float model
   with the reference executor (the oracle that defines every op).
3. Compile it for the host, export the module directory, load it back with ctypes (no TVM needed)
   and check that it computes exactly what the reference executor computes.
4. Cross-compile the same graph for a Raspberry Pi 4 (aarch64); if Debian's cross gcc and qemu-user
   are installed, run it under emulation and check it bit-exactly too.
"""

import os
import shutil

import numpy as np

import qcompiler as qc
from qcompiler import ref
from qcompiler.errors import TargetError
from qcompiler.targets import get_target

EXAMPLES = os.path.join(os.path.dirname(qc.__file__), "examples")


def main() -> None:
    # 1. import: static shapes, ONNX ops normalised, shape chains folded
    graph = qc.from_onnx(os.path.join(EXAMPLES, "digits_mlp.onnx"))
    print(graph)

    # 2. quantize: one calibration batch per leading index of the .npz array
    calib = np.load(os.path.join(EXAMPLES, "digits_calib.npz"))["input"]
    batches = [{"input": x} for x in calib]
    qgraph = qc.quantize(graph, qc.QuantConfig(weights=8, activations=8, calibration="mse"),
                         calibration=batches)
    print(qgraph)
    digit = np.load(os.path.join(EXAMPLES, "digit.npy"))
    float_logits = ref.run(graph, {"input": digit})["logits"]
    int8_logits = ref.run(qgraph, {"input": digit})["logits"]
    print("float prediction", float_logits.argmax(), "int8 prediction", int8_logits.argmax())
    assert float_logits.argmax() == int8_logits.argmax()

    # 3. compile for this machine, export, load without TVM, compare bit for bit
    module = qc.compile(qgraph, target="host", name="digits")
    module.export("build/digits_host")
    native = qc.load("build/digits_host", num_threads=1)
    out = native.run({"input": digit})["logits"]
    np.testing.assert_array_equal(out, int8_logits)
    print("host module matches the reference executor exactly:", out.argmax())

    # 4. cross-compile for a Raspberry Pi 4; run under qemu-user when it is installed
    rpi4 = get_target("rpi4")
    qc.compile(qgraph, target=rpi4, name="digits").export("build/digits_rpi4")
    print("wrote build/digits_rpi4:", sorted(os.listdir("build/digits_rpi4")))
    if shutil.which(rpi4.cc[0]) is None or shutil.which(rpi4.emulator[0]) is None:
        print(f"skipping the emulated run: install {rpi4.cc_package} and {rpi4.emulator_package}")
        return
    try:
        board = qc.load("build/digits_rpi4")   # runs under qemu-aarch64, and says so in the log
    except TargetError as e:
        print("cannot run the rpi4 module here:", e)
        return
    np.testing.assert_array_equal(board.run({"input": digit})["logits"], int8_logits)
    print("rpi4 module (under qemu) matches the reference executor exactly")


if __name__ == "__main__":
    main()
