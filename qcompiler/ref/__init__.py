"""Reference executor: numpy semantics of every IR op (the oracle for passes and kernels)."""

from .executor import check_feeds, run, run_single
from .registry import get_op, has_op, infer_outputs, op, registered_ops

__all__ = ["run", "run_single", "check_feeds", "op", "get_op", "has_op", "infer_outputs",
           "registered_ops"]
