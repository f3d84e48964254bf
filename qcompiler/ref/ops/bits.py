"""Bit packing of numpy arrays, exactly as the low-bit ops' contract (``lowbit.py``) lays it out.

Passes use these to pre-pack weights; the reference ops use them to pack and unpack activations.
Logical element ``c`` of the packed axis lives in word ``c // word_bits`` at bit ``c % word_bits``
(LSB first); bits past the logical length are 0.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import ShapeError

WORD_BITS = (8, 16, 32, 64)


def word_dtype(word_bits: int) -> np.dtype:
    if word_bits not in WORD_BITS:
        raise ShapeError(f"word_bits must be one of {WORD_BITS}, got {word_bits!r}")
    return np.dtype(f"uint{word_bits}")


def word_bits_of(dtype) -> int:
    """The word width of a packed array's dtype (uint8/16/32/64)."""
    dt = np.dtype(dtype)
    if dt.kind != "u" or dt.itemsize * 8 not in WORD_BITS:
        raise ShapeError(f"packed words must be uint8/16/32/64, got {dt}")
    return dt.itemsize * 8


def n_words(n: int, word_bits: int) -> int:
    return -(-int(n) // int(word_bits))


def pack_bits(bits: np.ndarray, word_bits: int = 32) -> np.ndarray:
    """Pack the last axis of a 0/1 (or bool) array into words: ``[..., n] -> [..., ceil(n/wb)]``."""
    dt = word_dtype(word_bits)
    bits = np.asarray(bits).astype(bool)
    n = bits.shape[-1]
    nw = n_words(n, word_bits)
    padded = np.zeros(bits.shape[:-1] + (nw * word_bits,), bool)
    padded[..., :n] = bits
    # little-endian bit order within bytes, then bytes little-endian within the word
    by = np.packbits(padded.reshape(bits.shape[:-1] + (nw, word_bits)), axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view(dt.newbyteorder("<")).astype(dt).reshape(bits.shape[:-1] + (nw,))


def unpack_bits(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``[..., nw] -> [..., n]`` as uint8 0/1."""
    words = np.asarray(words)
    wb = word_bits_of(words.dtype)
    if words.shape[-1] != n_words(n, wb):
        raise ShapeError(f"{words.shape[-1]} words of {wb} bits cannot hold exactly {n} elements "
                         f"(need {n_words(n, wb)})")
    le = np.ascontiguousarray(words.astype(words.dtype.newbyteorder("<")))
    by = le.view(np.uint8).reshape(words.shape[:-1] + (words.shape[-1], wb // 8))
    bits = np.unpackbits(by, axis=-1, bitorder="little").reshape(words.shape[:-1] + (-1,))
    return bits[..., :n]


def popcount(words: np.ndarray) -> np.ndarray:
    """Number of set bits per word (int64)."""
    return np.bitwise_count(np.asarray(words)).astype(np.int64)


def _channels_last(x: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC; 2-D [M, K] unchanged."""
    if x.ndim == 4:
        return np.transpose(x, (0, 2, 3, 1))
    if x.ndim == 2:
        return x
    raise ShapeError(f"packing needs a 4-D NCHW or 2-D [M, K] tensor, got rank {x.ndim}")


def _channels_first(x: np.ndarray) -> np.ndarray:
    """NHWC -> NCHW; 2-D unchanged."""
    return np.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x


def sign_bits(x: np.ndarray, threshold: Optional[np.ndarray] = None) -> np.ndarray:
    """The sign code bit of each element: 1 (value -1) where ``x < threshold`` (per channel, axis 1)."""
    x = np.asarray(x)
    if threshold is None:
        return x < 0
    t = np.asarray(threshold).reshape(-1)
    if t.size != x.shape[1]:
        raise ShapeError(f"threshold has {t.size} entries for {x.shape[1]} channels")
    shape = [1] * x.ndim
    shape[1] = t.size
    return x.astype(np.float64) < t.astype(np.float64).reshape(shape)


def pack_sign(x: np.ndarray, word_bits: int = 32, threshold: Optional[np.ndarray] = None) -> np.ndarray:
    """Sign-pack NCHW (-> NHWC words) or [M, K] (-> [M, Kw]): bit 1 where ``x < threshold`` (0)."""
    return pack_bits(_channels_last(sign_bits(x, threshold)), word_bits)


def unpack_sign(words: np.ndarray, channels: int) -> np.ndarray:
    """Packed sign codes (NHWC words or [M, Kw]) -> float32 +-1 in NCHW or [M, K]."""
    bits = unpack_bits(words, channels)
    return _channels_first((1.0 - 2.0 * bits).astype(np.float32))


def pack_weight_sign(w: np.ndarray, word_bits: int = 32) -> np.ndarray:
    """Sign-pack conv weights ``[O, C/g, KH, KW] -> [O, KH, KW, Cw]`` or dense ``[N, K] -> [N, Kw]``.

    Zero weights pack as +1 (the ``x >= 0`` convention); binarizing passes decide about 0 before.
    """
    return pack_sign(np.asarray(w), word_bits)


def unpack_weight_sign(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of :func:`pack_weight_sign`: float32 +-1 ``[O, C/g, KH, KW]`` or ``[N, K]``."""
    return unpack_sign(words, channels)


def pack_planes(codes: np.ndarray, bits: int, word_bits: int = 32) -> np.ndarray:
    """Bit-plane pack unsigned codes: NCHW -> ``[N, H, W, bits, Cw]``, [M, K] -> ``[M, bits, Kw]``.

    Conv weights ``[O, C/g, KH, KW]`` pack the same way (``[O, KH, KW, bits, Cw]``).
    """
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iub":
        raise ShapeError(f"bit-plane packing needs integer codes, got {codes.dtype}")
    if not 1 <= bits <= 32:
        raise ShapeError(f"bits must be in 1..32, got {bits}")
    c = _channels_last(codes).astype(np.int64)
    if c.size and (c.min() < 0 or c.max() >= (1 << bits)):
        raise ShapeError(f"codes must lie in [0, {1 << bits}) to pack into {bits} planes; "
                         f"got range [{c.min()}, {c.max()}]")
    planes = np.stack([(c >> i) & 1 for i in range(bits)], axis=-2)  # [..., bits, C]
    return pack_bits(planes, word_bits)


def unpack_planes(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of :func:`pack_planes`: int32 codes in NCHW or [M, K]."""
    bits = unpack_bits(words, channels).astype(np.int64)  # [..., k, C]
    k = bits.shape[-2]
    weights = (np.int64(1) << np.arange(k, dtype=np.int64)).reshape((k, 1))
    codes = (bits * weights).sum(axis=-2)
    return _channels_first(codes.astype(np.int32))
