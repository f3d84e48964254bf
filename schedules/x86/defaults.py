"""Default schedule knobs on x86 (AVX2: 16 ymm registers of 8 floats; AVX-512: 32 zmm of 16).

``defaults(kind, workload, target)`` is the measured-later starting point a tuner searches from;
every knob is documented in ``schedules/templates.py``. Register budget of the conv/dense tiles:
``tile_ow`` (conv) or ``tile_m * tile_nb`` (dense) accumulator vectors, plus one weight vector and
one broadcast, within the 16 (AVX2) or 32 (AVX-512) vector registers.
"""

from __future__ import annotations

from ..kernel import Workload, vector_lanes
from ..tiling import conv_knobs, dense_knobs, injective_knobs


def defaults(kind: str, wl: Workload, target) -> dict:
    lanes = vector_lanes(target, "float32")
    regs = 32 if target.has("avx512") else 16
    if kind in ("conv2d_nchw_ocvec", "qconv2d_nchw_ocvec"):
        return conv_knobs(wl, lanes, max_tile=min(12, regs - 4))
    if kind in ("depthwise_conv2d_nchw", "qdepthwise_conv2d_nchw"):
        ow = wl.outputs[0].shape[-1]
        return {"vw": lanes if ow >= lanes else max(4, 1 << (ow - 1).bit_length()), "parallel": 1}
    if kind in ("dense_nvec", "qdense_nvec"):
        return dense_knobs(wl, lanes, max_acc=regs // 2)
    return injective_knobs(wl, target)
