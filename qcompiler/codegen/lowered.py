"""The hand-off between lowering (IR -> kernels) and the AOT/packaging stage (kernels -> module).

``lower.lower_graph(graph, target, ...)`` produces a :class:`LoweredGraph`; ``aot`` turns it into
C (static memory plan, executor, weights) and ``package`` links it for the target. Keeping this
hand-off a plain data structure lets each side be tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..ir import Graph


@dataclass(frozen=True)
class KernelCall:
    """One step of the executor, in execution order.

    ``kind == "kernel"``: call ``__tvm_ffi_<symbol>`` (tvm-ffi packed ABI) with one DLTensor per name
    in ``args`` (IR value names: constants, graph inputs or intermediates), inputs first, then outputs.
    ``kind == "alias"``: ``args == [src, dst]``; ``dst`` is a view of ``src``'s bytes (Reshape,
    Flatten, Squeeze...) and needs no storage or call of its own.
    """

    node: str
    kind: str
    symbol: Optional[str]
    args: List[str]


@dataclass(frozen=True)
class KernelRecord:
    """Per-layer facts for the manifest and ``qcompiler report``."""

    node: str
    op: str
    symbol: Optional[str]
    impl: str                          # e.g. "bconv2d_nhwc__x86_avx512" or "generic_topi_conv2d"
    config: Dict[str, object]          # schedule knobs used
    fallback: Optional[str] = None     # why a slower/generic kernel was used, if it was
    macs: int = 0
    bits: Dict[str, object] = field(default_factory=dict)
    shapes: Dict[str, List[int]] = field(default_factory=dict)


@dataclass
class LoweredGraph:
    graph: Graph                       # shapes/dtypes of every value named in ``calls``
    target_name: str
    calls: List[KernelCall]
    objects: Dict[str, bytes]          # symbol -> object file bytes (one per unique workload)
    constants: Dict[str, np.ndarray]   # value name -> data to embed (possibly pre-packed/transposed)
    records: List[KernelRecord]
