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


def test_a_damaged_snapshot_is_not_used(built, data_dir, embedder, monkeypatch) -> None:
    a, _ = built
    home = scope_dir(data_dir / "keyword-index", "default", "ana")
    folder = home / (home / "current").read_text()
    (folder / "docs.json").write_text("[[1, 2")
    b, loads = _open(data_dir, embedder, monkeypatch)
    try:
        for q in QUERIES:  # the same best hit (built over every fact: other BM25 statistics)
            assert _keyword(b, q)[0][0] == _keyword(a, q)[0][0]
        assert loads == ["ana"]  # loaded from the catalog instead
    finally:
        b.close()
