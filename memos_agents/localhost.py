"""What the local servers share (the embedded graph and vector servers, the model process, the
memos-agents server): the lock held while one is started or stopped, and the loopback check."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import StoreError


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def spawn_lock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold the lock file `path` while `what` happens; StoreError after `timeout` seconds."""
    try:
        with FileLock(path, timeout=timeout, mode=0o600):
            yield
    except Timeout as exc:
        raise StoreError(
            f"another process has held {path} for over {timeout:.0f} s while {what}"
        ) from exc
