"""Neural-network ops: convolution, dense, pooling, normalisation, softmax.

Attributes arrive normalised by the frontend: ``kernel_shape``, ``strides``, ``dilations`` and
``pads`` (ONNX order: all begins, then all ends) are explicit tuples and ``auto_pad`` is resolved
into ``pads``. Convolution and pooling work for any number of spatial dims (1-D, 2-D, 3-D) through
one strided window view of the padded input, so whole CNNs run at numpy/BLAS speed.
"""

from typing import List, Sequence, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...errors import ShapeError
from ..registry import op


# -- window helpers -------------------------------------------------------------------------------

def _effective(kernel: Sequence[int], dilations: Sequence[int]) -> List[int]:
    return [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]


def conv_output_shape(spatial, kernel, strides, dilations, pads, ceil_mode=False) -> Tuple[int, ...]:
    """Output spatial size of a conv/pool window (ONNX rule, incl. ceil_mode's last-window check)."""
    n = len(spatial)
    out = []
    for i in range(n):
        span = spatial[i] + pads[i] + pads[i + n] - _effective(kernel, dilations)[i]
        if span < 0:
            raise ShapeError(f"window {list(kernel)} (dilations {list(dilations)}) is larger than the "
                             f"padded input {list(spatial)} + pads {list(pads)}")
        o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (o - 1) * strides[i] >= spatial[i] + pads[i]:
            o -= 1  # the last window would start inside the end padding only
        out.append(o)
    return tuple(out)


def _windows(xp: np.ndarray, kernel, strides, dilations, out_spatial) -> np.ndarray:
    """View of ``xp`` [N, C, *S] as [N, C, *O, *K] (no copy)."""
    n = len(kernel)
    eff = _effective(kernel, dilations)
    v = sliding_window_view(xp, eff, axis=tuple(range(2, 2 + n)))
    index = (slice(None), slice(None))
    index += tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_spatial, strides))
    index += tuple(slice(None, None, d) for d in dilations)
    return v[index]


def _pad_spatial(x: np.ndarray, begin, end, value) -> np.ndarray:
    if not any(begin) and not any(end):
        return x
    width = [(0, 0), (0, 0)] + list(zip(begin, end))
    return np.pad(x, width, mode="constant", constant_values=value)


def _spatial_attrs(attrs, rank):
    n = rank - 2
    ks = tuple(attrs["kernel_shape"])
    if len(ks) != n:
        raise ShapeError(f"kernel_shape {list(ks)} does not match a rank-{rank} input")
    return ks, tuple(attrs["strides"]), tuple(attrs["dilations"]), tuple(attrs["pads"])


# -- convolution ----------------------------------------------------------------------------------

def _conv_infer(inputs, attrs):
    (xs, xt, _), (ws, _, _) = inputs[0], inputs[1]
    ks, st, dl, pads = _spatial_attrs(attrs, len(xs))
    group = attrs["group"]
    if xs[1] != ws[1] * group or ws[0] % group:
        raise ShapeError(f"input channels {xs[1]} / weight {list(ws)} do not fit group={group}")
    if tuple(ws[2:]) != ks:
        raise ShapeError(f"weight {list(ws)} does not match kernel_shape {list(ks)}")
    return [((xs[0], ws[0]) + conv_output_shape(xs[2:], ks, st, dl, pads), xt)]


@op("Conv", infer=_conv_infer)
def conv(inputs, attrs):
    """ONNX Conv: x [N, C, *S], w [M, C/group, *K], optional bias [M]; any number of spatial dims."""
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    ks, st, dl, pads = _spatial_attrs(attrs, x.ndim)
    (out_shape, out_dtype), = _conv_infer([(x.shape, x.dtype, None), (w.shape, w.dtype, None)], attrs)
    n = len(ks)
    g = attrs["group"]
    acc = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
    xp = _pad_spatial(x.astype(acc, copy=False), pads[:n], pads[n:], 0)
    win = _windows(xp, ks, st, dl, out_shape[2:])  # [N, C, *O, *K]
    N, C, M = x.shape[0], x.shape[1], w.shape[0]
    cg, mg = C // g, M // g
    n_out, n_k = int(np.prod(out_shape[2:])), int(np.prod(ks))
    # im2col per group: [G, N*O, cg*K] @ [G, cg*K, mg] -> [G, N*O, mg]
    win = win.reshape(N, g, cg, *out_shape[2:], *ks)
    perm = (1, 0) + tuple(range(3, 3 + n)) + (2,) + tuple(range(3 + n, 3 + 2 * n))
    cols = win.transpose(perm).reshape(g, N * n_out, cg * n_k)
    wm = w.astype(acc, copy=False).reshape(g, mg, cg * n_k).transpose(0, 2, 1)
    y = np.matmul(cols, wm)  # [G, N*O, mg]
    y = y.reshape(g, N, n_out, mg).transpose(1, 0, 3, 2).reshape(out_shape)
    if b is not None:
        y = y + b.astype(acc).reshape((1, M) + (1,) * n)
    return [y.astype(out_dtype, copy=False)]


