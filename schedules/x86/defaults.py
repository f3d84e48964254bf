"""Default schedule knobs on x86 (AVX2: 16 ymm registers of 8 floats; AVX-512: 32 zmm of 16).

``defaults(kind, workload, target)`` is the starting point a tuner searches from; every knob is
documented in ``schedules/templates.py``; the tile heuristics are ``tiling.template_defaults``.
"""

from __future__ import annotations

from ..kernel import Workload
from ..tiling import template_defaults


def defaults(kind: str, wl: Workload, target) -> dict:
    return template_defaults(kind, wl, target, vector_registers=32 if target.has("avx512") else 16)
