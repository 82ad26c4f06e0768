"""One Chroma server per Chroma dir, shared by every process that uses the dir while it runs.

An in-process `PersistentClient` is not process-safe: a second process never sees the first's
new vectors. So processes that share a dir (`memos-agents serve` workers, two servers, a
library with `vector_server=True`) use one `chroma run` server of the dir over loopback HTTP,
and a process that opens the dir while that server runs goes through it too (`attach`).

Files in the Chroma dir:

- ``server.lock``: held while a process starts or stops the dir's server;
- ``open.lock``: shared by every process that has the dir open in-process, for as long as it
  does; the server holds it exclusively for its whole life (it inherits the starter's locked
  descriptor), so a server never runs beside an in-process client and vice versa;
- ``users.lock``: shared by the processes that asked for the shared server (`attach(shared=
  True)`); the last of them to leave stops a server that one of them started;
- ``server.json``: the server's pid and port (stale once the pid is gone or the lock free);
- ``server.log``: the server's output.

The server leads a session (and process group) of its own; `stop_server` sends it SIGTERM,
then SIGKILL to the group after `timeout` seconds. Without flock (Windows) a dir is only
ever opened in-process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StoreError
from ..localhost import spawn_lock

SPAWN_LOCK = "server.lock"
VECTOR_SPAWN = "starting or stopping the vector server"
OPEN_LOCK = "open.lock"
USERS_LOCK = "users.lock"
STATE_NAME = "server.json"
LOG_NAME = "server.log"
HOST = "127.0.0.1"

_START_TIMEOUT = 60.0  # for a started server to answer its heartbeat
_START_TRIES = 3  # a free port can be taken by another process before the server binds it
_ATTACH_WAIT = 60.0  # for a server that holds the dir (starting) to answer
_LOCK_WAIT = 60.0  # for the spawn lock, or the users lock while the last user stops the server
_KILL_WAIT = 10.0

log = logging.getLogger(__name__)


def _try_flock(fd: int, exclusive: bool) -> bool:
    """Take (or convert to) a shared / exclusive flock on `fd` without waiting; whether it did."""
    import fcntl  # POSIX only: `attach` opens the dir in-process without locks elsewhere

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _flock(path: Path, exclusive: bool) -> int | None:
    """A descriptor of `path` holding a shared / exclusive flock, or None if that is taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if not _try_flock(fd, exclusive):
        os.close(fd)
        return None
    return fd


