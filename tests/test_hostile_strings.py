"""A fixed corpus of hostile strings over every text field a user can fill.

Corpus: Cypher and SQL injection, NUL, a lone surrogate, an RTL override, zero-width
characters, a 1 MB string, quotes and backslashes, `../` paths, an over-long id, emoji and
combining characters. Fields: add (content, user_id, session_id, agent_id, vault, a tag, a
metadata key, a metadata value, a message id, a speaker name), search (query), update
(content), publish (channel, subscriber) and the LangGraph store (namespace label, key,
value text).

Each case either stores the string and reads it back exactly (and search still finds the
cube), or refuses it with `InvalidInput` (the store may also use LangGraph's
`InvalidNamespaceError`) and writes nothing: the catalog's cube and version counts, the vector
count, the graph's fact counts, the channels' publish counts, the target's and a bystander's
data are all unchanged. Text that is valid (injection strings, RTL, emoji, quotes) must be
accepted; text that cannot be stored (NUL in a name or content, lone surrogates, over-long ids,
1 MB content) must be refused; a few combinations may go either way (`EITHER`), but then the
same rules hold. One MemOS for the module; each case costs one write.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from langgraph.store.base import InvalidNamespaceError
from memos_agents.langgraph.store import MemOSStore, encode_namespace

from memos_agents import MemOS
from memos_agents.cube import (
    MAX_ID_LEN,
    Scope,
    check_metadata,
    check_name,
    check_optional_text,
    check_text,
)
from memos_agents.errors import InvalidInput

CORPUS: dict[str, str] = {
    "cypher": "'}) MATCH (n) DETACH DELETE n //",
    "sql": "'; DROP TABLE memos_cubes; --",
    "nul": "before\x00after",
    "surrogate": "lone \ud800 surrogate",
    "rtl": "invoice \u202egnp-cod\u202c paid",
    "zero_width": "zero\u200bwidth\u200djoiner\ufeff",
    "mb": "m" * (1 << 20),
    "quotes": 'it\'s "quoted" \\ back\\slash `tick`',
    "dotdot": "../../../etc/passwd",
    "long_id": "i" * 300,
    "emoji": "tea 🍵 with 👩‍👩‍👧 family",
    "combining": "cafe\u0301 nai\u0308ve Zalgo\u0336\u0337",
}

NAMES = {"nul", "surrogate", "long_id", "mb"}  # what check_name refuses
TEXT = {"nul", "surrogate", "mb"}  # what stored text refuses
REFUSE: dict[str, set[str]] = {
    "content": TEXT,
    "user_id": NAMES,
    "session_id": NAMES,
    "agent_id": NAMES,
    "vault": NAMES,
    "tag": {"nul", "surrogate"},
    "meta_key": {"surrogate"},
    "meta_value": {"surrogate"},
    "message_id": NAMES,
    "speaker": NAMES,
    "query": TEXT,
    "update": TEXT,
    "channel": set(CORPUS),  # 1-128 of [A-Za-z0-9_.:/-], none of the corpus fits
    "subscriber": NAMES,
    "store_ns": NAMES | {"dotdot"},  # LangGraph: no periods in namespace labels
    "store_key": {"nul", "surrogate"},
    "store_value": {"surrogate"},
}
EITHER: dict[str, set[str]] = {
    "tag": {"mb", "long_id"},
    "meta_key": {"nul", "mb", "long_id"},
    "meta_value": {"nul", "mb"},
    "store_key": {"mb", "long_id"},
    "store_value": {"mb", "nul"},
}

# Cases that fail because of files this test's owner does not own (mos.py, vault.py,
# store.py, adapters/): strict, so the mark must go when the defect is fixed.
KNOWN: dict[tuple[str, str], str] = {}

BYSTANDER = "bob"


@dataclass
class World:
    mem: MemOS
    store: MemOSStore
    bob_ids: list[str]
    n: itertools.count
    at_start: Any = None
    before: Any = None
    last_target: str = ""
    scopes: tuple[tuple[str, str], ...] = ()

    def target(self) -> str:
        self.last_target = f"target{next(self.n)}"
        return self.last_target

    def ready(self, vault: str = "default", user: str | None = None) -> None:
        """Called by each field right before its hostile write (to `vault`, `user`: default
        the last target): what a refusal must keep."""
        self.scopes = ((vault, user or self.last_target), ("default", BYSTANDER))
        self.before = counts(self)


@pytest.fixture(scope="module")
def world(tmp_path_factory, embedder):
    from memos_agents.graph.falkordb_server import stop_server

    d = tmp_path_factory.mktemp("hostile") / "memos"
    mem = MemOS.open(d, embedder=embedder, graph_idle_timeout=30)
    bob = mem.add(
        ["Bob grows green tea in Kyoto", "Bob's sister Maria plays the cello"],
        user_id=BYSTANDER,
        tags=["family"],
    )
    store = MemOSStore(mem)
    store.put(("users", BYSTANDER), "profile", {"text": "Bob likes sencha"})
    mem.subscribe("news", "bob-reader")
    mem.publish("news", "The tea harvest starts in May", user_id=BYSTANDER)
    try:
        w = World(mem, store, [c.id for c in bob], itertools.count())
        w.at_start = bystander_in_full(w)
        yield w
    finally:
        mem.close()
        stop_server(d / "graph")


def counts(w: World) -> Any:
    """Cube rows and versions (all), vectors of the target's and the bystander's scope, graph
    facts, entities, sources and edges (all), channel publications (all)."""
    w.mem.vault.operator.flush()  # the background organiser's links are not the case's
    s = w.mem.vault.catalog.stats()
    vectors = tuple(_vectors(w, vault, user) for vault, user in w.scopes)
    published = sum(c.published for c in w.mem.channels())
    return s["cubes"], s["versions"], vectors, w.mem.vault.graph.counts(), published


def _vectors(w: World, vault: str, user: str) -> int:
    try:
        col = w.mem.vault.index._collection(vault, user, create=False)
    except Exception:  # a name the index cannot even look up holds nothing
        return 0
    return 0 if col is None else col.count()


def bystander(w: World) -> Any:
    """The bystander's cubes and store item: checked around every case (cheap)."""
    listed = sorted((c.id, c.content, c.lifecycle.version) for c in w.mem.list(user_id=BYSTANDER))
    item = w.store.get(("users", BYSTANDER), "profile")
    return listed, item and item.value


