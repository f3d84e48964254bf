"""Shape, data-movement and reduction ops.

Everything that decides an output shape arrives as a normalised attribute (the frontend turns
ONNX's shape-carrying inputs -- Reshape's shape, Slice's starts/ends, Squeeze's axes, ... -- into
attributes and resolves negative axes), so each op here has one meaning and static output shapes.
"""

import numpy as np

from ...errors import RuntimeInputError, ShapeError
from ..registry import op


def _contiguous(a: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into a 1-d one
    return a if a.flags.c_contiguous else a.copy(order="C")


@op("Identity")
def identity(inputs, attrs):
    """Returns its input."""
    return [inputs[0]]


@op("Flatten")
def flatten(inputs, attrs):
    """ONNX Flatten: [d0..d(axis-1)] x [d(axis)..] as a 2-D tensor."""
    (x,) = inputs
    axis = attrs["axis"]
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [x.reshape(outer, int(np.prod(x.shape[axis:], dtype=np.int64)))]


@op("Reshape")
def reshape(inputs, attrs):
    """Reshape to the fully resolved ``shape`` attribute (no 0 or -1 left)."""
    x = inputs[0]
    shape = tuple(attrs["shape"])
    if int(np.prod(shape, dtype=np.int64)) != x.size:
        raise ShapeError(f"cannot reshape {list(x.shape)} into {list(shape)}")
    return [x.reshape(shape)]


@op("Transpose")
def transpose(inputs, attrs):
    """ONNX Transpose with an explicit ``perm``."""
    return [_contiguous(np.transpose(inputs[0], attrs["perm"]))]


@op("Concat")
def concat(inputs, attrs):
    """ONNX Concat along a non-negative ``axis``."""
    xs = [x for x in inputs if x is not None]
    return [np.concatenate(xs, axis=attrs["axis"])]


@op("Squeeze")
def squeeze(inputs, attrs):
    """Remove the size-1 dims listed in ``axes``."""
    x = inputs[0]
    axes = tuple(attrs["axes"])
    bad = [a for a in axes if x.shape[a] != 1]
    if bad:
        raise ShapeError(f"cannot squeeze axes {bad} of shape {list(x.shape)}: size is not 1")
    return [np.squeeze(x, axis=axes)]


@op("Unsqueeze")
def unsqueeze(inputs, attrs):
    """Insert size-1 dims at ``axes`` (positions in the output)."""
    return [np.expand_dims(inputs[0], tuple(attrs["axes"]))]


@op("Shape")
def shape_of(inputs, attrs):
    """ONNX Shape: dims [start, end) of the input's shape as int64 (start/end already clamped)."""
    return [np.asarray(inputs[0].shape[attrs["start"]:attrs["end"]], np.int64).reshape(-1)]


@op("Gather")
def gather(inputs, attrs):
    """ONNX Gather along ``axis``; negative indices count from the end."""
    x, idx = inputs
    axis = attrs["axis"]
    n = x.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise RuntimeInputError(f"Gather index out of range [-{n}, {n - 1}] for axis {axis} of "
                                f"shape {list(x.shape)}")
    return [np.take(x, idx.astype(np.int64), axis=axis)]


@op("Cast")
def cast(inputs, attrs):
    """ONNX Cast to the numpy dtype named by ``to`` (float->int truncates toward zero)."""
    return [inputs[0].astype(attrs["to"])]


@op("ConstantOfShape")
def constant_of_shape(inputs, attrs):
    """A tensor of shape ``inputs[0]`` filled with the one-element ``value`` attribute."""
    value = np.asarray(attrs["value"]).reshape(-1)
    return [np.full(tuple(int(d) for d in inputs[0]), value[0], dtype=value.dtype)]


@op("Slice")
def slice_(inputs, attrs):
    """ONNX Slice with explicit ``starts``, ``ends``, ``axes`` (non-negative) and ``steps``;
    out-of-range starts/ends are clamped as ONNX specifies."""
    x = inputs[0]
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]):
        index[axis] = _clamped_slice(int(start), int(end), int(step), x.shape[axis])
    return [x[tuple(index)]]


