"""Read-your-writes across processes: a write acknowledged by one process (its own
`MemOS.open` of the data dir) is found by the next keyword search of another, with no wait,
also when both write; an update, a delete and a purge in one vanish from the other's results;
the other catches up with the rows written since its mark, never by reloading the scope."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memos_agents import MemOS
from memos_agents.graph.falkordb_server import stop_server

ROOT = Path(__file__).resolve().parents[1]

PEER = r"""
import json, pathlib, sys
from memos_agents import MemOS
d, url = pathlib.Path(sys.argv[1]), sys.argv[2]
mem = MemOS.open(d, catalog_url=url or None, graph_idle_timeout=60)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    op, arg = json.loads(line)
    if op == "add":
        out = mem.add(arg, user_id="ana")[0].id
    elif op == "search":
        out = [h.cube.id for h in mem.search(arg, user_id="ana", k=5, routes=["keyword"])]
    elif op == "update":
        out = mem.update(arg[0], arg[1], user_id="ana").id
    elif op == "delete":
        out = mem.delete(arg, user_id="ana").id
    else:
        out = mem.purge(arg, user_id="ana").id
    print(json.dumps(out), flush=True)
mem.close()
"""


class Peer:
    """Another OS process with its own MemOS on the data dir, run one command at a time."""

    def __init__(self, d: Path, url: str) -> None:
        self.err = (d.parent / "peer.err").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PEER, str(d), url], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        self.errfile = d.parent / "peer.err"
        assert self._read() == {"ready": True}

    def _read(self) -> object:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.errfile.read_text()
        return json.loads(line)

    def __call__(self, op: str, arg: object) -> object:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([op, arg]) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=120) == 0, self.errfile.read_text()
        self.err.close()


@pytest.fixture
def two(catalog_url: str, tmp_path: Path, embedder, monkeypatch):
    """This process's MemOS (its full scope loads counted) and a peer process's, on one data
    dir."""
    d = tmp_path / "memos"
    url = "" if catalog_url.startswith("sqlite") else catalog_url
    mem = MemOS.open(d, embedder=embedder, catalog_url=url or None, graph_idle_timeout=60)
    mem.add("Ana keeps a lighthouse logbook.", user_id="ana")
    loads: list[str] = []
    full = mem.vault.catalog.scope_cubes
    monkeypatch.setattr(mem.vault.catalog, "scope_cubes",
                        lambda *a, **kw: loads.append(a[1]) or full(*a, **kw))
    peer = Peer(d, url)
    yield mem, peer, loads
    peer.close()
    mem.close()
    stop_server(d / "graph")


def _found(mem: MemOS, query: str) -> list[str]:
    return [h.cube.id for h in mem.search(query, user_id="ana", k=5, routes=["keyword"])]


def test_a_peer_write_is_found_by_the_next_keyword_search(two) -> None:
    mem, peer, loads = two
    assert _found(mem, "lighthouse logbook")  # the scope index is loaded here
    assert loads == ["ana"]
    fid = peer("add", "Ana photographed a narwhal off Tromso.")
    assert fid in _found(mem, "narwhal Tromso")  # at once: no signature window
    assert loads == ["ana"]  # caught up with the new row, not reloaded


def test_both_writing_each_sees_the_others_writes(two) -> None:
    mem, peer, loads = two
    words = ["quokka", "axolotl", "pangolin", "okapi", "tapir", "wombat", "dugong", "kakapo"]
    for i in range(0, len(words), 2):
        theirs = peer("add", f"Ana saw a {words[i]} at the zoo.")
        assert theirs in _found(mem, f"{words[i]} zoo")
        mine = mem.add(f"Ana drew a {words[i + 1]} in her sketchbook.", user_id="ana")[0].id
        assert mine in peer("search", f"{words[i + 1]} sketchbook")
        assert theirs in peer("search", f"{words[i]} zoo")  # its own write, still found
        assert mine in _found(mem, f"{words[i + 1]} sketchbook")
    assert loads == ["ana"]


def test_update_delete_and_purge_in_a_peer_leave_the_results(two) -> None:
    mem, peer, loads = two
    moved = peer("add", "Ana moved her kayak to the marina in Bergen.")
    gone = peer("add", "Ana lent her telescope to Omar.")
    erased = peer("add", "Ana sold her accordion at the flea market.")
    assert moved in _found(mem, "kayak marina Bergen")
    assert gone in _found(mem, "telescope Omar")
    assert erased in _found(mem, "accordion flea market")
    # the new text shares no word, nor a near one ("canoe" is one of "kayak"'s), with the old
    peer("update", [moved, "Ana keeps her sourdough starter in the fridge."])
    assert moved not in _found(mem, "kayak marina Bergen")
    assert moved in _found(mem, "sourdough starter fridge")
    peer("delete", gone)
    assert gone not in _found(mem, "telescope Omar")
    peer("purge", erased)
    assert erased not in _found(mem, "accordion flea market")
    idx = mem.vault.router.loaded("default", "ana")
    assert idx is not None and erased not in idx.pos
    assert loads == ["ana"]


def _older_catalog(tmp_path: Path, *ddl: str) -> str:
    """The url of a new SQLite catalog taken back to an older schema by `ddl`."""
    import sqlalchemy as sa

    from memos_agents.catalog import Catalog

    url = f"sqlite:///{tmp_path / 'old.db'}"
    Catalog(url).close()
    eng = sa.create_engine(url)
    with eng.begin() as c:
        for stmt in ddl:
            c.execute(sa.text(stmt))
    eng.dispose()
    return url


def test_an_old_catalog_gains_change_marks(tmp_path: Path) -> None:
    """A catalog from before change marks gains `memos_cubes.seq` on open; writes then raise
    the scope's mark."""
    import sqlalchemy as sa

    from memos_agents.catalog import Catalog
    from memos_agents.cube import MemCube, Provenance, Scope

    cat = Catalog(_older_catalog(tmp_path, "DROP INDEX ix_memos_cubes_seq",
                                 "ALTER TABLE memos_cubes DROP COLUMN seq"))
    try:
        cols = {c["name"] for c in sa.inspect(cat.engine).get_columns("memos_cubes")}
        assert "seq" in cols
        names = {i["name"] for i in sa.inspect(cat.engine).get_indexes("memos_cubes")}
        assert "ix_memos_cubes_seq" in names
        assert cat.scope_mark("default", "ana") == (0, 0)
        cube = MemCube(content="a fact", scope=Scope(user_id="ana"),
                       provenance=Provenance(created_by="user:ana"))
        cat.insert([cube], changed_by="user:ana")
        assert cat.scope_mark("default", "ana") == (1, 0)
        assert [c.id for c in cat.scope_changes("default", "ana", 0)] == [cube.id]
        assert cat.scope_changes("default", "ana", 1) == []
    finally:
        cat.close()


