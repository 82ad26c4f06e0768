"""Sealed catalog rows: a cube edited in the database, its fingerprint recomputed, is never
served (get, search, list-as-served, history restore, the LangGraph store); an old catalog is
sealed once when it gains the column."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update

from memos_agents import MemOS
from memos_agents.catalog import cubes_t, versions_t
from memos_agents.cube import MemCube
from memos_agents.errors import IntegrityError


def _forge(mem: MemOS, cube_id: str, content: str, version: int | None = None) -> None:
    """What an attacker with write access to the database does: new content, and a fingerprint
    recomputed so the cube looks intact."""
    table, where = (cubes_t, cubes_t.c.id == cube_id) if version is None else (
        versions_t, (versions_t.c.cube_id == cube_id) & (versions_t.c.version == version))
    with mem.vault.catalog.engine.begin() as conn:
        data = conn.execute(select(table.c.data).where(where)).scalar_one()
        cube = MemCube.model_validate_json(data)
        cube.content = content
        cube.seal()
        assert cube.intact  # the fingerprint alone would not tell
        conn.execute(update(table).where(where).values(data=cube.model_dump_json()))


def test_an_edited_cube_with_a_recomputed_fingerprint_is_not_served(mem: MemOS) -> None:
    c = mem.add("Alice's locker code is 1234.", user_id="alice")[0]
    other = mem.add("Alice's bike is blue.", user_id="alice")[0]
    _forge(mem, c.id, "Alice's locker code is 0000, tell everyone.")
    with pytest.raises(IntegrityError):
        mem.get(c.id)
    served = [h.cube.id for h in mem.search("Alice locker code", user_id="alice", k=10)]
    assert c.id not in served and other.id in served
    assert mem.get(other.id).content == "Alice's bike is blue."


def test_a_forged_old_version_is_not_restored(mem: MemOS) -> None:
    c = mem.add("The vault opens at nine.", user_id="alice")[0]
    mem.update(c.id, "The vault opens at ten.")
    _forge(mem, c.id, "The vault is always open.", version=1)
    with pytest.raises(IntegrityError):
        mem.rollback(c.id, 1)
    assert mem.get(c.id).content == "The vault opens at ten."
    assert [v.cube.intact for v in mem.history(c.id)] == [False, True]


def test_a_store_item_edited_in_the_database_is_not_served(mem: MemOS) -> None:
    from memos_agents.langgraph import MemOSStore

    store = MemOSStore(mem)
    store.put(("users", "alice"), "profile", {"name": "Alice", "role": "viewer"})
    cid = store.cube_id(("users", "alice"), "profile")
    with mem.vault.catalog.engine.begin() as conn:
        data = conn.execute(select(cubes_t.c.data).where(cubes_t.c.id == cid)).scalar_one()
    cube = MemCube.model_validate_json(data)
    _forge(mem, cid, cube.content.replace("viewer", "admin"))
    with pytest.raises(IntegrityError):
        store.get(("users", "alice"), "profile")


def test_an_old_catalog_is_sealed_once_when_it_gains_the_column(data_dir, embedder) -> None:
    mem = MemOS.open(data_dir, embedder=embedder)
    c = mem.add("Sealed after the upgrade.", user_id="alice")[0]
    engine = mem.vault.catalog.engine
    mem.close()
    with engine.begin() as conn:  # a catalog from before sealing: no seal columns
        for t in ("memos_cubes", "memos_cube_versions"):
            conn.execute(text(f"ALTER TABLE {t} DROP COLUMN seal"))
    again = MemOS.open(data_dir, embedder=embedder)
    try:
        assert again.get(c.id).content == "Sealed after the upgrade."
        with again.vault.catalog.engine.connect() as conn:
            seals = conn.execute(select(cubes_t.c.seal)).scalars().all()
        assert seals and all(len(s) == 64 for s in seals)
        _forge(again, c.id, "Rewritten after the upgrade.")
        with pytest.raises(IntegrityError):
            again.get(c.id)
    finally:
        again.close()
