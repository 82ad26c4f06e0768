"""A property test of the facade and the LangGraph store: one hostile argument per call.

For each public call of `MemOS` (add, add_document, search, explain, get, update, delete,
transition, rollback, history, list, graph, as_of, share, unshare, grant_role, publish,
subscribe, poll, ack, export, import_file, as_principal) and of `MemOSStore` (put, get, search,
delete, list_namespaces), hypothesis draws ONE argument and a hostile value for it (None,
booleans, huge ints, nan / inf, bytes, dicts, lists, datetimes, very long strings, text with
NUL, lone surrogates, control characters, RTL marks, Cypher / SQL injection, quotes and `../`
in ids); the others stay valid. Each call must either succeed or raise a `MemOSError` (the
store may also raise LangGraph's own `InvalidNamespaceError`, part of the `BaseStore`
contract); and a bystander user's data (list, a search, get of each cube, the topic graph,
a store item) must be unchanged afterwards.

Bounded, so it runs in the normal suite: `FUZZ_EXAMPLES` examples per call (default 10;
set the environment variable for a longer hunt), derandomized (the same examples every run,
no example database), no shrinking, one MemOS for the module. Every failing example of a
call is collected and reported together (call, argument, value, exception), not just the
first. Export paths are not fuzzed (the process owner chooses where files are written);
import paths are (reading only).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from langgraph.store.base import InvalidNamespaceError
from memos_agents.langgraph.store import MemOSStore

from memos_agents import MemOS
from memos_agents.errors import MemOSError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
BYSTANDER = "bob"
# who calls: the process owner, the owner of the data the calls name, and a stranger
VIEWS = ("system", "user:alice", "user:mallory")
BOB_TEXTS = [
    "Bob grows green tea in his garden in Kyoto",
    "Bob's sister Maria plays the cello in Lisbon",
    "Bob keeps bees and sells honey at the market",
]

INJECTIONS = [
    "'}) MATCH (n) DETACH DELETE n //",
    '"}) MATCH (n) DETACH DELETE n //',
    "x'}) WITH 1 AS x MATCH (c:Cube) SET c.user_id = 'alice' //",
    "'; DROP TABLE memos_cubes; --",
    "' OR '1'='1",
    '"; DELETE FROM memos_cube_versions; --',
    "users/bob",
    "../../../../etc/passwd",
    "..",
    "kv/../../x",
    "' \" ` \\ ",
    "\\",
    "%s %(x)s {0} {x}",
    "$where: 1",
]
NASTY_TEXT = [
    "a\x00b",
    "\x00",
    "lone \ud800 surrogate",
    "\udfff",
    "bell \x07 escape \x1b[31m",
    "\u202eevil\u202c",
    "zero\u200bwidth\ufeff",
    "e\u0301\u0301\u0301",
    "🎉👩‍👩‍👧",
    "",
    "   ",
    "\n",
    "x" * 257,
    "x" * 100_001,
    "y" * (1 << 20),
]


def _text() -> st.SearchStrategy[str]:
    anything = st.characters(exclude_categories=())  # lone surrogates (Cs) included
    return st.one_of(
        st.sampled_from(INJECTIONS + NASTY_TEXT),
        st.text(anything, max_size=40),
        st.text(st.sampled_from("\x00\ud800\u202e'\"\\/{}()`;-.\n\t"), min_size=1, max_size=12),
    )


def hostile() -> st.SearchStrategy[Any]:
    text = _text()
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**30]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.binary(max_size=16),
        st.datetimes(),  # naive
        st.timedeltas(),
        text,
    )
    return st.one_of(
        leaf,
        text,
        text,
        st.lists(leaf, max_size=3),
        st.tuples(text),
        st.tuples(st.just("users"), text),
        st.dictionaries(st.one_of(text, st.integers()), leaf, max_size=3),
        st.just(object()),
    ).filter(_not_the_bystander)


def hostile_messages() -> st.SearchStrategy[Any]:
    """Messages of every shape the reader takes (str, dict, LangChain, lists) with one hostile
    field: content, id, speaker / name, role, timestamp, or a metadata key or value."""
    from langchain_core.messages import AIMessage, HumanMessage

    h, text = hostile(), _text()
    fields = st.sampled_from(["content", "id", "speaker", "name", "role", "timestamp", "extra"])
    one = st.builds(lambda f, v: {"role": "user", "content": "Alice likes tea", f: v}, fields, h)
    meta_key = st.builds(lambda k: {"content": "Alice likes tea", k: "v"}, text)
    langchain = st.one_of(
        st.builds(lambda v: HumanMessage(content=v), text),
        st.builds(lambda v: AIMessage(content=[v, {"type": "text", "text": v}]), text),
        st.builds(lambda v: HumanMessage(content="Alice likes tea", id=v), text),
        st.builds(lambda v: HumanMessage(content="Alice likes tea", name=v), text),
    )
    turn = st.one_of(one, meta_key, langchain, text)
    return st.one_of(turn, st.lists(turn, min_size=1, max_size=3), h)


def _not_the_bystander(v: Any) -> bool:
    """Values that legitimately name the bystander (a process-owner call may write there)."""
    if isinstance(v, str):
        return v not in (BYSTANDER, f"user:{BYSTANDER}")
    if isinstance(v, tuple | list):
        return all(_not_the_bystander(x) for x in v) and tuple(v) != ("users", BYSTANDER)
    return True


@dataclass
class World:
    mem: MemOS
    store: MemOSStore
    tmp: Path
    bob_ids: list[str]
    alice_id: str
    mip: Path
    fresh_n: list[int] = field(default_factory=lambda: [0])
    views: dict[str, tuple[MemOS, MemOSStore]] = field(default_factory=dict)
    view: str = "system"

    @property
    def api(self) -> MemOS:
        """The facade as the current example's principal sees it."""
        return self.views[self.view][0] if self.view in self.views else self.mem

    @property
    def kv(self) -> MemOSStore:
        return self.views[self.view][1] if self.view in self.views else self.store

    def fresh(self, versions: int = 1) -> str:
        """A new cube of alice's, for the calls that change or end one."""
        self.fresh_n[0] += 1
        (c,) = self.mem.add(f"Alice note {self.fresh_n[0]} about tea", user_id="alice")
        for v in range(2, versions + 1):
            self.mem.update(c.id, f"Alice note {self.fresh_n[0]} version {v}", user_id="alice")
        return c.id


