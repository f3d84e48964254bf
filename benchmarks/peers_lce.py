"""Larq Compute Engine A1W1 peer; runs in its own venv (python with LCE), not in qcompiler's.

LCE 0.16.0 needs tensorflow 2.16.2 + tf-keras 2.16 + larq 0.14 (``TF_USE_LEGACY_KERAS=1``), which
clash with qcompiler's numpy 2 / onnx / protobuf, hence a separate interpreter:

    python3.11 -m venv /tmp/lcevenv
    /tmp/lcevenv/bin/pip install tensorflow==2.16.2 tf-keras==2.16.0 larq==0.14.0 larq-compute-engine==0.16.0
    python benchmarks/kernels.py --lce-python /tmp/lcevenv/bin/python

Workloads as larq models: ``QuantConv2D`` 3x3 stride 1 ``padding="same"`` with ``pad_values=1.0`` (one
padding: the padding LCE runs natively) and dense as a 1x1 ``QuantConv2D`` over M pixels (LCE turns a
``QuantDense`` into a float FULLY_CONNECTED), ``ste_sign`` on inputs and kernels, no
bias, float input and output; converted with ``lce.convert_keras_model`` and run by LCE's interpreter
(1 thread). The converted model must hold an ``LceBconv2d`` (the binary kernel) and its output must
equal numpy's sum of sign(x) * sign(w) exactly before it is timed. The timed call is one
``predict`` of one batch: input binarization (LceQuantize) and the float output included.
On x86 LCE has only portable C++ kernels (its optimized ones are ARM assembly). Best of its two
bconv variants (indirect BGEMM on/off) is kept.
Prints one JSON object: {"version": ..., "rows": {workload name: ms}}; a refused workload maps to
an error string.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

CONVS = [(256, 14, 14, 256), (64, 56, 56, 64)]
DENSES = [(1, 1024), (1, 4096), (64, 1024), (64, 4096)]


def _sign(a):
    return np.where(a >= 0, 1, -1).astype(np.int64)  # larq's ste_sign: sign(0) = +1


def conv_model(c, h, w, o, rng):
    import larq as lq
    import tensorflow as tf
    x = tf.keras.Input((h, w, c), batch_size=1)
    layer = lq.layers.QuantConv2D(o, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                                  kernel_quantizer="ste_sign", kernel_constraint=None, use_bias=False)
    model = tf.keras.Model(x, layer(x))
    kernel = rng.normal(size=(3, 3, c, o)).astype(np.float32)
    layer.set_weights([kernel])
    xs = rng.normal(size=(1, h, w, c)).astype(np.float32)
    xp = np.pad(_sign(xs), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1)
    cols = np.stack([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=3)
    expect = np.einsum("nhwkc,kco->nhwo", cols, _sign(kernel).reshape(9, c, o))
    return model, xs, expect


def dense_model(m, k, n, rng):
    """Dense as a 1x1 binary conv over M pixels: LCE 0.16 converts a ``QuantDense`` to LceQuantize ->
    LceDequantize -> float FULLY_CONNECTED (no binary kernel), so the binary form is the 1x1 bconv."""
    import larq as lq
    import tensorflow as tf
    x = tf.keras.Input((m, 1, k), batch_size=1)
    layer = lq.layers.QuantConv2D(n, 1, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                  kernel_constraint=None, use_bias=False)
    model = tf.keras.Model(x, layer(x))
    kernel = rng.normal(size=(1, 1, k, n)).astype(np.float32)
    layer.set_weights([kernel])
    xs = rng.normal(size=(1, m, 1, k)).astype(np.float32)
    return model, xs, (_sign(xs.reshape(m, k)) @ _sign(kernel.reshape(k, n))).reshape(1, m, 1, n)


def _op_names(flatbuffer):
    from larq_compute_engine.mlir.python import tflite_schema as s
    model = s.Model.GetRootAsModel(flatbuffer, 0)
    names = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        names.append(oc.CustomCode().decode() if oc.CustomCode() else str(oc.BuiltinCode()))
    return names


def time_model(model, xs, expect, runs):
    import larq_compute_engine as lce
    from larq_compute_engine.tflite.python.interpreter import Interpreter
    fb = lce.convert_keras_model(model)
    ops = _op_names(fb)
    if "LceBconv2d" not in ops:
        raise RuntimeError(f"converted model has no LceBconv2d (ops {ops})")
    best = None
    for indirect in (False, True):
        it = Interpreter(fb, num_threads=1, use_indirect_bgemm=indirect)
        # the wrapper's predict runs one invoke on the whole batch (InterpreterBase.predict would
        # split the batch axis into single-sample calls)
        call = lambda: it.interpreter.predict([xs])  # noqa: E731
        got = np.asarray(call()[0]).reshape(expect.shape)
        if not np.array_equal(got, expect):
            raise RuntimeError(f"LCE output differs from numpy (indirect_bgemm={indirect}, "
                               f"max |diff| {np.abs(got - expect).max()})")
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
        ms = float(np.median(ts)) * 1e3
        best = ms if best is None else min(best, ms)
    return best


def run(python: str, runs: int = 25, timeout: float = 900) -> dict:
    """Called from qcompiler's environment: this script under LCE's ``python``; returns
    {"version": str, "rows": {workload: ms or "refused: ..."}}. Raises RuntimeError if it fails."""
    import subprocess
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)
    try:
        p = subprocess.run([python, os.path.abspath(__file__), str(runs)], capture_output=True, text=True,
                           env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"LCE peer under {python}: {e}") from e
    if p.returncode != 0:
        tail = " | ".join(p.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"LCE peer under {python} exited {p.returncode}: {tail}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv):
    runs = int(argv[1]) if len(argv) > 1 else 25
    from importlib.metadata import version
    rng = np.random.default_rng(0)
    rows = {}
    cases = [(f"conv3x3 {c}x{h}x{w}->{o}", conv_model, (c, h, w, o)) for c, h, w, o in CONVS]
    cases += [(f"dense M{m} K{k}->N{k}", dense_model, (m, k, k)) for m, k in DENSES]
    for name, build, shape in cases:
        try:
            rows[name] = time_model(*build(*shape, rng), runs)
        except RuntimeError as e:
            rows[name] = f"refused: {e}"
    print(json.dumps({"version": version("larq-compute-engine"), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