def bystander_in_full(w: World) -> Any:
    """Also a search, get of each cube and the topic graph: checked once, after the corpus."""
    m = w.mem
    hits = sorted(h.id for h in m.search("green tea", user_id=BYSTANDER, k=5))
    got = [m.get(i).content for i in w.bob_ids]
    return bystander(w), hits, got, m.graph(user_id=BYSTANDER).render()


def _hits(w: World, query: str, user_id: str, **kw: Any) -> list[str]:
    return [h.id for h in w.mem.search(query, user_id=user_id, k=10, **kw)]


# --- the fields: each writes `s` where it goes, and returns a check of the round trip -------

Check = Callable[[], None]


def _add(w: World, user: str, **kw: Any) -> Any:
    messages = kw.pop("messages", "Remember the jasmine tea order")
    (cube,) = w.mem.add(messages, user_id=user, **kw)
    return cube


def f_content(w: World, s: str) -> Check:
    t = w.target()
    w.ready()
    cube = _add(w, t, messages=s)

    def check() -> None:
        assert w.mem.get(cube.id).content == s
        assert cube.id in _hits(w, s, t)

    return check


def _scoped(field: str) -> Callable[[World, str], Check]:
    def run(w: World, s: str) -> Check:
        t = s if field == "user_id" else w.target()
        kw = {} if field == "user_id" else {field: s}
        w.ready(s if field == "vault" else "default", t)
        cube = _add(w, t, **kw)

        def check() -> None:
            got = w.mem.get(cube.id)
            assert getattr(got.scope, field) == s
            vault = s if field == "vault" else None
            session = s if field == "session_id" else None
            listed = w.mem.list(user_id=t, vault=vault, session_id=session)
            assert [c.id for c in listed] == [cube.id]
            assert cube.id in _hits(w, "jasmine tea", t, vault=vault)

        return check

    return run


def f_tag(w: World, s: str) -> Check:
    t = w.target()
    w.ready()
    cube = _add(w, t, tags=[s])

    def check() -> None:
        assert s in w.mem.get(cube.id).organisation.tags
        assert cube.id in _hits(w, "jasmine tea", t, tags=[s])

    return check


def f_meta_key(w: World, s: str) -> Check:
    t = w.target()
    w.ready()
    cube = _add(w, t, metadata={s: "v"})
    return lambda: _eq(w.mem.get(cube.id).metadata.get(s), "v")


def f_meta_value(w: World, s: str) -> Check:
    t = w.target()
    w.ready()
    cube = _add(w, t, metadata={"k": s})
    return lambda: _eq(w.mem.get(cube.id).metadata.get("k"), s)


