"""The exceptions MemOS raises. Every error a user can cause is a `MemOSError`."""

from __future__ import annotations


class MemOSError(Exception):
    """Base class of every error MemOS raises on purpose."""


class InvalidInput(MemOSError, ValueError):
    """An argument has the wrong type, is empty, or is out of range."""


class NotFound(MemOSError, KeyError):
    """No cube (or version) with that id exists in the caller's scope."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class ScopeViolation(MemOSError, PermissionError):
    """The call tried to reach a cube outside the caller's scope."""


class ConfigError(MemOSError):
    """The data directory or configuration cannot be used as given."""


class StoreError(MemOSError):
    """A backing store (catalog, vector index, graph) failed."""


class IntegrityError(MemOSError):
    """A cube's content no longer matches its fingerprint."""


class ExtractionError(MemOSError):
    """A chat model's output could not be read into memory drafts."""


class Conflict(StoreError):
    """Someone else wrote first (a stale `expected_version`, a key created concurrently)."""