@pytest.fixture(scope="module")
def world(tmp_path_factory, embedder):
    from memos_agents.graph.falkordb_server import stop_server

    tmp = tmp_path_factory.mktemp("fuzz")
    d = tmp / "memos"
    mem = MemOS.open(d, embedder=embedder, graph_idle_timeout=30)
    bob = mem.add(BOB_TEXTS, user_id=BYSTANDER, session_id="s1", tags=["bees"])
    (alice,) = mem.add("Alice drinks oolong tea every morning", user_id="alice")
    store = MemOSStore(mem)
    store.put(("users", BYSTANDER), "profile", {"likes": "tea", "text": "bob's profile"})
    store.put(("users", "alice"), "profile", {"likes": "coffee"})
    mem.subscribe("news", "sub1")
    mip = tmp / "alice.mip.json"
    mem.export(mip, user_id="alice")
    try:
        w = World(mem, store, tmp, [c.id for c in bob], alice.id, mip)
        for p in VIEWS[1:]:
            view = mem.as_principal(p)
            w.views[p] = (view, MemOSStore(view))
        yield w
    finally:
        mem.close()
        stop_server(d / "graph")


def snapshot(w: World) -> Any:
    """The bystander's cubes, graph fact counts and store item: checked after every example."""
    listed = sorted(
        (c.id, c.content, c.lifecycle.version, c.lifecycle.state.value, tuple(c.organisation.tags))
        for c in w.mem.list(user_id=BYSTANDER)
    )
    graph = w.mem.vault.graph.counts(user_id=BYSTANDER)
    item = w.store.get(("users", BYSTANDER), "profile")
    return listed, graph, None if item is None else item.value


def stored(w: World) -> Any:
    """Cube rows, versions, vectors and graph counts of the whole data dir: a refused call
    must leave them as they were (after the background organiser is done)."""
    w.mem.vault.operator.flush()
    s = w.mem.vault.catalog.stats()
    return s["cubes"], s["versions"], w.mem.vault.index.count(), w.mem.vault.graph.counts()


def snapshot_in_full(w: World) -> Any:
    """Also a search, get of each cube and the topic graph: checked after each call's run."""
    m = w.mem
    hits = sorted(h.id for h in m.search("green tea garden bees", user_id=BYSTANDER, k=5))
    got = [(c.content, c.lifecycle.version) for c in (m.get(i) for i in w.bob_ids)]
    return snapshot(w), hits, got, m.graph(user_id=BYSTANDER).render()


