"""`MemOSStore`: MemOS as a LangGraph `BaseStore`, where every item is a versioned MemCube.

    graph = builder.compile(store=MemOSStore(mem))

How items map onto MemOS:

- All items live in one MemOS vault (`vault=`, default "langgraph"). A namespace tuple, encoded
  as compact JSON (`["users","alice"]`), is the cube's `user_id`, so each namespace is its own
  catalog scope and vector partition, and no two namespaces can meet: ("a", "b"), ("a", "bc")
  and ("a/b",) encode differently. An encoded namespace may be at most 256 characters long.
- The cube id is a hash of (vault, namespace, key), so a get is one catalog lookup. The cube's
  metadata keeps `namespace` (a list), `key`, `value` (stored as JSON, returned exactly),
  `ttl` (minutes or None) and `indexed`.
- The cube's content is the text embedded for search: the texts at the index fields (the
  store's `IndexConfig["fields"]`, or the put's `index=` list) joined by newlines, or the whole
  value as JSON by default. Several texts make one vector, not one vector each.
- A put on an existing key writes a new version (op "update"), a delete a tombstone version
  (op "delete"), and a put after a delete or an expiry revives the item with a fresh
  `created_at`; every version stays in `mem.history(store.cube_id(namespace, key))`.
- The proper names in the value's strings become the cube's entities, which link it in the
  graph.
- An item put with `index=False`, or whose index fields hold no text, is still stored and, like
  every live cube, embedded (its JSON) so `mem.search` finds it; but a store query does not rank
  it: it comes after the ranked items, newest first, with score None.
- Embeddings always come from the vault's embedder, the one the data dir was built with;
  `IndexConfig["embed"]` and `["dims"]` are not used.

Reads in one batch see the store as it was before the batch's writes; of several puts to one
key in a batch, the last wins (as in `InMemoryStore`). A query ranks, in each namespace, at most
`MAX_CANDIDATES` nearest vectors, then applies the filter; when fewer than `offset + limit`
ranked items pass it, the remaining live items that match the filter follow unscored, so a
filtered query never misses an item, though items past the cap get no score.
TTLs are in minutes; expired items are hidden from get, search and list_namespaces, and stay
in the catalog (MemOS's own lifecycle decides when to purge them).

Governance: every batch passes `MemOS.gate` once per kind of op in it ("store.put",
"store.delete", "store.get", "store.search", "store.list_namespaces"), so each kind writes one
audit entry (ok or denied) before anything is read or written; a principal view needs a role in
the store's vault (reader to read, writer to put or delete). Only cubes this store wrote are
items: a cube counts when its provenance says `created_by="langgraph:store"` (a name no
principal can have, so neither `MemOS.add` nor an import can set it), its id is
`cube_id(namespace, key)` and its scope is the store's vault and the encoded namespace. A put on
a key whose id is held by any other cube is refused (ScopeViolation, audited as a denied
"store.put") and writes nothing; get, search and list_namespaces never show such cubes. Two
processes creating one new key at once do not fail: the later create becomes a new version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    get_text_at_path,
    tokenize_path,
)
from memos_agents.cube import (
    MAX_ID_LEN,
    Lifecycle,
    MemCube,
    Organisation,
    Provenance,
    Scope,
    SourceKind,
    State,
    check_name,
    utcnow,
)
from memos_agents.errors import Conflict, IntegrityError, InvalidInput, ScopeViolation
from memos_agents.lifecycle import next_version
from memos_agents.reader import extract_entities

if TYPE_CHECKING:
    from memos_agents.mos import MemOS

log = logging.getLogger(__name__)

ACTOR = "langgraph:store"
VAULT = "langgraph"  # the vault a store keeps its items in unless told otherwise
MAX_CANDIDATES = 10_000
_ID_CHUNK = 1000
_RETRIES = 8  # of a batch's writes when another process wrote the same key first
_KINDS = {PutOp: "store.put", GetOp: "store.get", SearchOp: "store.search"}
_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")

Namespace = tuple[str, ...]
_Puts = dict[tuple[Namespace, str], tuple[PutOp, dict[str, Any] | None]]  # with checked values


def encode_namespace(namespace: Sequence[str]) -> str:
    """The scope `user_id` of a namespace: its labels as a compact JSON list."""
    return json.dumps(list(namespace), ensure_ascii=False, separators=(",", ":"))


def decode_namespace(user_id: str) -> Namespace | None:
    """The namespace a `user_id` encodes, or None if it encodes none."""
    try:
        labels = json.loads(user_id)
    except ValueError:
        return None
    if not isinstance(labels, list) or not labels or not all(isinstance(s, str) for s in labels):
        return None
    return tuple(labels)


def _labels(namespace: Any) -> Namespace:
    """The namespace as a tuple, checked as LangGraph checks labels."""
    if isinstance(namespace, str) or not isinstance(namespace, Sequence):
        raise InvalidNamespaceError(f"Namespace must be a tuple of strings, got {namespace!r}")
    for label in namespace:
        if not isinstance(label, str):
            raise InvalidNamespaceError(
                f"Invalid namespace label {label!r} in {namespace}: labels must be strings"
            )
        if not label:
            raise InvalidNamespaceError(f"Namespace labels cannot be empty strings: {namespace}")
        if "." in label or "\x00" in label or any("\ud800" <= c <= "\udfff" for c in label):
            raise InvalidNamespaceError(
                f"Invalid namespace label {label!r} in {namespace}: no periods, NUL bytes or "
                "lone surrogates"
            )
    return tuple(namespace)


def _writable(namespace: Any) -> Namespace:
    ns = _labels(namespace)
    if not ns:
        raise InvalidNamespaceError("Namespace cannot be empty.")
    if ns[0] == "langgraph":
        raise InvalidNamespaceError(f'Root label for namespace cannot be "langgraph". Got: {ns}')
    if len(encode_namespace(ns)) > MAX_ID_LEN:
        raise InvalidNamespaceError(f"Namespace {ns} is longer than {MAX_ID_LEN} characters")
    return ns


def _clean(value: Any, what: str) -> None:
    """InvalidInput naming where a string of `value` (keys too) holds NUL or a lone surrogate:
    no backing store keeps them, so they are refused before the batch runs."""
    stack: list[tuple[Any, str]] = [(value, what)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidInput(f"{where} contains a NUL character")
            if any("\ud800" <= c <= "\udfff" for c in item):
                raise InvalidInput(f"{where} contains a lone surrogate (U+D800..U+DFFF)")
        elif isinstance(item, dict):
            for k, v in item.items():
                stack += [(k, f"{where} key"), (v, f"{where}.{k}")]
        elif isinstance(item, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(item)]


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise InvalidInput(f"key must be a string, got {type(key).__name__}")
    _clean(key, "key")
    return key


def _page(limit: Any, offset: Any) -> None:
    for name, n in (("limit", limit), ("offset", offset)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInput(f"{name} must be a non-negative integer, got {n!r}")


def _json_value(value: Any) -> dict[str, Any]:
    """The value as it will be stored and returned: JSON (tuples become lists)."""
    if not isinstance(value, Mapping):
        raise InvalidInput(f"value must be a mapping or None, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"value must be JSON-serialisable: {exc}") from exc


def _strings(value: Any) -> Iterator[str]:
    """The string leaves of a JSON value (not its keys)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict | list):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _strings(v)


