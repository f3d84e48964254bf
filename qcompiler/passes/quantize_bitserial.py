"""k-bit activations x m-bit weights as bit-plane (bitserial) ops, e.g. W2A2.

Before: a float graph (BatchNorm folded). Every Conv / Gemm / MatMul with constant weights that is
not kept (first and last weight layers with ``keep_first_last``; ``skip``) and whose input is
provably non-negative (produced through Relu, Clip(min >= 0), pooling, Flatten/Reshape) becomes::

    codes = Min(QuantizeLinear(x, s_x, uint8 0), 2^k - 1)       # unipolar k-bit activation codes
    y = BitserialConv2d/Dense(BitPack(codes, unsigned, k), Wbits, scale = s_x * s_w[o], bias)

with weights encoded as ``w = s_w[o] * (w_mult * u - w_offset)``, ``u`` in ``[0, 2^m)``:
``"bipolar"`` (default; ``w_mult = 2``, ``w_offset = 2^m - 1``: 2^m symmetric levels without zero,
e.g. {-3, -1, 1, 3} for m = 2) or ``"offset"`` (``w_mult = 1``, ``w_offset = 2^(m-1)``).
Per-channel weight scales and the activation clip ``s_x * (2^k - 1)`` minimise the mean squared
error (grid search over clip ratios; activations on ``calibration`` run through the float graph).
Layers whose input may be negative stay float (logged; unipolar codes cannot hold negatives).
After: outputs differ from the float graph by the quantization error only. Does nothing when no
layer qualifies. :mod:`.ternarize` uses the same rewrite with TWN ternary weights.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from ..ir import Graph, Node
from .. import ref
from ..ref.ops.bits import n_words, pack_planes, word_dtype
from .graph_edit import WEIGHT_OPS, add_const, add_value, drop_unused_values, producer_of, weight_layout

log = logging.getLogger(__name__)

#: weight code -> value maps: (w_mult, w_offset) for m bits
ENCODINGS = {"bipolar": lambda m: (2, (1 << m) - 1), "offset": lambda m: (1, 1 << (m - 1))}

#: ``codes(w_rows) -> (u int64 [O, K], scale float64 [O], w_mult, w_offset)``
WeightCoder = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray, int, int]]

_NONNEG_PASS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Identity")


def nonnegative(g: Graph, value: str) -> bool:
    """Is ``value`` provably >= 0 (a Relu, a Clip with min >= 0, or pooling/reshaping of one)?"""
    p = producer_of(g, value)
    if p is None:
        return False
    if p.op == "Relu":
        return True
    if p.op == "Clip":
        lo = g.const(p.input(1))
        return lo is not None and bool(np.all(lo >= 0))
    if p.op in _NONNEG_PASS:
        return nonnegative(g, p.inputs[0])
    return False


def mse_scale(x: np.ndarray, levels: np.ndarray, ratios: Sequence[float] = tuple(np.linspace(0.05, 1.0, 40))) -> float:
    """The scale ``s`` minimising ``mean((x - s * nearest_level(x / s))^2)`` with ``s * max(levels)``
    a fraction of ``max|x|`` (``levels`` sorted integers)."""
    x = np.asarray(x, np.float64).reshape(-1)
    top = float(np.max(np.abs(x))) if x.size else 0.0
    if top == 0:
        return 1.0
    best, best_s = np.inf, top / float(np.max(np.abs(levels)))
    for r in ratios:
        s = r * top / float(np.max(np.abs(levels)))
        q = levels[np.abs(x[:, None] / s - levels[None, :]).argmin(axis=1)] if levels.size <= 16 else \
            np.clip(np.round(x / s), levels.min(), levels.max())
        err = float(np.mean((x - s * q) ** 2))
        if err < best:
            best, best_s = err, s
    return best_s


def uniform_weight_coder(bits: int, encoding: str = "bipolar") -> WeightCoder:
    if not 1 <= bits <= 8:
        raise ConfigError(f"bitserial weight bits must be in 1..8, got {bits}")
    if encoding not in ENCODINGS:
        raise ConfigError(f"weight encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    mult, off = ENCODINGS[encoding](bits)
    levels = mult * np.arange(1 << bits) - off

    def code(rows: np.ndarray):
        scales = np.array([mse_scale(r, levels) for r in rows])
        u = np.empty(rows.shape, np.int64)
        for o, r in enumerate(rows):
            u[o] = np.abs(r[:, None] / scales[o] - levels[None, :]).argmin(axis=1)
        return u, scales, mult, off

    return code


def _first_last(g: Graph) -> set:
    layers = [n.name for n in g.nodes if n.op in WEIGHT_OPS and g.const(n.input(1)) is not None]
    return {layers[0], layers[-1]} if layers else set()


def _activation_samples(g: Graph, values: Sequence[str], batches, limit: int = 200_000) -> Dict[str, np.ndarray]:
    out: Dict[str, list] = {v: [] for v in values}
    for feeds in batches:
        env = ref.run(g, feeds, keep_all=True)
        for v in values:
            out[v].append(env[v].reshape(-1))
    rng = np.random.default_rng(0)
    res = {}
    for v, parts in out.items():
        x = np.concatenate(parts)
        res[v] = rng.choice(x, limit, replace=False) if x.size > limit else x
    return res


def bitserial_rewrite(graph: Graph, *, act_bits: int, weight_coder: WeightCoder, weight_bits: int,
                      calibration: Iterable[Mapping[str, np.ndarray]], word_bits: int = 32,
                      keep_first_last: bool = True, skip: Iterable[str] = (), what: str = "bitserial") -> Graph:
    """The shared rewrite of :func:`quantize_bitserial` and :func:`~.ternarize.ternarize`."""
    if not 1 <= act_bits <= 8:
        raise ConfigError(f"{what}: activation bits must be in 1..8, got {act_bits}")
    word_dtype(word_bits)
    batches = list(calibration) if calibration is not None else []
    if not batches:
        raise ConfigError(f"{what}: activation scales need calibration batches (iterable of feeds)")
    g = graph.copy()
    skip = set(skip)
    unknown = skip - {n.name for n in g.nodes}
    if unknown:
        raise ConfigError(f"{what}: skip names no node: {sorted(unknown)}")
    kept = skip | (_first_last(g) if keep_first_last else set())
    todo = []
    for n in g.nodes:
        if n.op not in WEIGHT_OPS or n.name in kept or weight_layout(g, n) is None:
            continue
        if len(g.values[n.inputs[0]].shape) not in (2, 4) or (n.op == "Conv" and len(g.values[n.inputs[0]].shape) != 4):
            continue
        if not nonnegative(g, n.inputs[0]):
            log.warning("%s: %s stays float: its input may be negative (unipolar codes)", what, n.name)
            g.meta.setdefault("fallbacks", []).append(
                {"pass": what, "node": n.name, "reason": "input may be negative; kept in float"})
            continue
        todo.append(n)
    samples = _activation_samples(graph, sorted({n.inputs[0] for n in todo}), batches)
    qmax = (1 << act_bits) - 1
    for n in todo:
        lay = weight_layout(g, n)
        w = lay["w"]
        o = w.shape[0]
        u, ws, mult, off = weight_coder(w.reshape(o, -1))
        sx = mse_scale(samples[n.inputs[0]], np.arange(qmax + 1))
        x = g.values[n.inputs[0]]
        codes8 = add_value(g, n.name + "_q8", x.shape, "uint8")
        codes = add_value(g, n.name + "_codes", x.shape, "uint8")
        if len(x.shape) == 4:
            pshape = (x.shape[0], x.shape[2], x.shape[3], act_bits, n_words(x.shape[1], word_bits))
        else:
            pshape = (x.shape[0], act_bits, n_words(x.shape[1], word_bits))
        packed = add_value(g, n.name + "_xbits", pshape, f"uint{word_bits}")
        nodes = [
            Node("QuantizeLinear", g.unique_name(n.name + "_quant"),
                 [n.inputs[0], add_const(g, n.name + "_xscale", np.array(sx, np.float32)),
                  add_const(g, n.name + "_xzp", np.array(0, np.uint8))], [codes8],
                 {"axis": 1, "saturate": 1, "block_size": 0}),
            Node("Min", g.unique_name(n.name + "_clamp"), [codes8, add_const(g, n.name + "_xmax", np.array(qmax, np.uint8))],
                 [codes]),
            Node("BitPack", g.unique_name(n.name + "_pack"), [codes], [packed],
                 {"mode": "unsigned", "word_bits": word_bits, "bits": act_bits}),
        ]
        wcodes = pack_planes(u.reshape(w.shape), weight_bits, word_bits)
        scale = (np.float32(sx) * ws).astype(np.float32)
        bias = np.zeros(o) if lay["bias"] is None else lay["bias"]
        ins = [packed, add_const(g, n.name + "_wbits", wcodes), add_const(g, n.name + "_scale", scale),
               add_const(g, n.name + "_bias", bias.astype(np.float32))]
        common = {"act_bits": act_bits, "weight_bits": weight_bits, "w_mult": int(mult), "w_offset": int(off),
                  "out": "float"}
        if lay["kind"] == "conv":
            a = n.attrs
            attrs = dict(common, in_channels=int(x.shape[1]), groups=lay["groups"], kernel_shape=tuple(w.shape[2:]),
                         strides=tuple(a["strides"]), pads=tuple(a["pads"]), dilations=tuple(a["dilations"]),
                         pad_value=0)
            op = "BitserialConv2d"
        else:
            attrs = dict(common, in_features=int(x.shape[1]))
            op = "BitserialDense"
        i = g.nodes.index(n)
        g.nodes[i:i + 1] = nodes + [Node(op, n.name, ins, list(n.outputs), attrs)]
        log.info("%s: %s -> %s (A%d W%d)", what, n.name, op, act_bits, weight_bits)
    g.prune()
    drop_unused_values(g)
    g.verify()
    return g


def quantize_bitserial(graph: Graph, *, weight_bits: int = 2, act_bits: int = 2,
                       calibration: Iterable[Mapping[str, np.ndarray]], encoding: str = "bipolar",
                       word_bits: int = 32, keep_first_last: bool = True, skip: Iterable[str] = ()) -> Graph:
    return bitserial_rewrite(graph, act_bits=act_bits, weight_coder=uniform_weight_coder(weight_bits, encoding),
                             weight_bits=weight_bits, calibration=calibration, word_bits=word_bits,
                             keep_first_last=keep_first_last, skip=skip, what="quantize_bitserial")