def _held(chroma_dir: Path) -> bool:
    """Whether a server (or a process starting one) holds the dir's open lock exclusively."""
    if sys.platform == "win32":
        return False  # no flock, so no server
    fd = _flock(chroma_dir / OPEN_LOCK, exclusive=False)
    if fd is None:
        return True
    os.close(fd)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(chroma_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((chroma_dir / STATE_NAME).read_text())
        int(state["pid"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def _write_state(chroma_dir: Path, pid: int, port: int, managed: bool) -> None:
    tmp = chroma_dir / f"{STATE_NAME}.tmp"
    tmp.write_text(json.dumps({"pid": pid, "port": port, "managed": managed}))
    os.replace(tmp, chroma_dir / STATE_NAME)


def _url(port: int) -> str:
    return f"http://{HOST}:{port}"


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether the Chroma server at `url` answers its heartbeat."""
    import httpx

    try:
        return httpx.get(f"{url}/api/v2/heartbeat", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _see_log(chroma_dir: Path, lines: int = 15) -> str:
    try:
        text = (chroma_dir / LOG_NAME).read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-lines:])
    except OSError:
        tail = "(no log)"
    return f"see {chroma_dir / LOG_NAME}:\n{tail}"


def running_server(chroma_dir: Path) -> str | None:
    """The URL of `chroma_dir`'s server if one runs and answers, else None (stale state too)."""
    chroma_dir = Path(chroma_dir).resolve()
    state = _read_state(chroma_dir)
    if state is None or not _alive(int(state["pid"])) or not _held(chroma_dir):
        return None
    url = _url(int(state["port"]))
    return url if answers(url) else None


def _chroma_command() -> str:
    local = Path(sys.executable).with_name("chroma")
    found = str(local) if local.is_file() else shutil.which("chroma")
    if found is None:
        raise ConfigError("the `chroma` command (package chromadb) is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def ensure_server(chroma_dir: Path) -> str:
    """The URL of `chroma_dir`'s server, starting one if none answers.

    Raises ConfigError if another process has the dir open in-process."""
    return _ensure(Path(chroma_dir), managed=False)


def _ensure(chroma_dir: Path, managed: bool) -> str:
    if sys.platform == "win32":
        raise ConfigError("the shared vector server needs flock (Linux or macOS)")
    chroma_dir = chroma_dir.resolve()
    try:
        chroma_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the vector dir {chroma_dir}: {exc}") from exc
    if url := running_server(chroma_dir):
        return url
    with spawn_lock(chroma_dir / SPAWN_LOCK, _LOCK_WAIT, VECTOR_SPAWN):
        deadline = time.monotonic() + _ATTACH_WAIT
        while (fd := _flock(chroma_dir / OPEN_LOCK, exclusive=True)) is None:
            if url := running_server(chroma_dir):
                return url
            state = _read_state(chroma_dir)
            if state is None or not _alive(int(state["pid"])):
                raise ConfigError(
                    f"another process has {chroma_dir} open in-process; close it first"
                )
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"the vector server of {chroma_dir} (pid {state['pid']}) holds the dir "
                    f"but has not answered for {_ATTACH_WAIT:.0f} s; {_see_log(chroma_dir)}"
                )
            time.sleep(0.1)
        try:
            return _spawn(chroma_dir, fd, managed)
        finally:
            os.close(fd)  # the server keeps the lock through its inherited copy


def _spawn(chroma_dir: Path, fd: int, managed: bool) -> str:
    """Start `chroma run` on a free loopback port, holding `fd`'s lock; wait until it answers."""
    command = _chroma_command()
    # warnings only: at INFO the server logs every request (about 3 KB each)
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "RUST_LOG": "warn"}
    code: int | None = None
    for _ in range(_START_TRIES):
        port = _free_port()
        args = [command, "run", "--path", str(chroma_dir), "--host", HOST, "--port", str(port)]
        with open(chroma_dir / LOG_NAME, "ab") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=chroma_dir,
                env=env,
                pass_fds=(fd,),
                start_new_session=True,  # its own process group, for a bounded stop
            )
        _write_state(chroma_dir, proc.pid, port, managed)
        code = _wait_answering(chroma_dir, proc, _url(port))
        if code is None:
            # reap it when it exits, so no zombie lingers in a long-running process
            threading.Thread(target=proc.wait, name="chroma-server", daemon=True).start()
            return _url(port)
    raise StoreError(
        f"the vector server of {chroma_dir} exited at start (code {code}); {_see_log(chroma_dir)}"
    )


def _wait_answering(chroma_dir: Path, proc: subprocess.Popen[bytes], url: str) -> int | None:
    """None once `proc` answers at `url`; its exit code if it exits first."""
    deadline = time.monotonic() + _START_TIMEOUT
    while not answers(url, timeout=1.0):
        if (code := proc.poll()) is not None:
            return code
        if time.monotonic() >= deadline:
            _kill_group(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_KILL_WAIT)
            raise StoreError(
                f"the vector server of {chroma_dir} did not answer on {url} within "
                f"{_START_TIMEOUT:.0f} s; {_see_log(chroma_dir)}"
            )
        time.sleep(0.02)
    return None


def _kill_group(pgid: int) -> None:
    if pgid <= 1 or pgid == os.getpgrp():
        return  # never this process's own group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_released(chroma_dir: Path, timeout: float) -> bool:
    """Wait up to `timeout` s for the server to exit (its open lock to be free); whether it did."""
    deadline = time.monotonic() + timeout
    while _held(chroma_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_server(chroma_dir: Path, timeout: float = 10.0) -> bool:
    """Stop `chroma_dir`'s server; whether one was running.

    SIGTERM, then SIGKILL to its process group if it still runs `timeout` seconds later
    (Chroma commits every acknowledged write first, so a kill loses none); raises StoreError
    if it still runs after that."""
    chroma_dir = Path(chroma_dir).resolve()
    if not chroma_dir.is_dir():
        return False
    with spawn_lock(chroma_dir / SPAWN_LOCK, timeout, VECTOR_SPAWN):
        state = _read_state(chroma_dir)
        if state is None or not _alive(pid := int(state["pid"])) or not _held(chroma_dir):
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_released(chroma_dir, timeout):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:  # it leads its own group
                    _kill_group(pid)
            if not _wait_released(chroma_dir, _KILL_WAIT):
                raise StoreError(
                    f"the vector server of {chroma_dir} (pid {pid}) still runs {_KILL_WAIT:g} s "
                    f"after SIGKILL; {_see_log(chroma_dir)}"
                )
        with contextlib.suppress(FileNotFoundError):
            (chroma_dir / STATE_NAME).unlink()
    return True


def server_status(chroma_dir: Path) -> dict[str, Any]:
    """Whether `chroma_dir`'s server runs, its pid, URL and log."""
    chroma_dir = Path(chroma_dir).resolve()
    url = running_server(chroma_dir) if chroma_dir.is_dir() else None
    state = _read_state(chroma_dir) if url else None
    return {
        "running": url is not None,
        "pid": int(state["pid"]) if state else None,
        "url": url,
        "log": str(chroma_dir / LOG_NAME),
    }


class Attachment:
    """How one process uses a Chroma dir: through its server (`url`), or in-process (`url`
    None: the open lock is held shared until `close`)."""

    def __init__(
        self, chroma_dir: Path, url: str | None, fd: int | None = None, user_fd: int | None = None
    ) -> None:
        self.chroma_dir = chroma_dir
        self.url = url
        self._fd = fd
        self._user_fd = user_fd

    def reconnect(self) -> str:
        """The url of the dir's server after it has gone (crashed, killed): started again for
        a process that asked for the shared server (the first to ask starts it, the others
        find it), else the one that runs now (StoreError if none)."""
        if self._user_fd is not None:
            self.url = _ensure(self.chroma_dir, managed=True)
        elif (url := running_server(self.chroma_dir)) is not None:
            self.url = url
        else:
            raise StoreError(f"the vector server of {self.chroma_dir} has gone; "
                             f"{_see_log(self.chroma_dir)}")
        return self.url

    def close(self) -> None:
        """Release the dir; the last user of a shared server that one of them started stops it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        user_fd, self._user_fd = self._user_fd, None
        if user_fd is None:
            return
        try:
            last = _try_flock(user_fd, exclusive=True)
            state = _read_state(self.chroma_dir)
            if last and state is not None and state.get("managed"):
                stop_server(self.chroma_dir)
        except StoreError as exc:
            log.warning("cannot stop the vector server of %s: %s", self.chroma_dir, exc)
        finally:
            os.close(user_fd)


def _join(chroma_dir: Path) -> int:
    """A descriptor holding the users lock shared (waiting while a last user stops the server)."""
    fd = os.open(chroma_dir / USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + _LOCK_WAIT
    while not _try_flock(fd, exclusive=False):
        if time.monotonic() >= deadline:
            os.close(fd)
            raise StoreError(f"{chroma_dir / USERS_LOCK} stayed locked for {_LOCK_WAIT:.0f} s")
        time.sleep(0.05)
    return fd


def attach(chroma_dir: Path, shared: bool = False) -> Attachment:
    """Use `chroma_dir`: through its server if one runs (or, `shared`, after starting one),
    else in-process."""
    chroma_dir = Path(chroma_dir).resolve()
    try:
        chroma_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the vector dir {chroma_dir}: {exc}") from exc
    if sys.platform == "win32":  # no flock: in-process, one process at a time
        if shared:
            raise ConfigError("the shared vector server needs flock (Linux or macOS)")
        return Attachment(chroma_dir, None)
    if shared:
        user_fd = _join(chroma_dir)
        try:
            return Attachment(chroma_dir, _ensure(chroma_dir, managed=True), user_fd=user_fd)
        except BaseException:
            os.close(user_fd)
            raise
    deadline = time.monotonic() + _ATTACH_WAIT
    while (fd := _flock(chroma_dir / OPEN_LOCK, exclusive=False)) is None:
        if url := running_server(chroma_dir):
            return Attachment(chroma_dir, url)
        if time.monotonic() >= deadline:
            raise StoreError(
                f"a vector server holds {chroma_dir} but has not answered for "
                f"{_ATTACH_WAIT:.0f} s; {_see_log(chroma_dir)}"
            )
        time.sleep(0.05)
    return Attachment(chroma_dir, None, fd=fd)


__all__ = [
    "Attachment",
    "attach",
    "ensure_server",
    "running_server",
    "server_status",
    "stop_server",
]
