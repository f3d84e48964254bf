"""The errors qcompiler raises on purpose.

Every failure a user can cause (bad model, bad config, bad input at run time, missing toolchain)
surfaces as a subclass of :class:`QCompilerError` with a message that names what is wrong and where,
never as a traceback from deep inside numpy or TVM.
"""


class QCompilerError(Exception):
    """Base of every error qcompiler raises on purpose."""


class ModelError(QCompilerError):
    """The model file or graph is malformed (truncated, not ONNX, missing external data, bad shapes)."""


class UnsupportedError(QCompilerError):
    """An op, attribute, dtype, opset or target feature that qcompiler does not support."""


class ShapeError(QCompilerError):
    """Shapes or dtypes that do not fit (at import, at compile time or at run time)."""


class ConfigError(QCompilerError):
    """An invalid configuration value (bits out of range, unknown method, override naming no node)."""


class TargetError(QCompilerError):
    """An unknown target, or a target whose toolchain or emulator is missing."""


class RuntimeInputError(QCompilerError):
    """Inputs handed to a compiled module or the reference executor do not match its signature."""
