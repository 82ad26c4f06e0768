"""Keyword index snapshots under the data dir: a second open restores the scope index from
the snapshot (no catalog parse, no rebuild) and catches up with what was written since, with
the same scores as the index it was written from; a purge removes the scope's snapshots; a
damaged snapshot is not used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memos_agents import MemOS
from memos_agents.retrieval.snapshot import scope_dir
from tests.conftest import caught_changes

pytestmark = pytest.mark.embedded_only(
    "keyword snapshots are written next to a SQLite catalog only (none on PostgreSQL)")

FACTS = [
    "Ana keeps a lighthouse logbook.",
    "Ana photographed a narwhal off Tromso.",
    "Omar repaired the harbour crane on Tuesday.",
    "Ana lent her telescope to Omar.",
    "The ferry to Bodo leaves at seven.",
    "Omar's sister sings in a choir in Bergen.",
]
QUERIES = ["narwhal Tromso", "telescope Omar", "ferry Bodo", "choir Bergen", "harbour crane"]


def _keyword(mem: MemOS, q: str) -> list[tuple[str, float]]:
    return [(h.cube.id, h.score) for h in mem.search(q, user_id="ana", k=5, routes=["keyword"])]


@pytest.fixture
def built(data_dir: Path, embedder):
    """A data dir whose scope index was built (and its snapshot written), then written to."""
    a = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    for f in FACTS:
        a.add(f, user_id="ana")
    _keyword(a, "lighthouse")  # builds the segments: the snapshot is written
    later = a.add("Ana adopted a ferret named Pixel.", user_id="ana")[0].id
    yield a, later
    a.close()


def _open(data_dir: Path, embedder, monkeypatch) -> tuple[MemOS, list[str]]:
    b = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    loads: list[str] = []
    full = b.vault.catalog.scope_cubes
    monkeypatch.setattr(b.vault.catalog, "scope_cubes",
                        lambda *a, **kw: loads.append(a[1]) or full(*a, **kw))
    return b, loads


def test_a_second_open_restores_the_snapshot_and_catches_up(built, data_dir, embedder,
                                                              monkeypatch) -> None:
    a, later = built
    home = scope_dir(data_dir / "keyword-index", "default", "ana")
    assert (home / "current").exists()
    b, loads = _open(data_dir, embedder, monkeypatch)
    try:
        for q in QUERIES:
            assert _keyword(b, q) == _keyword(a, q)
        assert later in [c for c, _ in _keyword(b, "ferret Pixel")]
        assert loads == []  # restored: the catalog was not parsed
        ia, ib = (m.vault.router.loaded("default", "ana") for m in (a, b))
        assert ia is not None and ib is not None
        assert [d.id for d in ia.docs] == [d.id for d in ib.docs]
        assert ib.by_hash.keys() == ia.by_hash.keys() and ib.entity_names == ia.entity_names
        for name, arr in ia.keyword_scores(["ferret", "omar"]).items():
            assert np.allclose(arr, ib.keyword_scores(["ferret", "omar"])[name])
        gone = a.list(user_id="ana")[0].id
        a.purge(gone, user_id="ana")
        assert not home.exists()  # nothing of an erased cube stays in a snapshot
        assert gone not in [c for c, _ in _keyword(b, "lighthouse logbook")]
    finally:
        b.close()


def _damage(folder: Path, how: str) -> None:
    cols = folder / "columns"
    if how == "garbage":
        (cols / "tokens.npy").write_bytes(b"\x93NUMPY garbage")
    elif how == "missing":
        (cols / "alive.npy").unlink()
    elif how == "dtype":  # a column of the wrong type
        np.save(cols / "created_at.npy", np.load(cols / "created_at.npy").astype(np.float32))
    elif how == "short":  # a column shorter than the others
        np.save(cols / "version.npy", np.load(cols / "version.npy")[:-1])
    elif how == "codes":  # a word code past the table
        toks = np.load(cols / "tokens.npy")
        toks[0] = 10**6
        np.save(cols / "tokens.npy", toks)
    else:
        (folder / "tables.json").write_text('{"words": [1')


@pytest.mark.parametrize("how", ["garbage", "missing", "dtype", "short", "codes", "tables"])
def test_a_damaged_snapshot_is_not_used(built, data_dir, embedder, monkeypatch, how) -> None:
    a, _ = built
    home = scope_dir(data_dir / "keyword-index", "default", "ana")
    folder = home / (home / "current").read_text()
    _damage(folder, how)
    b, loads = _open(data_dir, embedder, monkeypatch)
    try:
        for q in QUERIES:  # the same best hit (built over every fact: other BM25 statistics)
            assert _keyword(b, q)[0][0] == _keyword(a, q)[0][0]
        assert loads == ["ana"]  # loaded from the catalog instead
    finally:
        b.close()


def test_the_tail_is_snapshotted_too(built, data_dir, embedder, monkeypatch) -> None:
    """Once `EVERY` docs have joined the tail, the next search writes a snapshot with them
    (the segment files linked, not rewritten): a later open catches up from there."""
    from memos_agents.retrieval import snapshot

    a, later = built
    monkeypatch.setattr(snapshot, "EVERY", 2)
    home = scope_dir(data_dir / "keyword-index", "default", "ana")
    first = (home / "current").read_text()
    for f in ("Omar bought a red kite.", "Ana painted the boathouse green."):
        a.add(f, user_id="ana")
    _keyword(a, "kite")  # catches up with its own writes: the tail is snapshotted
    assert (home / "current").read_text() != first
    ia = a.vault.router.loaded("default", "ana")
    assert ia is not None and len(ia.docs) - ia.saved_n < snapshot.EVERY
    b, loads = _open(data_dir, embedder, monkeypatch)
    try:
        caught = caught_changes(monkeypatch, b.vault.catalog)
        for q in [*QUERIES, "red kite", "boathouse green", "ferret Pixel"]:
            assert _keyword(b, q) == _keyword(a, q)  # same main segment and tail: same scores
        ib = b.vault.router.loaded("default", "ana")
        assert ib is not None and len(ib.docs) == len(ia.docs)
        assert loads == [] and len(caught) < snapshot.EVERY  # only what came after it
        assert later in [c for c, _ in _keyword(b, "ferret Pixel")]
    finally:
        b.close()


def test_no_snapshot_holds_a_purged_cube(built, data_dir, embedder, monkeypatch) -> None:
    """A purge empties the index entries of the cube (its retired versions too) and removes
    the scope's snapshots; none is written again until the segments are rebuilt without it."""
    from memos_agents.retrieval import snapshot

    a, _ = built
    monkeypatch.setattr(snapshot, "EVERY", 1)
    gone = next(c for c in a.list(user_id="ana") if "narwhal" in c.content)
    a.update(gone.id, "Ana photographed a beluga off Tromso.", user_id="ana")
    _keyword(a, "beluga")
    a.purge(gone.id, user_id="ana")
    home = scope_dir(data_dir / "keyword-index", "default", "ana")
    assert not home.exists()
    ia = a.vault.router.loaded("default", "ana")
    assert ia is not None and ia.holds_purged
    assert [d.tokens for d in ia.docs if d.id == gone.id] == [(), ()]  # both versions emptied
    a.add("Omar bought a red kite.", user_id="ana")
    _keyword(a, "kite")
    assert not home.exists()  # the segments still hold its postings: no snapshot
    b, loads = _open(data_dir, embedder, monkeypatch)
    try:
        assert gone.id not in [c for c, _ in _keyword(b, "beluga narwhal Tromso")]
        assert loads == ["ana"]
    finally:
        b.close()