# -- dense ----------------------------------------------------------------------------------------

def _gemm_infer(inputs, attrs):
    (a_s, a_t, _), (b_s, _, _) = inputs[0], inputs[1]
    if len(a_s) != 2 or len(b_s) != 2:
        raise ShapeError(f"Gemm needs 2-D A and B, got {list(a_s)} and {list(b_s)}")
    m, k = a_s[::-1] if attrs["transA"] else a_s
    k2, n = b_s[::-1] if attrs["transB"] else b_s
    if k != k2:
        raise ShapeError(f"Gemm inner dims differ: A' is {[m, k]}, B' is {[k2, n]}")
    if len(inputs) > 2 and inputs[2] is not None:
        np.broadcast_shapes(inputs[2][0], (m, n))
    return [((m, n), a_t)]


@op("Gemm", infer=_gemm_infer)
def gemm(inputs, attrs):
    """ONNX Gemm: alpha * A' @ B' + beta * C, A' = A.T if transA, B' = B.T if transB."""
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    t = a.dtype.type
    y = np.matmul(a, b)
    if attrs["alpha"] != 1.0:
        y = y * t(attrs["alpha"])
    if c is not None and attrs["beta"] != 0.0:
        y = y + (c * t(attrs["beta"]) if attrs["beta"] != 1.0 else c)
    return [np.asarray(y).astype(a.dtype, copy=False)]


def _matmul_infer(inputs, attrs):
    (a_s, a_t, _), (b_s, _, _) = inputs[0], inputs[1]
    a2 = (1,) + tuple(a_s) if len(a_s) == 1 else tuple(a_s)
    b2 = tuple(b_s) + (1,) if len(b_s) == 1 else tuple(b_s)
    if a2[-1] != b2[-2]:
        raise ShapeError(f"MatMul inner dims differ: {list(a_s)} @ {list(b_s)}")
    batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    shape = tuple(batch) + (a2[-2], b2[-1])
    if len(a_s) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b_s) == 1:
        shape = shape[:-1]
    return [(shape, a_t)]


@op("MatMul", infer=_matmul_infer)
def matmul(inputs, attrs):
    """ONNX MatMul (numpy.matmul semantics: batched, 1-D operands promoted then squeezed)."""
    a, b = inputs
    return [np.matmul(a, b).astype(a.dtype, copy=False)]


# -- normalisation --------------------------------------------------------------------------------

def _bn_infer(inputs, attrs):
    xs, xt, _ = inputs[0]
    outs = [(tuple(xs), xt)]
    if attrs.get("training_mode", 0):
        outs += [((xs[1],), inputs[3][1]), ((xs[1],), inputs[4][1])]
    return outs


@op("BatchNormalization", infer=_bn_infer)
def batch_norm(inputs, attrs):
    """ONNX BatchNormalization over axis 1. With ``training_mode`` it normalises with the batch
    statistics and also returns the updated running mean and variance."""
    x, scale, bias, mean, var = inputs
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    t = x.dtype.type
    extra = []
    if attrs.get("training_mode", 0):
        axes = (0,) + tuple(range(2, x.ndim))
        batch_mean = x.mean(axis=axes)
        batch_var = x.var(axis=axes)
        m = t(attrs["momentum"])
        extra = [(mean * m + batch_mean * (1 - m)).astype(mean.dtype),
                 (var * m + batch_var * (1 - m)).astype(var.dtype)]
        mean, var = batch_mean, batch_var
    inv = scale.astype(x.dtype) / np.sqrt(var.astype(x.dtype) + t(attrs["epsilon"]))
    y = (x - mean.astype(x.dtype).reshape(shape)) * inv.reshape(shape) + bias.astype(x.dtype).reshape(shape)
    return [y.astype(x.dtype, copy=False)] + extra


@op("Softmax")
def softmax(inputs, attrs):
    """Softmax along ``axis``; with ``coerce_2d`` (ONNX opset < 13) over all dims from ``axis`` on."""
    (x,) = inputs
    axis = attrs["axis"]
    if attrs.get("coerce_2d", False):
        flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        return [softmax([flat], {"axis": 1})[0].reshape(x.shape)]
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return [(e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype, copy=False)]


