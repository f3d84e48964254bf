"""qcompiler: a low-bit inference compiler for CPUs (ONNX -> quantized, bit-packed native modules)."""

__version__ = "0.1.0"

from .errors import (ConfigError, ModelError, QCompilerError, RuntimeInputError, ShapeError,  # noqa: E402
                     TargetError, UnsupportedError)
from .api import compile, load  # noqa: E402
from .frontend import from_onnx  # noqa: E402
from .ir import Graph  # noqa: E402
from .quant import QuantConfig, quantize  # noqa: E402

__all__ = ["from_onnx", "compile", "load", "Graph", "QuantConfig", "quantize", "QCompilerError", "ModelError", "UnsupportedError", "ShapeError",
           "ConfigError", "TargetError", "RuntimeInputError", "__version__"]
