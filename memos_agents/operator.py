"""MemOperator: organises plaintext memory into a topic -> concept -> fact graph, and keeps it
free of stale facts (supersede with lineage; nothing is silently deleted).

Organise, on every write, without a model:
- entities (proper names, speakers) and concepts (RAKE-style keyphrases, Snowball-normalised;
  a multi-word concept also files under its head word: "sunset painting" -> "painting");
- what the fact says (`events`): the speaker's first person ("I", "my sister" -> the speaker
  and "Caroline's sister", an entity OF the speaker), the times it names resolved against the
  date it was said ("last Saturday" -> 6 May 2023; on the Fact and in `metadata["when"]`), and
  a SAME_ENTITY edge to the latest earlier fact of another session naming the same entity;
- typed, weighted relations between concepts: RELATED (co-occurring in a fact) and BROADER
  (a phrase to its head word);
- topics: each new fact joins the nearest topic centroid of its scope (cosine over the vectors
  the vault already computed; nothing is embedded twice), or seeds a new topic; the scope is
  re-clustered (k-means over its stored vectors, fitted on at most `CLUSTER_SAMPLE` of them, on
  one thread) whenever it has doubled since the last time, so the cost stays amortised O(1)
  per add. Topics are labelled by YAKE keyphrases of their facts that are frequent in them
  and rare in other topics (c-TF-IDF style), and the entity most of their facts name; with a
  LangChain chat model, the model names them.

Supersede, conservatively: a new fact supersedes an older one of the same scope only when
(a) neither is a keyed store item and both have the same speaker, (b) they are close in meaning
(cosine >= `supersede_similarity`), (c) they share a named entity or concept, and (d) the new
text states an explicit update ("no longer", "moved to", "switched to", "not anymore", ...;
a question never does); or, for facts that are not conversation turns or document chunks,
when the new one repeats the old one word for word. The old cube gets a new version (state
superseded, valid_to set), the new one lists it in `derived_from`, the graph gets a SUPERSEDES
edge.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import threading
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from .catalog import Catalog
from .cube import Form, MemCube, SourceKind, State, utcnow
from .events import FactEvents, TimeSpan, addressed, read_events
from .graph.base import (
    ConceptLink,
    EntityLink,
    EntityMention,
    FactEvent,
    FactNode,
    GraphStore,
    TopicNode,
    concept_norm,
    norm_entity,
)
from .reader import extract_concepts, stop_words
from .retrieval.index import content_hash_of
from .text import keyword_tokens
from .vector.base import VectorIndex

if TYPE_CHECKING:
    from .retrieval import ScopeIndex

WriteVersion = Callable[[MemCube, str, str, int], None]
"""(cube, op, changed_by, expected_version): store a new version of a cube and re-index it."""

log = logging.getLogger(__name__)

_UPDATE_CUE = re.compile(
    r"\b(no longer|not any ?more|moved to|switched to|changed (?:my|our|it|the)|"
    r"instead of|from now on|correction|i quit|we quit|stopped|replaced|now (?:live|work|"
    r"prefer|use|go|have|am|is|are)|updated?:)\b",
    re.IGNORECASE,
)


class OperatorConfig(BaseModel):
    assign_similarity: float = Field(default=0.35, description="join a topic at this cosine")
    recluster_min: int = Field(default=32, description="first full clustering at this size")
    recluster_max: int = Field(default=50_000, description="no full re-clustering past this")
    max_topics: int = 200
    supersede_similarity: float = 0.6
    concepts_per_fact: int = 4
    drop_addressees: bool = Field(
        default=True, description="a name a turn only addresses (\"Thanks, Mel!\") is not an "
        "entity it mentions (`events.addressed`)")
    same_entity_fanout: int = Field(
        default=64, description="SAME_ENTITY chains only for entities on at most this many facts")
    background: bool = Field(
        default=True,
        description="relations, topic weights and re-clustering on a worker thread "
        "(`flush()` waits for it); off: inside each write",
    )


class Placement(BaseModel):
    """Where the operator put one fact, and what it read in it (speaker coreference, times)."""

    concepts: list[str] = Field(default_factory=list)
    topic: str | None = None
    events: FactEvents | None = None


@dataclass
class FactReading:
    """What the operator reads in one fact's text (`MemOperator.read_fact`): its concepts and
    events, and what `apply` sets on the cube: the entities (addressees dropped, the ones its
    first person names added) and `metadata["when"]` (None: left alone)."""

    concepts: list[str]
    events: FactEvents
    entities: list[str]
    when: list[dict[str, Any]] | None = None

    def apply(self, cube: MemCube) -> None:
        cube.organisation.entities = list(self.entities)
        if self.when is not None:
            cube.metadata["when"] = self.when


class TopicView(BaseModel):
    tid: str
    label: str
    size: int
    concepts: list[dict[str, Any]] = Field(default_factory=list)
    entities: list[dict[str, Any]] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list)

    def render_lines(self, pad: str, concepts: int, facts: int, width: int) -> list[str]:
        """The topic's entities, dated events and concepts (with facts), under `pad`."""
        lines: list[str] = []
        if self.entities:
            names = ", ".join(f"{e['name']} ({e['facts']})" for e in self.entities[:6])
            lines.append(f"{pad}entities: {names}"[:width])
        for e in self.events[:4]:
            when = TimeSpan(phrase=e["phrase"] or "", start=_day(e["start"]),
                            end=_day(e["end"])).label()
            text = " ".join(str(e["event"]).split())
            lines.append(f"{pad}event {when}: {text} ({e['phrase']})"[:width])
        shown = self.concepts[:concepts]
        for ci, c in enumerate(shown):
            last_c = ci == len(shown) - 1
            lines.append(f"{pad}{'└──' if last_c else '├──'} {c['name']} (w={c['weight']:g})")
            pad2 = pad + ("    " if last_c else "│   ")
            for f in c.get("facts", [])[:facts]:
                text = " ".join(str(f["text"]).split())
                lines.append(f"{pad2}· {text[: width - len(pad2) - 2]}")
        return lines


