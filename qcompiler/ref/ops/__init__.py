"""Importing this package registers every op with the reference executor."""

from . import elementwise, lowbit, nn, quant, tensor  # noqa: F401