# --- the calls: valid arguments; the fuzz replaces one of them ------------------------------


@dataclass
class Call:
    target: Callable[[World], Callable[..., Any]]
    valid: Callable[[World], dict[str, Any]]
    positional: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()  # arguments never fuzzed
    ok: tuple[type[BaseException], ...] = (MemOSError,)
    values: Callable[[], st.SearchStrategy[Any]] | None = None  # default: hostile()


NOW = datetime.now(UTC)
STORE_OK = (MemOSError, InvalidNamespaceError)


def _search_args(w: World) -> dict[str, Any]:
    return {
        "query": "tea",
        "user_id": "alice",
        "k": 3,
        "vault": "default",
        "agent_id": None,
        "session_id": None,
        "tags": None,
        "min_score": None,
        "mode": "hybrid",
        "routes": None,
        "as_of": None,
        "window": 0,
    }


CALLS: dict[str, Call] = {
    "add": Call(
        lambda w: w.api.add,
        lambda w: {
            "messages": [{"role": "user", "content": "Alice likes jasmine tea", "id": "m1"}],
            "user_id": "alice",
            "session_id": "s1",
            "agent_id": "a1",
            "vault": "default",
            "mode": "fast",
            "tags": ["tea"],
            "ttl": None,
            "expires_at": None,
            "visibility": "private",
            "metadata": {"k": "v"},
        },
        ("messages",),
    ),
    "add(messages)": Call(
        lambda w: w.api.add,
        lambda w: {"messages": "Alice likes tea", "user_id": "alice", "session_id": "s1"},
        ("messages",),
        fixed=("user_id", "session_id"),
        values=lambda: hostile_messages(),
    ),
    "add_document": Call(
        lambda w: w.api.add_document,
        lambda w: {
            "document": "A short document about tea ceremonies.",
            "user_id": "alice",
            "source": "doc.txt",
            "tags": ["doc"],
            "metadata": {"k": 1},
            "ttl": None,
        },
        ("document",),
    ),
    "search": Call(lambda w: w.api.search, _search_args, ("query",)),
    "explain": Call(lambda w: w.api.explain, _search_args, ("query",)),
    "get": Call(
        lambda w: w.api.get, lambda w: {"cube_id": w.alice_id, "user_id": "alice"}, ("cube_id",)
    ),
    "update": Call(
        lambda w: w.api.update,
        lambda w: {
            "cube_id": w.fresh(),
            "content": "Alice now prefers green tea",
            "user_id": "alice",
            "by": "user:alice",
            "valid_from": NOW,
            "tags": ["t"],
        },
        ("cube_id", "content"),
    ),
    "delete": Call(
        lambda w: w.api.delete,
        lambda w: {"cube_id": w.fresh(), "user_id": "alice", "by": "user:alice"},
        ("cube_id",),
    ),
    "transition": Call(
        lambda w: w.api.transition,
        lambda w: {"cube_id": w.fresh(), "state": "archived", "user_id": "alice", "by": None},
        ("cube_id", "state"),
    ),
    "rollback": Call(
        lambda w: w.api.rollback,
        lambda w: {"cube_id": w.fresh(versions=2), "version": 1, "user_id": "alice"},
        ("cube_id", "version"),
    ),
    "history": Call(
        lambda w: w.api.history,
        lambda w: {"cube_id": w.alice_id, "user_id": "alice"},
        ("cube_id",),
    ),
    "list": Call(
        lambda w: w.api.list,
        lambda w: {
            "user_id": "alice",
            "vault": "default",
            "session_id": None,
            "include_deleted": False,
            "limit": 10,
            "offset": 0,
        },
    ),
    "graph": Call(lambda w: w.api.graph, lambda w: {"user_id": "alice", "vault": "default"}),
    "as_of": Call(
        lambda w: w.api.as_of,
        lambda w: {"when": NOW, "user_id": "alice", "vault": None, "query": "tea", "k": 3},
        ("when",),
    ),
    "share": Call(
        lambda w: w.api.share,
        lambda w: {"cube_id": w.alice_id, "principal": "user:carol", "access": "read"},
        ("cube_id", "principal", "access"),
    ),
    "unshare": Call(
        lambda w: w.api.unshare,
        lambda w: {"cube_id": w.alice_id, "principal": "user:carol"},
        ("cube_id", "principal"),
    ),
    "grant_role": Call(
        lambda w: w.api.grant_role,
        lambda w: {"vault": "fuzzvault", "principal": "user:carol", "role": "reader"},
        ("vault", "principal", "role"),
    ),
    "publish": Call(
        lambda w: w.api.publish,
        lambda w: {
            "channel": "news",
            "memory": "Alice published a note on tea",
            "user_id": "alice",
            "cube_ids": (),
            "agent_id": None,
            "session_id": None,
            "vault": None,
            "tags": None,
        },
        ("channel", "memory"),
    ),
    "subscribe": Call(
        lambda w: w.api.subscribe,
        lambda w: {"channel": "news", "subscriber": "sub2", "start": "earliest"},
        ("channel", "subscriber"),
    ),
    "poll": Call(
        lambda w: w.api.poll,
        lambda w: {"channel": "news", "subscriber": "sub1", "limit": 10},
        ("channel", "subscriber"),
    ),
    "ack": Call(
        lambda w: w.api.ack,
        lambda w: {"channel": "news", "subscriber": "sub1", "seq": 0},
        ("channel", "subscriber", "seq"),
    ),
    "export": Call(
        lambda w: w.api.export,
        lambda w: {
            "path": w.tmp / "out.mip.json",
            "vault": None,
            "user_id": "alice",
            "tags": None,
            "since": None,
            "until": None,
            "include_deleted": False,
        },
        ("path",),
        fixed=("path",),
    ),
    "import_file": Call(
        lambda w: w.api.import_file,
        lambda w: {"source": w.mip, "vault": "imported", "user_id": "alice"},
        ("source",),
    ),
    "as_principal": Call(
        lambda w: lambda principal: w.api.as_principal(principal).list(user_id="alice"),
        lambda w: {"principal": "user:alice"},
        ("principal",),
    ),
    "store.put": Call(
        lambda w: w.kv.put,
        lambda w: {
            "namespace": ("users", "alice"),
            "key": "note",
            "value": {"text": "Alice's note", "n": 1},
            "index": None,
            "ttl": None,
        },
        ("namespace", "key", "value"),
        ok=STORE_OK,
    ),
    "store.get": Call(
        lambda w: w.kv.get,
        lambda w: {"namespace": ("users", "alice"), "key": "profile"},
        ("namespace", "key"),
        ok=STORE_OK,
    ),
    "store.search": Call(
        lambda w: w.kv.search,
        lambda w: {
            "namespace_prefix": ("users",),
            "query": "tea",
            "filter": None,
            "limit": 5,
            "offset": 0,
        },
        ("namespace_prefix",),
        ok=STORE_OK,
    ),
    "store.delete": Call(
        lambda w: w.kv.delete,
        lambda w: {"namespace": ("users", "alice"), "key": "note"},
        ("namespace", "key"),
        ok=STORE_OK,
    ),
    "store.list_namespaces": Call(
        lambda w: w.kv.list_namespaces,
        lambda w: {
            "prefix": ("users",),
            "suffix": None,
            "max_depth": None,
            "limit": 10,
            "offset": 0,
        },
        ok=STORE_OK,
    ),
}