def _entities(value: Any) -> list[str]:
    """The proper names in a value's strings: what links its cube in the graph."""
    found: dict[str, str] = {}
    for text in _strings(value):
        for name in extract_entities(text):
            found.setdefault(name.casefold(), name)
    return list(found.values())


def _paths(fields: Iterable[str]) -> list[str | list[str]]:
    return [f if f == "$" else tokenize_path(f) for f in fields]


def _matches(value: Any, flt: Any) -> bool:
    """`flt` against a stored value: exact match, nested dicts, and `$` comparison operators."""
    if isinstance(flt, dict):
        if any(k.startswith("$") for k in flt):
            return all(_compare(value, op, operand) for op, operand in flt.items())
        return isinstance(value, dict) and all(_matches(value.get(k), v) for k, v in flt.items())
    if isinstance(flt, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(flt)
            and all(_matches(v, f) for v, f in zip(value, flt, strict=True))
        )
    return value == flt


def _check_filter(flt: Any) -> None:
    """Refuse a filter that is not a dict, or that uses an operator we do not know."""
    if not isinstance(flt, dict):
        raise InvalidInput(f"filter must be a dict, got {type(flt).__name__}")
    _check_operators(flt)


def _check_operators(flt: Any) -> None:
    if isinstance(flt, dict):
        for k, v in flt.items():
            if isinstance(k, str) and k.startswith("$") and k not in _OPERATORS:
                raise InvalidInput(f"unsupported filter operator {k!r}; use one of {_OPERATORS}")
            _check_operators(v)
    elif isinstance(flt, list | tuple):
        for v in flt:
            _check_operators(v)


