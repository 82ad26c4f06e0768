"""`MemOSStore` as a LangGraph `BaseStore`.

The shared tests run against LangGraph's `InMemoryStore` (with the same MiniLM) as a reference
and against `MemOSStore` on a real data dir; the MemOS-only tests cover versions, persistence,
TTLs, validation of raw batches and a compiled LangGraph graph.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore
from memos_agents.langgraph import store as store_mod
from memos_agents.langgraph.store import MemOSStore, decode_namespace, encode_namespace

from memos_agents import InvalidInput, MemOS
from memos_agents.cube import State, utcnow

VALUE: dict[str, Any] = {
    "text": "naïve café — 東京 🎉",
    "int": 1,
    "float": 1.0,
    "tenth": 0.1,
    "tiny": 1e-300,
    "huge": 1.7976931348623157e308,
    "big": 2**70,
    "neg": -42,
    "flags": [True, False, None],
    "nested": {"a": {"b": [1, 2.5, {"c": None, "d": ""}]}, "empty": {}, "list": []},
    "quotes": 'a\\b\n\t"quoted" \'single\' \u202eRTL',
}

TEXTS = {
    "cat": "The cat curled up on the sofa and purred softly",
    "money": "Quarterly revenue grew by ten percent thanks to strong sales",
    "football": "The football match ended in a draw after extra time",
    "cooking": "Simmer the tomato sauce with garlic and fresh basil",
    "space": "The rocket launched the satellite into orbit around Mars",
}


@pytest.fixture(params=["inmemory", "memos"])
def make_store(request, embedder):
    """A factory for the store under test; `fields` sets the index fields."""
    mem = request.getfixturevalue("mem") if request.param == "memos" else None

    def make(fields: list[str] | None = None) -> BaseStore:
        index: dict[str, Any] = {"dims": 384, "embed": embedder.embed_documents}
        if fields is not None:
            index["fields"] = fields
        if mem is None:
            return InMemoryStore(index=index)  # type: ignore[arg-type]
        return MemOSStore(mem, index=index)  # type: ignore[arg-type]

    return make


@pytest.fixture
def store(make_store) -> BaseStore:
    return make_store()


@pytest.fixture
def mstore(mem) -> MemOSStore:
    return MemOSStore(mem)


def _canon(value: Any) -> str:
    """JSON that tells 1 from 1.0 and True, so equality means an exact round trip."""
    return json.dumps(value, sort_keys=True)


def _cosine(embedder, query: str, text: str) -> float:
    q = embedder.embed_query(query)
    d = embedder.embed_documents([text])[0]
    return sum(a * b for a, b in zip(q, d, strict=True))


def _put_all(store: BaseStore, items: list[tuple[tuple[str, ...], str, dict[str, Any]]]) -> None:
    store.batch([PutOp(ns, key, value) for ns, key, value in items])


# --- shared behaviour: InMemoryStore and MemOSStore ------------------------------------------


def test_batch_order(store: BaseStore) -> None:
    store.put(("test", "foo"), "key1", {"data": "value1"})
    store.put(("test", "bar"), "key2", {"data": "value2"})

    results = store.batch(
        [
            GetOp(("test", "foo"), "key1"),
            PutOp(("test", "bar"), "key2", {"data": "value2"}),
            SearchOp(("test",), filter={"data": "value1"}, limit=10, offset=0),
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=10, offset=0),
            GetOp(("test",), "key3"),
        ]
    )
    assert len(results) == 5
    assert isinstance(results[0], Item)
    assert (results[0].key, results[0].value) == ("key1", {"data": "value1"})
    assert results[1] is None
    assert [i.key for i in results[2]] == ["key1"]
    assert set(results[3]) == {("test", "foo"), ("test", "bar")}
    assert results[4] is None

    results = store.batch(
        [
            SearchOp(("test",), filter=None, limit=5, offset=0),
            GetOp(("test", "bar"), "key2"),
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=5, offset=0),
            PutOp(("test",), "key3", {"data": "value3"}),
            GetOp(("test", "foo"), "key1"),
        ]
    )
    assert {i.key for i in results[0]} == {"key1", "key2"}
    assert results[1].value == {"data": "value2"}
    assert {("test", "foo"), ("test", "bar")} <= set(results[2])
    assert results[3] is None
    assert results[4].value == {"data": "value1"}
    assert store.get(("test",), "key3").value == {"data": "value3"}


def test_batch_get_put_and_delete_ops(store: BaseStore) -> None:
    assert store.batch(
        [
            PutOp(("test",), "key1", {"data": "value1"}),
            PutOp(("test",), "key2", {"data": "value2"}),
            PutOp(("test",), "key3", None),  # deleting what is not there is fine
        ]
    ) == [None, None, None]
    got = store.batch(
        [GetOp(("test",), "key1"), GetOp(("test",), "key2"), GetOp(("test",), "key3")]
    )
    assert [g.value if g else None for g in got] == [{"data": "value1"}, {"data": "value2"}, None]
    assert [g.namespace for g in got[:2]] == [("test",), ("test",)]


def test_reads_see_the_state_before_the_batch_and_the_last_put_wins(store: BaseStore) -> None:
    store.put(("ns",), "old", {"v": 0})
    results = store.batch(
        [
            PutOp(("ns",), "new", {"v": 1}),
            GetOp(("ns",), "new"),
            SearchOp(("ns",)),
            PutOp(("ns",), "new", {"v": 2}),
            PutOp(("ns",), "old", None),
            GetOp(("ns",), "old"),
        ]
    )
    assert results[1] is None
    assert [i.key for i in results[2]] == ["old"]
    assert results[5].value == {"v": 0}
    assert store.get(("ns",), "new").value == {"v": 2}
    assert store.get(("ns",), "old") is None


def test_batch_search_ops(store: BaseStore) -> None:
    _put_all(
        store,
        [
            (("test", "foo"), "key1", {"data": "value1", "tag": "a"}),
            (("test", "bar"), "key2", {"data": "value2", "tag": "a"}),
            (("test", "baz"), "key3", {"data": "value3", "tag": "b"}),
        ],
    )
    results = store.batch(
        [
            SearchOp(("test",), filter={"tag": "a"}),
            SearchOp(("test",), limit=2),
            SearchOp(("test", "foo")),
        ]
    )
    assert {i.key for i in results[0]} == {"key1", "key2"}
    assert len(results[1]) == 2
    assert [(i.namespace, i.key) for i in results[2]] == [(("test", "foo"), "key1")]
    assert all(i.score is None for r in results for i in r)


def test_batch_list_namespaces_ops(store: BaseStore) -> None:
    data = [
        (("test", "documents", "public"), "doc1", {"content": "public doc"}),
        (("test", "documents", "private"), "doc2", {"content": "private doc"}),
        (("test", "images", "public"), "img1", {"content": "public image"}),
        (("prod", "documents", "public"), "doc3", {"content": "prod doc"}),
    ]
    _put_all(store, data)
    results = store.batch(
        [
            ListNamespacesOp(),
            ListNamespacesOp(max_depth=2),
            ListNamespacesOp(match_conditions=(MatchCondition("suffix", ("public",)),)),
        ]
    )
    assert results[0] == sorted(ns for ns, _, _ in data)
    assert results[1] == [("prod", "documents"), ("test", "documents"), ("test", "images")]
    assert results[2] == [
        ("prod", "documents", "public"),
        ("test", "documents", "public"),
        ("test", "images", "public"),
    ]


def test_put_get_update_delete(store: BaseStore) -> None:
    ns = ("test", "documents")
    store.put(ns, "doc1", {"title": "Test Document", "content": "Hello, World!"})
    item = store.get(ns, "doc1")
    assert item is not None
    assert (item.namespace, item.key) == (ns, "doc1")
    assert item.value == {"title": "Test Document", "content": "Hello, World!"}
    assert item.created_at.tzinfo is not None

    store.put(ns, "doc1", {"title": "Updated", "content": "Hello, Updated!"})
    updated = store.get(ns, "doc1")
    assert updated.value == {"title": "Updated", "content": "Hello, Updated!"}
    assert updated.updated_at > item.updated_at

    assert store.get(("test", "other_documents"), "doc1") is None
    assert store.get(ns, "doc2") is None
    store.delete(ns, "doc1")
    assert store.get(ns, "doc1") is None
    assert store.search(ns) == []
    store.put(ns, "doc1", {"title": "Back"})
    assert store.get(ns, "doc1").value == {"title": "Back"}


def test_search_without_query(store: BaseStore) -> None:
    data = [
        (("test", "docs"), "doc1", {"title": "First", "author": "Alice", "tags": ["important"]}),
        (("test", "docs"), "doc2", {"title": "Second", "author": "Bob", "tags": ["draft"]}),
        (("test", "images"), "img1", {"title": "Image 1", "author": "Alice", "tags": ["final"]}),
        (("prod",), "p1", {"title": "Prod", "author": "Alice", "tags": []}),
    ]
    for ns, key, value in data:
        store.put(ns, key, value)

    assert {i.key for i in store.search(("test",))} == {"doc1", "doc2", "img1"}
    assert {i.key for i in store.search(())} == {"doc1", "doc2", "img1", "p1"}
    docs = store.search(("test", "docs"))
    assert {i.key for i in docs} == {"doc1", "doc2"}
    assert all(i.namespace == ("test", "docs") for i in docs)
    assert {i.key for i in store.search(("test",), filter={"author": "Alice"})} == {"doc1", "img1"}
    assert store.search(("nothing",)) == []

    assert len(store.search(("test",), limit=2)) == 2
    assert len(store.search(("test",), offset=2)) == 1
    assert store.search(("test",), limit=0) == []
    pages = [i.key for o in range(3) for i in store.search(("test",), limit=1, offset=o)]
    assert sorted(pages) == ["doc1", "doc2", "img1"]
    assert store.search(("test",), query="", filter={"author": "Bob"})[0].key == "doc2"


def test_filter_operators(store: BaseStore) -> None:
    ns = ("test", "scores")
    for key, score in [("a", 2), ("b", 9), ("c", 10), ("d", 11), ("e", 9.5)]:
        store.put(ns, key, {"score": score, "name": f"item-{key}", "even": score % 2 == 0})

    def keys(flt: dict[str, Any]) -> list[str]:
        return sorted(i.key for i in store.search(ns, filter=flt))

    assert keys({"score": 10}) == ["c"]
    assert keys({"score": {"$eq": 9.5}}) == ["e"]
    assert keys({"score": {"$ne": 10}}) == ["a", "b", "d", "e"]
    assert keys({"score": {"$gt": 9}}) == ["c", "d", "e"]  # numeric, not "9" > "10"
    assert keys({"score": {"$gte": 10}}) == ["c", "d"]
    assert keys({"score": {"$lt": 10}}) == ["a", "b", "e"]
    assert keys({"score": {"$lte": 9}}) == ["a", "b"]
    assert keys({"score": {"$gt": 2, "$lt": 10}}) == ["b", "e"]
    assert keys({"score": {"$gte": 9}, "even": True}) == ["c"]
    assert keys({"name": "item-d", "score": 11}) == ["d"]
    assert keys({"name": "item-d", "score": 12}) == []
    assert keys({"missing": "x"}) == []
    assert keys({"missing": {"$ne": "x"}}) == ["a", "b", "c", "d", "e"]


def test_filter_nested_values_and_lists(store: BaseStore) -> None:
    ns = ("test", "nested")
    _put_all(
        store,
        [
            (
                ns,
                "en",
                {"meta": {"lang": "en", "stars": 4, "by": {"name": "ann"}}, "tags": ["a", "b"]},
            ),
            (ns, "fr", {"meta": {"lang": "fr", "stars": 5, "by": {"name": "bob"}}, "tags": ["a"]}),
            (ns, "flat", {"meta": "none", "tags": []}),
        ],
    )

    def keys(flt: dict[str, Any]) -> list[str]:
        return sorted(i.key for i in store.search(ns, filter=flt))

    assert keys({"meta": {"lang": "en"}}) == ["en"]
    assert keys({"meta": {"by": {"name": "bob"}}}) == ["fr"]
    assert keys({"meta": {"stars": {"$gte": 4}}}) == ["en", "fr"]
    assert keys({"meta": {"stars": {"$gt": 4}, "lang": "fr"}}) == ["fr"]
    assert keys({"meta": {"lang": "en", "stars": 5}}) == []
    assert keys({"tags": ["a", "b"]}) == ["en"]
    assert keys({"tags": ["a"]}) == ["fr"]
    assert keys({"tags": []}) == ["flat"]
    assert keys({"meta": "none"}) == ["flat"]


def test_query_ranks_by_cosine_similarity(make_store, embedder) -> None:
    store = make_store(fields=["text"])
    _put_all(store, [(("docs",), k, {"text": t, "n": i}) for i, (k, t) in enumerate(TEXTS.items())])

    results = store.search(("docs",), query="kittens and pets")
    assert results[0].key == "cat"
    assert len(results) == len(TEXTS)
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert r.score == pytest.approx(
            _cosine(embedder, "kittens and pets", r.value["text"]), abs=1e-3
        )
    assert store.search(("docs",), query="profit and earnings", limit=1)[0].key == "money"
    assert store.search(("docs",), query="a soccer game")[0].key == "football"


def test_query_with_filter_finds_far_matches(make_store) -> None:
    store = make_store(fields=["text"])
    items = [
        (("docs",), f"cat{i}", {"text": f"{TEXTS['cat']} number {i}", "kind": "pet"})
        for i in range(24)
    ]
    items += [
        (("docs",), "money", {"text": TEXTS["money"], "kind": "rare"}),
        (("docs",), "space", {"text": TEXTS["space"], "kind": "rare"}),
    ]
    _put_all(store, items)

    results = store.search(("docs",), query="kittens and pets", filter={"kind": "rare"}, limit=5)
    assert {r.key for r in results} == {"money", "space"}
    assert all(r.score is not None for r in results)
    top = store.search(
        ("docs",), query="kittens and pets", filter={"kind": {"$ne": "rare"}}, limit=3
    )
    assert len(top) == 3 and all(r.key.startswith("cat") for r in top)


def test_query_pagination(make_store) -> None:
    store = make_store(fields=["text"])
    _put_all(store, [(("docs",), k, {"text": t}) for k, t in TEXTS.items()])

    full = [r.key for r in store.search(("docs",), query="sports and games", limit=10)]
    assert len(full) == len(TEXTS)
    pages = [
        [r.key for r in store.search(("docs",), query="sports and games", limit=2, offset=o)]
        for o in (0, 2, 4)
    ]
    assert pages == [full[0:2], full[2:4], full[4:6]]
    assert store.search(("docs",), query="sports and games", offset=10) == []


def test_query_across_namespaces_merges_by_score(make_store) -> None:
    store = make_store(fields=["text"])
    _put_all(
        store,
        [
            (("docs", "a"), "cat", {"text": TEXTS["cat"]}),
            (("docs", "a"), "money", {"text": TEXTS["money"]}),
            (("docs", "b"), "football", {"text": TEXTS["football"]}),
            (("docs", "b", "deep"), "cooking", {"text": TEXTS["cooking"]}),
            (("other",), "cat", {"text": TEXTS["football"] + "!"}),  # texts unique per batch
        ],
    )
    results = store.search(("docs",), query="a soccer game")
    assert (results[0].namespace, results[0].key) == (("docs", "b"), "football")
    assert {r.namespace for r in results} == {("docs", "a"), ("docs", "b"), ("docs", "b", "deep")}
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    assert store.search(("docs", "b"), query="food recipes")[0].key == "cooking"


def test_index_fields_per_store_and_per_put(make_store, embedder) -> None:
    store = make_store(fields=["title", "body.summary"])
    store.put(
        ("docs",), "cat", {"title": "Cats", "body": {"summary": TEXTS["cat"]}, "x": TEXTS["money"]}
    )
    store.put(("docs",), "money", {"title": "Money", "body": {"summary": TEXTS["money"]}})
    store.put(("docs",), "space", {"title": "ignored", "rocket": TEXTS["space"]}, index=["rocket"])

    assert store.search(("docs",), query="profits and sales")[0].key == "money"
    results = store.search(("docs",), query="a rocket flying to Mars")
    assert results[0].key == "space"
    assert results[0].score == pytest.approx(
        _cosine(embedder, "a rocket flying to Mars", TEXTS["space"]), abs=1e-3
    )

    store.put(("docs",), "hidden", {"title": "A rocket flying to Mars"}, index=False)
    results = store.search(("docs",), query="a rocket flying to Mars")
    assert [r.key for r in results][-1] == "hidden"
    assert results[-1].score is None
    assert all(r.score is not None for r in results[:-1])
    assert "hidden" not in [r.key for r in store.search(("docs",), query="a rocket", limit=3)]
    assert store.get(("docs",), "hidden").value == {"title": "A rocket flying to Mars"}


def test_list_namespaces(store: BaseStore) -> None:
    namespaces = [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
        ("users", "123"),
        ("users", "456", "settings"),
    ]
    _put_all(store, [(ns, "k", {"ns": list(ns)}) for ns in namespaces])

    assert store.list_namespaces() == sorted(namespaces)
    assert store.list_namespaces(prefix=("a", "b")) == [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
    ]
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "b", "f"),
    ]
    assert store.list_namespaces(suffix=("f",)) == [
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
    ]
    assert store.list_namespaces(prefix=("a",), suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("*", "b")) == [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
    ]
    assert store.list_namespaces(suffix=("*", "f")) == [
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
    ]
    assert store.list_namespaces(prefix=("a", "*", "d")) == [
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
    ]
    assert store.list_namespaces(prefix=("users",), max_depth=2) == [
        ("users", "123"),
        ("users", "456"),
    ]
    assert store.list_namespaces(max_depth=1) == [("a",), ("b",), ("users",)]
    assert store.list_namespaces(prefix=("nope",)) == []
    assert store.list_namespaces(prefix=("a", "b", "c", "d", "e")) == []
    assert store.list_namespaces(limit=3) == sorted(namespaces)[:3]
    assert store.list_namespaces(limit=3, offset=6) == sorted(namespaces)[6:]
    assert store.list_namespaces(prefix=("a",), max_depth=2, offset=1, limit=1) == [("a", "c")]


@pytest.mark.parametrize(
    "namespace",
    [(), ("langgraph", "x"), ("a.b",), ("ok", ""), ("ok", 1), ("nul\x00",)],
)
def test_put_rejects_bad_namespaces(store: BaseStore, namespace: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidNamespaceError):
        store.put(namespace, "k", {"v": 1})


def test_reads_reject_bad_labels(store: BaseStore) -> None:
    with pytest.raises(InvalidNamespaceError):
        store.get(("a.b",), "k")
    with pytest.raises(InvalidNamespaceError):
        store.search(("ok", ""))
    with pytest.raises(InvalidNamespaceError):
        store.list_namespaces(prefix=("x.y",))
    with pytest.raises(InvalidNamespaceError):
        store.delete(("a", 2), "k")  # type: ignore[arg-type]
    assert store.get(("langgraph",), "k") is None  # only writes refuse the reserved root


def test_non_ascii(make_store) -> None:
    store = make_store(fields=["text"])
    texts = {
        "1": "这是中文",
        "2": "これは日本語です",
        "3": "이건 한국어야",
        "4": "Это русский",
        "5": "यह रूसी है",
    }
    ns = ("用户_123", "Воспоминания")
    _put_all(
        store, [(ns, f"ключ-{k}", {"text": t, "ü": ["é", {"ß": "✓"}]}) for k, t in texts.items()]
    )

    for k, t in texts.items():
        assert store.search(ns, query=t)[0].key == f"ключ-{k}"
        item = store.get(ns, f"ключ-{k}")
        assert item.value == {"text": t, "ü": ["é", {"ß": "✓"}]}
    assert store.list_namespaces(prefix=("用户_123",)) == [ns]
    assert [i.key for i in store.search(ns, filter={"text": "Это русский"})] == ["ключ-4"]


def test_namespace_segment_boundaries(store: BaseStore) -> None:
    spaces = [("a", "b"), ("a", "bc"), ("a/b",), ("a", "b", "c"), ("ab",), ("a", 'b","c')]
    for ns in spaces:
        store.put(ns, "k", {"ns": list(ns)})

    for ns in spaces:
        assert store.get(ns, "k").value == {"ns": list(ns)}
    assert {i.namespace for i in store.search(("a", "b"))} == {("a", "b"), ("a", "b", "c")}
    assert {i.namespace for i in store.search(("a",))} == {
        ("a", "b"),
        ("a", "bc"),
        ("a", "b", "c"),
        ("a", 'b","c'),
    }
    assert store.list_namespaces(prefix=("a", "b")) == [("a", "b"), ("a", "b", "c")]
    assert store.list_namespaces(prefix=("a",), max_depth=2) == [
        ("a", "b"),
        ("a", 'b","c'),
        ("a", "bc"),
    ]
    store.delete(("a", "b"), "k")
    assert store.get(("a", "bc"), "k") is not None
    assert store.get(("a", "b", "c"), "k") is not None


def test_exact_value_round_trip(store: BaseStore) -> None:
    store.put(("values",), "v", VALUE)
    assert _canon(store.get(("values",), "v").value) == _canon(VALUE)
    assert store.get(("values",), "v").value == VALUE
    assert _canon(store.search(("values",))[0].value) == _canon(VALUE)
    assert _canon(store.search(("values",), query="café")[0].value) == _canon(VALUE)
    store.put(("values",), "empty", {})
    assert store.get(("values",), "empty").value == {}


async def test_async_api(store: BaseStore) -> None:
    await store.aput(("async", "ns"), "k1", {"text": "hello"})
    await store.aput(("async", "ns"), "k2", {"text": "world"})
    assert (await store.aget(("async", "ns"), "k1")).value == {"text": "hello"}
    assert {i.key for i in await store.asearch(("async",))} == {"k1", "k2"}
    assert (await store.asearch(("async",), query="hello there"))[0].key == "k1"
    assert await store.alist_namespaces(prefix=("async",)) == [("async", "ns")]
    await store.adelete(("async", "ns"), "k1")
    assert await store.aget(("async", "ns"), "k1") is None
    results = await store.abatch([GetOp(("async", "ns"), "k2"), SearchOp(("async",), limit=1)])
    assert results[0].value == {"text": "world"} and len(results[1]) == 1


# --- MemOS-specific ---------------------------------------------------------------------------


def test_items_are_versioned_cubes(mem: MemOS, mstore: MemOSStore) -> None:
    ns = ("users", "alice")
    mstore.put(ns, "prefs", {"theme": "dark"})
    first = mstore.get(ns, "prefs")
    mstore.put(ns, "prefs", {"theme": "light"})
    cid = mstore.cube_id(ns, "prefs")

    history = mem.history(cid)
    assert [(h.version, h.op) for h in history] == [(1, "create"), (2, "update")]
    assert [h.cube.metadata["value"] for h in history] == [{"theme": "dark"}, {"theme": "light"}]
    cube = mem.get(cid)
    assert cube.scope.vault == "langgraph"
    assert cube.scope.user_id == encode_namespace(ns) == '["users","alice"]'
    assert decode_namespace(cube.scope.user_id) == ns
    assert cube.metadata["namespace"] == ["users", "alice"] and cube.metadata["key"] == "prefs"
    assert cube.intact
    item = mstore.get(ns, "prefs")
    assert item.created_at == first.created_at == cube.lifecycle.created_at
    assert item.updated_at == cube.lifecycle.updated_at > first.updated_at

    hits = mem.search("light theme", user_id=cube.scope.user_id, vault="langgraph")
    assert [h.id for h in hits] == [cid]

    mstore.put(ns, "friends", {"text": "Alice met Bob in Paris", "Meta": {"x": "Berlin"}})
    graph = mem.vault.graph
    fid = mstore.cube_id(ns, "friends")
    assert graph.facts_mentioning("langgraph", cube.scope.user_id, ["Paris"]) == [(fid, 1)]
    assert sorted(graph.entities_of([fid])[fid]) == ["Alice", "Berlin", "Bob", "Paris"]

    mstore.delete(ns, "prefs")
    mstore.delete(ns, "prefs")  # a tombstone stays one tombstone
    assert mem.get(cid).lifecycle.state is State.deleted
    hits = mem.search("light theme", user_id=cube.scope.user_id, vault="langgraph")
    assert cid not in [h.id for h in hits]
    mstore.put(ns, "prefs", {"theme": "solarized"})
    revived = mstore.get(ns, "prefs")
    assert revived.value == {"theme": "solarized"}
    assert revived.created_at > first.created_at  # a new life after the tombstone
    assert [(h.version, h.op, h.cube.lifecycle.state) for h in mem.history(cid)] == [
        (1, "create", State.active),
        (2, "update", State.active),
        (3, "delete", State.deleted),
        (4, "update", State.active),
    ]


def test_cube_ids_are_deterministic_and_scoped(mem: MemOS) -> None:
    a, b = MemOSStore(mem), MemOSStore(mem, vault="other")
    assert a.cube_id(("x",), "k") == MemOSStore(mem).cube_id(("x",), "k")
    assert a.cube_id(("x",), "k") != b.cube_id(("x",), "k")
    assert a.cube_id(("a", "b"), "k") != a.cube_id(("a/b",), "k") != a.cube_id(("ab",), "k")
    a.put(("x",), "k", {"in": "a"})
    b.put(("x",), "k", {"in": "b"})
    assert a.get(("x",), "k").value == {"in": "a"}
    assert b.get(("x",), "k").value == {"in": "b"}
    assert a.list_namespaces() == b.list_namespaces() == [("x",)]


def test_data_persists_across_reopen(data_dir, embedder) -> None:
    with MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30) as mem:
        store = MemOSStore(mem)
        store.put(("users", "bob"), "profile", VALUE)
        store.put(("users", "bob"), "note", {"text": TEXTS["cooking"]})
        store.put(("users", "bob"), "note", {"text": TEXTS["space"]})
        cid = store.cube_id(("users", "bob"), "note")
    with MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30) as mem:
        store = MemOSStore(mem)
        assert _canon(store.get(("users", "bob"), "profile").value) == _canon(VALUE)
        assert store.list_namespaces() == [("users", "bob")]
        assert store.search(("users",), query="rocket launch")[0].key == "note"
        assert len(mem.history(cid)) == 2


def test_ttl_expiry_hides_items(mem: MemOS, mstore: MemOSStore) -> None:
    ns = ("ttl",)
    mstore.put(ns, "short", {"text": "short-lived"}, ttl=0.05)
    mstore.put(ns, "long", {"text": "long-lived"})
    cid = mstore.cube_id(ns, "short")
    expires = mem.get(cid).lifecycle.expires_at
    assert (
        timedelta(seconds=2.5) < expires - mem.get(cid).lifecycle.updated_at <= timedelta(seconds=3)
    )
    assert mstore.get(ns, "short", refresh_ttl=False) is not None
    assert mstore.list_namespaces() == [("ttl",)]

    time.sleep(max(0.0, (expires - utcnow()).total_seconds()) + 0.2)
    assert mstore.get(ns, "short") is None
    assert [i.key for i in mstore.search(ns)] == ["long"]
    assert [i.key for i in mstore.search(ns, query="short-lived")] == ["long"]
    mstore.delete(ns, "long")
    assert mstore.list_namespaces() == []  # only expired items left there

    mstore.put(ns, "short", {"text": "again"})
    again = mstore.get(ns, "short")
    assert again.value == {"text": "again"} and mem.get(cid).lifecycle.expires_at is None


def test_ttl_refresh_on_read(mem: MemOS, mstore: MemOSStore) -> None:
    ns = ("ttl",)
    mstore.put(ns, "item", {"text": "refresh me"}, ttl=1.0)
    cid = mstore.cube_id(ns, "item")

    def expiry():
        return mem.get(cid).lifecycle.expires_at

    e0 = expiry()
    assert mem.get(cid).metadata["ttl"] == 1.0
    time.sleep(0.05)
    mstore.get(ns, "item", refresh_ttl=False)
    mstore.search(ns, refresh_ttl=False)
    assert expiry() == e0
    before = utcnow()
    assert mstore.get(ns, "item", refresh_ttl=True) is not None
    e1 = expiry()
    assert e1 > e0 and e1 - before >= timedelta(minutes=1) - timedelta(milliseconds=5)
    time.sleep(0.05)
    assert [i.key for i in mstore.search(ns, query="refresh", refresh_ttl=True)] == ["item"]
    assert expiry() > e1
    assert len(mem.history(cid)) == 1  # refreshing writes no version


def test_ttl_refresh_keeps_items_alive(mem: MemOS, mstore: MemOSStore) -> None:
    ns = ("ttl",)
    mstore.batch([PutOp(ns, "kept", {"v": 1}, ttl=0.05), PutOp(ns, "left", {"v": 2}, ttl=0.05)])
    first = mem.get(mstore.cube_id(ns, "kept")).lifecycle.expires_at
    time.sleep(max(0.0, (first - utcnow()).total_seconds() - 1.0))
    assert mstore.get(ns, "kept") is not None  # refreshes: now + 3 s
    refreshed = mem.get(mstore.cube_id(ns, "kept")).lifecycle.expires_at
    assert refreshed > first
    time.sleep(max(0.0, (first - utcnow()).total_seconds()) + 0.2)
    assert mstore.get(ns, "left", refresh_ttl=False) is None
    if utcnow() < refreshed:
        assert mstore.get(ns, "kept", refresh_ttl=False) is not None
    time.sleep(max(0.0, (refreshed - utcnow()).total_seconds()) + 0.2)
    assert mstore.get(ns, "kept", refresh_ttl=False) is None


def test_ttl_config_default_and_refresh_on_read(mem: MemOS) -> None:
    store = MemOSStore(mem, ttl={"default_ttl": 1.0, "refresh_on_read": False})
    assert store.supports_ttl
    store.put(("t",), "default", {"v": 1})
    store.put(("t",), "forever", {"v": 2}, ttl=None)
    cid = store.cube_id(("t",), "default")
    e0 = mem.get(cid).lifecycle.expires_at
    assert e0 is not None and mem.get(cid).metadata["ttl"] == 1.0
    assert mem.get(store.cube_id(("t",), "forever")).lifecycle.expires_at is None
    time.sleep(0.05)
    store.get(("t",), "default")
    store.search(("t",))
    assert mem.get(cid).lifecycle.expires_at == e0  # refresh_on_read=False
    store.get(("t",), "default", refresh_ttl=True)
    assert mem.get(cid).lifecycle.expires_at > e0


def test_raw_batches_are_validated(mstore: MemOSStore) -> None:
    for bad in [
        PutOp((), "k", {"v": 1}),
        PutOp(("langgraph",), "k", {"v": 1}),
        PutOp(("a.b",), "k", {"v": 1}),
        GetOp(("a", ""), "k"),
        SearchOp(("x\x00",)),
        ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("a.b",)),)),
        PutOp(tuple("x" * 20 for _ in range(12)), "k", {"v": 1}),  # encodes past 256 chars
    ]:
        with pytest.raises(InvalidNamespaceError):
            mstore.batch([bad])
    for bad in [
        PutOp(("a",), "k", {"v": float("nan")}),
        PutOp(("a",), "k", {"v": object()}),
        PutOp(("a",), "k", ["not", "a", "dict"]),  # type: ignore[arg-type]
        PutOp(("a",), "k", {"v": 1}, ttl=-1),
        PutOp(("a",), 7, {"v": 1}),  # type: ignore[arg-type]
        SearchOp(("a",), limit=-1),
        ListNamespacesOp(offset=-2),
        ListNamespacesOp(max_depth=0),
        SearchOp(("a",), filter={"v": {"$regex": "x"}}),
        PutOp(("a",), "k", {"v": "a\x00b"}),  # no store keeps NUL or lone surrogates
        PutOp(("a",), "k", {"v\x00": 1}),
        PutOp(("a",), "k", {"v": ["\ud800"]}),
        PutOp(("a",), "k\x00", {"v": 1}),
        GetOp(("a",), "k\udfff"),
    ]:
        with pytest.raises(InvalidInput):
            mstore.batch([PutOp(("a",), "ok", {"v": 1}), bad])
    assert mstore.get(("a",), "ok") is None  # every op is checked before any runs
    for bad in [
        ListNamespacesOp(match_conditions=(MatchCondition("infix", ("a",)),)),  # type: ignore[arg-type]
        "not an op",
    ]:
        with pytest.raises(InvalidInput):
            mstore.batch([bad])  # type: ignore[list-item]


def test_string_and_missing_field_comparisons(mstore: MemOSStore) -> None:
    _put_all(
        mstore,
        [
            (("s",), "a", {"name": "apple", "day": "2024-01-05"}),
            (("s",), "b", {"name": "banana", "day": "2024-02-01", "n": 3}),
        ],
    )

    def keys(flt: dict[str, Any]) -> list[str]:
        return sorted(i.key for i in mstore.search(("s",), filter=flt))

    assert keys({"name": {"$gt": "apple"}}) == ["b"]
    assert keys({"day": {"$gte": "2024-01-05", "$lt": "2024-02-01"}}) == ["a"]
    assert keys({"n": {"$lt": 10}}) == ["b"]  # a missing field never compares
    assert keys({"name": {"$gt": 1}}) == []  # nor does a string with a number


def test_search_orders_by_updated_at_without_query(mstore: MemOSStore) -> None:
    for key in ["first", "second", "third"]:
        mstore.put(("o", key), key, {"k": key})
    mstore.put(("o", "first"), "first", {"k": "first, updated"})
    assert [i.key for i in mstore.search(("o",))] == ["first", "third", "second"]
    assert [i.key for i in mstore.search(("o",), limit=2, offset=1)] == ["third", "second"]


def test_filtered_query_past_the_candidate_cap(
    mstore: MemOSStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "MAX_CANDIDATES", 2)
    _put_all(
        mstore,
        [(("cap",), f"cat{i}", {"text": f"{TEXTS['cat']} {i}", "kind": "pet"}) for i in range(5)]
        + [(("cap",), "money", {"text": TEXTS["money"], "kind": "rare"})],
    )
    results = mstore.search(("cap",), query="kittens", filter={"kind": "rare"})
    assert [(r.key, r.score) for r in results] == [("money", None)]  # found, though unranked
    ranked = mstore.search(("cap",), query="kittens", limit=3)
    assert [r.score is None for r in ranked] == [False, False, True]


def test_unindexed_items_are_stored_but_not_ranked(mem: MemOS, mstore: MemOSStore) -> None:
    mstore.put(("u",), "plain", {"text": TEXTS["space"]}, index=False)
    mstore.put(("u",), "nothing", {"other": 1}, index=["text"])  # no text at the field
    mstore.put(("u",), "ranked", {"text": TEXTS["cat"]})
    results = mstore.search(("u",), query=json.dumps({"text": TEXTS["space"]}))
    assert [r.key for r in results] == ["ranked", "nothing", "plain"]
    assert [r.score is None for r in results] == [False, True, True]
    cube = mem.get(mstore.cube_id(("u",), "plain"))
    assert cube.metadata["indexed"] is False
    assert json.loads(cube.content) == {"text": TEXTS["space"]}


def test_other_cubes_in_the_vault_are_ignored(mem: MemOS, mstore: MemOSStore) -> None:
    mem.add("I am not a store item", user_id="alice", vault="langgraph")
    mem.add("Neither am I", user_id='["real"]', vault="langgraph")
    mstore.put(("real",), "k", {"text": "a store item"})
    assert mstore.list_namespaces() == [("real",)]
    assert [i.key for i in mstore.search(())] == ["k"]
    assert [i.key for i in mstore.search(("real",), query="Neither am I")] == ["k"]


async def test_concurrent_async_puts(mem: MemOS, mstore: MemOSStore) -> None:
    ns = ("concurrent",)
    await asyncio.gather(
        *(mstore.aput(ns, f"k{i}", {"i": i}) for i in range(4)),
        *(mstore.aput(ns, "same", {"i": i}) for i in range(4)),
    )
    assert {i.key for i in await mstore.asearch(ns, limit=20)} == {"k0", "k1", "k2", "k3", "same"}
    history = mem.history(mstore.cube_id(ns, "same"))
    assert [h.version for h in history] == [1, 2, 3, 4]
    assert (await mstore.aget(ns, "same")).value == history[-1].cube.metadata["value"]


class NoteState(TypedDict, total=False):
    user: str
    note: str
    recalled: str | None


def _remember(state: NoteState, *, store: BaseStore) -> dict[str, Any]:
    """A node that gets the store injected by keyword."""
    if state.get("note"):
        store.put(("notes", state["user"]), "last", {"text": state["note"]})
    return {}


def _recall(state: NoteState, runtime: Runtime) -> dict[str, Any]:
    """A node that reaches the store through the LangGraph 1.x runtime."""
    assert runtime.store is not None
    hits = runtime.store.search(("notes", state["user"]), query="what food do I like?")
    return {"recalled": hits[0].value["text"] if hits else None}


def test_compiled_langgraph_graph_uses_the_store(mem: MemOS) -> None:
    builder = StateGraph(NoteState)
    builder.add_node("remember", _remember)
    builder.add_node("recall", _recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    store = MemOSStore(mem)
    graph = builder.compile(store=store, checkpointer=InMemorySaver())

    graph.invoke(
        {"user": "u1", "note": "I love spicy ramen"}, {"configurable": {"thread_id": "t1"}}
    )
    out = graph.invoke({"user": "u1"}, {"configurable": {"thread_id": "t2"}})
    assert out["recalled"] == "I love spicy ramen"
    out = asyncio.run(graph.ainvoke({"user": "u2"}, {"configurable": {"thread_id": "t3"}}))
    assert out["recalled"] is None
    assert [h.op for h in mem.history(store.cube_id(("notes", "u1"), "last"))] == ["create"]


def test_principal_views_need_a_role_in_the_store_vault(mem) -> None:
    from memos_agents.langgraph.store import MemOSStore

    from memos_agents.governance import PermissionDenied

    MemOSStore(mem).put(("users", "alice"), "k", {"v": 1})
    bob = MemOSStore(mem.as_principal("user:bob"))
    with pytest.raises(PermissionDenied):
        bob.get(("users", "alice"), "k")
    mem.grant_role("langgraph", "user:bob", "reader")
    assert bob.get(("users", "alice"), "k").value == {"v": 1}
    with pytest.raises(PermissionDenied):
        bob.put(("users", "alice"), "k", {"v": 2})
    assert MemOSStore(mem).get(("users", "alice"), "k").value == {"v": 1}