def test_an_old_catalog_gains_the_form_index(tmp_path: Path) -> None:
    """A catalog from before the form index gains it on open, and the query for a scope's KV
    caches uses it instead of scanning the scope's plaintext."""
    import sqlalchemy as sa

    from memos_agents.catalog import Catalog
    from memos_agents.cube import Form

    cat = Catalog(_older_catalog(tmp_path, "DROP INDEX ix_memos_cubes_form"))
    try:
        names = {i["name"] for i in sa.inspect(cat.engine).get_indexes("memos_cubes")}
        assert "ix_memos_cubes_form" in names
        q = cat._active(Form.activation, "default", "ana")
        sql = str(q.compile(cat.engine, compile_kwargs={"literal_binds": True}))
        with cat.engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}")))
        assert "ix_memos_cubes_form" in plan
        assert cat.active_cubes(form=Form.activation, vault="default", user_id="ana") == []
    finally:
        cat.close()


def test_catch_up_parses_only_what_this_process_does_not_hold(two, monkeypatch) -> None:
    """Rows this process wrote are already in its index: the next search's catch-up does not
    parse them again; a peer's write, and another writer's TTL change without a new version,
    are still parsed and applied."""
    from datetime import UTC, datetime, timedelta

    from memos_agents.catalog import Catalog
    from tests.conftest import caught_changes

    mem, peer, _ = two
    caught = caught_changes(monkeypatch, mem.vault.catalog)
    _found(mem, "lighthouse")
    ours = [c.id for c in mem.add(["Ana sails to Bergen.", "Ana paints gulls."], user_id="ana")]
    caught.clear()
    assert set(ours) <= set(_found(mem, "Bergen gulls sails paints"))
    assert caught == []  # applied by `on_write`: held at that version
    theirs = peer("add", "Ana bakes rye bread.")
    assert theirs in _found(mem, "rye bread")
    assert caught == [theirs]
    other = Catalog(mem.vault.catalog.url)  # another writer: no `on_write` in this process
    try:
        other.set_expiry({ours[0]: datetime.now(UTC) - timedelta(minutes=1)})
    finally:
        other.close()
    caught.clear()
    assert ours[0] not in _found(mem, "Bergen sails")
    assert caught == [ours[0]]  # same version, another expiry: parsed
