"""The per-scope index: BM25 and the facts' bookkeeping of one (vault, user) scope, in memory.

Built from the catalog on first use, kept current by the vault's own writes and, before every
search, by the rows any process wrote since the index's change mark (see `Router.scope_index`).

The facts are kept in columns (numpy arrays, one row per fact entry: no Python object per row),
so that a snapshot (`snapshot.py`) is a handful of arrays read back as they are; `docs[i]`
builds a `Doc` of a row on demand."""

from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from ..cube import MemCube, State
from ..events import time_phrases
from ..graph.base import norm_entity
from ..lifecycle import LIVE as LIVE_STATES
from ..text import keyword_words
from .bm25 import BM25Segment, BM25Tail
from .config import RetrievalConfig
from .lexicon import Lexicon

LIVE: frozenset[str] = frozenset(s.value for s in LIVE_STATES)
"""State values search finds (`lifecycle.LIVE`)."""
INDEXED: frozenset[str] = LIVE | {State.superseded.value}
"""State values the index keeps: the live ones, and superseded ones for `as_of` searches."""


@dataclass(slots=True)
class Doc:
    id: str
    session: str | None
    created_at: float
    valid_from: float
    valid_to: float | None
    expires_at: float | None
    speaker: str | None
    entities: frozenset[str]
    importance: float
    state: str
    keyed: bool
    tokens: tuple[str, ...]
    content_hash: int
    alive: bool = True
    dated: bool = False  # the text says when (a time phrase, see `events.time_phrases`)
    when: tuple[tuple[float, float], ...] = ()  # the days its time phrases name: [start, end)
    version: int = 0  # the cube's version: an older one never replaces a newer one
    surface: tuple[str, ...] = ()  # the words `tokens` are the stems of (for the lexicon)


def content_hash_of(speaker: str | None, text: str) -> int:
    """The stable (every process, every run) 64-bit hash of what a fact says and who said it:
    `Doc.content_hash`, the key of `ScopeIndex.by_hash` (verbatim repeats)."""
    said = " ".join(text.split()).casefold()
    key = f"{speaker or ''}\0{said}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little", signed=True)


def doc_of(cube: MemCube) -> Doc:
    speaker = cube.provenance.speaker
    text = f"{speaker}: {cube.content}" if speaker else cube.content
    lc = cube.lifecycle
    words, stems = keyword_words(text)
    return Doc(
        id=cube.id,
        session=cube.scope.session_id,
        created_at=lc.created_at.timestamp(),
        valid_from=(lc.valid_from or lc.created_at).timestamp(),
        valid_to=lc.valid_to.timestamp() if lc.valid_to else None,
        expires_at=lc.expires_at.timestamp() if lc.expires_at else None,
        speaker=norm_entity(speaker) if speaker else None,
        entities=frozenset(n for n in map(norm_entity, cube.organisation.entities) if n),
        importance=cube.organisation.importance,
        state=lc.state.value,
        keyed="key" in cube.metadata,
        tokens=tuple(stems),
        content_hash=content_hash_of(speaker, cube.content),
        dated=bool(time_phrases(cube.content)),
        when=spans_of(cube.metadata.get("when")),
        version=lc.version,
        surface=tuple(words),
    )


def spans_of(when: object) -> tuple[tuple[float, float], ...]:
    """The operator's resolved times of a fact (`metadata["when"]`) as [start, end) stamps."""
    if not isinstance(when, list):
        return ()
    out = []
    for t in when:
        try:
            start = datetime.fromisoformat(t["start"]).replace(tzinfo=UTC)
            end = datetime.fromisoformat(t["end"]).replace(tzinfo=UTC) + timedelta(days=1)
        except (TypeError, KeyError, ValueError):
            continue
        out.append((start.timestamp(), end.timestamp()))
    return tuple(out)


ROW_COLUMNS: dict[str, Any] = {
    "created_at": np.float64, "valid_from": np.float64,
    "valid_to": np.float64, "expires_at": np.float64,  # NaN: none
    "importance": np.float64, "version": np.int64, "content_hash": np.int64,
    "alive": np.bool_, "keyed": np.bool_, "dated": np.bool_,
    "held": np.bool_,  # the id's current entry (in `pos`)
    "purged": np.bool_,  # emptied by `remove` (not in `by_hash`)
    "state": np.int16, "session": np.int32, "speaker": np.int32,  # codes into tables; -1: none
    "tok_start": np.int64, "tok_len": np.int32, "ent_start": np.int64, "ent_len": np.int32,
    "when_start": np.int64, "when_len": np.int32,
}
"""The per-row columns of a `ScopeIndex` (besides `ids`) and their dtypes."""
FLAT_COLUMNS: dict[str, Any] = {"tokens": np.int32, "entities": np.int32, "when": np.float64}
"""The flat columns: word ids into `words` (rows' slices: tok_start/tok_len), name ids into
`names` (ent_start/ent_len), the `Doc.when` spans as start, end, start, end... stamps
(when_start/when_len)."""
SLICES = (("tokens", "tok_start", "tok_len"), ("entities", "ent_start", "ent_len"),
          ("when", "when_start", "when_len"))
"""Each flat column and the row columns of its slices."""
TABLES = ("words", "names", "sessions", "states")
"""The string tables the codes point into."""


