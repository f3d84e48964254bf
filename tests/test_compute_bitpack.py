"""The pixel-vector BitPack kernel (schedules/compute_bitpack.py) against the reference executor."""

import numpy as np
import pytest

from lowering_helpers import run_both, single_node_graph


@pytest.mark.parametrize("shape,wb,thr", [
    ((1, 64, 56, 56), 64, True),     # Bi-Real stage 1: one word per pixel, the template
    ((1, 64, 30, 30), 16, True),     # four words per pixel
    ((1, 512, 7, 7), 64, True),      # several words per pixel, 49 pixels (overlapping last chunk)
    ((2, 70, 5, 7), 32, True),       # ragged channels, batch 2
    ((1, 11, 4, 4), 8, False),       # exactly one chunk, ragged, no threshold
    ((1, 20, 3, 3), 16, True),       # fewer pixels than a vector: the template
])
def test_bitpack_pixels_bit_exact(shape, wb, thr, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    x.reshape(-1)[::7] = 0.0                                  # ties with a zero threshold
    ins = [(x, False)]
    if thr:
        t = rng.normal(size=shape[1]).astype(np.float32) * 0.5
        t[::3] = 0.0
        x[:, ::5] = t[::5].reshape(1, -1, 1, 1)              # ties with the threshold itself
        ins.append((t, True))
    g = single_node_graph("BitPack", ins, dict(mode="sign", word_bits=wb))
    lowered, got, exp = run_both(g, {"in0": x}, tmp_path)
    template = shape[2] * shape[3] < 16 or shape[1] <= wb
    assert lowered.records[0].impl.startswith("bitpack__" if template else "bitpack_pixels"), lowered.records[0].impl
    np.testing.assert_array_equal(got["out0"], exp["out0"])
