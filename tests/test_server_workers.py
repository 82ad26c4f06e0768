"""Two server processes over one data dir serve one truth: a write acknowledged by one is read
and found by the other at once, and a kill -9 of one loses no acknowledged write."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from memos_agents import MemOS
from memos_agents.graph.falkordb_server import stop_server
from memos_agents.keys import KeyStore
from memos_agents.vector import chroma_server

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("memos-agents"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`memos-agents serve` in its own process group, on a free loopback port."""

    def __init__(self, d: Path, *, workers: int = 1) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (d.parent / f"serve-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            [CLI, "serve", "--dir", str(d), "--port", str(self.port), "--workers", str(workers),
             "--no-scheduler"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )

    def wait(self, headers: dict[str, str]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            try:
                if httpx.get(f"{self.url}/v1/whoami", headers=headers).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not start:\n" + Path(self.log.name).read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def deployment(tmp_path: Path, embedder):
    d = tmp_path / "memos"
    with MemOS.open(d, embedder=embedder, graph_idle_timeout=60) as mem:
        _, secret = KeyStore(mem.vault.catalog.engine).create("user:alice")
        mem.add("The bystander keeps bees on the roof.", user_id="bob")
    servers: list[Server] = []
    yield d, {"Authorization": f"Bearer {secret}"}, servers
    for s in servers:
        s.kill()
    chroma_server.stop_server(d / "chroma")  # the servers were killed: none stopped it
    stop_server(d / "graph")


def _add(client: httpx.Client, url: str, text: str) -> str:
    r = client.post(f"{url}/v1/memories", json={"messages": text})
    assert r.status_code == 201, r.text
    return r.json()["items"][0]["id"]


def _found(client: httpx.Client, url: str, query: str, routes: list[str], k: int = 50) -> set:
    r = client.post(f"{url}/v1/search", json={"query": query, "k": k, "routes": routes})
    assert r.status_code == 200, r.text
    return {h["id"] for h in r.json()["hits"]}


def test_a_write_through_one_server_is_read_through_the_other(deployment) -> None:
    d, auth, servers = deployment
    a, b = Server(d), Server(d)
    servers += [a, b]
    a.wait(auth)
    b.wait(auth)
    with httpx.Client(headers=auth, timeout=60) as c:
        for i, (w, r) in enumerate([(a, b), (b, a), (a, b), (b, a)]):
            cid = _add(c, w.url, f"alice planted tulip bed number {i} by the greenhouse")
            assert c.get(f"{r.url}/v1/memories/{cid}").status_code == 200
            assert cid in _found(c, r.url, f"tulip bed number {i}", ["keyword"])
            assert cid in _found(c, r.url, f"tulip bed number {i}", ["dense"])
        gone = _add(c, a.url, "alice owns a yellow kayak")
        assert gone in _found(c, b.url, "yellow kayak", ["keyword"])
        assert c.delete(f"{a.url}/v1/memories/{gone}").status_code == 200
        assert gone not in _found(c, b.url, "yellow kayak", ["keyword"])
        tomb = c.get(f"{b.url}/v1/memories/{gone}")  # a soft delete leaves a tombstone
        assert tomb.status_code == 200 and tomb.json()["lifecycle"]["state"] == "deleted"
        bob = c.post(f"{b.url}/v1/search", json={"query": "bees", "user_id": "bob"})
        assert bob.status_code == 403


def test_kill_9_of_a_server_loses_no_acknowledged_write(deployment) -> None:
    d, auth, servers = deployment
    victim, steady = Server(d), Server(d)
    servers += [victim, steady]
    victim.wait(auth)
    steady.wait(auth)
    acked: list[str] = []
    stop = threading.Event()

    def write() -> None:
        with httpx.Client(headers=auth, timeout=30) as c:
            i = 0
            while not stop.is_set():
                try:
                    acked.append(_add(c, victim.url, f"logbook entry {i}: checkpoint {i}"))
                except (httpx.TransportError, AssertionError):
                    return  # the server died mid-request: that write was never acknowledged
                i += 1

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 120
    while len(acked) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.kill()
    stop.set()
    writer.join(timeout=60)
    assert len(acked) >= 5
    with httpx.Client(headers=auth, timeout=60) as c:
        for cid in acked:
            assert c.get(f"{steady.url}/v1/memories/{cid}").status_code == 200
        assert set(acked) <= _found(c, steady.url, "logbook entry checkpoint", ["keyword"],
                                    k=len(acked) + 10)


def test_two_workers_behind_one_port_serve_every_request(deployment) -> None:
    d, auth, servers = deployment
    s = Server(d, workers=2)
    servers.append(s)
    s.wait(auth)
    ids = []
    for i in range(6):  # a fresh connection each time: the kernel spreads them over workers
        with httpx.Client(headers=auth, timeout=60) as c:
            ids.append(_add(c, s.url, f"alice noted fact {i} about the orchard"))
    for cid in ids:
        with httpx.Client(headers=auth, timeout=60) as c:
            assert c.get(f"{s.url}/v1/memories/{cid}").status_code == 200
