"""The MemOS facade end to end on the real embedded stores (Chroma, FalkorDB, MiniLM)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from memos_agents import MemOS
from memos_agents.cube import Form, SourceKind, State, Visibility
from memos_agents.errors import ConfigError, IntegrityError, InvalidInput, MemOSError, NotFound

ALICE = [
    {
        "role": "user",
        "speaker": "Alice",
        "content": "I moved to Lisbon in May; my dog is called Miso.",
        "id": "a1",
    },
    {
        "role": "user",
        "speaker": "Alice",
        "content": "I work as a pastry chef at a bakery.",
        "id": "a2",
    },
    {"role": "user", "speaker": "Alice", "content": "My favourite band is Radiohead.", "id": "a3"},
]
BOB = [
    {
        "role": "user",
        "speaker": "Bob",
        "content": "I live in Oslo and my cat is named Pixel.",
        "id": "b1",
    },
]


def test_quick_start_flow(mem: MemOS) -> None:
    cubes = mem.add(
        [{"role": "user", "content": "I moved to Lisbon in May; my dog is called Miso."}],
        user_id="alice",
        session_id="s1",
    )
    assert len(cubes) == 1
    c = cubes[0]
    assert c.form is Form.plaintext and c.scope.user_id == "alice" and c.scope.session_id == "s1"
    assert (
        c.provenance.created_by == "user:alice" and c.provenance.source_kind is SourceKind.message
    )
    assert c.lifecycle.version == 1 and c.lifecycle.state is State.active
    assert c.lifecycle.valid_from is not None and c.intact
    assert {"Lisbon", "Miso"} <= set(c.organisation.entities)

    hits = mem.search("where does alice live?", user_id="alice", k=5)
    assert hits[0].cube.id == c.id and 0 < hits[0].score <= 1
    assert mem.get(c.id).lifecycle.access_count == 1

    v2 = mem.update(c.id, "I moved to Porto in June.")
    assert v2.lifecycle.version == 2 and v2.content == "I moved to Porto in June."
    assert mem.search("Porto", user_id="alice", k=1)[0].cube.content == "I moved to Porto in June."
    hist = mem.history(c.id)
    assert [(h.version, h.op) for h in hist] == [(1, "create"), (2, "update")]
    assert (
        hist[0].cube.content.startswith("I moved to Lisbon") and hist[1].changed_by == "user:alice"
    )
    assert hist[0].changed_at <= hist[1].changed_at

    gone = mem.delete(c.id)
    assert gone.lifecycle.state is State.deleted and gone.lifecycle.valid_to is not None
    assert mem.search("Porto", user_id="alice", k=5) == []
    assert [h.op for h in mem.history(c.id)] == ["create", "update", "delete"]
    assert mem.get(c.id).lifecycle.state is State.deleted  # tombstone kept
    with pytest.raises(InvalidInput):
        mem.update(c.id, "too late")

    mem.purge(c.id)
    with pytest.raises(NotFound):
        mem.get(c.id)
    st = mem.stats()
    assert st["cubes"] == 0 and st["vectors"] == 0 and st["graph"]["facts"] == 0


def test_search_never_crosses_users(mem: MemOS) -> None:
    mem.add(ALICE, user_id="alice", session_id="s1")
    mem.add(BOB, user_id="bob", session_id="s1")
    mem.add(BOB, user_id="alice2")  # a user id that shares a prefix
    for q in ("Oslo cat Pixel", "where does bob live", "Bob", "' OR 1=1 --", "*"):
        hits = mem.search(q, user_id="alice", k=50)
        assert hits and all(h.cube.scope.user_id == "alice" for h in hits)
    assert all(h.cube.scope.user_id == "bob" for h in mem.search("Lisbon", user_id="bob", k=50))
    assert mem.search("anything", user_id="nobody", k=5) == []
    bob_id = mem.search("Oslo", user_id="bob", k=1)[0].cube.id
    with pytest.raises(NotFound):
        mem.get(bob_id, user_id="alice")
    with pytest.raises(NotFound):
        mem.update(bob_id, "hijack", user_id="alice")
    assert mem.get(bob_id).content.startswith("I live in Oslo")


def test_vaults_are_separate(mem: MemOS) -> None:
    mem.add("Team standup is at 9:30 every day.", user_id="alice", vault="domain:work")
    mem.add("I love hiking in the Alps.", user_id="alice")
    assert [h.cube.scope.vault for h in mem.search("standup", user_id="alice", k=5)] == ["default"]
    work = mem.search("standup", user_id="alice", k=5, vault="domain:work")
    assert [h.cube.content for h in work] == ["Team standup is at 9:30 every day."]


def test_filters_session_tags_min_score(mem: MemOS) -> None:
    mem.add(ALICE[:2], user_id="alice", session_id="s1", tags=["home"])
    mem.add(ALICE[2:], user_id="alice", session_id="s2", tags=["music"])
    assert {
        h.cube.scope.session_id
        for h in mem.search("anything", user_id="alice", k=10, session_id="s2")
    } == {"s2"}
    tagged = mem.search("Lisbon", user_id="alice", k=10, tags=["music"])
    assert [h.cube.content for h in tagged] == ["My favourite band is Radiohead."]
    assert mem.search("Lisbon dog", user_id="alice", k=10, min_score=0.99) == []


def test_ttl_hides_expired_memories(mem: MemOS) -> None:
    import time

    from memos_agents.cube import utcnow

    short = mem.add("Door code is 4711 today.", user_id="alice", ttl=timedelta(seconds=4))[0]
    mem.add("My door code at home is 1234.", user_id="alice")
    assert len(mem.search("door code", user_id="alice", k=5)) == 2
    left = (short.lifecycle.expires_at - utcnow()).total_seconds()
    time.sleep(max(0.0, left) + 0.1)
    hits = mem.search("door code", user_id="alice", k=5)
    assert [h.cube.content for h in hits] == ["My door code at home is 1234."]
    assert len(mem.list(user_id="alice")) == 1


def test_provenance_and_fields_are_filled(mem: MemOS) -> None:
    cubes = mem.add(
        ALICE,
        user_id="alice",
        agent_id="planner",
        session_id="s9",
        visibility="shared",
        metadata={"channel": "web"},
    )
    c = cubes[0]
    assert c.provenance.source_refs == ["a1"] and c.provenance.speaker == "Alice"
    assert c.provenance.created_by == "agent:planner" and c.scope.agent_id == "planner"
    assert c.governance.visibility is Visibility.shared and len(c.governance.fingerprint) == 64
    assert c.metadata["channel"] == "web" and 0 < c.organisation.importance <= 1
    assert mem.search("dog", user_id="alice", agent_id="planner", k=1)[0].cube.id == c.id
    assert mem.search("dog", user_id="alice", agent_id="other", k=1) == []
    doc = mem.add_document(
        "Lisbon is the capital of Portugal. " * 80, user_id="alice", source="guide.txt"
    )
    assert len(doc) > 1 and doc[0].provenance.source_kind is SourceKind.document
    assert doc[0].provenance.source_refs == ["guide.txt#chunk0"]


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.add("", user_id="alice"),
        lambda m: m.add("hi", user_id=""),
        lambda m: m.add("hi", user_id=42),
        lambda m: m.add("hi", user_id="a\x00b"),
        lambda m: m.add("hi", user_id="alice", ttl=-1),
        lambda m: m.add("hi", user_id="alice", tags="notalist"),
        lambda m: m.add("hi", user_id="alice", visibility="everyone"),
        lambda m: m.add("hi", user_id="alice", mode="deep"),
        lambda m: m.add([{"role": "user", "content": "ok"}, {"content": None}], user_id="alice"),
        lambda m: m.add("nul \x00 byte", user_id="alice"),
        lambda m: m.add([{"content": "hi", "speaker": "Al\x00ice"}], user_id="alice"),
        lambda m: m.add([{"content": "hi", "speaker": 7}], user_id="alice"),
        lambda m: m.search("", user_id="alice"),
        lambda m: m.search("q", user_id="alice", k=0),
        lambda m: m.search("q", user_id="alice", k="5"),
        lambda m: m.search("q", user_id=None),
        lambda m: m.get("no-such-id"),
        lambda m: m.get(""),
        lambda m: m.update("no-such-id", "x"),
        lambda m: m.history("no-such-id"),
        lambda m: m.delete("no-such-id"),
        lambda m: m.update(m.list(user_id="alice")[0].id, "   "),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(mem: MemOS, call) -> None:
    mem.add(ALICE, user_id="alice")
    before = mem.stats()
    with pytest.raises(MemOSError):
        call(mem)
    after = mem.stats()
    assert (after["cubes"], after["versions"], after["vectors"]) == (
        before["cubes"],
        before["versions"],
        before["vectors"],
    )


def test_hostile_strings_round_trip(mem: MemOS) -> None:
    evil = "Robert'); DROP TABLE memos_cubes;-- }) DETACH DELETE n // \\\" ☃ Ünïcødé"
    cubes = mem.add(
        [{"role": "user", "speaker": "O'Brien", "content": evil}],
        user_id="mallory'}) MATCH (n) DETACH DELETE n //",
        session_id='s"1',
    )
    got = mem.get(cubes[0].id)
    assert got.content == evil and got.scope.user_id.startswith("mallory'")
    hits = mem.search(evil, user_id="mallory'}) MATCH (n) DETACH DELETE n //", k=1)
    assert hits[0].cube.id == cubes[0].id


def test_tampered_content_is_not_served(mem: MemOS) -> None:
    from sqlalchemy import update

    from memos_agents.catalog import cubes_t

    c = mem.add("The safe combination is 12-34-56.", user_id="alice")[0]
    data = mem.vault.catalog.get(c.id).model_copy(deep=True)
    data.content = "The safe combination is 99-99-99."
    with mem.vault.catalog.engine.begin() as conn:
        conn.execute(
            update(cubes_t).where(cubes_t.c.id == c.id).values(data=data.model_dump_json())
        )
    with pytest.raises(IntegrityError):
        mem.get(c.id)
    assert mem.search("safe combination", user_id="alice", k=5) == []


def test_reopen_persists_and_reconciles_pending(data_dir, embedder, monkeypatch) -> None:
    mem = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    mem.add(ALICE, user_id="alice")

    def crash(*a, **k):
        raise RuntimeError("simulated crash between catalog and index")

    monkeypatch.setattr(mem.vault.index, "upsert", crash)
    with pytest.raises(MemOSError, match="pending"):
        mem.add("I adopted a parrot named Kiwi.", user_id="alice")
    mem.close()
    monkeypatch.undo()

    again = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    assert again.stats()["pending_index"] == 0
    hits = again.search("parrot", user_id="alice", k=1)
    assert hits[0].cube.content == "I adopted a parrot named Kiwi."
    assert again.stats()["graph"]["facts"] == 4
    assert len(again.search("Lisbon", user_id="alice", k=10)) == 4
    again.close()


def test_data_dir_remembers_its_embedder(data_dir, embedder) -> None:
    MemOS.open(data_dir, embedder=embedder).close()

    class Other:
        name = "other-model"

        def embed_documents(self, texts):
            return [[0.0] * 384 for _ in texts]

        def embed_query(self, text):
            return [0.0] * 384

    with pytest.raises(ConfigError, match="all-MiniLM-L6-v2"):
        MemOS.open(data_dir, embedder=Other())


def test_langchain_embeddings_are_accepted(tmp_path) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from memos_agents.graph.falkordb_server import stop_server

    d = tmp_path / "lc"
    try:
        with MemOS.open(d, embedder=DeterministicFakeEmbedding(size=16)) as mem:
            mem.add("hello world", user_id="u")
            assert mem.search("hello world", user_id="u", k=1)[0].score == pytest.approx(1.0)
            assert mem.stats()["embedder"].startswith("langchain:DeterministicFakeEmbedding")
    finally:
        stop_server(d / "graph")


async def test_async_twins(mem: MemOS) -> None:
    cubes = await mem.aadd(ALICE, user_id="alice")
    hits, got = await asyncio.gather(
        mem.asearch("dog", user_id="alice", k=1), mem.aget(cubes[0].id)
    )
    assert hits[0].cube.id == cubes[0].id == got.id
    v2 = await mem.aupdate(cubes[1].id, "I work as a baker in Porto.")
    assert [h.version for h in await mem.ahistory(cubes[1].id)] == [
        1,
        2,
    ] and v2.lifecycle.version == 2
    await mem.adelete(cubes[2].id)
    assert len(await mem.alist(user_id="alice")) == 2
    await mem.apurge(cubes[2].id)
    doc = await mem.aadd_document("A short note about Miso the dog.", user_id="alice")
    assert (await mem.astats())["cubes"] == 3 and len(doc) == 1


def test_catalog_on_postgres(data_dir, embedder, catalog_url) -> None:
    with MemOS.open(data_dir, embedder=embedder, catalog_url=catalog_url) as mem:
        c = mem.add(ALICE, user_id="alice")[0]
        mem.update(c.id, "I moved to Porto in June.")
        assert mem.search("Porto", user_id="alice", k=1)[0].cube.id == c.id
        assert [h.version for h in mem.history(c.id)] == [1, 2]