# Calls whose fuzz still finds undocumented exceptions, with the defect (strict: when it is
# fixed the case passes and the mark must go). None left.
KNOWN: dict[str, str] = {}


# Inputs that found defects (fixed or not): tried on every run, before the random examples, as
# the process owner and as a stranger.
_DT = timedelta(days=1)
EXPLICIT: dict[str, list[tuple[str, Any]]] = {
    "add": [("tags", _DT), ("tags", 2), ("expires_at", "2030-01-01"), ("metadata", {1: "x"})],
    "add_document": [("tags", 2), ("ttl", 10**30), ("metadata", {"k": "\ud800"})],
    "update": [("tags", _DT), ("valid_from", ["x"]), ("valid_from", "a\x00b")],
    "publish": [("tags", 2), ("channel", "a\x00b")],
    "search": [("min_score", "x"), ("query", "a\ud800b"), ("k", 10**30)],
    "explain": [("min_score", "x"), ("query", "a\ud800b")],
    "as_of": [("when", None), ("when", "x"), ("k", "x"), ("query", "a\ud800b")],
    "list": [("limit", "x"), ("offset", "-"), ("limit", 10**30)],
    "export": [("since", "x"), ("until", _DT), ("tags", "a\ud800b")],
    "grant_role": [("vault", ["x"]), ("vault", 10**30), ("vault", {"a": 1})],
    "import_file": [("source", "a\x00b"), ("source", "a\ud800b"), ("source", "x" * 5000)],
    "unshare": [("principal", ["x"]), ("principal", _DT), ("principal", None)],
    "share": [("principal", ["x"]), ("principal", None)],
    "store.put": [("key", "a\ud800b"), ("index", _DT), ("namespace", ("users", "a\ud800"))],
    "store.get": [("namespace", None), ("namespace", 2), ("key", "a\ud800b")],
    "store.delete": [("namespace", None), ("key", "a\ud800b")],
    "store.search": [("query", 5), ("query", ["x"])],
    "store.list_namespaces": [("prefix", 2), ("suffix", _DT)],
}


