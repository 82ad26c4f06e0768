"""Plaintext vector index backends."""

from .base import VectorIndex, VectorRecord

__all__ = ["VectorIndex", "VectorRecord"]
