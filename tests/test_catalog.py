"""The catalog holds cubes and every version, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from memos_agents.catalog import COMMITTED, PENDING, Catalog, cubes_t
from memos_agents.cube import MemCube, Provenance, Scope, State, utcnow
from memos_agents.errors import Conflict, InvalidInput, MemOSError, NotFound, StoreError


def make(text: str, user: str = "u1") -> MemCube:
    return MemCube(
        content=text, scope=Scope(user_id=user), provenance=Provenance(created_by=f"user:{user}")
    ).seal()


def index_states(cat: Catalog) -> dict[str, str]:
    from sqlalchemy import select

    with cat.engine.connect() as c:
        return dict(c.execute(select(cubes_t.c.id, cubes_t.c.index_state)).all())


def test_insert_is_pending_until_committed(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    a, b = make("alpha"), make("beta")
    cat.insert([a, b], changed_by="user:u1")
    assert {c.id for c in cat.pending()} == {a.id, b.id}
    cat.mark_committed([a.id], {a.id: 1})
    assert index_states(cat) == {a.id: COMMITTED, b.id: PENDING}
    assert cat.get(a.id).content == "alpha"
    cat.close()


def test_versions_and_optimistic_concurrency(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    a = make("v1 text")
    cat.insert([a], changed_by="user:u1")
    v2 = a.model_copy(deep=True)
    v2.content, v2.lifecycle.version = "v2 text", 2
    cat.write_version(v2.seal(), "update", "agent:x", expected_version=1)
    stale = a.model_copy(deep=True)
    stale.content, stale.lifecycle.version = "lost update", 2
    with pytest.raises(Conflict, match="concurrently"):
        cat.write_version(stale.seal(), "update", "agent:y", expected_version=1)
    hist = cat.history(a.id)
    assert [(h.version, h.op, h.changed_by, h.cube.content) for h in hist] == [
        (1, "create", "user:u1", "v1 text"),
        (2, "update", "agent:x", "v2 text"),
    ]
    assert cat.get(a.id).content == "v2 text"
    cat.close()


def test_touch_list_stats_purge(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    cubes = [make(f"t{i}", user="u1" if i % 2 else "u2") for i in range(6)]
    cat.insert(cubes, changed_by="test")
    cat.touch([cubes[0].id], utcnow())
    cat.touch([cubes[0].id], utcnow())
    got = cat.get(cubes[0].id)
    assert got.lifecycle.access_count == 2 and got.lifecycle.last_accessed_at is not None
    assert {c.content for c in cat.list(user_id="u1")} == {"t1", "t3", "t5"}
    assert len(cat.list(user_id="u2", limit=2)) == 2
    assert len(cat.list(states=[State.deleted])) == 0
    st = cat.stats()
    assert (
        st["cubes"] == 6 and st["users"] == 2 and st["versions"] == 6 and st["pending_index"] == 6
    )
    cat.purge(cubes[0].id)
    with pytest.raises(NotFound):
        cat.get(cubes[0].id)
    with pytest.raises(NotFound):
        cat.history(cubes[0].id)
    cat.close()


def test_meta_set_by_several_writers_at_once(catalog_url: str) -> None:
    """Processes opening one new catalog set its keys at once: `set_meta` is one upsert (no
    writer fails on the key another just inserted), `meta_once` lets the first writer win and
    every caller sees its value (what a new data dir's embedder check relies on)."""
    from tests.conftest import at_once

    cats = [Catalog(catalog_url) for _ in range(4)]
    seen: dict[int, set[str]] = {}

    def work(i: int, k: int) -> None:
        cats[i].set_meta(f"set:{k}", f"v{i}")
        seen.setdefault(k, set()).add(cats[i].meta_once(f"once:{k}", f"w{i}"))

    errors = at_once(len(cats), 12, work)
    assert not errors, errors[:2]
    for k in range(12):
        assert cats[0].get_meta(f"set:{k}") in {f"v{i}" for i in range(4)}
        assert len(seen[k]) == 1  # one value for every caller: the first writer's
    for c in cats:
        c.close()


def test_meta_roundtrip_and_reopen(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    cat.set_meta("embedder", "x")
    cat.set_meta("embedder", "y")
    cat.insert([make("kept")], changed_by="t")
    cat.close()
    again = Catalog(catalog_url)
    assert again.get_meta("embedder") == "y"
    assert [c.content for c in again.list()] == ["kept"]
    again.close()


def test_hostile_text_is_stored_verbatim(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    evil = "'); DROP TABLE memos_cubes; -- \\ \" ☃ \u202e"
    c = make(evil)
    cat.insert([c], changed_by="t")
    assert cat.get(c.id).content == evil
    assert cat.get(c.id).intact
    cat.close()


def test_unreachable_catalog_is_a_store_error(tmp_path) -> None:
    with pytest.raises(StoreError):
        Catalog(f"sqlite:///{tmp_path}/missing/dir/catalog.db")


def test_two_writers_of_one_new_id_get_a_conflict(tmp_path) -> None:
    """Two engines (as two processes would) on one SQLite file insert the same new cube id:
    the loser gets a Conflict naming the id, not a raw sqlalchemy IntegrityError, and the
    winner's row is untouched."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    first, second = Catalog(url), Catalog(url)
    a = make("first writer")
    b = make("second writer").model_copy(update={"id": a.id})
    first.insert([a], changed_by="user:u1")
    with pytest.raises(Conflict, match=a.id):
        second.insert([b.seal(), make("innocent bystander")], changed_by="user:u1")
    assert first.get(a.id).content == "first writer"
    assert [c.content for c in second.list()] == ["first writer"]  # all or nothing
    history = second.history(a.id)
    with pytest.raises(Conflict, match=a.id):
        second.insert_history(b.seal(), history)
    first.close()
    second.close()


def test_conflict_on_postgresql_names_the_id(catalog_url: str) -> None:
    cat, other = Catalog(catalog_url), Catalog(catalog_url)
    a = make("taken")
    cat.insert([a], changed_by="t")
    with pytest.raises(Conflict, match=a.id):
        other.insert([make("again").model_copy(update={"id": a.id})], changed_by="t")
    cat.close()
    other.close()


def test_duplicates_in_one_call_are_invalid_input(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    a = make("twice")
    with pytest.raises(InvalidInput, match="more than once"):
        cat.insert([a, a], changed_by="t")
    assert cat.list() == []
    cat.close()


def test_values_the_database_refuses_are_invalid_input(catalog_url: str) -> None:
    """Lone surrogates (no UTF-8 form), NUL in a column PostgreSQL stores as text, integers
    beyond 64 bits: each is InvalidInput naming the problem, and nothing is written."""
    cat = Catalog(catalog_url)
    surrogate = make("ok").model_copy(update={"content": "lone \ud800 surrogate"})
    with pytest.raises(InvalidInput, match="cannot be stored"):
        cat.insert([surrogate], changed_by="t")
    with pytest.raises(InvalidInput):
        cat.insert([make("who wrote this")], changed_by="bad\ud800actor")
    with pytest.raises(InvalidInput):
        cat.list(limit=10**30)
    if cat.engine.dialect.name == "postgresql":
        with pytest.raises(InvalidInput, match="NUL"):
            cat.insert([make("nul actor")], changed_by="a\x00b")
    assert cat.list() == []
    cat.close()


def test_no_raw_database_error_leaves_a_read(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    for bad in ("\ud800", "x" * 100_000, "'; DROP TABLE memos_cubes; --", "a\x00b"):
        try:
            cat.get_many([bad])
            cat.list(vault=bad, user_id=bad)
            cat.scope_signature(bad, bad)
        except MemOSError:
            pass
    cat.insert([make("still here")], changed_by="t")
    assert [c.content for c in cat.list()] == ["still here"]
    cat.close()


def test_bad_counts_and_times_are_invalid_input(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    for bad in ("10", -1, True, 1.5, None):
        with pytest.raises(InvalidInput, match="limit"):
            cat.list(limit=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="offset"):
            cat.list(offset=bad)  # type: ignore[arg-type]
    c = make("bad time")
    c.lifecycle.valid_from = ["not", "a", "time"]  # type: ignore[assignment]  # no validation
    with pytest.raises(InvalidInput, match="datetime"):
        cat.insert([c], changed_by="t")
    assert cat.list() == []
    cat.close()


def test_ids_and_actors_too_long_for_their_columns_are_refused_alike(catalog_url: str) -> None:
    """PostgreSQL would refuse an id over 64 characters and SQLite keep it: the catalog refuses
    it up front on both, and an over-long or empty actor too."""
    cat = Catalog(catalog_url)
    with pytest.raises(InvalidInput, match="longer than 64"):
        cat.insert([make("long id").model_copy(update={"id": "i" * 65})], changed_by="t")
    cat.insert([make("a long actor")], changed_by="agent:" + "a" * 256)
    for actor in ("", "a" * 321, None):
        with pytest.raises(InvalidInput, match="changed_by"):
            cat.insert([make("bad actor")], changed_by=actor)  # type: ignore[arg-type]
    ok = make("id of 64").model_copy(update={"id": "i" * 64})
    cat.insert([ok], changed_by="t")
    assert "i" * 64 in [c.id for c in cat.list()] and len(cat.list()) == 2
    cat.close()
