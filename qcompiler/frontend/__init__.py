"""Model importers."""

from .onnx_import import MAX_OPSET, MIN_OPSET, from_onnx, load_model

__all__ = ["from_onnx", "load_model", "MIN_OPSET", "MAX_OPSET"]
