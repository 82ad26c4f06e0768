"""The per-scope index: BM25 and the facts' bookkeeping of one (vault, user) scope, in memory.

Built from the catalog on first use, kept current by the vault's own writes and, before every
search, by the rows any process wrote since the index's change mark (see `Router.scope_index`)."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from ..cube import MemCube, State
from ..events import time_phrases
from ..graph.base import norm_entity
from ..lifecycle import LIVE as LIVE_STATES
from ..text import keyword_tokens
from .bm25 import BM25Segment, BM25Tail
from .config import RetrievalConfig

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
    text_key: str = ""  # what `content_hash` hashes (the hash is per process), for snapshots


def doc_of(cube: MemCube) -> Doc:
    speaker = cube.provenance.speaker
    text = f"{speaker}: {cube.content}" if speaker else cube.content
    said = " ".join(cube.content.split()).casefold()
    lc = cube.lifecycle
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
        tokens=tuple(map(sys.intern, keyword_tokens(text))),  # one object per word
        content_hash=hash((speaker or "", said)),
        dated=bool(time_phrases(cube.content)),
        when=spans_of(cube.metadata.get("when")),
        version=lc.version,
        text_key=f"{speaker or ''}\0{said}",
    )


def content_hash(text_key: str) -> int:
    """This process's `Doc.content_hash` of a `Doc.text_key`."""
    speaker, _, said = text_key.partition("\0")
    return hash((speaker, said))


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


