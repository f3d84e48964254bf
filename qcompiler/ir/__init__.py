"""qcompiler's model-level IR."""

from .graph import Graph, Node, Value
from .types import DTYPES, Packing, QuantInfo

__all__ = ["Graph", "Node", "Value", "QuantInfo", "Packing", "DTYPES"]
