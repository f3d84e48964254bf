"""LiteRT (TFLite) int8 peer: one-op full-integer models built without TensorFlow, run 1 thread.

The models are written with the flatbuffers object API of the schema that ``ai-edge-litert`` ships
(``ai_edge_litert.schema_py_generated``), as TensorFlow's converter would emit them for a
full-integer int8 model: NHWC int8 activations with a per-tensor scale/zero point, int8 weights
per-output-channel symmetric (zero point 0; conv OHWI, dense [N, K]), int32 bias with scale
x_scale * w_scale[o]. The interpreter applies its default XNNPACK delegate; each model is checked to
be fully delegated and its output checked against numpy before it is timed (a peer that does not
compute the op is refused). numpy requantizes with float64 and rounds half away from zero; LiteRT
uses fixed-point (or XNNPACK's fp32) requantization whose rounding may differ, so the check allows
|diff| <= 1 output step and nothing more.
Timed call: ``set_tensor`` + ``invoke`` (the input copy included, as onnxruntime's ``run``).
"""

from __future__ import annotations

import time

import numpy as np

TOLERANCE = 1  # output quantization steps


class LiteRTError(RuntimeError):
    """LiteRT does not compute what it is benchmarked for."""


def available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    from importlib.metadata import version as v
    return v("ai-edge-litert")


def _quant(scale, zero_point, dim=0):
    from ai_edge_litert import schema_py_generated as s
    q = s.QuantizationParametersT()
    q.scale = np.asarray(scale, np.float32).ravel()
    q.zeroPoint = np.asarray(zero_point, np.int64).ravel()
    q.quantizedDimension = dim
    return q


def _tensor(name, shape, dtype, buffer, quant):
    from ai_edge_litert import schema_py_generated as s
    t = s.TensorT()
    t.name, t.shape, t.type, t.buffer, t.quantization = name, np.asarray(shape, np.int32), dtype, buffer, quant
    return t