class ScopeIndex:
    """The keyword index and bookkeeping of one (vault, user) scope.

    Docs are kept in arrival order; `sessions` orders each session's docs in time (the
    neighbours of a turn). BM25 has a main segment (bm25s) and a small tail of docs added since
    it was built, scored with the same formula and the main segment's statistics; the main
    segment is rebuilt when the tail grows past a quarter of it."""

    def __init__(self, vault: str, user_id: str, config: RetrievalConfig) -> None:
        self.vault, self.user_id, self.config = vault, user_id, config
        self.docs: list[Doc] = []
        self.pos: dict[str, int] = {}
        self.sessions: dict[str | None, list[int]] = {}
        self.seq_pos: dict[int, int] = {}
        self.by_hash: dict[int, list[int]] = {}
        self.entity_names: Counter[str] = Counter()
        # each fact's graph links, ("entity" | "concept", norm), fetched on first need
        self.links: dict[str, tuple[tuple[str, str], ...]] = {}
        self.lock = threading.RLock()
        self.mark: tuple[int, int] | None = None  # the catalog's (seq, purged) it holds
        self._segments: dict[str, BM25Segment] | None = None
        self._main_n = 0
        self._version = 0
        self._arrays: tuple[int, np.ndarray, np.ndarray] | None = None
        self._tails: dict[str, tuple[int, BM25Tail]] = {}
        # called (lock held) after the main segments were rebuilt: e.g. to write a snapshot
        self.on_built: Callable[[ScopeIndex], None] | None = None
        self.saved_n = 0  # len(docs) when its last snapshot was written or read
        self.holds_purged = False  # the main segments hold postings of a purged cube

    @property
    def key(self) -> tuple[str, str]:
        """(vault, user_id)."""
        return self.vault, self.user_id

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(dead mask, valid_from) over all docs, cached until the docs change."""
        if self._arrays is None or self._arrays[0] != self._version:
            n = len(self.docs)
            dead = np.fromiter((not d.alive for d in self.docs), dtype=bool, count=n)
            times = np.fromiter((d.valid_from for d in self.docs), dtype=np.float64, count=n)
            self._arrays = (self._version, dead, times)
        return self._arrays[1], self._arrays[2]

    # building
    def load(self, docs: Sequence[Doc]) -> None:
        with self.lock:
            self.docs, self.pos, self.sessions, self.by_hash = [], {}, {}, {}
            self.seq_pos = {}
            self.entity_names = Counter()
            self.links = {}
            self._segments, self._main_n = None, 0
            for d in sorted(docs, key=lambda d: (d.created_at, d.id)):
                self._append(d)

    def restore(self, docs: Sequence[Doc], segments: dict[str, BM25Segment],
                mark: tuple[int, int]) -> None:
        """Take a snapshot's docs, `segments` built over the first of them (the others are
        the tail), at `mark`."""
        with self.lock:
            self.load(())
            for d in docs:
                self._append(d)
            self._segments, self.mark = segments, mark
            self._main_n = min(seg.n for seg in segments.values())
            self.saved_n, self.holds_purged = len(self.docs), False

    @property
    def segments(self) -> dict[str, BM25Segment] | None:
        """The main BM25 segments, over `docs[:len]` of when they were built (None: not yet)."""
        return self._segments

    def _append(self, d: Doc) -> None:
        self._version += 1
        i = len(self.docs)
        self.docs.append(d)
        self.pos[d.id] = i
        seq = self.sessions.setdefault(d.session, [])
        if seq and self.docs[seq[-1]].created_at > d.created_at:
            seq.append(i)
            seq.sort(key=lambda j: (self.docs[j].created_at, self.docs[j].id))
            self.seq_pos.update((j, p) for p, j in enumerate(seq))
        else:
            self.seq_pos[i] = len(seq)
            seq.append(i)
        self.by_hash.setdefault(d.content_hash, []).append(i)
        self.entity_names.update(d.entities)
        if d.speaker:
            self.entity_names[d.speaker] += 1

    def upsert(self, docs: Sequence[Doc]) -> None:
        """Apply writes (new cubes, new versions, state changes); a doc older than the one
        held (a lower version) is ignored."""
        with self.lock:
            for d in docs:
                i = self.pos.get(d.id)
                if i is not None and self.docs[i].version > d.version:
                    continue
                self.links.pop(d.id, None)
                if i is None:
                    if d.state in INDEXED:
                        self._append(d)
                    continue
                old = self.docs[i]
                if old.tokens != d.tokens or old.session != d.session:
                    # content changed: retire the old entry, append the new one
                    old.alive = False
                    self._version += 1
                    del self.pos[d.id]
                    if d.state in INDEXED:
                        self._append(d)
                    if i < self._main_n:
                        self._segments = None  # stale statistics: rebuild on next search
                else:
                    d.alive = d.state in INDEXED
                    self.docs[i] = d
            self._version += 1

    def remove(self, ids: Sequence[str]) -> None:
        """Drop purged cubes: each of their entries (retired versions too) loses its words and
        names; while the main segments still hold postings of one, `holds_purged` is set (no
        snapshot is written until they are rebuilt without it)."""
        with self.lock:
            gone = set(ids)
            for cid in gone:
                self.links.pop(cid, None)
                self.pos.pop(cid, None)
            for i, d in enumerate(self.docs):
                if d.id in gone:
                    self._forget(i)
            self._version += 1

    def _forget(self, i: int) -> None:
        d = self.docs[i]
        self.entity_names.subtract([*d.entities, *([d.speaker] if d.speaker else [])])
        self.entity_names += Counter()  # drop the names no fact holds any more
        same = self.by_hash.get(d.content_hash, [])
        if i in same:
            same.remove(i)
        self.docs[i] = replace(d, alive=False, tokens=(), text_key="", entities=frozenset(),
                               speaker=None)
        if i < self._main_n:
            self.holds_purged = True

    # neighbours
    def _seat(self, i: int) -> tuple[list[int], int]:
        """Doc `i`'s session (in time order) and its place there; ([], -1) if it has none."""
        seq = self.sessions.get(self.docs[i].session) or []
        at = self.seq_pos.get(i)
        if at is None or at >= len(seq) or seq[at] != i:
            return [], -1
        return seq, at

    def neighbours(self, i: int, before: int, after: int) -> list[int]:
        seq, at = self._seat(i)
        if at < 0:
            return []
        lo, hi = max(0, at - before), min(len(seq), at + after + 1)
        return [j for j in seq[lo:hi] if j != i and self.docs[j].alive]

    def adjacent(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """For each row, its live previous and next turn in the session (-1: none)."""
        prev = np.full(len(rows), -1, dtype=np.int64)
        nxt = np.full(len(rows), -1, dtype=np.int64)
        docs = self.docs
        for j, i in enumerate(rows):
            seq, at = self._seat(i)
            if at < 0:
                continue
            if at > 0 and docs[seq[at - 1]].alive:
                prev[j] = seq[at - 1]
            if at + 1 < len(seq) and docs[seq[at + 1]].alive:
                nxt[j] = seq[at + 1]
        return prev, nxt

    # BM25
    def _context_tokens(self, i: int, before: int, after: int) -> list[str]:
        toks = list(self.docs[i].tokens)
        for j in self.neighbours(i, before, after):
            toks.extend(self.docs[j].tokens)
        return toks

    def _ensure_segments(self) -> None:
        n = len(self.docs)
        tail = n - self._main_n
        if self._segments is not None and (tail == 0 or tail < max(500, self._main_n // 4)):
            return
        cfg = self.config
        alive = [i for i in range(n) if self.docs[i].alive]
        if len(alive) < n * 0.8 and n > 1000:  # compact after many retirements
            self.load([self.docs[i] for i in alive])
            n = len(self.docs)
        self._segments = {
            "keyword": BM25Segment([d.tokens for d in self.docs], cfg.bm25_k1, cfg.bm25_b),
            "context": BM25Segment(
                [self._context_tokens(i, cfg.context_turns, cfg.context_turns) for i in range(n)],
                cfg.bm25_k1,
                cfg.bm25_b,
            ),
            "window": BM25Segment(
                [self._context_tokens(i, cfg.window_turns, cfg.window_turns) for i in range(n)],
                cfg.bm25_k1,
                cfg.bm25_b,
            ),
        }
        self._main_n, self.holds_purged = n, False
        if self.on_built is not None:
            self.on_built(self)

    def keyword_scores(self, query: Sequence[str]) -> dict[str, np.ndarray]:
        """BM25 scores of every doc (dead ones 0) for each keyword index."""
        with self.lock:
            self._ensure_segments()
            assert self._segments is not None
            n = len(self.docs)
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
            docs = [self._context_tokens(i, before, after) for i in range(seg.n, len(self.docs))]
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