def test_a_server_catalog_keeps_snapshots_in_the_data_dir_and_a_purge_ends_old_ones(
        tmp_path: Path, catalog_url: str, embedder, monkeypatch) -> None:
    """On PostgreSQL the snapshots live in the data dir, in a folder named by the catalog's
    id, and a second open restores them; a snapshot from before a purge (another machine's,
    which the purging process could not remove) is removed when a process sees the purge, and
    what it held is not found."""
    import shutil

    d = tmp_path / "node"
    opened = lambda: MemOS.open(d, embedder=embedder, catalog_url=catalog_url,  # noqa: E731
                                graph_idle_timeout=30)
    a = opened()
    try:
        for f in FACTS:
            a.add(f, user_id="ana")
        _keyword(a, "lighthouse")
        root = a.vault.router.snapshots
        assert root is not None
        if catalog_url.startswith("postgresql"):
            assert root == d / "catalogs" / a.vault.catalog.catalog_id / "keyword-index"
            assert len(a.vault.catalog.catalog_id) == 32
        home = scope_dir(root, "default", "ana")
        assert (home / "current").exists()
        b = opened()
        loads: list[str] = []
        full = b.vault.catalog.scope_cubes
        monkeypatch.setattr(b.vault.catalog, "scope_cubes",
                            lambda *x, **kw: loads.append(x[1]) or full(*x, **kw))
        try:
            assert b.vault.catalog.catalog_id == a.vault.catalog.catalog_id
            for q in QUERIES:
                assert _keyword(b, q) == _keyword(a, q)
            assert loads == []  # restored from the data dir's snapshot
        finally:
            b.close()
        kept = tmp_path / "kept"
        shutil.copytree(home, kept)
        gone = next(c for c in a.list(user_id="ana") if "narwhal" in c.content)
        a.purge(gone.id, user_id="ana")
        assert not home.exists()
        shutil.copytree(kept, home)  # a snapshot the purging process did not know of
        c = opened()
        try:
            assert gone.id not in [cid for cid, _ in _keyword(c, "narwhal Tromso")]
            assert not home.exists()
        finally:
            c.close()
    finally:
        a.close()