def build_model(op: str, x_shape, x_q, w, w_scale, bias, y_shape, y_q) -> bytes:
    """A one-op model: ``op`` is "conv" (3x3, stride 1, SAME) or "dense"; ``x_q``/``y_q`` are
    (scale, zero_point); ``w`` int8 (OHWI or [N, K]), ``w_scale`` per output channel, ``bias`` int32."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s
    tt = s.TensorType
    bufs = [s.BufferT()]  # buffer 0: the empty one, for activations
    for data in (w, bias):
        b = s.BufferT()
        b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        bufs.append(b)
    tensors = [_tensor("x", x_shape, tt.INT8, 0, _quant(*x_q)),
               _tensor("w", w.shape, tt.INT8, 1, _quant(w_scale, np.zeros(len(w_scale)))),
               _tensor("b", bias.shape, tt.INT32, 2, _quant(x_q[0] * np.asarray(w_scale, np.float64),
                                                           np.zeros(len(w_scale)))),
               _tensor("y", y_shape, tt.INT8, 0, _quant(*y_q))]
    code, opr = s.OperatorCodeT(), s.OperatorT()
    if op == "conv":
        code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CONV_2D
        code.version = 3  # int8 per-channel
        opts = s.Conv2DOptionsT()
        opts.padding, opts.strideH, opts.strideW = s.Padding.SAME, 1, 1
        opts.dilationHFactor = opts.dilationWFactor = 1
        opr.builtinOptionsType = s.BuiltinOptions.Conv2DOptions
    elif op == "dense":
        code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
        code.version = 5
        opts = s.FullyConnectedOptionsT()
        opr.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    else:
        raise ValueError(f"LiteRT peer: unknown op {op!r} (conv or dense)")
    opr.builtinOptions, opr.opcodeIndex = opts, 0
    opr.inputs, opr.outputs = np.array([0, 1, 2], np.int32), np.array([3], np.int32)
    sg = s.SubGraphT()
    sg.tensors, sg.operators = tensors, [opr]
    sg.inputs, sg.outputs, sg.name = np.array([0], np.int32), np.array([3], np.int32), "main"
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [sg], bufs
    model.description = "qcompiler benchmark peer"
    fb = flatbuffers.Builder(1 << 20)
    fb.Finish(model.Pack(fb), file_identifier=b"TFL3")
    return bytes(fb.Output())


def _requant(acc, mult, y_zp):
    """float64 requantization, rounding half away from zero, saturated to int8."""
    v = acc * mult
    return np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + y_zp, -128, 127).astype(np.int8)


def _out_scale(acc, x_scale, w_scale):
    """An output scale that maps ~3 standard deviations of the real output to the int8 range."""
    real = acc * (x_scale * w_scale)
    return float(3 * real.std() / 127)


def conv_case(c, h, w, o, seed=0):
    """(model bytes, NHWC int8 input, numpy int8 output) of a 3x3 s1 p1 conv C x H x W -> O."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (1, h, w, c)).astype(np.int8)
    wt = rng.integers(-127, 128, (o, 3, 3, c)).astype(np.int8)
    bias = rng.integers(-3000, 3000, o).astype(np.int32)
    x_scale, x_zp = 0.05, -3
    w_scale = rng.uniform(0.005, 0.02, o)
    # SAME padding pads with the input zero point (real 0)
    xp = np.pad(x.astype(np.int64) - x_zp, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.stack([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=3)
    acc = np.einsum("nhwkc,okc->nhwo", cols, wt.reshape(o, 9, c).astype(np.int64)) + bias
    y_scale, y_zp = _out_scale(acc, x_scale, w_scale), 5
    expect = _requant(acc, x_scale * w_scale / y_scale, y_zp)
    model = build_model("conv", x.shape, (x_scale, x_zp), wt, w_scale, bias, expect.shape, (y_scale, y_zp))
    return model, x, expect


def dense_case(m, k, n, seed=0):
    """(model bytes, int8 input [M, K], numpy int8 output [M, N]) of a dense M x K -> N."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    wt = rng.integers(-127, 128, (n, k)).astype(np.int8)
    bias = rng.integers(-3000, 3000, n).astype(np.int32)
    x_scale, x_zp = 0.05, -3
    w_scale = rng.uniform(0.005, 0.02, n)
    acc = (x.astype(np.int64) - x_zp) @ wt.astype(np.int64).T + bias
    y_scale, y_zp = _out_scale(acc, x_scale, w_scale), 5
    expect = _requant(acc, x_scale * w_scale / y_scale, y_zp)
    model = build_model("dense", x.shape, (x_scale, x_zp), wt, w_scale, bias, expect.shape, (y_scale, y_zp))
    return model, x, expect


def interpreter(model: bytes, threads: int = 1):
    """An interpreter with the default (XNNPACK) delegate; refuses a model not fully delegated."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=model, num_threads=threads)
    it.allocate_tensors()
    # the node list keeps the replaced op and appends the delegate's node, which must produce the output
    nodes = it._get_ops_details()
    outs = set(it._interpreter.OutputIndices())
    if not any(d["op_name"] == "DELEGATE" and outs <= set(d["outputs"].tolist()) for d in nodes):
        raise LiteRTError(f"LiteRT model not delegated to XNNPACK: nodes {[d['op_name'] for d in nodes]}")
    return it


def check_and_time(model, x, expect, runs=25, threads=1):
    """Median ms of set_tensor + invoke, after checking the output against numpy (<= TOLERANCE)."""
    it = interpreter(model, threads)
    xi, yi = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def call():
        it.set_tensor(xi, x)
        it.invoke()

    call()
    got = it.get_tensor(yi)
    diff = np.abs(got.astype(np.int32) - expect.astype(np.int32))
    if got.shape != expect.shape or diff.max() > TOLERANCE:
        raise LiteRTError(f"LiteRT output differs from numpy by up to {diff.max()} steps "
                          f"({np.count_nonzero(diff)} of {diff.size} values)")
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3, int(np.count_nonzero(diff))


def conv_ms(c, h, w, o, runs=25):
    return check_and_time(*conv_case(c, h, w, o), runs=runs)[0]


def dense_ms(m, k, n, runs=25):
    return check_and_time(*dense_case(m, k, n), runs=runs)[0]


if __name__ == "__main__":
    for c, h, w, o in [(256, 14, 14, 256), (64, 56, 56, 64)]:
        ms, off = check_and_time(*conv_case(c, h, w, o))
        print(f"LiteRT int8 conv3x3 {c}x{h}x{w}->{o}: {ms:.4f} ms ({off} values off by 1 step)")
    for m, k in [(1, 1024), (1, 4096), (64, 1024), (64, 4096)]:
        ms, off = check_and_time(*dense_case(m, k, k))
        print(f"LiteRT int8 dense M{m} K{k}->N{k}: {ms:.4f} ms ({off} values off by 1 step)")