class TopicTree(BaseModel):
    """The topic -> concept -> fact hierarchy of one scope."""

    vault: str
    user_id: str
    topics: list[TopicView] = Field(default_factory=list)

    def render(self, concepts: int = 4, facts: int = 1, width: int = 100) -> str:
        """A text tree: each topic with its entities, dated events and concepts."""
        lines = [f"{self.user_id} @ {self.vault}: {len(self.topics)} topics"]
        for ti, t in enumerate(self.topics):
            last_t = ti == len(self.topics) - 1
            lines.append(f"{'└──' if last_t else '├──'} [{t.tid}] {t.label}  ({t.size} facts)")
            lines += t.render_lines("    " if last_t else "│   ", concepts, facts, width)
        return "\n".join(lines)

    def to_dot(self, concepts: int = 5) -> str:
        """Graphviz DOT of topics and their concepts."""
        out = ["digraph memory {", "  rankdir=LR; node [shape=box, fontsize=10];"]
        for t in self.topics:
            tid = f"t_{_dot_id(t.tid)}"
            out.append(f'  {tid} [label="{_dot_str(t.label)}\\n{t.size} facts", '
                       'style=filled, fillcolor="#dde8ff"];')
            for c in t.concepts[:concepts]:
                cid = f"c_{_dot_id(c['name'])}"
                out.append(f'  {cid} [label="{_dot_str(c["name"])}"];')
                out.append(f'  {tid} -> {cid} [label="{c["weight"]:g}"];')
        out.append("}")
        return "\n".join(out)


def _day(t: float) -> date:
    return datetime.fromtimestamp(t, UTC).date()


