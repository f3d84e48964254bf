"""Importing this package registers every op with the reference executor."""

from . import elementwise, nn, tensor  # noqa: F401