class Table:
    """Strings and their codes (one Python object per distinct string, not per row)."""

    def __init__(self, items: Sequence[str] = ()) -> None:
        self.items: list[str] = list(items)
        self.code: dict[str, int] = {s: j for j, s in enumerate(self.items)}

    def add(self, s: str) -> int:
        j = self.code.get(s)
        if j is None:
            j = self.code[s] = len(self.items)
            self.items.append(s)
        return j

    def __len__(self) -> int:
        return len(self.items)


def _grown(a: np.ndarray, need: int) -> np.ndarray:
    if need <= len(a):
        return a
    out = np.zeros(max(need, 2 * len(a), 64), dtype=a.dtype)
    out[: len(a)] = a
    return out


def _i64(h: int) -> int:
    """A hash as a signed 64-bit value (Python's `hash` already is one)."""
    return (int(h) + 2**63) % 2**64 - 2**63


def _nan(x: float | None) -> float:
    return np.nan if x is None else x


def _opt(x: Any) -> float | None:
    f = float(x)
    return None if f != f else f


class Columns:
    """The rows of a `ScopeIndex` as arrays: what a snapshot stores and `restore` takes."""

    def __init__(self) -> None:
        self.n = 0
        self.rows: dict[str, np.ndarray] = {k: np.zeros(0, dtype=t) for k, t in ROW_COLUMNS.items()}
        self.flat: dict[str, np.ndarray] = {k: np.zeros(0, dtype=t)
                                            for k, t in FLAT_COLUMNS.items()}
        self.flat_n = {k: 0 for k in FLAT_COLUMNS}
        self.ids = np.zeros(0, dtype="S1")
        self.tables = {k: Table() for k in TABLES}

    @classmethod
    def of(cls, rows: dict[str, np.ndarray], flat: dict[str, np.ndarray], ids: np.ndarray,
           tables: dict[str, Sequence[str]]) -> Columns:
        """Columns from arrays (a snapshot's); ValueError if they do not fit together."""
        n = len(ids)
        if set(rows) != set(ROW_COLUMNS) or set(flat) != set(FLAT_COLUMNS) or set(tables) != set(
                TABLES) or ids.dtype.kind != "S" or ids.ndim != 1:
            raise ValueError("columns missing")
        for k, t in ROW_COLUMNS.items():
            if rows[k].dtype != np.dtype(t) or rows[k].shape != (n,):
                raise ValueError(f"column {k}: {rows[k].dtype} {rows[k].shape}")
        for k, t in FLAT_COLUMNS.items():
            if flat[k].dtype != np.dtype(t) or flat[k].ndim != 1:
                raise ValueError(f"column {k}: {flat[k].dtype}")
        c = cls()
        c.n, c.ids = n, ids
        c.rows = {k: np.ascontiguousarray(v) for k, v in rows.items()}
        c.flat = {k: np.ascontiguousarray(v) for k, v in flat.items()}
        c.flat_n = {k: len(v) for k, v in flat.items()}
        c.tables = {k: Table(v) for k, v in tables.items()}
        for flat_key, start, length in SLICES:
            s, ln, f = rows[start], rows[length], c.flat[flat_key]
            if n and ((s < 0).any() or (ln < 0).any() or (s + ln).max() > len(f)):
                raise ValueError(f"{flat_key}: slices out of range")
        for flat_key, table in (("tokens", "words"), ("entities", "names")):
            f = c.flat[flat_key]
            if len(f) and (f.min() < -1 or f.max() >= len(c.tables[table])):
                raise ValueError(f"{flat_key}: codes out of range")
        for code, table in (("session", "sessions"), ("speaker", "names"), ("state", "states")):
            v = rows[code]
            if n and (v.min() < -1 or v.max() >= len(c.tables[table])):
                raise ValueError(f"{code}: codes out of range")
        return c

    def view(self, name: str) -> np.ndarray:
        return self.rows[name][: self.n]

    def flat_view(self, name: str) -> np.ndarray:
        return self.flat[name][: self.flat_n[name]]

    def reserve(self, n: int) -> None:
        if n > len(self.ids):
            for k, a in self.rows.items():
                self.rows[k] = _grown(a, n)
            self.ids = _grown(self.ids, n)

    def push_flat(self, name: str, codes: Sequence[int]) -> int:
        """Append codes to a flat column; where they start."""
        at = self.flat_n[name]
        end = at + len(codes)
        self.flat[name] = _grown(self.flat[name], end)
        self.flat[name][at:end] = codes
        self.flat_n[name] = end
        return at

    def set_id(self, i: int, cid: str) -> None:
        b = cid.encode()
        if len(b) > self.ids.dtype.itemsize:
            self.ids = self.ids.astype(f"S{len(b)}")
        self.ids[i] = b

    def words_of(self, i: int) -> list[int]:
        s, ln = int(self.rows["tok_start"][i]), int(self.rows["tok_len"][i])
        return self.flat["tokens"][s : s + ln].tolist()

    def names_of(self, i: int) -> list[int]:
        s, ln = int(self.rows["ent_start"][i]), int(self.rows["ent_len"][i])
        return self.flat["entities"][s : s + ln].tolist()

    def when_of(self, i: int) -> tuple[tuple[float, float], ...]:
        ln = int(self.rows["when_len"][i])
        if not ln:
            return ()
        s = int(self.rows["when_start"][i])
        v = self.flat["when"][s : s + ln].tolist()
        return tuple(zip(v[::2], v[1::2], strict=True))

    def token_lists(self) -> list[list[str]]:
        """Every row's tokens (strings)."""
        words = self.tables["words"].items
        flat = self.flat_view("tokens").tolist()
        starts = self.view("tok_start").tolist()
        lens = self.view("tok_len").tolist()
        return [[words[t] for t in flat[s : s + ln]] for s, ln in zip(starts, lens, strict=True)]

    def taken(self, rows: np.ndarray) -> Columns:
        """The columns of these rows, in this order (the flat columns and tables compacted)."""
        out = Columns()
        n = out.n = len(rows)
        out.rows = {k: a[rows].copy() for k, a in self.rows.items()}
        out.ids = self.ids[rows].copy()
        sess = self.tables["sessions"]
        out.tables["states"] = Table(self.tables["states"].items)
        for flat_key, start, length in SLICES:
            s, ln = out.rows[start], out.rows[length].astype(np.int64)
            total = int(ln.sum())
            new_start = np.zeros(n, dtype=np.int64)
            if n:
                new_start[1:] = np.cumsum(ln)[:-1]
            gather = (np.repeat(s - new_start, ln) + np.arange(total, dtype=np.int64)
                      if total else np.zeros(0, dtype=np.int64))
            codes = self.flat[flat_key][gather]
            out.rows[start] = new_start
            out.flat[flat_key], out.flat_n[flat_key] = codes, total
        # the tables: only what the rows still use
        used_w = np.unique(out.flat["tokens"])
        out.tables["words"], remap = _subtable(self.tables["words"], used_w)
        out.flat["tokens"] = remap[out.flat["tokens"]].astype(np.int32)
        spk = out.rows["speaker"]
        used_n = np.unique(np.concatenate([out.flat["entities"], spk[spk >= 0]]))
        out.tables["names"], remap = _subtable(self.tables["names"], used_n)
        out.flat["entities"] = remap[out.flat["entities"]].astype(np.int32)
        out.rows["speaker"] = np.where(spk >= 0, remap[np.maximum(spk, 0)], -1).astype(np.int32)
        ses = out.rows["session"]
        used_s = np.unique(ses[ses >= 0])
        out.tables["sessions"], remap = _subtable(sess, used_s)
        out.rows["session"] = np.where(ses >= 0, remap[np.maximum(ses, 0)], -1).astype(np.int32)
        return out