# -- pooling --------------------------------------------------------------------------------------

def _pool_infer(inputs, attrs, n_outputs=1):
    xs, xt, _ = inputs[0]
    ks, st, dl, pads = _spatial_attrs(attrs, len(xs))
    shape = tuple(xs[:2]) + conv_output_shape(xs[2:], ks, st, dl, pads, attrs["ceil_mode"])
    return [(shape, xt), (shape, "int64")][:n_outputs]


def _pool_windows(x, attrs, fill):
    """Windows [N, C, *O, *K] of x padded with ``fill``, plus the output spatial shape and the
    begin padding. The end gets extra ``fill`` where ceil_mode makes the last window overhang."""
    ks, st, dl, pads = _spatial_attrs(attrs, x.ndim)
    n = len(ks)
    out = conv_output_shape(x.shape[2:], ks, st, dl, pads, attrs["ceil_mode"])
    eff = _effective(ks, dl)
    end = [max(pads[n + i], (out[i] - 1) * st[i] + eff[i] - x.shape[2 + i] - pads[i]) for i in range(n)]
    xp = _pad_spatial(x, pads[:n], end, fill)
    return _windows(xp, ks, st, dl, out), out, end


def _maxpool_infer(inputs, attrs):
    return _pool_infer(inputs, attrs, n_outputs=2)


@op("MaxPool", infer=_maxpool_infer)
def max_pool(inputs, attrs):
    """ONNX MaxPool with dilations, ceil_mode and the optional Indices output (flat indices into x,
    row-major, or column-major over the spatial dims when ``storage_order`` is 1)."""
    (x,) = inputs
    ks = tuple(attrs["kernel_shape"])
    n = len(ks)
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    win, out, _ = _pool_windows(x, attrs, fill)
    flat = win.reshape(win.shape[: 2 + n] + (-1,))
    arg = np.argmax(flat, axis=-1)
    y = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
    # Indices: window position -> input coordinates -> flat index into x
    kcoord = np.unravel_index(arg, ks)
    pos = [np.arange(o).reshape((o,) + (1,) * (n - 1 - i)) for i, o in enumerate(out)]
    coords = [pos[i] * attrs["strides"][i] + kcoord[i] * attrs["dilations"][i] - attrs["pads"][i]
              for i in range(n)]
    spatial = x.shape[2:]
    if attrs.get("storage_order", 0):
        index = np.zeros_like(arg)
        for i in reversed(range(n)):
            index = index * spatial[i] + coords[i]
    else:
        index = np.zeros_like(arg)
        for i in range(n):
            index = index * spatial[i] + coords[i]
    base = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2] + (1,) * n) * int(np.prod(spatial))
    return [y.astype(x.dtype, copy=False), (index + base).astype(np.int64)]


@op("AveragePool", infer=_pool_infer)
def average_pool(inputs, attrs):
    """ONNX AveragePool. The divisor counts the real input elements of each window, or, with
    ``count_include_pad``, also the explicit padding (never the overhang added by ceil_mode)."""
    (x,) = inputs
    ks, st, dl, pads = _spatial_attrs(attrs, x.ndim)
    n = len(ks)
    acc = x.dtype if x.dtype.kind == "f" else np.float64
    win, out, end = _pool_windows(x.astype(acc, copy=False), attrs, 0)
    axes = tuple(range(2 + n, 2 + 2 * n))
    total = win.sum(axis=axes)
    # count per window, from a mask shaped like the spatial dims only
    mask = np.ones((1, 1) + x.shape[2:], acc)
    if attrs["count_include_pad"]:
        mask = _pad_spatial(mask, pads[:n], pads[n:], 1)
        mask = _pad_spatial(mask, (0,) * n, [e - p for e, p in zip(end, pads[n:])], 0)
    else:
        mask = _pad_spatial(mask, pads[:n], end, 0)
    count = _windows(mask, ks, st, dl, out).sum(axis=axes)
    return [(total / count).astype(x.dtype, copy=False)]


def _global_infer(inputs, attrs):
    xs, xt, _ = inputs[0]
    return [(tuple(xs[:2]) + (1,) * (len(xs) - 2), xt)]


@op("GlobalAveragePool", infer=_global_infer)
def global_average_pool(inputs, attrs):
    """ONNX GlobalAveragePool: mean over all spatial dims, kept as size-1 dims."""
    (x,) = inputs
    return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype, copy=False)]


@op("GlobalMaxPool", infer=_global_infer)
def global_max_pool(inputs, attrs):
    """ONNX GlobalMaxPool: max over all spatial dims, kept as size-1 dims."""
    (x,) = inputs
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]