def _midnight(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def _dot_id(s: str) -> str:
    return re.sub(r"\W", "_", s)


def _dot_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


class TopicState(BaseModel):
    """The stored topic state of one scope (a typed setting; scope: json [vault, user])."""

    settings_kind: ClassVar[str] = "topics"

    tids: list[str] = Field(default_factory=list)
    sizes: list[int] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    generation: int = 0
    next_id: int = 0
    n_total: int = 0
    n_clustered: int = 0
    sums: list[list[float]] | None = None
    cores: list[list[str]] = Field(
        default_factory=list, description="per topic, the facts its label was read from (id "
        "prefixes): a re-clustering keeps the label of a topic whose core is mostly the same")


@dataclass
class _Topics:
    """The topic state of one scope: normalised centroids, sizes, labels."""

    tids: list[str] = field(default_factory=list)
    centroids: np.ndarray | None = None  # (k, d), rows of unit length
    sums: np.ndarray | None = None  # (k, d) running sums of member vectors
    sizes: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    generation: int = 0
    next_id: int = 0
    n_total: int = 0
    n_clustered: int = 0
    dirty: int = 0
    cores: list[list[str]] = field(default_factory=list)  # `TopicState.cores`

    def to_state(self) -> TopicState:
        return TopicState(
            tids=self.tids, sizes=self.sizes, labels=self.labels,
            generation=self.generation, next_id=self.next_id, n_total=self.n_total,
            n_clustered=self.n_clustered,
            sums=None if self.sums is None else np.round(self.sums, 5).tolist(),
            cores=self.cores,
        )

    @classmethod
    def from_state(cls, d: TopicState) -> _Topics:
        t = cls(tids=d.tids, sizes=d.sizes, labels=d.labels,
                generation=d.generation, next_id=d.next_id, n_total=d.n_total,
                n_clustered=d.n_clustered, cores=d.cores)
        if d.sums:
            t.sums = np.asarray(d.sums, dtype=np.float32)
            t.centroids = _unit(t.sums)
        return t

    def nearest(self, v: np.ndarray) -> tuple[int, float]:
        if self.centroids is None or not len(self.tids):
            return -1, -1.0
        sims = self.centroids @ v
        j = int(sims.argmax())
        return j, float(sims[j])

    def add(self, j: int, v: np.ndarray) -> None:
        assert self.sums is not None and self.centroids is not None
        self.sums[j] += v
        self.sizes[j] += 1
        self.centroids[j] = _unit(self.sums[j : j + 1])[0]

    def new(self, v: np.ndarray, label: str) -> int:
        tid = f"{self.generation}.{self.next_id}"
        self.next_id += 1
        self.tids.append(tid)
        self.sizes.append(1)
        self.labels.append(label)
        row = v.reshape(1, -1).astype(np.float32)
        self.sums = row.copy() if self.sums is None else np.vstack([self.sums, row])
        self.centroids = _unit(self.sums)
        return len(self.tids) - 1


def _relations(
    placements: Sequence[Placement],
) -> tuple[list[ConceptLink], Counter[tuple[str, str]]]:
    """Typed concept relations (RELATED among a fact's top three concepts, BROADER from a
    phrase to its head word) and concept -> topic weights of these placed facts."""
    links: list[ConceptLink] = []
    weights: Counter[tuple[str, str]] = Counter()
    for p in placements:
        names = p.concepts
        top = names[:3]
        for a_i, a in enumerate(top):
            for b in top[a_i + 1 :]:
                if b.endswith(" " + a) or a.endswith(" " + b):
                    continue
                links.append(ConceptLink(source=a, target=b, kind="RELATED"))
        for a in names:
            if len(a.split()) > 1 and a.split()[-1] in names:
                links.append(ConceptLink(source=a, target=a.split()[-1], kind="BROADER"))
        if p.topic is not None:
            for name in names:
                weights[(name, p.topic)] += 1
    return links, weights


LABEL_SAMPLE = 50  # facts of a topic YAKE reads for its label: those nearest its centroid
CLUSTER_SAMPLE = 4096  # facts k-means fits its centroids on; every fact then joins its nearest
CORE_ID = 12  # characters of a fact id kept in a topic's core


def _seeds(old: np.ndarray | None, sizes: Sequence[int], x: np.ndarray, k: int
           ) -> np.ndarray | str:
    """k-means' starting centroids: the previous clustering's (its largest k topics), then
    facts of `x` drawn as k-means++ draws them (far from every centroid so far more likely);
    "k-means++" without a previous clustering."""
    if old is None or not len(old) or old.shape[1] != x.shape[1]:
        return "k-means++"
    keep = np.argsort(-np.asarray(sizes[: len(old)]), kind="stable")[:k]
    seeds = [old[int(j)] for j in sorted(keep.tolist())]
    best = (x @ np.asarray(seeds).T).max(1)
    rng = np.random.default_rng(0)
    while len(seeds) < k:  # k-means++'s draw: a fact with odds by its squared distance
        d2 = np.square(np.clip(1.0 - best, 0.0, None)).astype(np.float64)
        pick = int(rng.choice(len(x), p=d2 / d2.sum())) if d2.sum() > 0 else len(seeds)
        seeds.append(x[pick])
        best = np.maximum(best, x @ x[pick])
    return np.asarray(seeds, dtype=x.dtype)


def _kept_labels(cores: Sequence[Sequence[str]], old_cores: Sequence[Sequence[str]],
                 old_labels: Sequence[str]) -> dict[int, str]:
    """Topic -> the label it keeps: a previous topic's, where at least half of this topic's
    core comes from that topic's core (each previous label goes to one topic, the one that
    holds most of its core)."""
    owner = {f: o for o, core in enumerate(old_cores) if o < len(old_labels) for f in core}
    votes = []
    for j, core in enumerate(cores):
        got = Counter(owner[f] for f in core if f in owner)
        if got:
            o, n = got.most_common(1)[0]
            if 2 * n >= len(core):
                votes.append((-n, j, o))
    out: dict[int, str] = {}
    used: set[int] = set()
    for _, j, o in sorted(votes):
        if o not in used:
            out[j] = old_labels[o]
            used.add(o)
    return out


def _keyphrases(cubes: Sequence[MemCube], names: set[str], top: int = 30) -> list[str]:
    """YAKE keyphrases (1-3 words) of these facts' texts read as one document, without the
    ones that hold a name (`names`, normalised) or an entity of the facts."""
    if not cubes:
        return []
    import yake

    text = "\n".join(c.content for c in cubes)
    avoid = names | {norm_entity(e) for c in cubes for e in c.organisation.entities}
    words = {w for n in avoid for w in n.split()}
    found = yake.KeywordExtractor(lan="en", n=3, top=top, dedupLim=0.8).extract_keywords(text)
    stop = stop_words()
    return [p for p, _ in found
            if not words & set(p.casefold().split()) and concept_norm(p)
            and not p.isupper() and not set(p.casefold().split()) <= stop]


def _ctfidf(concepts: list[list[str]], labels: np.ndarray, k: int, j: int) -> list[str]:
    """Topic `j`'s two concepts frequent in it and rare across topics (c-TF-IDF)."""
    per_topic: list[Counter[str]] = [Counter() for _ in range(k)]
    surface: dict[str, Counter[str]] = defaultdict(Counter)
    for cs, t in zip(concepts, labels, strict=True):
        for name in cs:
            if norm := concept_norm(name):
                per_topic[int(t)][norm] += 1
                surface[norm][name] += 1
    df = Counter(norm for c in per_topic for norm in c)
    size = sum(per_topic[j].values()) or 1
    scored = sorted(((tf / size) * math.log(1 + k / df[n]) * (1 + 0.3 * (" " in n)), n)
                    for n, tf in per_topic[j].items())
    return [surface[n].most_common(1)[0][0] for _, n in reversed(scored[-2:])]


class _Holding:
    """How many of these texts hold a phrase (`sum(p in t for t in texts)`), by `str.find`
    over the texts joined by NUL (no stored text holds one): one C-level scan per phrase
    instead of a Python loop over every text; what a re-clustering asks of each keyphrase
    of each topic against every fact of the scope."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.naive = any("\0" in t for t in texts)
        self.joined = "\0".join(texts)
        self.starts: list[int] = []
        at = 0
        for t in texts:
            self.starts.append(at)
            at += len(t) + 1

    def count(self, phrase: str, stop: int | None = None) -> int:
        """The number of texts that hold `phrase`; once past `stop`, `stop + 1`."""
        if not self.texts:
            return 0
        if self.naive or "\0" in phrase:
            n = sum(phrase in t for t in self.texts)
            return n if stop is None else min(n, stop + 1)
        n, pos, starts, end = 0, 0, self.starts, len(self.joined)
        while (i := self.joined.find(phrase, pos)) >= 0:
            n += 1
            if stop is not None and n > stop:
                break
            k = bisect_right(starts, i)  # the text after the one that holds it
            pos = starts[k] if k < len(starts) else end + 1
        return n


def _unit(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return (m / n).astype(np.float32)


Scoped = tuple[str, str]


class MemOperator:
    """Organises one vault's plaintext cubes (every scope in it) in its graph store.

    It reads and writes the catalog (topic state, cubes), the vector index (stored vectors,
    neighbours) and the graph; `scope_index(vault, user)` is the router's index of a scope
    (duplicates, speakers, states), `write_version` stores a superseded fact's new version."""

    def __init__(
        self,
        catalog: Catalog,
        index: VectorIndex,
        graph: GraphStore,
        *,
        scope_index: Callable[[str, str], ScopeIndex],
        write_version: WriteVersion,
        config: OperatorConfig | None = None,
        llm: Any = None,
    ) -> None:
        self.catalog, self.index, self.graph = catalog, index, graph
        self.scope_index, self.write_version = scope_index, write_version
        self.config = config or OperatorConfig()
        self.llm = llm
        self._topics: dict[tuple[str, str], _Topics] = {}
        self._lock = threading.RLock()
        self._queue: queue.Queue[tuple[Any, tuple[Any, ...], tuple[Scoped, ...]] | None] = \
            queue.Queue()
        self._worker: threading.Thread | None = None
        # per scope: steps submitted and steps done (the worker runs them in order)
        self._submitted: Counter[Scoped] = Counter()
        self._done: Counter[Scoped] = Counter()
        self._progress = threading.Condition()

    # -- the background worker ---------------------------------------------------------------
    def submit(self, fn: Any, *args: Any, scopes: Sequence[Scoped] = ()) -> None:
        """Run `fn(*args)` on the worker thread (inline when `background` is off); `wait` on
        one of `scopes` (vault, user) returns once it is done."""
        if not self.config.background:
            fn(*args)
            return
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="memos-operator",
                                                daemon=True)
                self._worker.start()
        scopes = tuple(dict.fromkeys(scopes))
        with self._progress:
            self._submitted.update(scopes)
        self._queue.put((fn, args, scopes))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                fn, args, _ = item
                fn(*args)
            except Exception as exc:  # organisation is derived data: log, go on
                log.warning("organising failed: %s", exc)
            finally:
                if item is not None:
                    with self._progress:
                        self._done.update(item[2])
                        self._progress.notify_all()
                self._queue.task_done()

    def wait(self, vault: str, user_id: str, timeout: float = 60.0) -> bool:
        """Wait until the organisation submitted so far for this scope is done (what a search
        of it reads: concept links); False if it took longer than `timeout` seconds."""
        key = (vault, user_id)
        with self._progress:
            target = self._submitted[key]
            if self._done[key] >= target:
                return True
            worker = self._worker
            if worker is None or not worker.is_alive() or threading.current_thread() is worker:
                return False  # nothing left to run it, or the worker itself asks
            ok = self._progress.wait_for(lambda: self._done[key] >= target, timeout=timeout)
        if not ok:
            log.warning("organising %s/%s is still running after %.0f s; searching without it",
                        vault, user_id, timeout)
        return ok

    def organise_later(self, cubes: Sequence[MemCube], placements: dict[str, Placement],
                       facts: Sequence[FactNode] = ()) -> None:
        """`organise` on the worker thread; searches of these cubes' scopes wait for it."""
        scopes = [(c.scope.vault, c.scope.user_id) for c in cubes]
        self.submit(self.organise, cubes, placements, facts, scopes=scopes)

    def flush(self) -> None:
        """Wait until every submitted organisation step is done."""
        if self._worker is not None and self._worker.is_alive():
            self._queue.join()

    def close(self) -> None:
        """Finish pending work and stop the worker."""
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=60)
        self._worker = None

    # -- placement (before the graph write) ---------------------------------------------------
    def read_facts(self, cubes: Sequence[MemCube]) -> dict[str, FactReading]:
        """What `annotate` reads in the text of each plaintext cube (concepts, events, the
        entities and times to set), without setting anything: no vectors needed, so the vault
        reads while it embeds."""
        return {c.id: self.read_fact(c) for c in cubes if c.form is Form.plaintext}

    def read_fact(self, cube: MemCube) -> FactReading:
        """`concepts_of` and `read_events` of one cube, nothing set on it yet."""
        concepts = self.concepts_of(cube)
        said = cube.lifecycle.valid_from or cube.lifecycle.created_at
        ev = read_events(cube.content, cube.provenance.speaker, said)
        entities = list(cube.organisation.entities)
        if self.config.drop_addressees:
            only = addressed(cube.content, entities)
            entities = [e for e in entities if e not in only]
        known = {norm_entity(e) for e in entities}
        entities = [*entities, *(e for e in ev.entities if norm_entity(e) not in known)]
        when = None
        if ev.times and "key" not in cube.metadata:
            when = [
                {"phrase": t.phrase, "start": t.start.isoformat(), "end": t.end.isoformat(),
                 **({"event": ev.event} if i == 0 and ev.event else {})}
                for i, t in enumerate(ev.times)
            ]
        return FactReading(concepts=concepts, events=ev, entities=entities, when=when)

    def annotate(
        self, cubes: Sequence[MemCube], vectors: dict[str, list[float]],
        readings: dict[str, FactReading] | None = None,
    ) -> dict[str, Placement]:
        """Concepts and a topic for each live plaintext cube; sets `organisation.concept` /
        `organisation.topic` on the cubes. Vectors are the ones the vault just computed;
        `readings` what `read_facts` read in these cubes (read here if not given)."""
        out: dict[str, Placement] = {}
        by_scope: dict[tuple[str, str], list[MemCube]] = defaultdict(list)
        for c in cubes:
            if c.form is not Form.plaintext:
                continue
            r = readings[c.id] if readings is not None else self.read_fact(c)
            r.apply(c)
            out[c.id] = Placement(concepts=r.concepts, events=r.events)
            if r.concepts:
                c.organisation.concept = r.concepts[0]
            if c.id in vectors and c.is_live():
                by_scope[(c.scope.vault, c.scope.user_id)].append(c)
        with self._lock:
            for (vault, user), group in by_scope.items():
                topics = self._state(vault, user)
                for c in group:
                    v = np.asarray(vectors[c.id], dtype=np.float32)
                    j, sim = topics.nearest(v)
                    if j < 0 or (sim < self.config.assign_similarity
                                 and len(topics.tids) < self.config.max_topics):
                        j = topics.new(v, out[c.id].concepts[0] if out[c.id].concepts else "misc")
                    else:
                        topics.add(j, v)
                    topics.n_total += 1
                    topics.dirty += 1
                    out[c.id].topic = topics.tids[j]
                    c.organisation.topic = topics.labels[j]
        return out

    def read_events(self, cube: MemCube) -> FactEvents:
        """Speaker coreference and resolved times of a fact (`events.read_events`, against
        the date it was said: `valid_from`, else when it was stored). The entities it names
        join `organisation.entities`; its times are kept in `metadata["when"]` (not on keyed
        store items, whose metadata is their value)."""
        r = self.read_fact(cube)
        r.apply(cube)
        return r.events

    def concepts_of(self, cube: MemCube) -> list[str]:
        """The fact's keyphrases and their head words (names, and the speaker's relations
        such as "Caroline's sister", are entities, not concepts)."""
        speaker = cube.provenance.speaker
        own = f"{speaker}'s ".casefold() if speaker else None
        names = [e for e in cube.organisation.entities
                 if own is None or not e.casefold().startswith(own)]
        phrases = extract_concepts(cube.content, self.config.concepts_per_fact, entities=names)
        heads = [p.split()[-1] for p in phrases if len(p.split()) > 1]
        return list(dict.fromkeys([*phrases, *(h for h in heads if len(h) > 3)]))

    # -- after the graph write: relations, topic weights, re-clustering -------------------------
    def organise(
        self,
        cubes: Sequence[MemCube],
        placements: dict[str, Placement],
        facts: Sequence[FactNode] = (),
    ) -> None:
        """Link new `facts` to their concepts and topic, then typed concept relations and
        concept -> topic weights for the placed cubes, and a re-clustering of any scope that
        doubled since it was last clustered."""
        graph = self.graph
        if facts:
            graph.place_facts(facts)
        by_scope: dict[tuple[str, str], list[MemCube]] = defaultdict(list)
        for c in cubes:
            if c.id in placements:
                by_scope[(c.scope.vault, c.scope.user_id)].append(c)
        for (vault, user), group in by_scope.items():
            links, weights = _relations([placements[c.id] for c in group])
            graph.link_concepts(vault, user, links)
            if weights:
                graph.add_to_topics(vault, user, dict(weights))
            self._describe(vault, user, group, placements)
            self._grow_topics(vault, user, {placements[c.id].topic for c in group})

    def _describe(self, vault: str, user: str, group: list[MemCube],
                  placements: dict[str, Placement]) -> None:
        """Write what was read in these facts: their times, the speakers' relations (OF edges)
        and SAME_ENTITY chains across sessions."""
        events, owners = [], []
        for c in group:
            ev = placements[c.id].events
            if ev is None:
                continue
            owners += [EntityLink(entity=r.entity, owner=r.owner, role=r.role)
                       for r in ev.relations]
            if ev.times:
                t = ev.times[0]
                events.append(FactEvent(id=c.id, phrase=t.phrase, start=_midnight(t.start),
                                        end=_midnight(t.end), event=ev.event))
        self.graph.set_events(events)
        self.graph.link_entities(vault, user, owners)
        self.graph.link_same_entity(vault, user, self._mentions(vault, user, group))

    def _mentions(self, vault: str, user: str, group: list[MemCube]) -> list[EntityMention]:
        """The (fact, entity) pairs to chain across sessions: not the speakers of these facts,
        nor entities on more than `same_entity_fanout` facts of the scope."""
        speakers = {norm_entity(c.provenance.speaker) for c in group if c.provenance.speaker}
        idx = self.scope_index(vault, user)
        with idx.lock:
            counts = dict(idx.entity_names)
        bound = self.config.same_entity_fanout
        return [
            EntityMention(fact=c.id, entity=n, session_id=c.scope.session_id,
                          at=(c.lifecycle.valid_from or c.lifecycle.created_at).timestamp())
            for c in group if c.is_live()
            for n in dict.fromkeys(map(norm_entity, c.organisation.entities))
            if n and n not in speakers and counts.get(n, 0) <= bound
        ]

    def _grow_topics(self, vault: str, user: str, touched: set[str | None]) -> None:
        """Write the topics new facts joined; re-cluster the scope once it has doubled."""
        with self._lock:
            topics = self._state(vault, user)
            new_topics = [
                TopicNode(tid=t, vault=vault, user_id=user, label=lab, size=s)
                for t, lab, s in zip(topics.tids, topics.labels, topics.sizes, strict=True)
                if t in touched
            ]
            due = (topics.n_total >= self.config.recluster_min
                   and topics.n_total >= 2 * max(topics.n_clustered, 1)
                   and topics.n_total <= self.config.recluster_max)
        self.graph.upsert_topics(new_topics)
        if due:
            try:
                self.recluster(vault, user)
            except Exception as exc:  # organisation is derived: never fail a write on it
                log.warning("re-clustering %s/%s failed: %s", vault, user, exc)
        elif topics.dirty >= 2000:
            self._save(vault, user, topics)

    # -- topics ------------------------------------------------------------------------------
    def _state(self, vault: str, user: str) -> _Topics:
        st = self._topics.get((vault, user))
        if st is None:
            scope = json.dumps([vault, user])
            stored = self.catalog.settings.get(TopicState, scope, legacy_key=f"topics:{scope}")
            st = _Topics.from_state(stored) if stored else _Topics()
            self._topics[(vault, user)] = st
        return st

    def _save(self, vault: str, user: str, topics: _Topics) -> None:
        self.catalog.settings.set(topics.to_state(), json.dumps([vault, user]))
        topics.dirty = 0

    def recluster(self, vault: str, user_id: str) -> int:
        """Cluster the scope's live facts afresh (k-means on their stored vectors), label the
        topics, and rewrite the hierarchy; returns the number of topics."""
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        cubes = [c for c in self.catalog.list(vault=vault, user_id=user_id,
                                              states=[State.active], limit=10**9)
                 if c.form is Form.plaintext]
        if len(cubes) < 2:
            return 0
        vecs_by_id = self.index.embeddings(vault, user_id, [c.id for c in cubes])
        cubes = [c for c in cubes if c.id in vecs_by_id]
        if len(cubes) < 2:
            return 0
        x = _unit(np.asarray([vecs_by_id[c.id] for c in cubes], dtype=np.float32))
        k = int(min(self.config.max_topics, max(2, round(math.sqrt(len(cubes) / 2)))))
        fit = x
        if len(x) > CLUSTER_SAMPLE:  # a fixed-size sample bounds the fit; all facts are assigned
            rows = np.random.default_rng(0).choice(len(x), CLUSTER_SAMPLE, replace=False)
            fit = x[np.sort(rows)]
        with self._lock:
            before = self._state(vault, user_id)
            old_cores, old_labels = list(before.cores), list(before.labels)
            # the last clustering's topics (not those opened one by one since: a fact that
            # joined no topic opens one, a poor start for k-means)
            last = None if before.centroids is None else before.centroids[: len(old_cores)]
            start = _seeds(last, before.sizes, fit, k)
        with threadpool_limits(1):  # background work: leave the other cores to the writes
            km = KMeans(n_clusters=k, init=start, n_init=1, random_state=0, max_iter=100)
            km.fit(fit)
            labels_of = km.labels_ if fit is x else km.predict(x)
        concepts = [self.concepts_of(c) for c in cubes]
        # each topic's label is read from its facts nearest the centroid (its core); a topic
        # whose core is mostly a previous topic's keeps that label (no YAKE for it)
        near = (x * _unit(km.cluster_centers_)[labels_of]).sum(1)  # cosine to its centroid
        at: list[list[int]] = [[] for _ in range(k)]
        for i, j in enumerate(labels_of):
            at[int(j)].append(i)
        sample = [sorted(np.asarray(a)[np.argsort(-near[a], kind="stable")[:LABEL_SAMPLE]]
                         .tolist()) for a in at]
        cores = [[cubes[i].id[:CORE_ID] for i in s] for s in sample]
        kept = _kept_labels(cores, old_cores, old_labels)
        log.debug("re-clustering %s/%s: %d facts, %d topics, %d labels kept", vault, user_id,
                  len(cubes), k, len(kept))
        # labelling (YAKE over every other topic) takes seconds: outside the lock, which
        # every write's `annotate` takes to place its facts
        names = self._label(cubes, concepts, labels_of, k, sample, kept)
        with self._lock:
            topics = self._state(vault, user_id)
            topics.generation += 1
            topics.next_id = k
            topics.tids = [f"{topics.generation}.{j}" for j in range(k)]
            sums = np.zeros((k, x.shape[1]), dtype=np.float32)
            np.add.at(sums, labels_of, x)
            topics.sums = sums
            topics.centroids = _unit(sums)
            topics.sizes = np.bincount(labels_of, minlength=k).tolist()
            topics.labels = names
            topics.cores = cores
            topics.n_total = topics.n_clustered = len(cubes)
            assignment = {c.id: topics.tids[int(j)] for c, j in zip(cubes, labels_of, strict=True)}
            nodes = [TopicNode(tid=t, vault=vault, user_id=user_id, label=lab, size=s)
                     for t, lab, s in zip(topics.tids, topics.labels, topics.sizes, strict=True)]
            self._save(vault, user_id, topics)
        graph = self.graph
        graph.upsert_topics(nodes)
        graph.assign_topics(vault, user_id, assignment)
        graph.drop_topics(vault, user_id, [n.tid for n in nodes])
        return k

    def _label(self, cubes: list[MemCube], concepts: list[list[str]], labels: np.ndarray,
               k: int, cores: list[list[int]], kept: dict[int, str]) -> list[str]:
        """Each topic's two most distinctive keyphrases (YAKE over the texts of its core:
        `cores`, the positions of its facts nearest its centroid, in the order written; scored
        c-TF-IDF style: on many of its facts, in few other topics; names left out) and the
        entity most of its facts name but the speakers; the fact concepts where YAKE finds
        nothing. A topic in `kept` keeps that label."""
        members: list[list[MemCube]] = [[] for _ in range(k)]
        for c, j in zip(cubes, labels, strict=True):
            members[int(j)].append(c)
        sample = [[] if j in kept else [cubes[i] for i in core]
                  for j, core in enumerate(cores)]
        speakers = {norm_entity(c.provenance.speaker) for c in cubes if c.provenance.speaker}
        in_topics: list[set[str]] = [set() for _ in range(k)]
        for cs, t in zip(concepts, labels, strict=True):
            in_topics[int(t)].update(concept_norm(x) for x in cs)
        spread = Counter(n for ns in in_topics for n in ns)  # topics a concept is in
        everything = _Holding([c.content.casefold() for c in cubes])
        common = math.floor(0.1 * len(cubes))
        phrases = [[p for p in _keyphrases(m, speakers) if spread[concept_norm(p)]  # no chat
                    and everything.count(p.casefold(), common) <= common] if m else []
                   for m in sample]  # nor on a tenth of the scope's facts ("photo")
        is_name = self._name_test(cubes[0].scope.vault, cubes[0].scope.user_id)
        out = []
        for j, m in enumerate(members):
            if j in kept:
                out.append(kept[j])
                continue
            texts = _Holding([c.content.casefold() for c in m])
            held = {p: texts.count(p.casefold()) for p in phrases[j]}
            scored = sorted(
                ((n / max(len(m), 1))
                 * math.log(1 + k / spread[concept_norm(p)]) ** 2 * (1 + 0.5 * p.count(" ")), p)
                for p, n in held.items() if n >= 2
            )
            best: dict[str, str] = {}  # one phrase per stem: not "customer / customers"
            for sc, p in reversed(scored):
                if sc > 0:
                    best.setdefault(concept_norm(p), p)
            names = list(best.values())[:2]
            names = names or _ctfidf(concepts, labels, k, j)
            ent = Counter(n for c in m for n in {norm_entity(e): e for e in
                                                 c.organisation.entities}.values()
                          if norm_entity(n) not in speakers and is_name(n))
            top = [e for e, n in ent.most_common(1) if n >= 2]
            out.append(" / ".join([*names, *top]) if names or top else "misc")
        if self.llm is not None:
            try:
                out = self._llm_labels(cubes, labels, out)
            except Exception as exc:
                log.warning("chat model topic labelling failed, keeping c-TF-IDF labels: %s", exc)
        return out

    def _name_test(self, vault: str, user_id: str) -> Callable[[str], bool]:
        """Whether an entity of this scope reads as a name: a speaker's relation ("Caroline's
        sister"), or a word the scope's facts rarely hold other than as an entity (so not
        "Art", "Look" or "Bye", capitalised at the start of a sentence)."""
        idx = self.scope_index(vault, user_id)
        with idx.lock:
            counts = Counter(idx.entity_names)
        stems = {n: keyword_tokens(n) for n in counts}
        wanted = {w for ws in stems.values() for w in ws}
        df = idx.live_doc_freq(wanted)

        def is_name(name: str) -> bool:
            norm = norm_entity(name)
            if "'s " in norm:
                return True
            ws = stems.get(norm) or keyword_tokens(norm)
            if not ws or re.search(r"'(?:re|ve|ll|d|m)\b", norm):
                return False
            return min(df.get(w, 0) for w in ws) <= 2 * max(counts[norm], 1)

        return is_name

    def _llm_labels(self, cubes: list[MemCube], labels: np.ndarray, base: list[str]) -> list[str]:
        from .llm import ask_structured

        class _Labels(BaseModel):
            labels: list[str] = Field(default_factory=list)

        samples = []
        for j, label in enumerate(base):
            texts = [c.content[:120] for c, lab in zip(cubes, labels, strict=True)
                     if int(lab) == j][:3]
            samples.append(f"{j}: keywords: {label}; examples: " + " | ".join(texts))
        prompt = (
            "Name each topic of a person's memories in 2-4 words. Reply with JSON only: "
            '{"labels": ["...", ...]}, one label per topic, in order.\n' + "\n".join(samples)
        )
        got = ask_structured(self.llm, prompt, _Labels).labels[: len(base)]
        return [g.strip() or b for g, b in zip([*got, *base[len(got):]], base, strict=True)]

    def hierarchy(self, vault: str, user_id: str, facts_per_concept: int = 3) -> TopicTree:
        """The topic -> concept -> fact tree of one scope (after pending work is done)."""
        self.flush()
        rows = self.graph.hierarchy(vault, user_id, facts_per_concept)
        is_name = self._name_test(vault, user_id)
        for r in rows:
            r["entities"] = [e for e in r.get("entities", [])  # type: ignore[attr-defined]
                             if is_name(e["name"]) and (e["facts"] > 1 or "'s " in e["name"])]
        spread = Counter(c["name"] for r in rows for c in r["concepts"])  # type: ignore[attr-defined]
        n = len(rows)
        for r in rows:
            # a concept in many topics ("support", "shares") says little about this one
            r["concepts"] = sorted(
                r["concepts"],  # type: ignore[arg-type]
                key=lambda c: (-c["weight"] * math.log(1 + n / spread[c["name"]]), c["name"]))
        return TopicTree(vault=vault, user_id=user_id,
                         topics=[TopicView(**r) for r in rows if r["size"]])  # type: ignore

    # -- dedup / supersede ----------------------------------------------------------------------
    def supersede_candidates(
        self, cubes: Sequence[MemCube], vectors: dict[str, list[float]]
    ) -> list[tuple[MemCube, str, str]]:
        """(new cube, old cube id, reason) pairs: the old facts the new ones replace."""
        out: list[tuple[MemCube, str, str]] = []
        batch = {c.id for c in cubes}
        for c in cubes:
            if (c.form is not Form.plaintext or not c.is_live()
                    or "key" in c.metadata or c.id not in vectors):
                continue
            # an update is stated, not asked: "Any more paintings coming up?" is no update
            cue = None if c.content.rstrip().endswith("?") else _UPDATE_CUE.search(c.content)
            repeatable = c.provenance.source_kind not in (SourceKind.message, SourceKind.document)
            if not cue and not repeatable:
                continue
            idx = self.scope_index(c.scope.vault, c.scope.user_id)
            speaker = norm_entity(c.provenance.speaker) if c.provenance.speaker else None
            if not cue:
                # a verbatim repeat of a fact (not a conversation turn): merge into the new one
                h = content_hash_of(c.provenance.speaker, c.content)
                with idx.lock:
                    olds = [idx.docs[i].id for i in idx.by_hash.get(h, [])
                            if idx.docs[i].alive and idx.docs[i].id not in batch
                            and idx.docs[i].state == State.active.value
                            and not idx.docs[i].keyed]
                out += [(c, o, "duplicate") for o in olds[-1:]]
                continue
            found = self.index.query(c.scope.vault, c.scope.user_id, vectors[c.id], n=6)
            mine = {norm_entity(e) for e in c.organisation.entities if norm_entity(e) != speaker}
            mine |= {concept_norm(x) for x in self.concepts_of(c)}
            for oid, sim in found:
                if oid == c.id or oid in batch or sim < self.config.supersede_similarity:
                    continue
                with idx.lock:
                    i = idx.pos.get(oid)
                    d = idx.docs[i] if i is not None else None
                if d is None or not d.alive or d.state != State.active.value or d.keyed:
                    continue
                if d.speaker != speaker or d.valid_from > (c.lifecycle.valid_from or
                                                           c.lifecycle.created_at).timestamp():
                    continue
                old = self.catalog.get_many([oid]).get(oid)
                if old is None:
                    continue
                theirs = {norm_entity(e) for e in old.organisation.entities
                          if norm_entity(e) != speaker}
                theirs |= {concept_norm(x) for x in self.concepts_of(old)}
                if mine & theirs:
                    out.append((c, oid, f"update ({cue.group(0)!r}, cosine {sim:.2f})"))
                    break
        return out

    def supersede(self, new: MemCube, old_id: str, reason: str, by: str) -> MemCube | None:
        """Mark `old_id` superseded by `new` (a new version of the old cube, valid_to set)."""
        from .lifecycle import next_version

        old = self.catalog.get(old_id)
        if old.lifecycle.state is not State.active:
            return None
        at = new.lifecycle.valid_from or utcnow()
        gone = next_version(old, State.superseded)
        gone.lifecycle.valid_to = max(at, old.lifecycle.valid_from or at)
        gone.metadata = {**gone.metadata, "superseded_by": new.id, "supersede_reason": reason}
        self.write_version(gone, "supersede", by, old.lifecycle.version)
        self.graph.supersede(new.id, old.id, at.timestamp())
        return gone


__all__ = ["FactReading", "MemOperator", "OperatorConfig", "Placement", "TopicTree",
           "TopicView"]
