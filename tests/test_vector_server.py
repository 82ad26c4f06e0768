"""One Chroma server per data dir: two OS processes that share it see each other's vectors at
once; it never runs beside an in-process client of the dir; it stops when asked, and when the
last `serve` that started it exits; a stale state file is ignored."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from memos_agents import MemOS
from memos_agents.errors import ConfigError
from memos_agents.graph.falkordb_server import stop_server as stop_graph
from memos_agents.vector import chroma_server

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("memos-agents"))

WORKER = r"""
import json, pathlib, sys
from memos_agents import MemOS
mem = MemOS.open(pathlib.Path(sys.argv[1]), embedder="all-MiniLM-L6-v2-int8",
                 vector_server=True, graph_idle_timeout=60)
print(json.dumps({"ready": mem.vault.index.count()}), flush=True)
for line in sys.stdin:
    op, arg = json.loads(line)
    if op == "add":
        out = mem.add(arg, user_id="alice")[0].id
    elif op == "search":
        out = [h.cube.id for h in mem.search(arg, user_id="alice", routes=["dense"], k=10)]
    else:
        vecs = mem.vault.index.embeddings("default", "alice", [arg])
        out = {"content": mem.get(arg, user_id="alice").content, "dims": len(vecs[arg])}
    print(json.dumps(out), flush=True)
mem.close()
"""


class Worker:
    """A process with the data dir open on the shared vector server, driven line by line."""

    def __init__(self, d: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(d)], cwd=ROOT, text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert "ready" in self.read()

    def read(self) -> object:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"worker exited with code {self.proc.wait()}"
        return json.loads(line)

    def ask(self, op: str, arg: str) -> object:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([op, arg]) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.wait(timeout=60)


@pytest.fixture
def d(tmp_path: Path):
    d = tmp_path / "memos"
    yield d
    chroma_server.stop_server(d / "chroma")
    stop_graph(d / "graph")


def test_two_processes_see_each_others_vectors_at_once(d: Path) -> None:
    a = Worker(d)
    b = Worker(d)
    try:
        for i, (w, r) in enumerate([(a, b), (b, a), (a, b)]):
            cid = w.ask("add", f"alice planted tulip bed number {i} by the greenhouse")
            assert cid in r.ask("search", f"tulip bed number {i}")
            got = r.ask("get", cid)
            assert got == {"content": f"alice planted tulip bed number {i} by the greenhouse",
                           "dims": 384}
        url = chroma_server.running_server(d / "chroma")
        assert url is not None
        # a process that opens the dir while the server runs goes through it too
        with MemOS.open(d, embedder="all-MiniLM-L6-v2-int8", graph_idle_timeout=60) as mem:
            assert mem.vault.index.count() == 3
            assert len(mem.search("tulip bed", user_id="alice", routes=["dense"])) == 3
    finally:
        assert a.close() == 0
    assert chroma_server.running_server(d / "chroma") == url  # b still uses it
    assert b.close() == 0
    assert chroma_server.running_server(d / "chroma") is None  # the last user stopped it
    with MemOS.open(d, embedder="all-MiniLM-L6-v2-int8", graph_idle_timeout=60) as mem:
        assert mem.vault.index.count() == 3  # in-process again, over the same files


def test_an_in_process_holder_blocks_the_server_until_it_closes(d: Path, embedder) -> None:
    mem = MemOS.open(d, embedder=embedder, graph_idle_timeout=60)
    mem.add("alice keeps bees on the roof", user_id="alice")
    with pytest.raises(ConfigError, match="open in-process; close it first"):
        chroma_server.ensure_server(d / "chroma")
    mem.close()
    t = time.monotonic()
    url = chroma_server.ensure_server(d / "chroma")
    assert time.monotonic() - t < 30
    assert chroma_server.ensure_server(d / "chroma") == url  # one server per dir
    status = chroma_server.server_status(d / "chroma")
    assert status["running"] and status["url"] == url
    with MemOS.open(d, embedder=embedder, graph_idle_timeout=60) as again:
        hits = again.search("bees", user_id="alice", routes=["dense"])
        assert [h.cube.content for h in hits] == ["alice keeps bees on the roof"]
    assert chroma_server.stop_server(d / "chroma")
    assert chroma_server.running_server(d / "chroma") is None
    assert not chroma_server.server_status(d / "chroma")["running"]
    assert not chroma_server.stop_server(d / "chroma")
    with httpx.Client() as c, pytest.raises(httpx.TransportError):
        c.get(f"{url}/api/v2/heartbeat", timeout=2)


def test_a_stale_state_file_is_ignored(d: Path) -> None:
    chroma = d / "chroma"
    chroma.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with socket.socket() as s:  # a dead pid, and a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (chroma / chroma_server.STATE_NAME).write_text(json.dumps({"pid": dead.pid, "port": port}))
    assert chroma_server.running_server(chroma) is None
    assert not chroma_server.stop_server(chroma)
    url = chroma_server.ensure_server(chroma)
    assert url != f"http://127.0.0.1:{port}"
    assert chroma_server.running_server(chroma) == url
    assert chroma_server.stop_server(chroma)


def _serve(d: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [CLI, "serve", "--dir", str(d), "--port", str(port), "--no-scheduler"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MEMOS_EMBEDDER": "all-MiniLM-L6-v2-int8"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None
        try:
            if httpx.get(f"{url}/v1/whoami").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("serve did not start")


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_stops_the_vector_server_it_started_and_leaves_one_it_found(d: Path) -> None:
    proc, _ = _serve(d)
    try:
        assert chroma_server.running_server(d / "chroma") is not None
    finally:
        _interrupt(proc)
    assert chroma_server.running_server(d / "chroma") is None
    url = chroma_server.ensure_server(d / "chroma")
    proc, _ = _serve(d)
    _interrupt(proc)
    assert chroma_server.running_server(d / "chroma") == url
    assert chroma_server.stop_server(d / "chroma")


def test_workers_reattach_when_the_shared_server_is_killed(d: Path) -> None:
    """kill -9 of the dir's vector server: the next call of either worker starts it again (one
    server; the other finds it), and every vector acknowledged before is still found."""
    a = Worker(d)
    b = Worker(d)
    try:
        first = [a.ask("add", "alice restored a rowing boat at the lake"),
                 b.ask("add", "alice sold tomatoes at the farmers market")]
        state = json.loads((d / "chroma" / chroma_server.STATE_NAME).read_text())
        os.killpg(state["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while chroma_server.running_server(d / "chroma") is not None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert first[0] in a.ask("search", "rowing boat at the lake")
        assert first[1] in b.ask("search", "tomatoes at the market")
        again = json.loads((d / "chroma" / chroma_server.STATE_NAME).read_text())
        assert again["pid"] != state["pid"] and again.get("managed")
        later = b.ask("add", "alice painted the boathouse blue")
        assert later in a.ask("search", "painted the boathouse")
        assert set(first) <= set(a.ask("search", "alice"))
    finally:
        assert a.close() == 0
        assert b.close() == 0
    assert chroma_server.running_server(d / "chroma") is None  # the last user stopped it