def _clamped_slice(start, end, step, dim):
    if step == 0:
        raise ShapeError("Slice step must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, -1), dim - 1), min(max(end, -1), dim - 1)
    # Python slices treat a negative stop as "from the end"; None means "past the beginning".
    return slice(start, None if end < 0 else end, step)


@op("Range")
def range_(inputs, attrs):
    """ONNX Range(start, limit, delta): ceil((limit - start) / delta) elements."""
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs)
    n = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    return [(start + np.arange(n, dtype=start.dtype) * delta).astype(start.dtype)]


@op("Expand")
def expand(inputs, attrs):
    """ONNX Expand: broadcast the input with ``shape`` (bidirectionally)."""
    x = inputs[0]
    shape = np.broadcast_shapes(x.shape, tuple(attrs["shape"]))
    return [_contiguous(np.broadcast_to(x, shape))]


@op("Tile")
def tile(inputs, attrs):
    """ONNX Tile with the ``repeats`` attribute (one entry per input dim)."""
    return [np.tile(inputs[0], tuple(attrs["repeats"]))]


@op("Split")
def split(inputs, attrs):
    """Split along ``axis`` into pieces of the sizes in ``split``."""
    x = inputs[0]
    axis = attrs["axis"]
    sizes = list(attrs["split"])
    if sum(sizes) != x.shape[axis]:
        raise ShapeError(f"split sizes {sizes} do not add up to dim {axis} of {list(x.shape)}")
    return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@op("Pad")
def pad(inputs, attrs):
    """ONNX Pad with explicit ``pads`` (all begins, then all ends; negative values crop) and
    ``mode`` constant/reflect/edge/wrap; optional input 1 is the scalar constant value."""
    x = inputs[0]
    value = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
    n = x.ndim
    pads = [int(p) for p in attrs["pads"]]
    begin, end = pads[:n], pads[n:]
    crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begin, end)))
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    mode = attrs["mode"]
    if mode == "constant":
        fill = value.reshape(-1)[0] if value is not None and value.size else 0
        return [np.pad(x, width, mode="constant", constant_values=fill)]
    if mode in ("reflect", "edge", "wrap"):
        if any(w != (0, 0) and x.shape[i] == 0 for i, w in enumerate(width)):
            raise ShapeError(f"Pad mode {mode!r} cannot pad an empty axis")
        return [np.pad(x, width, mode=mode)]
    raise ShapeError(f"unknown Pad mode {mode!r}")


# -- reductions -----------------------------------------------------------------------------------

def _reduction(name, fn, empty_fill=None):
    def compute(inputs, attrs):
        x = inputs[0]
        axes = tuple(attrs["axes"])
        keep = bool(attrs["keepdims"])
        if x.size == 0 and empty_fill is not None:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else \
                tuple(d for i, d in enumerate(x.shape) if i not in axes)
            return [np.full(shape, empty_fill(x.dtype), x.dtype)]
        return [np.asarray(fn(x, axis=axes, keepdims=keep)).astype(x.dtype, copy=False)]

    compute.__name__ = name.lower()
    compute.__doc__ = f"ONNX {name} over the explicit, non-negative ``axes``, with ``keepdims``."
    op(name)(compute)


def _lowest(dtype):
    if dtype.kind == "b":
        return False
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _highest(dtype):
    if dtype.kind == "b":
        return True
    return np.inf if dtype.kind == "f" else np.iinfo(dtype).max


_reduction("ReduceSum", np.sum)
_reduction("ReduceMean", np.mean)
_reduction("ReduceProd", np.prod)
_reduction("ReduceMax", np.max, empty_fill=_lowest)   # max of nothing: the lowest value (ONNX)
_reduction("ReduceMin", np.min, empty_fill=_highest)