def f_message_id(w: World, s: str) -> Check:
    t = w.target()
    w.ready()
    cube = _add(w, t, messages=[{"role": "user", "content": "Ordered oolong", "id": s}])
    return lambda: _eq(w.mem.get(cube.id).provenance.source_refs, [s])


def f_speaker(w: World, s: str) -> Check:
    t = w.target()
    w.ready()
    cube = _add(w, t, messages=[{"role": "user", "content": "Ordered oolong", "speaker": s}])

    def check() -> None:
        assert w.mem.get(cube.id).provenance.speaker == s
        assert cube.id in _hits(w, "oolong", t)

    return check


def f_query(w: World, s: str) -> Check:
    t = w.target()
    _add(w, t)
    w.ready()
    w.mem.search(s, user_id=t, k=3)  # runs; it writes nothing new
    return lambda: None


def f_update(w: World, s: str) -> Check:
    t = w.target()
    cube = _add(w, t)
    w.ready()
    try:
        w.mem.update(cube.id, s, user_id=t)
    except InvalidInput:
        got = w.mem.get(cube.id)  # refused: the cube is as it was
        assert (got.content, got.lifecycle.version) == (cube.content, 1)
        raise

    def check() -> None:
        got = w.mem.get(cube.id)
        assert (got.content, got.lifecycle.version) == (s, 2)
        assert cube.id in _hits(w, s, t)

    return check


def f_channel(w: World, s: str) -> Check:
    t = w.target()
    w.ready()
    w.mem.publish(s, "A note for the channel", user_id=t)
    return lambda: None


def f_subscriber(w: World, s: str) -> Check:
    t = w.target()
    w.ready()
    w.mem.subscribe("news", s, start="latest")
    w.mem.publish("news", f"A note from {t}", user_id=t)

    def check() -> None:
        got = w.mem.poll("news", s)
        assert [d.cube.content for d in got] == [f"A note from {t}"]

    return check


def _ready_store(w: World, ns: tuple[str, ...]) -> None:
    try:
        user = encode_namespace(ns)
    except Exception:  # a namespace the store cannot encode cannot have been written either
        user = "-"
    w.ready(w.store.vault, user)


def f_store_ns(w: World, s: str) -> Check:
    ns = ("users", w.target(), s)
    _ready_store(w, ns)
    w.store.put(ns, "k", {"text": "a stored note about tea"})

    def check() -> None:
        item = w.store.get(ns, "k")
        assert item is not None and item.value == {"text": "a stored note about tea"}
        assert ns in w.store.list_namespaces(prefix=ns[:2])

    return check


def f_store_key(w: World, s: str) -> Check:
    ns = ("users", w.target())
    _ready_store(w, ns)
    w.store.put(ns, s, {"text": "a stored note about tea"})

    def check() -> None:
        item = w.store.get(ns, s)
        assert item is not None and item.key == s
        assert [i.key for i in w.store.search(ns)] == [s]

    return check


def f_store_value(w: World, s: str) -> Check:
    ns = ("users", w.target())
    _ready_store(w, ns)
    w.store.put(ns, "k", {"text": s})

    def check() -> None:
        item = w.store.get(ns, "k")
        assert item is not None and item.value == {"text": s}
        assert [i.key for i in w.store.search(ns, query="note")] == ["k"]

    return check


def _eq(a: Any, b: Any) -> None:
    assert a == b, f"{a!r:.120} != {b!r:.120}"


FIELDS: dict[str, Callable[[World, str], Check]] = {
    "content": f_content,
    "user_id": _scoped("user_id"),
    "session_id": _scoped("session_id"),
    "agent_id": _scoped("agent_id"),
    "vault": _scoped("vault"),
    "tag": f_tag,
    "meta_key": f_meta_key,
    "meta_value": f_meta_value,
    "message_id": f_message_id,
    "speaker": f_speaker,
    "query": f_query,
    "update": f_update,
    "channel": f_channel,
    "subscriber": f_subscriber,
    "store_ns": f_store_ns,
    "store_key": f_store_key,
    "store_value": f_store_value,
}
REFUSALS: dict[str, tuple[type[BaseException], ...]] = {
    "store_ns": (InvalidInput, InvalidNamespaceError),
}


def _cases() -> list[Any]:
    out = []
    for field, cid in itertools.product(FIELDS, CORPUS):
        marks = []
        if (cid, field) in KNOWN:
            marks.append(pytest.mark.xfail(reason=KNOWN[(cid, field)], strict=True))
        out.append(pytest.param(cid, field, marks=marks, id=f"{field}-{cid}"))
    return out


