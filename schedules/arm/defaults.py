"""Default schedule knobs on arm (NEON: 32 q registers of 4 floats on aarch64, 16 on armv7).

``defaults(kind, workload, target)`` is the starting point a tuner searches from; every knob is
documented in ``schedules/templates.py``; the tile heuristics are ``tiling.template_defaults``.
"""

from __future__ import annotations

from ..kernel import Workload
from ..tiling import template_defaults


def defaults(kind: str, wl: Workload, target) -> dict:
    return template_defaults(kind, wl, target, vector_registers=32 if target.arch == "aarch64" else 16)