def _compare(value: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return value == operand
    if op == "$ne":
        return value != operand
    numbers = all(isinstance(x, int | float) for x in (value, operand))
    if not numbers and not all(isinstance(x, str) for x in (value, operand)):
        return False  # missing, or not comparable: numbers with numbers, strings with strings
    if op == "$gt":
        return value > operand
    if op == "$gte":
        return value >= operand
    if op == "$lt":
        return value < operand
    return value <= operand


def _does_match(condition: MatchCondition, ns: Namespace) -> bool:
    path = tuple(condition.path)
    if len(ns) < len(path):
        return False
    part = ns[: len(path)] if condition.match_type == "prefix" else ns[len(ns) - len(path) :]
    return all(p in ("*", label) for p, label in zip(path, part, strict=True))


def check_namespace(namespace: Any, *, write: bool = False) -> Namespace:
    """The namespace as a tuple, checked as the store checks it (InvalidNamespaceError): its
    labels, and for a write (put or delete) also not empty, not under "langgraph", not too long."""
    return _writable(namespace) if write else _labels(namespace)


def _checked_value(op: PutOp) -> dict[str, Any] | None:
    value = None if op.value is None else _json_value(op.value)
    _clean(value, "value")
    index = op.index
    if index not in (None, False) and (
        isinstance(index, str)
        or not isinstance(index, list | tuple)
        or not all(isinstance(f, str) and f for f in index)
    ):
        raise InvalidInput("index must be False, None or a list of field paths")
    if value is not None and op.ttl is not None:
        if isinstance(op.ttl, bool) or not isinstance(op.ttl, int | float):
            raise InvalidInput("ttl must be a number of minutes or None")
        if op.ttl <= 0:
            raise InvalidInput("ttl must be a positive number of minutes")
    return value


def _check_read(op: Op) -> None:
    """Raise InvalidInput unless `op` is a well-formed get, search or list-namespaces op."""
    if isinstance(op, GetOp):
        _labels(op.namespace)
        _key(op.key)
    elif isinstance(op, SearchOp):
        _labels(op.namespace_prefix)
        if op.query is not None and not isinstance(op.query, str):
            raise InvalidInput(f"query must be a string or None, got {type(op.query).__name__}")
        _clean(op.query, "query")
        _page(op.limit, op.offset)
        _check_filter(op.filter or {})
    elif isinstance(op, ListNamespacesOp):
        for cond in op.match_conditions or ():
            if cond.match_type not in ("prefix", "suffix"):
                raise InvalidInput(f"unsupported match type {cond.match_type!r}")
            _labels(cond.path)
        _page(op.limit, op.offset)
        depth = op.max_depth
        if depth is not None and (not isinstance(depth, int) or depth < 1):
            raise InvalidInput(f"max_depth must be a positive integer, got {depth!r}")
    else:
        raise InvalidInput(f"unknown operation type: {type(op).__name__}")


class MemOSStore(BaseStore):
    """A LangGraph store on MemOS: versioned, embedded, graph-linked items; TTLs in minutes.

    The store does not own `mem`; close it yourself.
    """

    supports_ttl = True

    def __init__(
        self,
        mem: MemOS,
        *,
        vault: str = VAULT,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
    ) -> None:
        self.mem = mem
        self.vault = check_name(vault, "vault")
        self.index_config = index
        self.ttl_config = ttl
        self._paths = _paths((index or {}).get("fields") or ["$"])
        self._write_lock = threading.Lock()

    def cube_id(self, namespace: tuple[str, ...], key: str) -> str:
        """The id of the MemCube that holds (namespace, key) in this store's vault."""
        body = json.dumps([self.vault, list(_labels(namespace)), _key(key)], ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()[:32]

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ops, results in op order. Every op is checked (input, governance, foreign keys)
        before any runs; reads see the state before this batch's puts; of several puts to one
        key, the last wins."""
        ops = list(ops)
        puts: _Puts = {}
        for op in ops:
            if isinstance(op, PutOp):
                ns = _writable(op.namespace)
                puts[(ns, _key(op.key))] = (op, _checked_value(op))
            else:
                _check_read(op)
        self._gate(ops, puts)
        results = self._read(ops)
        if puts:
            self._write(puts)
        return results

    def _gate(self, ops: list[Op], puts: _Puts) -> None:
        """One `MemOS.gate` per kind of op in the batch (writes first), after refusing a put
        whose key is held by a cube that is not this store's item."""
        from memos_agents.governance import Action

        kinds: dict[str, int] = {}
        for op in ops:
            kind = _kind(op)
            kinds[kind] = kinds.get(kind, 0) + 1
        taken = self._foreign([k for k, (_, value) in puts.items() if value is not None])
        if taken:
            self._refuse(taken)
        scope = self._vault_scope()
        for kind in sorted(kinds, key=lambda k: k not in ("store.put", "store.delete")):
            action = Action.write if kind in ("store.put", "store.delete") else Action.read
            self.mem.gate(kind, action, scope=scope, detail=f"{kinds[kind]} op(s)")

    def _vault_scope(self) -> Scope:
        """The scope the store's checks are made in: the vault, no user (a role is needed)."""
        return Scope.model_construct(vault=self.vault, user_id="")

    def _foreign(self, keys: Sequence[tuple[Namespace, str]]) -> list[str]:
        """The ids among these keys' that some cube other than the store's item holds."""
        ids = {self.cube_id(*k): k for k in keys}
        held = self._load(ids)
        return [cid for cid, cube in held.items() if not self._is_item(cube, *ids[cid])]

    def _refuse(self, taken: list[str]) -> None:
        """A put onto a foreign cube: PermissionDenied without a role (as the gate would say),
        else ScopeViolation; either way one denied "store.put" entry, and nothing written."""
        from memos_agents.governance import Action, PermissionDenied

        gov, principal = self.mem.governance, self.mem.principal
        detail = f"key held by a cube that is not a store item: {', '.join(taken[:5])}"
        try:
            gov.check_vault(principal, self.vault, Action.write, "")
        except PermissionDenied:
            gov.audit(principal, "store.put", vault=self.vault, outcome="denied")
            raise
        gov.audit(principal, "store.put", vault=self.vault, outcome="denied", detail=detail)
        raise ScopeViolation(
            f"cannot put: the id of this key ({', '.join(taken[:5])}) is held by a cube that "
            f"is not an item of this store in vault {self.vault!r}; nothing was written"
        )

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """`batch` in a worker thread."""
        return await asyncio.to_thread(self.batch, list(ops))

    # BaseStore's conveniences, with the namespace checked first (a clear InvalidNamespaceError
    # for None or a number, not a TypeError from `tuple()`)
    def get(self, namespace: Any, *args: Any, **kw: Any) -> Item | None:
        return super().get(_labels(namespace), *args, **kw)

    def search(self, namespace_prefix: Any, /, **kw: Any) -> list[SearchItem]:
        return super().search(_labels(namespace_prefix), **kw)

    def put(self, namespace: Any, *args: Any, **kw: Any) -> None:
        super().put(_labels(namespace), *args, **kw)

    def delete(self, namespace: Any, *args: Any, **kw: Any) -> None:
        super().delete(_labels(namespace), *args, **kw)

    def list_namespaces(self, **kw: Any) -> list[Namespace]:
        return super().list_namespaces(**_affixes(kw))

    async def aget(self, namespace: Any, *args: Any, **kw: Any) -> Item | None:
        return await super().aget(_labels(namespace), *args, **kw)

    async def asearch(self, namespace_prefix: Any, /, **kw: Any) -> list[SearchItem]:
        return await super().asearch(_labels(namespace_prefix), **kw)

    async def aput(self, namespace: Any, *args: Any, **kw: Any) -> None:
        await super().aput(_labels(namespace), *args, **kw)

    async def adelete(self, namespace: Any, *args: Any, **kw: Any) -> None:
        await super().adelete(_labels(namespace), *args, **kw)

    async def alist_namespaces(self, **kw: Any) -> list[Namespace]:
        return await super().alist_namespaces(**_affixes(kw))

    # reads
    def _read(self, ops: list[Op]) -> list[Result]:
        now = utcnow()
        results: list[Result] = [None] * len(ops)
        refresh: dict[str, datetime | None] = {}
        served: set[str] = set()
        self._read_gets(ops, results, now, refresh, served)
        self._read_searches(ops, results, now, refresh, served)
        lists = {i: op for i, op in enumerate(ops) if isinstance(op, ListNamespacesOp)}
        if lists:
            counts = self.mem.vault.catalog.count_users(self.vault, at=now)
            live = self._with_items(self._namespaces(counts), now)
            for i, op in lists.items():
                results[i] = _list_namespaces(live, op)
        if refresh:
            self.mem.vault.catalog.set_expiry(refresh)
        if served:
            self.mem.vault.catalog.touch(sorted(served), now)
        return results

    def _read_gets(
        self,
        ops: list[Op],
        results: list[Result],
        now: datetime,
        refresh: dict[str, datetime | None],
        served: set[str],
    ) -> None:
        gets = {
            i: (self.cube_id(tuple(op.namespace), op.key), op)
            for i, op in enumerate(ops)
            if isinstance(op, GetOp)
        }
        cubes = self._load(cid for cid, _ in gets.values())
        for i, (cid, op) in gets.items():
            cube = cubes.get(cid)
            if cube is None or not self._visible(cube, now):
                continue
            if not self._is_item(cube, tuple(op.namespace), op.key):
                continue
            if not cube.intact:
                raise IntegrityError(f"cube {cid} does not match its fingerprint: it was altered")
            results[i] = _item(cube)
            served.add(cid)
            if op.refresh_ttl:
                self._refresh(cube, now, refresh)

    def _read_searches(
        self,
        ops: list[Op],
        results: list[Result],
        now: datetime,
        refresh: dict[str, datetime | None],
        served: set[str],
    ) -> None:
        searches = {i: op for i, op in enumerate(ops) if isinstance(op, SearchOp)}
        if not searches:
            return
        counts = self.mem.vault.catalog.count_users(self.vault)
        queries = {op.query for op in searches.values() if op.query}
        vectors = {q: self.mem.vault.embedder.embed_query(q) for q in queries}
        for i, op in searches.items():
            hits = self._search(op, counts, vectors.get(op.query or ""), now)
            results[i] = [
                SearchItem(
                    tuple(c.metadata["namespace"]),
                    c.metadata["key"],
                    c.metadata["value"],
                    c.lifecycle.created_at,
                    c.lifecycle.updated_at,
                    score,
                )
                for c, score in hits
            ]
            served.update(c.id for c, _ in hits)
            if op.refresh_ttl:
                for c, _ in hits:
                    self._refresh(c, now, refresh)

    def _search(
        self,
        op: SearchOp,
        counts: dict[str, int],
        vector: list[float] | None,
        now: datetime,
    ) -> list[tuple[MemCube, float | None]]:
        prefix = tuple(op.namespace_prefix)
        users = [u for u, ns in self._namespaces(counts).items() if ns[: len(prefix)] == prefix]
        want = op.offset + op.limit
        if not users or not want:
            return []

        def keep(cube: MemCube) -> bool:
            if not self._visible(cube, now):
                return False
            if not _matches(cube.metadata["value"], op.filter or {}):
                return False
            if not cube.intact:
                log.warning("cube %s does not match its fingerprint; not served", cube.id)
                return False
            return True

        ranked: list[tuple[MemCube, float | None]] = []
        if vector is not None:
            ranked = self._dense(users, counts, vector, keep)
            if len(ranked) >= want:
                return ranked[op.offset : want]
        seen = {c.id for c, _ in ranked}
        limit = None if op.filter else want
        for cube in self.mem.vault.catalog.live(self.vault, users, now, limit=limit):
            if cube.id not in seen and keep(cube):
                ranked.append((cube, None))
                if len(ranked) >= want:
                    break
        return ranked[op.offset : want]

    def _dense(
        self,
        users: list[str],
        counts: dict[str, int],
        vector: list[float],
        keep: Callable[[MemCube], bool],
    ) -> list[tuple[MemCube, float | None]]:
        """Indexed items of these namespaces by cosine to `vector`, best first."""
        found: list[tuple[str, float]] = []
        for user in users:
            n = min(counts[user], MAX_CANDIDATES)
            found += self.mem.vault.index.query(self.vault, user, vector, n=n)
        cubes = self._load(cid for cid, _ in found)
        ranked: list[tuple[MemCube, float | None]] = []
        for cid, score in sorted(found, key=lambda f: -f[1]):
            cube = cubes.get(cid)
            if cube is not None and cube.metadata.get("indexed") and keep(cube):
                ranked.append((cube, score))
        return ranked

    def _namespaces(self, counts: Mapping[str, int]) -> dict[str, Namespace]:
        """The store's namespaces among these `user_id`s, by `user_id`."""
        return {u: ns for u in counts if (ns := decode_namespace(u)) is not None}

    def _load(self, ids: Iterable[str]) -> dict[str, MemCube]:
        unique = list(dict.fromkeys(ids))
        out: dict[str, MemCube] = {}
        for start in range(0, len(unique), _ID_CHUNK):
            out.update(self.mem.vault.catalog.get_many(unique[start : start + _ID_CHUNK]))
        return out

    def _with_items(self, live: dict[str, Namespace], now: datetime) -> dict[str, Namespace]:
        """The namespaces that hold at least one live item of this store (not only other
        cubes whose `user_id` happens to look like an encoded namespace)."""
        catalog = self.mem.vault.catalog
        out: dict[str, Namespace] = {}
        for user, ns in live.items():
            newest = catalog.live(self.vault, [user], now, limit=1)
            if any(self._visible(c, now) for c in newest) or any(
                self._visible(c, now) for c in catalog.live(self.vault, [user], now)
            ):
                out[user] = ns
        return out

    def _is_item(self, cube: MemCube, namespace: Namespace, key: str) -> bool:
        """Whether `cube` is the cube this store wrote for (namespace, key): made by the store
        (`created_by` no principal can have), with the key's id, scope and metadata."""
        meta = cube.metadata
        return (
            cube.provenance.created_by == ACTOR
            and cube.id == self.cube_id(namespace, key)
            and cube.scope.vault == self.vault
            and cube.scope.user_id == encode_namespace(namespace)
            and meta.get("namespace") == list(namespace)
            and meta.get("key") == key
            and "value" in meta
        )

    def _visible(self, cube: MemCube, now: datetime) -> bool:
        """A live item of this store (not some other cube that shares the vault)."""
        meta = cube.metadata
        ns, key = meta.get("namespace"), meta.get("key")
        if not isinstance(ns, list) or not all(isinstance(s, str) for s in ns):
            return False
        return isinstance(key, str) and cube.is_live(now) and self._is_item(cube, tuple(ns), key)

    @staticmethod
    def _refresh(cube: MemCube, now: datetime, into: dict[str, datetime | None]) -> None:
        ttl = cube.metadata.get("ttl")
        if ttl:
            into[cube.id] = now + timedelta(minutes=ttl)

    # writes
    def _write(self, puts: _Puts) -> None:
        """Write every put; when another process wrote one of the keys first (a Conflict),
        reload and write what is left again, so a concurrent create becomes a new version."""
        left = dict(puts)
        with self._write_lock:
            for attempt in range(_RETRIES):
                try:
                    self._write_once(left)
                    return
                except Conflict:
                    if attempt == _RETRIES - 1:
                        raise
                    time.sleep(random.uniform(0.01, 0.05 * (attempt + 1)))

    def _write_once(self, left: _Puts) -> None:
        """Write the puts in `left`, removing each from it once it is stored."""
        now = utcnow()
        ids = {k: self.cube_id(*k) for k in left}
        existing = self._load(ids.values())
        created: dict[tuple[Namespace, str], MemCube] = {}
        for (ns, key), (op, value) in list(left.items()):
            old = existing.get(ids[(ns, key)])
            if old is not None and not self._is_item(old, ns, key):
                if value is None:  # not an item of this store: nothing to delete
                    del left[(ns, key)]
                    continue
                raise ScopeViolation(
                    f"cannot put: the id of this key ({old.id}) is held by a cube that is not an "
                    f"item of this store in vault {self.vault!r}; nothing was written for it"
                )
            if old is None and value is not None:
                created[(ns, key)] = self._new_item(ids[(ns, key)], ns, key, op, value, now)
                continue
            if old is not None:
                self._version(old, op, value, now)
            del left[(ns, key)]
        if created:
            self.mem.vault.add(list(created.values()), created_by=ACTOR)
            for k in created:
                del left[k]

    def _meta(
        self, ns: Namespace, key: str, op: PutOp, value: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The content (the text to embed) and metadata of an item."""
        paths = self._paths if op.index is None else _paths(op.index or ())
        texts = [t for p in paths for t in get_text_at_path(value, p) if t.strip()]
        content = (
            "\n".join(texts) if texts else json.dumps(value, sort_keys=True, ensure_ascii=False)
        )
        meta = {
            "namespace": list(ns),
            "key": key,
            "value": value,
            "ttl": op.ttl,
            "indexed": bool(texts),
        }
        return content.replace("\x00", ""), meta

    def _new_item(
        self, cid: str, ns: Namespace, key: str, op: PutOp, value: dict[str, Any], now: datetime
    ) -> MemCube:
        content, meta = self._meta(ns, key, op, value)
        expires = None if op.ttl is None else now + timedelta(minutes=op.ttl)
        return MemCube(
            id=cid,
            content=content,
            scope=Scope(vault=self.vault, user_id=encode_namespace(ns)),
            provenance=Provenance(source_kind=SourceKind.api, created_by=ACTOR),
            lifecycle=Lifecycle(created_at=now, updated_at=now, valid_from=now, expires_at=expires),
            organisation=Organisation(entities=_entities(value)),
            metadata=meta,
        )

    def _version(
        self, old: MemCube, op: PutOp, value: dict[str, Any] | None, now: datetime
    ) -> None:
        """A put (new version) or delete (tombstone) of an existing item."""
        vault = self.mem.vault
        if value is None:
            if old.lifecycle.state is State.active:
                gone = next_version(old, State.deleted, now)
                gone.lifecycle.valid_to = now
                vault.write_version(gone, "delete", ACTOR, old.lifecycle.version)
            return
        ns, key = tuple(old.metadata["namespace"]), old.metadata["key"]
        content, meta = self._meta(ns, key, op, value)
        new = next_version(old, State.active, now, content=content, metadata=meta, valid_from=now)
        new.organisation.entities = _entities(value)
        if not old.is_live(now):
            new.lifecycle.created_at = now  # deleted or expired: the item starts afresh
        new.lifecycle.expires_at = None if op.ttl is None else now + timedelta(minutes=op.ttl)
        vault.write_version(new, "update", ACTOR, old.lifecycle.version)


def _affixes(kw: dict[str, Any]) -> dict[str, Any]:
    """list_namespaces' keywords with `prefix` and `suffix` checked as namespaces."""
    return {
        k: _labels(v) if k in ("prefix", "suffix") and v is not None else v for k, v in kw.items()
    }


def _kind(op: Op) -> str:
    """The audit name of an op's kind; a put of None is a delete."""
    if isinstance(op, PutOp) and op.value is None:
        return "store.delete"
    return _KINDS.get(type(op), "store.list_namespaces")


def _item(cube: MemCube) -> Item:
    return Item(
        value=cube.metadata["value"],
        key=cube.metadata["key"],
        namespace=tuple(cube.metadata["namespace"]),
        created_at=cube.lifecycle.created_at,
        updated_at=cube.lifecycle.updated_at,
    )


def _list_namespaces(live: Mapping[str, Namespace], op: ListNamespacesOp) -> list[Namespace]:
    found = [
        ns
        for ns in live.values()
        if all(_does_match(cond, ns) for cond in op.match_conditions or ())
    ]
    if op.max_depth is not None:
        found = [ns[: op.max_depth] for ns in found]
    return sorted(set(found))[op.offset : op.offset + op.limit]


__all__ = [
    "MAX_CANDIDATES",
    "VAULT",
    "MemOSStore",
    "check_namespace",
    "decode_namespace",
    "encode_namespace",
]