@pytest.mark.parametrize(("cid", "field"), _cases())
def test_hostile_string(world: World, cid: str, field: str) -> None:
    s = CORPUS[cid]
    refusal = REFUSALS.get(field, (InvalidInput,))
    must_refuse = cid in REFUSE.get(field, set())
    may_refuse = must_refuse or cid in EITHER.get(field, set())
    seen = bystander(world)
    world.before = None
    try:
        check = FIELDS[field](world, s)
    except refusal:
        assert may_refuse, f"{field}: valid text {cid} was refused"
        assert world.before is not None, f"{field}: refused before the hostile write"
        assert counts(world) == world.before, f"{field}: {cid} refused, but something was written"
    else:
        assert not must_refuse, f"{field}: {cid} was accepted; it cannot be stored"
        check()
    assert bystander(world) == seen, f"{field}: {cid} changed the bystander's data"


def test_the_bystander_is_untouched_after_the_whole_corpus(world: World) -> None:
    """Runs after the cases above (file order): list, search, get and graph as at the start."""
    assert bystander_in_full(world) == world.at_start
    bobs = len(world.mem.list(user_id=BYSTANDER))
    assert _vectors(world, "default", BYSTANDER) == bobs == 3  # the scope count counts


# --- the shared checks in cube.py, without a data dir ----------------------------------------


@pytest.mark.parametrize("cid", sorted(CORPUS))
def test_check_name_refuses_exactly_the_names_that_cannot_be_stored(cid: str) -> None:
    s = CORPUS[cid]
    if cid in NAMES:
        with pytest.raises(InvalidInput, match="user_id"):
            check_name(s, "user_id")
        with pytest.raises(ValueError, match="user_id"):  # pydantic wraps it: ValidationError
            Scope(user_id=s)
    else:
        assert check_name(s, "user_id") == s
        assert Scope(user_id="u", vault=s, session_id=s, agent_id=s).vault == s


@pytest.mark.parametrize(
    "bad", ["\ud800", "a\udfffb", "\udc00\ud800", "ok \ud83d"], ids=["hi", "lo", "pair", "half"]
)
def test_lone_surrogates_are_refused_everywhere(bad: str) -> None:
    for check in (
        lambda: check_name(bad, "vault"),
        lambda: check_text(bad, "content"),
        lambda: check_optional_text(bad, "message id"),
        lambda: check_metadata({"k": bad}),
        lambda: check_metadata({bad: 1}),
        lambda: check_metadata([{"deep": [bad]}]),
    ):
        with pytest.raises(InvalidInput, match="surrogate"):
            check()
    assert check_text("a real pair \U0001f375 is fine", "content")


def test_over_long_ids_are_refused() -> None:
    assert check_name("i" * MAX_ID_LEN, "cube id")
    with pytest.raises(InvalidInput, match=f"longer than {MAX_ID_LEN}"):
        check_name("i" * (MAX_ID_LEN + 1), "cube id")
    with pytest.raises(InvalidInput, match="message id"):
        check_optional_text("i" * (MAX_ID_LEN + 1), "message id")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (None, "must be a string"),
        (b"bytes", "must be a string"),
        (3, "must be a string"),
        ("", "empty"),
        ("  \n", "empty"),
        ("a\x00b", "NUL"),
        ("x" * 11, "longer than 10"),
    ],
)
def test_check_text(value: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        check_text(value, "content", 10)


def test_check_text_keeps_valid_text() -> None:
    for cid in ("cypher", "sql", "rtl", "zero_width", "quotes", "dotdot", "emoji", "combining"):
        assert check_text(CORPUS[cid], "content", 1000) == CORPUS[cid]
    assert check_text("tabs\tand\nnewlines are text", "content") is not None
    assert check_optional_text(None, "speaker") is None
    assert check_optional_text("", "speaker") == ""


@pytest.mark.parametrize(
    "value",
    [{1: "int key"}, {"k": object()}, {"k": b"bytes"}, {"k": {1, 2}}, [{"k": lambda: 0}]],
    ids=["int-key", "object", "bytes", "set", "function"],
)
def test_check_metadata_refuses_what_json_cannot_hold(value: Any) -> None:
    with pytest.raises(InvalidInput, match="metadata"):
        check_metadata(value)


def test_check_metadata_keeps_json() -> None:
    value = {"a": [1, 2.5, None, True, {"b": "text 🎉"}], "c": float("nan"), "d": (1, "x")}
    assert check_metadata(value) is value