def _subtable(table: Table, used: np.ndarray) -> tuple[Table, np.ndarray]:
    """The table of the `used` codes (sorted, >= 0) and the old -> new code map."""
    used = used[used >= 0]
    remap = np.full(max(len(table), 1), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    items = table.items
    return Table([items[j] for j in used.tolist()]), remap


class _Docs(Sequence[Doc]):
    """`ScopeIndex.docs`: each row as a `Doc`, built when asked for."""

    def __init__(self, idx: ScopeIndex) -> None:
        self._idx = idx

    def __len__(self) -> int:
        return self._idx._c.n

    def __getitem__(self, i: int) -> Doc:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self._idx._doc(i)

    def __iter__(self) -> Iterator[Doc]:
        for i in range(len(self)):
            yield self._idx._doc(i)


class _Keyed:
    """key -> rows over a column: a sorted part (argsort, rebuilt now and then) and a dict of
    the rows added since; a row counts while `valid(row, key)`."""

    def __init__(self) -> None:
        self.sorted_keys: np.ndarray | None = None
        self.sorted_rows = np.zeros(0, dtype=np.int64)
        self.tail: dict[Any, list[int]] = {}
        self.tail_n = 0

    def reset(self) -> None:
        self.sorted_keys, self.tail, self.tail_n = None, {}, 0
        self.sorted_rows = np.zeros(0, dtype=np.int64)

    def add(self, key: Any, row: int) -> None:
        if self.sorted_keys is not None:
            self.tail.setdefault(key, []).append(row)
            self.tail_n += 1

    def sorted_for(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sorted keys, their rows), sorted anew once the tail has grown."""
        if self.sorted_keys is None or self.tail_n > max(1024, len(keys) // 8):
            order = np.argsort(keys, kind="stable")
            self.sorted_keys, self.sorted_rows = keys[order], order.astype(np.int64)
            self.tail, self.tail_n = {}, 0
        return self.sorted_keys, self.sorted_rows

    def candidates(self, keys: np.ndarray, probe: Any) -> list[int]:
        """Rows filed under `probe` (unchecked), ascending."""
        sk, _ = self.sorted_for(keys)
        lo = int(np.searchsorted(sk, probe, "left"))
        hi = int(np.searchsorted(sk, probe, "right"))
        out = self.sorted_rows[lo:hi].tolist()
        more = self.tail.get(probe.item() if isinstance(probe, np.generic) else probe)
        return out + more if more else out


class RowsById:
    """`ScopeIndex.pos`: cube id -> the row of its current entry (a mapping's reads, `pop`)."""

    def __init__(self, idx: ScopeIndex) -> None:
        self._idx = idx
        self._k = _Keyed()

    def get(self, cid: str, default: int | None = None) -> int | None:
        c = self._idx._c
        b = cid.encode()
        if not c.n or len(b) > c.ids.dtype.itemsize:
            return default
        ids, held = c.ids[: c.n], c.rows["held"]
        for r in reversed(self._k.candidates(ids, np.bytes_(b))):
            if held[r] and ids[r] == b:
                return r
        return default

    def rows_of(self, cids: Sequence[str]) -> np.ndarray:
        """The rows of these ids at once (-1: not held): one sorted search for all of them,
        `get` only for an id with more than one row or rows added since the last sort."""
        c = self._idx._c
        out = np.full(len(cids), -1, dtype=np.int64)
        if not c.n or not len(cids):
            return out
        ids, held, k = c.ids[: c.n], c.rows["held"], self._k
        enc = [x.encode() for x in cids]
        fits = np.array([len(b) <= ids.dtype.itemsize for b in enc])
        probes = np.array(enc, dtype=ids.dtype)
        sk, sr = k.sorted_for(ids)
        lo = np.searchsorted(sk, probes, "left")
        hi = np.searchsorted(sk, probes, "right")
        r = sr[np.minimum(lo, len(sr) - 1)]
        one = fits & (hi - lo == 1) & held[r] & (ids[r] == probes)
        out[one] = r[one]
        for j in np.flatnonzero(fits & ~one).tolist():
            out[j] = self.get(cids[j], -1)
        return out

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, str) and self.get(cid) is not None

    def __getitem__(self, cid: str) -> int:
        r = self.get(cid)
        if r is None:
            raise KeyError(cid)
        return r

    def pop(self, cid: str, default: int | None = None) -> int | None:
        r = self.get(cid)
        if r is None:
            return default
        self._idx._c.rows["held"][r] = False
        return r

    def rows(self) -> np.ndarray:
        return np.flatnonzero(self._idx._c.view("held"))

    def __iter__(self) -> Iterator[str]:
        ids = self._idx._c.ids
        return iter([ids[r].decode() for r in self.rows().tolist()])

    def __len__(self) -> int:
        return int(self._idx._c.view("held").sum())

    def keys(self) -> set[str]:
        return set(self)

    def items(self) -> list[tuple[str, int]]:
        ids = self._idx._c.ids
        return [(ids[r].decode(), r) for r in self.rows().tolist()]


class RowsByHash:
    """`ScopeIndex.by_hash`: content hash -> the rows saying it (retired entries too; not
    purged ones), in row order."""

    def __init__(self, idx: ScopeIndex) -> None:
        self._idx = idx
        self._k = _Keyed()

    def get(self, h: int, default: list[int] | None = None) -> list[int]:
        c = self._idx._c
        try:
            key = _i64(h)
        except (TypeError, ValueError):
            return [] if default is None else default
        if not c.n:
            return [] if default is None else default
        hashes, purged = c.view("content_hash"), c.rows["purged"]
        rows = sorted(r for r in self._k.candidates(hashes, np.int64(key))
                      if hashes[r] == key and not purged[r])
        return rows if rows else ([] if default is None else default)

    def __getitem__(self, h: int) -> list[int]:
        rows = self.get(h)
        if not rows:
            raise KeyError(h)
        return rows

    def __contains__(self, h: object) -> bool:
        return isinstance(h, int) and bool(self.get(h))

    def keys(self) -> set[int]:
        c = self._idx._c
        return set(c.view("content_hash")[~c.view("purged")].tolist())


class ScopeIndex:
    """The keyword index and bookkeeping of one (vault, user) scope.

    Docs are kept in arrival order, as columns (`Columns`); each session's docs are ordered in
    time (the neighbours of a turn: `neighbours`, `adjacent`). BM25 has a main segment (bm25s)
    and a small tail of docs added since it was built, scored with the same formula and the
    main segment's statistics; the main segment is rebuilt when the tail grows past a quarter
    of it."""

    def __init__(self, vault: str, user_id: str, config: RetrievalConfig) -> None:
        self.vault, self.user_id, self.config = vault, user_id, config
        self._c = Columns()
        self.docs: Sequence[Doc] = _Docs(self)
        self.pos = RowsById(self)
        self.by_hash = RowsByHash(self)
        self.entity_names: Counter[str] = Counter()
        self.lexicon = Lexicon()  # the scope's words and their embeddings (query expansion)
        # each fact's graph links, ("entity" | "concept", norm), fetched on first need
        self.links: dict[str, tuple[tuple[str, str], ...]] = {}
        self.lock = threading.RLock()
        self.mark: tuple[int, int] | None = None  # the catalog's (seq, purged) it holds
        self._segments: dict[str, BM25Segment] | None = None
        self._main_n = 0
        self._version = 0
        self._arrays: tuple[int, np.ndarray, np.ndarray] | None = None
        self._tails: dict[str, tuple[int, BM25Tail]] = {}
        # the session order: rows by (session, created_at, row) over the first `_order_n` rows
        self._order: np.ndarray | None = None
        self._order_n = 0
        self._seat_of = np.zeros(0, dtype=np.int64)
        self._order_codes = np.zeros(0, dtype=np.int32)
        # called (lock held) after the main segments were rebuilt: e.g. to write a snapshot
        self.on_built: Callable[[ScopeIndex], None] | None = None
        self.saved_n = 0  # len(docs) when its last snapshot was written or read
        self.holds_purged = False  # the main segments hold postings of a purged cube

    @property
    def key(self) -> tuple[str, str]:
        """(vault, user_id)."""
        return self.vault, self.user_id

    @property
    def columns(self) -> Columns:
        """The rows as arrays (read them with the lock held; `col` for one of them)."""
        return self._c

    def col(self, name: str) -> np.ndarray:
        """One per-row column over all docs (a view: do not write to it)."""
        return self._c.view(name)

    def id_of(self, i: int) -> str:
        return self._c.ids[i].decode()

    def ids_of(self, rows: Iterable[int]) -> list[str]:
        got = self._c.ids[np.fromiter(rows, dtype=np.int64)]
        try:
            return got.astype(str).tolist()  # ASCII ids (ours are hex) decode in one call
        except UnicodeDecodeError:
            return [b.decode() for b in got.tolist()]

    def holds(self, cid: str, version: int, state: str, expires_at: float | None) -> bool:
        """Whether the current entry of `cid` is at this version, state and expiry: a row
        written since the index's mark that it already has (this process applied it)."""
        i = self.pos.get(cid)
        if i is None:
            return False
        r = self._c.rows
        exp = float(r["expires_at"][i])
        return (int(r["version"][i]) == version and self.state_of(i) == state
                and (math.isnan(exp) if expires_at is None else exp == expires_at))

    def state_of(self, i: int) -> str:
        return self._c.tables["states"].items[int(self._c.rows["state"][i])]

    def _gather(self, rows: Sequence[int], flat: str, start: str, length: str
                ) -> tuple[np.ndarray, np.ndarray]:
        """The values of a flat column held by these rows (`start` / `length`: its row
        columns), and for each value the position in `rows` of the row that holds it."""
        c = self._c
        at = np.asarray(rows, dtype=np.int64)
        lens = c.rows[length][at].astype(np.int64)
        owner = np.repeat(np.arange(len(at)), lens)
        first = np.repeat(c.rows[start][at].astype(np.int64) - (np.cumsum(lens) - lens), lens)
        return c.flat[flat][first + np.arange(len(owner))], owner

    def entity_match(self, rows: Sequence[int], names: Sequence[str]) -> np.ndarray:
        """Per row: the mean over `names` of 1 (the row's speaker), 0.5 (mentioned), else 0."""
        m = len(rows)
        out = np.zeros(m)
        if not m or not names:
            return out
        ents, owner = self._gather(rows, "entities", "ent_start", "ent_len")
        speaker = self._c.rows["speaker"][np.asarray(rows, dtype=np.int64)]
        code = self._c.tables["names"].code
        for name in names:
            j = code.get(name)
            if j is None:
                continue
            said = np.zeros(m, dtype=bool)
            said[owner[ents == j]] = True
            out += np.where(speaker == j, 1.0, np.where(said, 0.5, 0.0))
        return out / len(names)

    def told_of(self, rows: Sequence[int], lo: float, hi: float) -> np.ndarray:
        """Per row: whether its `when` spans tell of a day in [lo, hi) ("last week", said on
        15 May, is 8-14 May)."""
        out = np.zeros(len(rows), dtype=bool)
        if not len(rows):
            return out
        spans, owner = self._gather(rows, "when", "when_start", "when_len")
        start, end = spans[0::2], spans[1::2]
        out[owner[0::2][(start < hi) & (end > lo)]] = True
        return out

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(dead mask, valid_from) over all docs, cached until the docs change."""
        if self._arrays is None or self._arrays[0] != self._version:
            self._arrays = (self._version, ~self._c.view("alive"),
                            self._c.view("valid_from").copy())
        return self._arrays[1], self._arrays[2]

    def _doc(self, i: int) -> Doc:
        c = self._c
        r = c.rows
        t = c.tables
        s, sp = int(r["session"][i]), int(r["speaker"][i])
        words, names = t["words"].items, t["names"].items
        return Doc(
            id=c.ids[i].decode(), session=None if s < 0 else t["sessions"].items[s],
            created_at=float(r["created_at"][i]), valid_from=float(r["valid_from"][i]),
            valid_to=_opt(r["valid_to"][i]), expires_at=_opt(r["expires_at"][i]),
            speaker=None if sp < 0 else names[sp],
            entities=frozenset([names[j] for j in c.names_of(i)]),
            importance=float(r["importance"][i]), state=t["states"].items[int(r["state"][i])],
            keyed=bool(r["keyed"][i]), tokens=tuple([words[j] for j in c.words_of(i)]),
            content_hash=int(r["content_hash"][i]), alive=bool(r["alive"][i]),
            dated=bool(r["dated"][i]), when=c.when_of(i), version=int(r["version"][i]),
        )

    def live_doc_freq(self, words: Iterable[str]) -> Counter[str]:
        """How many live docs hold each of `words` (a word no live doc holds: absent)."""
        with self.lock:
            c = self._c
            code = c.tables["words"].code
            wanted = {code[w]: w for w in words if w in code}
            if not wanted or not c.n:
                return Counter()
            lens = c.view("tok_len").astype(np.int64)
            lens[~c.view("alive")] = 0
            starts = c.view("tok_start")
            total = int(lens.sum())
            row = np.repeat(np.arange(c.n, dtype=np.int64), lens)
            at = np.repeat(starts, lens) + (np.arange(total) - np.repeat(np.cumsum(lens) - lens,
                                                                           lens))
            toks = c.flat["tokens"][at].astype(np.int64)
            keep = np.isin(toks, np.fromiter(wanted, dtype=np.int64))
            pairs = np.unique(row[keep] * len(c.tables["words"]) + toks[keep])
            got, counts = np.unique(pairs % len(c.tables["words"]), return_counts=True)
            return Counter({wanted[int(g)]: int(k) for g, k in zip(got, counts, strict=True)})

    # building
    def _reset(self, cols: Columns) -> None:
        self._c = cols
        self.pos._k.reset()
        self.by_hash._k.reset()
        self.links = {}
        self._segments, self._main_n = None, 0
        self._order, self._order_n = None, 0
        self._tails = {}
        self._version += 1
        self.entity_names = self._count_names()

    def _count_names(self) -> Counter[str]:
        c = self._c
        k = len(c.tables["names"])
        if not k:
            return Counter()
        spk = c.view("speaker")
        counts = (np.bincount(c.flat_view("entities"), minlength=k)
                  + np.bincount(spk[spk >= 0], minlength=k))
        names = c.tables["names"].items
        return Counter({names[j]: int(counts[j]) for j in np.flatnonzero(counts).tolist()})

    def load(self, docs: Sequence[Doc]) -> None:
        with self.lock:
            self._reset(Columns())
            for d in sorted(docs, key=lambda d: (d.created_at, d.id)):
                self._append(d)
            self.lexicon.keep(self._c.tables["words"].code)

    def restore(self, docs: Columns, segments: dict[str, BM25Segment],
                mark: tuple[int, int], lexicon: Lexicon) -> None:
        """Take a snapshot's docs, `segments` built over the first of them (the others are the
        tail), and its lexicon, at `mark`."""
        with self.lock:
            self._reset(docs)
            self.lexicon = lexicon
            self._segments, self.mark = segments, mark
            self._main_n = min(seg.n for seg in segments.values())
            self.saved_n, self.holds_purged = self._c.n, False

    @property
    def segments(self) -> dict[str, BM25Segment] | None:
        """The main BM25 segments, over `docs[:len]` of when they were built (None: not yet)."""
        return self._segments

    def _append(self, d: Doc) -> None:
        self._version += 1
        c = self._c
        i = c.n
        c.reserve(i + 1)
        r, t = c.rows, c.tables
        c.set_id(i, d.id)
        r["created_at"][i], r["valid_from"][i] = d.created_at, d.valid_from
        r["valid_to"][i], r["expires_at"][i] = _nan(d.valid_to), _nan(d.expires_at)
        r["importance"][i], r["version"][i] = d.importance, d.version
        h = r["content_hash"][i] = _i64(d.content_hash)
        r["alive"][i], r["keyed"][i], r["dated"][i] = d.alive, d.keyed, d.dated
        r["held"][i], r["purged"][i] = True, False
        r["state"][i] = t["states"].add(d.state)
        r["session"][i] = -1 if d.session is None else t["sessions"].add(d.session)
        self._set_names(i, d)
        words = t["words"]
        toks = [words.add(w) for w in d.tokens]
        if d.surface:
            self.lexicon.add(d.tokens, d.surface)
        r["tok_start"][i], r["tok_len"][i] = c.push_flat("tokens", toks), len(toks)
        self._set_when(i, d)
        c.n = i + 1
        self.pos._k.add(c.ids[i], i)
        self.by_hash._k.add(h, i)
        self.entity_names.update(d.entities)
        if d.speaker:
            self.entity_names[d.speaker] += 1

    def _set_when(self, i: int, d: Doc) -> None:
        flat = [float(x) for span in d.when for x in span]
        c = self._c
        c.rows["when_start"][i] = c.push_flat("when", flat) if flat else 0
        c.rows["when_len"][i] = len(flat)

    def _set_names(self, i: int, d: Doc) -> None:
        c = self._c
        names = c.tables["names"]
        c.rows["speaker"][i] = names.add(d.speaker) if d.speaker else -1
        ents = sorted(names.add(e) for e in d.entities)
        c.rows["ent_start"][i], c.rows["ent_len"][i] = c.push_flat("entities", ents), len(ents)

    def _same_words(self, i: int, d: Doc) -> bool:
        c = self._c
        code = c.tables["words"].code
        s = d.session
        if (-1 if s is None else c.tables["sessions"].code.get(s, -2)) != c.rows["session"][i]:
            return False
        return c.words_of(i) == [code.get(w, -1) for w in d.tokens]

    def upsert(self, docs: Sequence[Doc]) -> None:
        """Apply writes (new cubes, new versions, state changes); a doc older than the one
        held (a lower version) is ignored."""
        with self.lock:
            for d in docs:
                i = self.pos.get(d.id)
                if i is not None and self._c.rows["version"][i] > d.version:
                    continue
                self.links.pop(d.id, None)
                if i is None:
                    if d.state in INDEXED:
                        self._append(d)
                    continue
                if not self._same_words(i, d):
                    # content changed: retire the old entry, append the new one
                    self._c.rows["alive"][i] = False
                    self._c.rows["held"][i] = False
                    self._version += 1
                    if d.state in INDEXED:
                        self._append(d)
                    if i < self._main_n:
                        self._segments = None  # stale statistics: rebuild on next search
                else:
                    self._replace(i, d)
            self._version += 1

    def _replace(self, i: int, d: Doc) -> None:
        """Doc `i` takes `d`'s fields (same words, same session: a state or metadata change)."""
        c = self._c
        r = c.rows
        if r["created_at"][i] != d.created_at:
            self._order = None  # the session order changes
        r["created_at"][i], r["valid_from"][i] = d.created_at, d.valid_from
        r["valid_to"][i], r["expires_at"][i] = _nan(d.valid_to), _nan(d.expires_at)
        r["importance"][i], r["version"][i] = d.importance, d.version
        r["keyed"][i], r["dated"][i] = d.keyed, d.dated
        r["alive"][i] = d.state in INDEXED
        r["state"][i] = c.tables["states"].add(d.state)
        h = _i64(d.content_hash)
        if h != r["content_hash"][i]:
            r["content_hash"][i] = h
            self.by_hash._k.reset()
        names = c.tables["names"]
        if (sorted(names.code.get(e, -1) for e in d.entities) != c.names_of(i)
                or r["speaker"][i] != (names.code.get(d.speaker, -1) if d.speaker else -1)):
            self._set_names(i, d)  # the old slice is left unused (counts are kept as they were)
        if c.when_of(i) != tuple(d.when):
            self._set_when(i, d)  # the old slice is left unused

    def remove(self, ids: Sequence[str]) -> None:
        """Drop purged cubes: each of their entries (retired versions too) loses its words and
        names; while the main segments still hold postings of one, `holds_purged` is set (no
        snapshot is written until they are rebuilt without it)."""
        with self.lock:
            gone = set(ids)
            for cid in gone:
                self.links.pop(cid, None)
                self.pos.pop(cid, None)
            c = self._c
            wanted = np.array([g.encode() for g in gone], dtype=c.ids.dtype) if gone else None
            rows = (np.flatnonzero(np.isin(c.ids[: c.n], wanted))
                    if wanted is not None and c.n else np.zeros(0, dtype=np.int64))
            rows = [i for i in rows.tolist() if c.ids[i].decode() in gone]
            for i in rows:
                self._forget(i)
            if rows:
                self._drop_unused()
                self.lexicon.keep(self._c.tables["words"].code)
            self._version += 1

    def _forget(self, i: int) -> None:
        c = self._c
        r = c.rows
        names = c.tables["names"].items
        held = [names[j] for j in c.names_of(i)]
        if r["speaker"][i] >= 0:
            held.append(names[int(r["speaker"][i])])
        self.entity_names.subtract(held)
        self.entity_names += Counter()  # drop the names no fact holds any more
        for flat, start, length in SLICES:
            s, ln = int(r[start][i]), int(r[length][i])
            c.flat[flat][s : s + ln] = -1
            r[length][i] = 0
        r["speaker"][i] = -1
        r["content_hash"][i] = 0
        r["alive"][i], r["held"][i], r["purged"][i] = False, False, True
        if i < self._main_n:
            self.holds_purged = True

    def _drop_unused(self) -> None:
        """The words and names of purged entries out of the tables (codes renumbered)."""
        c = self._c
        for flat, table, extra in (("tokens", "words", None), ("entities", "names", "speaker")):
            codes = c.flat_view(flat)
            used = codes[codes >= 0]
            if extra is not None:
                e = c.view(extra)
                used = np.concatenate([used, e[e >= 0]])
            c.tables[table], remap = _subtable(c.tables[table], np.unique(used))
            live = codes >= 0
            codes[live] = remap[codes[live]]
            if extra is not None:
                e = c.rows[extra][: c.n]
                e[e >= 0] = remap[e[e >= 0]]
        self._tails = {}

    # neighbours
    def _session_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows in session order, each row's place there, the session code at each place):
        rows by (session, created_at, row); rows added since it was last built are merged in."""
        c = self._c
        n = c.n
        sess, created = c.view("session"), c.view("created_at")
        new = n - self._order_n
        if self._order is None or new > max(256, n // 8):
            order = np.lexsort((np.arange(n), created, sess))
        elif new:
            order = self._order
            add = np.arange(self._order_n, n)
            add = add[np.lexsort((add, created[add], sess[add]))]
            codes = sess[order]
            times = created[order]
            at = []
            for j in add.tolist():
                lo = int(np.searchsorted(codes, sess[j], "left"))
                hi = int(np.searchsorted(codes, sess[j], "right"))
                at.append(lo + int(np.searchsorted(times[lo:hi], created[j], "right")))
            order = np.insert(order, at, add)
        else:
            order = self._order
        if self._order is not order or len(self._seat_of) != n:
            seat = np.empty(n, dtype=np.int64)
            seat[order] = np.arange(n)
            self._order, self._order_n, self._seat_of = order, n, seat
            self._order_codes = sess[order]
        return self._order, self._seat_of, self._order_codes

    def _blocks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For each row: its place in the session order, its session's [lo, hi) there, and
        the order itself."""
        order, seat, codes = self._session_order()
        at = seat[rows]
        s = codes[at]
        return at, np.searchsorted(codes, s, "left"), np.searchsorted(codes, s, "right"), order

    def neighbours(self, i: int, before: int, after: int) -> list[int]:
        with self.lock:
            if not 0 <= i < self._c.n:
                return []
            at, lo, hi, order = self._blocks(np.array([i]))
            a, lo_, hi_ = int(at[0]), int(lo[0]), int(hi[0])
            alive = self._c.rows["alive"]
            window = order[max(lo_, a - before): min(hi_, a + after + 1)].tolist()
            return [j for j in window if j != i and alive[j]]

    def adjacent(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """For each row, its live previous and next turn in the session (-1: none)."""
        prev = np.full(len(rows), -1, dtype=np.int64)
        nxt = np.full(len(rows), -1, dtype=np.int64)
        if not len(rows):
            return prev, nxt
        with self.lock:
            at, lo, hi, order = self._blocks(np.asarray(rows, dtype=np.int64))
            alive = self._c.view("alive")
            has = at > lo
            p = order[np.where(has, at - 1, 0)]
            ok = has & alive[p]
            prev[ok] = p[ok]
            has = at + 1 < hi
            q = order[np.where(has, at + 1, 0)]
            ok = has & alive[q]
            nxt[ok] = q[ok]
        return prev, nxt

    # BM25
    def _context_lists(self, toks: list[list[str]], rows: range, before: int,
                       after: int) -> list[list[str]]:
        """Each row's tokens and its live session neighbours' (`before`, `after` turns)."""
        if not len(rows):
            return []
        sel = np.arange(rows.start, rows.stop)
        at, lo, hi, order = self._blocks(sel)
        order_l = order.tolist()
        alive = self._c.view("alive").tolist()
        out = []
        for i, a, lo_, hi_ in zip(sel.tolist(), at.tolist(), lo.tolist(), hi.tolist(),
                                  strict=True):
            got = list(toks[i])
            for j in order_l[max(lo_, a - before): min(hi_, a + after + 1)]:
                if j != i and alive[j]:
                    got.extend(toks[j])
            out.append(got)
        return out

    def _compact(self) -> None:
        """Keep only the live rows (in (created_at, id) order, as `load` does)."""
        c = self._c
        keep = np.flatnonzero(c.view("alive"))
        keep = keep[np.lexsort((c.ids[keep], c.view("created_at")[keep]))]
        self._reset(c.taken(keep))
        self.lexicon.keep(self._c.tables["words"].code)

    def _ensure_segments(self) -> None:
        c = self._c
        n = c.n
        tail = n - self._main_n
        if self._segments is not None and (tail == 0 or tail < max(500, self._main_n // 4)):
            return
        cfg = self.config
        alive = int(c.view("alive").sum())
        if (alive < n * 0.8 and n > 1000) or c.view("purged").any():
            self._compact()  # after many retirements, or a purge: its entries go
            c = self._c
            n = c.n
        toks = c.token_lists()
        every = range(n)
        self._segments = {
            "keyword": BM25Segment(toks, cfg.bm25_k1, cfg.bm25_b),
            "context": BM25Segment(
                self._context_lists(toks, every, cfg.context_turns, cfg.context_turns),
                cfg.bm25_k1, cfg.bm25_b),
            "window": BM25Segment(
                self._context_lists(toks, every, cfg.window_turns, cfg.window_turns),
                cfg.bm25_k1, cfg.bm25_b),
        }
        self._main_n, self.holds_purged = n, False
        if self.on_built is not None:
            self.on_built(self)

    def keyword_scores(self, query: Sequence[str]) -> dict[str, np.ndarray]:
        """BM25 scores of every doc (dead ones 0) for each keyword index."""
        with self.lock:
            self._ensure_segments()
            assert self._segments is not None
            n = self._c.n
            out = {}
            cfg = self.config
            spans = {"keyword": (0, 0), "context": (cfg.context_turns, cfg.context_turns),
                     "window": (cfg.window_turns, cfg.window_turns)}
            for name, seg in self._segments.items():
                scores = np.zeros(n, dtype=np.float32)
                if seg.n:
                    scores[: seg.n] = seg.scores(query)
                if n > seg.n:  # the tail: same formula, main statistics
                    scores[seg.n :] = self._tail(name, seg, spans[name]).scores(query, n)
                out[name] = scores
            dead, _ = self.arrays()
            for s in out.values():
                s[dead] = 0.0
            return out

    def _tail(self, name: str, seg: BM25Segment, span: tuple[int, int]) -> BM25Tail:
        """The tail index of one segment, rebuilt only when the docs have changed."""
        cached = self._tails.get(name)
        if cached is None or cached[0] != self._version or cached[1].seg is not seg:
            before, after = span
            c = self._c
            words = c.tables["words"].items
            lists: dict[int, list[str]] = {}

            class _Lazy:  # rows' tokens, decoded when the context asks for them
                def __getitem__(self, i: int) -> list[str]:
                    got = lists.get(i)
                    if got is None:
                        got = lists[i] = [words[j] for j in c.words_of(i)]
                    return got

            docs = self._context_lists(_Lazy(), range(seg.n, c.n),  # type: ignore[arg-type]
                                       before, after)
            cached = self._tails[name] = (self._version, BM25Tail(seg, docs))
        return cached[1]

    def doc_freq(self) -> Counter[str]:
        """Keyword document frequencies of the main BM25 segment (stems)."""
        if self._segments is None:
            self._ensure_segments()
        assert self._segments is not None
        return self._segments["keyword"].df

    def known_entities(self, words: Sequence[str]) -> list[str]:
        """Which of these (normalised) names are entities of this scope."""
        return [w for w in words if w in self.entity_names]