def _invoke(call: Call, w: World, kwargs: dict[str, Any]) -> Any:
    kw = dict(kwargs)
    args = [kw.pop(p) for p in call.positional]
    return call.target(w)(*args, **kw)


def _where(exc: BaseException) -> str:
    """The innermost frame of the project's own code the exception passed: the defect's site."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if "/site-packages/" not in f.filename
    ]
    inner = [f for f in frames if "/memos_agents/" in f.filename or "/adapters/" in f.filename]
    f = (inner or frames)[-1]
    return f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}"


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else f"{r[:60]}...({len(r)} chars)"


def _param(name: str) -> Any:
    marks = [pytest.mark.xfail(reason=KNOWN[name], strict=True)] if name in KNOWN else []
    return pytest.param(name, marks=marks, id=name)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


@pytest.mark.parametrize("name", [_param(n) for n in CALLS])
def test_one_hostile_argument(world: World, name: str) -> None:
    call = CALLS[name]
    before, in_full = snapshot(world), snapshot_in_full(world)
    failures: list[str] = []
    fuzzable = sorted(set(call.valid(world)) - set(call.fixed))

    def attempt(arg: str, value: Any, view: str) -> None:
        kwargs = call.valid(world)
        kwargs[arg] = value
        world.view = view
        site = f"{name}({arg}={_short(value)}) as {view}"
        written = stored(world)
        try:
            _invoke(call, world, kwargs)
        except call.ok:
            if stored(world) != written:
                failures.append(f"{site} was refused but wrote: {written} -> {stored(world)}")
        except Exception as exc:  # anything undocumented is a finding
            failures.append(
                f"{site} raised {type(exc).__module__}.{type(exc).__name__} at {_where(exc)}: "
                f"{exc!s:.160}"
            )
            return
        finally:
            world.view = "system"
        after = snapshot(world)
        if after != before:
            failures.append(
                f"{site} changed the bystander's data: {before!r:.200} -> {after!r:.200}"
            )

    for arg, value in EXPLICIT.get(name, []):  # the inputs that found defects, every run
        for view in ("system", "user:mallory"):
            attempt(arg, value, view)
    values = call.values() if call.values else hostile()
    given(arg=st.sampled_from(fuzzable), value=values, view=st.sampled_from(VIEWS))(FUZZ(attempt))()
    if snapshot_in_full(world) != in_full:
        failures.append(f"{name}: the bystander's search, get or graph changed")
    assert not failures, f"{len(failures)} undocumented outcomes:\n" + "\n".join(failures)


def test_the_fuzz_covers_every_listed_call() -> None:
    """The brief's list of public calls is all here (a new public call should join CALLS)."""
    facade = {
        "add", "add_document", "search", "explain", "get", "update", "delete", "transition",
        "rollback", "history", "list", "graph", "as_of", "share", "unshare", "grant_role",
        "publish", "subscribe", "poll", "ack", "export", "import_file",
    }  # fmt: skip
    store = {"put", "get", "search", "delete", "list_namespaces"}
    assert facade <= set(CALLS)
    assert {f"store.{s}" for s in store} <= set(CALLS)
    assert all(callable(getattr(MemOS, n)) for n in facade)


def test_hostile_strategy_draws_the_nasty_things() -> None:
    """The strategy reaches the inputs the brief names (sampled, so this is cheap)."""
    assert any("\ud800" in s for s in NASTY_TEXT) and any("\x00" in s for s in NASTY_TEXT)
    assert "'}) MATCH (n) DETACH DELETE n //" in INJECTIONS
    assert "'; DROP TABLE memos_cubes; --" in INJECTIONS
