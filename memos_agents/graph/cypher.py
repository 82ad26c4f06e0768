"""Cypher shared by the graph backends, valid on both Neo4j 5 and FalkorDB.

Every statement takes its values as parameters, MERGEs nodes of one label per
statement and links existing nodes with MATCH, MATCH, MERGE. It avoids what
FalkorDB lacks: `EXISTS { }`, `:A|B`, `CALL { }`, `elementId()`, `datetime()`.
A `WITH` after an indexed lookup keeps FalkorDB's planner from starting at a
scan of every Fact when the query also filters on the fact's scope.
`CypherGraphStore` implements the `GraphStore` protocol over two hooks a
backend provides: running a read, and running writes (in one transaction
where the backend has them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, ClassVar, Self, TypeVar

from ..errors import InvalidInput
from .base import (
    SEP,
    ConceptLink,
    EntityLink,
    EntityMention,
    FactEvent,
    FactNode,
    TopicNode,
    concept_norm,
    norm_entity,
    scoped_key,
)

BATCH = 1000  # rows per UNWIND statement

Rows = list[list[Any]]
Run = Callable[[str, dict[str, Any]], Rows]
T = TypeVar("T")

UNLINK_ENTITIES = """
UNWIND $rows AS row
MATCH (f:Fact {id: row.id})-[r:MENTIONS]->(e:Entity)
WHERE NOT e.key IN row.keys
WITH r, e.key AS k
DELETE r
RETURN DISTINCT k
"""

UNLINK_SOURCES = """
UNWIND $rows AS row
MATCH (f:Fact {id: row.id})-[r:FROM]->(s:Source)
WHERE NOT s.key IN row.keys
WITH r, s.key AS k
DELETE r
RETURN DISTINCT k
"""

MERGE_FACTS = """
UNWIND $rows AS row
MERGE (f:Fact {id: row.id})
SET f.vault = row.vault, f.user_id = row.user_id, f.session_id = row.session_id,
    f.agent_id = row.agent_id, f.text = row.text, f.source_kind = row.source_kind,
    f.valid_from = row.valid_from, f.created_at = row.created_at, f.speaker = row.speaker,
    f.state = row.state, f.importance = row.importance, f.valid_to = row.valid_to,
    f.topic = row.topic
"""

MERGE_ENTITIES = """
UNWIND $rows AS row
MERGE (e:Entity {key: row.key})
ON CREATE SET e.vault = row.vault, e.user_id = row.user_id, e.name = row.name,
    e.norm = row.norm
"""

MERGE_SOURCES = """
UNWIND $rows AS row
MERGE (s:Source {key: row.key})
ON CREATE SET s.vault = row.vault, s.user_id = row.user_id, s.kind = row.kind,
    s.ref = row.ref
"""

LINK_ENTITIES = """
UNWIND $rows AS row
MATCH (f:Fact {id: row.fact})
MATCH (e:Entity {key: row.key})
MERGE (f)-[:MENTIONS]->(e)
RETURN count(*)
"""

LINK_SOURCES = """
UNWIND $rows AS row
MATCH (f:Fact {id: row.fact})
MATCH (s:Source {key: row.key})
MERGE (f)-[:FROM]->(s)
RETURN count(*)
"""

UNLINK_CONCEPTS = """
UNWIND $rows AS row
MATCH (f:Fact {id: row.id})-[r:ABOUT]->(c:Concept)
WHERE NOT c.key IN row.keys
WITH r, c.key AS k
DELETE r
RETURN DISTINCT k
"""

MERGE_CONCEPTS = """
UNWIND $rows AS row
MERGE (c:Concept {key: row.key})
ON CREATE SET c.vault = row.vault, c.user_id = row.user_id, c.name = row.name,
    c.norm = row.norm
"""

LINK_CONCEPTS = """
UNWIND $rows AS row
MATCH (f:Fact {id: row.fact})
MATCH (c:Concept {key: row.key})
MERGE (f)-[:ABOUT]->(c)
RETURN count(*)
"""

UNLINK_TOPICS = """
UNWIND $rows AS row
MATCH (f:Fact {id: row.id})-[r:IN_TOPIC]->(t:Topic)
WHERE NOT t.key IN row.keys
DELETE r
"""

MERGE_TOPICS = """
UNWIND $rows AS row
MERGE (t:Topic {key: row.key})
ON CREATE SET t.vault = row.vault, t.user_id = row.user_id, t.tid = row.tid,
    t.label = row.label, t.size = 0
"""

RELABEL_TOPICS = """
UNWIND $rows AS row
MERGE (t:Topic {key: row.key})
SET t.vault = row.vault, t.user_id = row.user_id, t.tid = row.tid, t.label = row.label,
    t.size = row.size
"""

LINK_TOPICS = """
UNWIND $rows AS row
MATCH (f:Fact {id: row.fact})
MATCH (t:Topic {key: row.key})
MERGE (f)-[:IN_TOPIC]->(t)
RETURN count(*)
"""

RECOUNT_TOPICS = """
MATCH (t:Topic)
WHERE t.vault = $vault AND t.user_id = $user_id
OPTIONAL MATCH (t)<-[:IN_TOPIC]-(f:Fact)
WITH t, count(f) AS n
SET t.size = n
"""

UNLINK_CONCEPT_TOPICS = """
MATCH (t:Topic)
WHERE t.vault = $vault AND t.user_id = $user_id
WITH t
MATCH (:Concept)-[r:IN_TOPIC]->(t)
DELETE r
"""

LINK_CONCEPT_TOPICS = """
MATCH (t:Topic)
WHERE t.vault = $vault AND t.user_id = $user_id
WITH t
MATCH (t)<-[:IN_TOPIC]-(f:Fact)-[:ABOUT]->(c:Concept)
WITH t, c, count(DISTINCT f) AS n
MERGE (c)-[r:IN_TOPIC]->(t)
SET r.weight = n
"""

ADD_CONCEPT_TOPICS = """
UNWIND $rows AS row
MATCH (c:Concept {key: row.concept})
MATCH (t:Topic {key: row.topic})
MERGE (c)-[r:IN_TOPIC]->(t)
ON CREATE SET r.weight = row.w
ON MATCH SET r.weight = r.weight + row.w
"""

DROP_TOPICS = """
MATCH (t:Topic)
WHERE t.vault = $vault AND t.user_id = $user_id AND NOT t.tid IN $keep
DETACH DELETE t
"""

LINK_RELATED = """
UNWIND $rows AS row
MATCH (a:Concept {key: row.a})
MATCH (b:Concept {key: row.b})
MERGE (a)-[r:RELATED]->(b)
ON CREATE SET r.weight = row.w
ON MATCH SET r.weight = r.weight + row.w
"""

LINK_BROADER = """
UNWIND $rows AS row
MATCH (a:Concept {key: row.a})
MATCH (b:Concept {key: row.b})
MERGE (a)-[r:BROADER]->(b)
ON CREATE SET r.weight = row.w
ON MATCH SET r.weight = r.weight + row.w
"""

SUPERSEDE = """
MATCH (n:Fact {id: $new})
MATCH (o:Fact {id: $old})
MERGE (n)-[r:SUPERSEDES]->(o)
SET r.at = $at
"""

SET_EVENTS = """
UNWIND $rows AS row
MATCH (f:Fact {id: row.id})
SET f.event = row.event, f.event_phrase = row.phrase, f.event_start = row.start,
    f.event_end = row.end
"""

LINK_ENTITY_OWNERS = """
UNWIND $rows AS row
MATCH (a:Entity {key: row.a})
MATCH (b:Entity {key: row.b})
MERGE (a)-[r:OF]->(b)
SET r.role = row.role
"""

LINK_SAME_ENTITY = """
UNWIND $rows AS row
MATCH (e:Entity {key: row.key})
WITH e, row
MATCH (e)<-[:MENTIONS]-(o:Fact)
WHERE o.id <> row.fact AND o.vault = $vault AND o.user_id = $user_id
    AND coalesce(o.state, 'active') = 'active'
    AND coalesce(o.session_id, '') <> row.session
    AND coalesce(o.valid_from, o.created_at) < row.at
WITH row, o
ORDER BY coalesce(o.valid_from, o.created_at) DESC, o.id
WITH row, collect(o.id)[0] AS prev
MATCH (f:Fact {id: row.fact})
MATCH (p:Fact {id: prev})
MERGE (f)-[r:SAME_ENTITY {entity: row.norm}]->(p)
RETURN count(r)
"""

LINEAGE = """
MATCH (n:Fact {id: $id})
WITH n
MATCH p = (n)-[:SUPERSEDES*1..20]->(o:Fact)
RETURN o.id, length(p) AS d
ORDER BY d
"""

FACTS_ABOUT = """
UNWIND $keys AS k
MATCH (c:Concept {key: k})
WITH c
MATCH (c)<-[:ABOUT]-(f:Fact)
WHERE f.vault = $vault AND f.user_id = $user_id AND coalesce(f.state, 'active') = 'active'
RETURN f.id AS fid, f.created_at AS t, count(DISTINCT c) AS n
ORDER BY n DESC, t DESC, fid
LIMIT $limit
"""

RELATED_CONCEPTS = """
UNWIND $keys AS k
MATCH (c:Concept {key: k})
WITH c
MATCH (c)-[r]-(o:Concept)
WHERE type(r) IN ['RELATED', 'BROADER'] AND o.vault = $vault AND o.user_id = $user_id
RETURN c.norm, o.norm, type(r), r.weight AS w
ORDER BY w DESC
LIMIT $limit
"""

HIERARCHY_TOPICS = """
MATCH (t:Topic)
WHERE t.vault = $vault AND t.user_id = $user_id
OPTIONAL MATCH (c:Concept)-[r:IN_TOPIC]->(t)
RETURN t.tid, t.label, t.size, collect([c.name, c.norm, r.weight])
"""

HIERARCHY_FACTS = """
MATCH (t:Topic)
WHERE t.vault = $vault AND t.user_id = $user_id
WITH t
MATCH (t)<-[:IN_TOPIC]-(f:Fact)-[:ABOUT]->(c:Concept)
WHERE coalesce(f.state, 'active') = 'active'
RETURN t.tid, c.norm, f.id, f.text, f.created_at
ORDER BY f.created_at DESC
LIMIT $limit
"""

HIERARCHY_ENTITIES = """
MATCH (t:Topic)
WHERE t.vault = $vault AND t.user_id = $user_id
WITH t
MATCH (t)<-[:IN_TOPIC]-(f:Fact)-[:MENTIONS]->(e:Entity)
WHERE coalesce(f.state, 'active') = 'active'
RETURN t.tid, e.name, count(DISTINCT f) AS n
ORDER BY n DESC
LIMIT $limit
"""

HIERARCHY_EVENTS = """
MATCH (t:Topic)
WHERE t.vault = $vault AND t.user_id = $user_id
WITH t
MATCH (t)<-[:IN_TOPIC]-(f:Fact)
WHERE coalesce(f.state, 'active') = 'active' AND f.event_start IS NOT NULL
RETURN t.tid, f.id, f.event, f.event_phrase, f.event_start, f.event_end, f.text
ORDER BY f.event_start
LIMIT $limit
"""

CONCEPT_COUNTS = {
    "concepts": "MATCH (n:Concept) WHERE n.vault = $vault AND n.user_id = $user_id "
    "RETURN count(n)",
    "topics": "MATCH (n:Topic) WHERE n.vault = $vault AND n.user_id = $user_id RETURN count(n)",
    "related": "MATCH (n:Concept)-[r:RELATED]->() WHERE n.vault = $vault AND "
    "n.user_id = $user_id RETURN count(r)",
    "broader": "MATCH (n:Concept)-[r:BROADER]->() WHERE n.vault = $vault AND "
    "n.user_id = $user_id RETURN count(r)",
    "supersedes": "MATCH (n:Fact)-[r:SUPERSEDES]->() WHERE n.vault = $vault AND "
    "n.user_id = $user_id RETURN count(r)",
    "same_entity": "MATCH (n:Fact)-[r:SAME_ENTITY]->() WHERE n.vault = $vault AND "
    "n.user_id = $user_id RETURN count(r)",
    "entity_of": "MATCH (n:Entity)-[r:OF]->() WHERE n.vault = $vault AND "
    "n.user_id = $user_id RETURN count(r)",
    "events": "MATCH (n:Fact) WHERE n.vault = $vault AND n.user_id = $user_id AND "
    "n.event_start IS NOT NULL RETURN count(n)",
}

ENTITY_KEYS_OF = """
UNWIND $ids AS fid
MATCH (:Fact {id: fid})-[:MENTIONS]->(e:Entity)
RETURN DISTINCT e.key
"""

SOURCE_KEYS_OF = """
UNWIND $ids AS fid
MATCH (:Fact {id: fid})-[:FROM]->(s:Source)
RETURN DISTINCT s.key
"""

DELETE_FACTS = """
UNWIND $ids AS fid
MATCH (f:Fact {id: fid})
DETACH DELETE f
"""

DROP_ORPHAN_ENTITIES = """
UNWIND $keys AS k
MATCH (e:Entity {key: k})
WHERE NOT (e)<-[:MENTIONS]-()
DELETE e
"""

DROP_ORPHAN_SOURCES = """
UNWIND $keys AS k
MATCH (s:Source {key: k})
WHERE NOT (s)<-[:FROM]-()
DELETE s
"""

CONCEPT_KEYS_OF = """
UNWIND $ids AS fid
MATCH (:Fact {id: fid})-[:ABOUT]->(c:Concept)
RETURN DISTINCT c.key
"""

DROP_ORPHAN_CONCEPTS = """
UNWIND $keys AS k
MATCH (c:Concept {key: k})
WHERE NOT (c)<-[:ABOUT]-()
DETACH DELETE c
"""

FACTS_MENTIONING = """
UNWIND $keys AS k
MATCH (e:Entity {key: k})
WITH e
MATCH (e)<-[:MENTIONS]-(f:Fact)
WHERE f.vault = $vault AND f.user_id = $user_id AND coalesce(f.state, 'active') = 'active'
RETURN f.id AS fid, f.created_at AS t, count(DISTINCT e) AS n
ORDER BY n DESC, t DESC, fid
LIMIT $limit
"""

FACT_LINKS = """
UNWIND $ids AS fid
MATCH (f:Fact {id: fid})
WHERE f.vault = $vault AND f.user_id = $user_id
WITH f
MATCH (f)-[r]->(n)
WHERE type(r) IN ['MENTIONS', 'ABOUT']
RETURN f.id, type(r), n.norm
LIMIT $limit
"""

NODE_FACTS = """
UNWIND $entities AS k
MATCH (e:Entity {key: k})
WITH e
MATCH (e)<-[:MENTIONS]-(f:Fact)
WHERE f.vault = $vault AND f.user_id = $user_id AND coalesce(f.state, 'active') = 'active'
RETURN 'entity' AS kind, e.norm AS norm, f.id AS fid
LIMIT $limit
UNION ALL
UNWIND $concepts AS k
MATCH (c:Concept {key: k})
WITH c
MATCH (c)<-[:ABOUT]-(f:Fact)
WHERE f.vault = $vault AND f.user_id = $user_id AND coalesce(f.state, 'active') = 'active'
RETURN 'concept' AS kind, c.norm AS norm, f.id AS fid
LIMIT $limit
"""

ENTITIES_OF = """
UNWIND $ids AS fid
MATCH (f:Fact {id: fid})
OPTIONAL MATCH (f)-[:MENTIONS]->(e:Entity)
RETURN f.id, collect(e.name)
"""

RELATED_ENTITIES = """
MATCH (e:Entity {key: $key})
WITH e
MATCH (e)<-[:MENTIONS]-(f:Fact)-[:MENTIONS]->(o:Entity)
WHERE f.vault = $vault AND f.user_id = $user_id AND o.key <> $key
    AND coalesce(f.state, 'active') = 'active'
RETURN o.name AS name, count(DISTINCT f) AS n
ORDER BY n DESC, name
LIMIT $limit
"""

_COUNTS = {
    "facts": "MATCH (n:Fact){where} RETURN count(n)",
    "entities": "MATCH (n:Entity){where} RETURN count(n)",
    "sources": "MATCH (n:Source){where} RETURN count(n)",
    "edges": "MATCH (n:Fact)-[r]->(){where} RETURN count(r)",
}


def count_queries(vault: str | None, user_id: str | None) -> dict[str, str]:
    """The statements `counts` runs, filtered on `$vault` / `$user_id` where given."""
    terms = [t for v, t in ((vault, "n.vault = $vault"), (user_id, "n.user_id = $user_id")) if v]
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    return {name: q.format(where=where) for name, q in _COUNTS.items()}


def batched(items: Iterable[T], size: int = BATCH) -> Iterator[list[T]]:
    """`items` in lists of at most `size`."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _check_scope(vault: str, user_id: str) -> None:
    if SEP in vault or SEP in user_id:
        raise InvalidInput("vault and user_id must not contain the \\x1f separator")


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise InvalidInput(f"limit must be >= 1, got {limit}")


def _run_all(run: Run, query: str, rows: list[Any], name: str = "rows") -> Rows:
    """Run `query` over `rows` in UNWIND batches; the concatenated result rows."""
    out: Rows = []
    for chunk in batched(rows):
        out += run(query, {name: chunk})
    return out


def _linked(rows: Rows) -> int:
    return sum(int(r[0]) for r in rows)


@dataclass
class _Linked:
    """One kind of scoped node a fact links to (entities, sources, concepts)."""

    unlink: str
    merge: str
    link: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[dict[str, str]] = field(default_factory=list)
    keep: list[dict[str, Any]] = field(default_factory=list)

    def add(self, fact_id: str, rows: dict[str, dict[str, Any]]) -> None:
        for key, row in rows.items():
            self.nodes.setdefault(key, row)
        self.edges += [{"fact": fact_id, "key": k} for k in rows]
        self.keep.append({"id": fact_id, "keys": list(rows)})

    def write(self, run: Run, fresh: bool = False) -> list[str]:
        """Unlink what the facts no longer link to (not for `fresh` facts: they have no edges
        yet), merge nodes, link; the stale keys."""
        stale = [] if fresh else [r[0] for r in _run_all(run, self.unlink, self.keep)]
        _run_all(run, self.merge, list(self.nodes.values()))
        if _linked(_run_all(run, self.link, self.edges)) < len(self.edges):
            # another writer dropped a node as an orphan between our MERGE and MATCH
            _run_all(run, self.merge, list(self.nodes.values()))
            _run_all(run, self.link, self.edges)
        return stale


@dataclass
class _Upsert:
    """The rows one batch of facts writes."""

    facts: list[dict[str, Any]] = field(default_factory=list)
    entities: _Linked = field(
        default_factory=lambda: _Linked(UNLINK_ENTITIES, MERGE_ENTITIES, LINK_ENTITIES)
    )
    sources: _Linked = field(
        default_factory=lambda: _Linked(UNLINK_SOURCES, MERGE_SOURCES, LINK_SOURCES)
    )
    concepts: _Linked = field(
        default_factory=lambda: _Linked(UNLINK_CONCEPTS, MERGE_CONCEPTS, LINK_CONCEPTS)
    )
    topics: dict[str, dict[str, Any]] = field(default_factory=dict)
    in_topic: list[dict[str, str]] = field(default_factory=list)
    keep_topic: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, facts: Sequence[FactNode]) -> _Upsert:
        up = cls()
        for f in facts:
            _check_scope(f.vault, f.user_id)
            row = f.model_dump(exclude={"entities", "source_refs", "concepts"})
            row["topic"] = f.topic
            up.facts.append(row)
            scope = {"vault": f.vault, "user_id": f.user_id}
            entities: dict[str, dict[str, Any]] = {}
            for name in f.entities:
                if norm := norm_entity(name):
                    key = scoped_key(f.vault, f.user_id, norm)
                    entities.setdefault(key, {"key": key, "name": name, "norm": norm, **scope})
            up.entities.add(f.id, entities)
            sources: dict[str, dict[str, Any]] = {}
            for ref in f.source_refs:
                if ref:
                    key = scoped_key(f.vault, f.user_id, f"{f.source_kind}:{ref}")
                    sources.setdefault(
                        key, {"key": key, "kind": f.source_kind, "ref": ref, **scope}
                    )
            up.sources.add(f.id, sources)
            concepts: dict[str, dict[str, Any]] = {}
            for name in f.concepts:
                if norm := concept_norm(name):
                    key = concept_node_key(f.vault, f.user_id, norm)
                    concepts.setdefault(key, {"key": key, "name": name, "norm": norm, **scope})
            up.concepts.add(f.id, concepts)
            tkeys: list[str] = []
            if f.topic is not None:
                tkey = topic_node_key(f.vault, f.user_id, f.topic)
                up.topics.setdefault(tkey, {"key": tkey, "tid": f.topic, "label": f.topic, **scope})
                up.in_topic.append({"fact": f.id, "key": tkey})
                tkeys.append(tkey)
            up.keep_topic.append({"id": f.id, "keys": tkeys})
        return up

    def place(self, run: Run) -> None:
        """Only the ABOUT and IN_TOPIC edges of facts that exist and have none yet."""
        self.concepts.write(run, fresh=True)
        if self.in_topic:
            _run_all(run, MERGE_TOPICS, list(self.topics.values()))
            _run_all(run, LINK_TOPICS, self.in_topic)

    def apply(self, run: Run, fresh: bool = False) -> tuple[list[str], list[str], list[str]]:
        """Write the batch; the keys of the entities, sources and concepts that lost an edge."""
        _run_all(run, MERGE_FACTS, self.facts)
        stale_e = self.entities.write(run, fresh)
        stale_s = self.sources.write(run, fresh)
        stale_c = self.concepts.write(run, fresh)
        if not fresh:
            _run_all(run, UNLINK_TOPICS, self.keep_topic)
        if self.in_topic:
            _run_all(run, MERGE_TOPICS, list(self.topics.values()))
            _run_all(run, LINK_TOPICS, self.in_topic)
        return stale_e, stale_s, stale_c


def _delete(ids: list[str], run: Run) -> tuple[list[str], list[str], list[str]]:
    """Delete facts; the keys of the entities, sources and concepts they linked to."""
    entity_keys = [r[0] for r in run(ENTITY_KEYS_OF, {"ids": ids})]
    source_keys = [r[0] for r in run(SOURCE_KEYS_OF, {"ids": ids})]
    concept_keys = [r[0] for r in run(CONCEPT_KEYS_OF, {"ids": ids})]
    run(DELETE_FACTS, {"ids": ids})
    return entity_keys, source_keys, concept_keys


def concept_node_key(vault: str, user_id: str, norm: str) -> str:
    return scoped_key(vault, user_id, f"concept:{norm}")


def topic_node_key(vault: str, user_id: str, tid: str) -> str:
    return scoped_key(vault, user_id, f"topic:{tid}")


class CypherGraphStore(ABC):
    """The `GraphStore` protocol over Cypher; a backend supplies `_read`, `_write`, `close`.

    A backend may replace the orphan-dropping statements with faster ones of its dialect.
    """

    drop_orphan_entities: ClassVar[str] = DROP_ORPHAN_ENTITIES
    drop_orphan_sources: ClassVar[str] = DROP_ORPHAN_SOURCES
    drop_orphan_concepts: ClassVar[str] = DROP_ORPHAN_CONCEPTS

    @abstractmethod
    def _read(self, query: str, params: dict[str, Any]) -> Rows:
        """Run a read-only statement; its result rows."""

    @abstractmethod
    def _write(self, work: Callable[[Run], T]) -> T:
        """Call `work` with a statement runner, in one transaction where the backend has them."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upsert_facts(self, facts: Sequence[FactNode], fresh: bool = False) -> None:
        """Create or replace facts with their MENTIONS, FROM, ABOUT and IN_TOPIC edges
        (idempotent). `fresh`: the caller knows these facts are new (skips unlinking)."""
        latest = {f.id: f for f in facts}
        for chunk in batched(latest.values()):
            batch = _Upsert.of(chunk)
            self._write(
                lambda run, batch=batch: self._drop_orphans(run, *batch.apply(run, fresh))
            )

    def place_facts(self, facts: Sequence[FactNode]) -> None:
        """Link new facts (written with `fresh=True` and no concepts / topic) to their
        concepts and topic: the organisation step that may run after the write."""
        latest = {f.id: f for f in facts}
        for chunk in batched(latest.values()):
            batch = _Upsert.of(chunk)
            self._write(lambda run, batch=batch: batch.place(run))

    def delete_facts(self, ids: Sequence[str]) -> None:
        """Remove facts and their edges, and the entities/sources no other fact links to."""
        for chunk in batched(dict.fromkeys(ids)):
            self._write(lambda run, chunk=chunk: self._drop_orphans(run, *_delete(chunk, run)))

    def _drop_orphans(
        self,
        run: Run,
        entity_keys: list[str],
        source_keys: list[str],
        concept_keys: list[str] | None = None,
    ) -> None:
        """Delete those of these entities, sources, concepts that no fact links to any more."""
        _run_all(run, self.drop_orphan_entities, entity_keys, "keys")
        _run_all(run, self.drop_orphan_sources, source_keys, "keys")
        if concept_keys:
            _run_all(run, self.drop_orphan_concepts, concept_keys, "keys")

    def facts_mentioning(
        self, vault: str, user_id: str, entities: Sequence[str], limit: int = 50
    ) -> list[tuple[str, int]]:
        """Fact ids in scope mentioning any of `entities`, most matches (then newest) first."""
        _check_scope(vault, user_id)
        _check_limit(limit)
        norms = dict.fromkeys(n for n in map(norm_entity, entities) if n)
        if not norms:
            return []
        keys = [scoped_key(vault, user_id, n) for n in norms]
        params = {"keys": keys, "vault": vault, "user_id": user_id, "limit": limit}
        return [(r[0], int(r[2])) for r in self._read(FACTS_MENTIONING, params)]

    def entities_of(self, fact_ids: Sequence[str]) -> dict[str, list[str]]:
        """Entity names (sorted) each existing fact mentions."""
        out: dict[str, list[str]] = {}
        for chunk in batched(dict.fromkeys(fact_ids)):
            for fid, names in self._read(ENTITIES_OF, {"ids": chunk}):
                out[fid] = sorted(names)
        return out

    def related_entities(
        self, vault: str, user_id: str, entity: str, limit: int = 20
    ) -> list[tuple[str, int]]:
        """Entities co-mentioned with `entity` in scope, with the number of facts they share."""
        _check_scope(vault, user_id)
        _check_limit(limit)
        if not (norm := norm_entity(entity)):
            return []
        params = {
            "key": scoped_key(vault, user_id, norm),
            "vault": vault,
            "user_id": user_id,
            "limit": limit,
        }
        return [(r[0], int(r[1])) for r in self._read(RELATED_ENTITIES, params)]

    def fact_links(
        self, vault: str, user_id: str, fact_ids: Sequence[str], limit: int = 1000
    ) -> list[tuple[str, str, str]]:
        """The entities and concepts these facts of one scope link to: (fact id, "entity" |
        "concept", norm), at most `limit` rows."""
        _check_scope(vault, user_id)
        _check_limit(limit)
        ids = list(dict.fromkeys(fact_ids))
        if not ids:
            return []
        params = {"ids": ids, "vault": vault, "user_id": user_id, "limit": limit}
        rows = self._read(FACT_LINKS, params)
        kinds = {"MENTIONS": "entity", "ABOUT": "concept"}
        return [(r[0], kinds[r[1]], r[2]) for r in rows if r[1] in kinds and r[2]]

    def node_facts(
        self, vault: str, user_id: str, entities: Sequence[str], concepts: Sequence[str],
        limit: int = 1000,
    ) -> list[tuple[str, str, str]]:
        """The active facts in scope that mention these entities or are about these concepts
        (norms): ("entity" | "concept", norm, fact id), at most `limit` rows of each kind."""
        _check_scope(vault, user_id)
        _check_limit(limit)
        ents = [scoped_key(vault, user_id, n) for n in dict.fromkeys(map(norm_entity, entities))
                if n]
        cons = [concept_node_key(vault, user_id, n)
                for n in dict.fromkeys(map(concept_norm, concepts)) if n]
        if not ents and not cons:
            return []
        params = {"entities": ents, "concepts": cons, "vault": vault, "user_id": user_id,
                  "limit": limit}
        return [(r[0], r[1], r[2]) for r in self._read(NODE_FACTS, params)]

    # the organisation layer: concepts, topics, typed relations, lineage

    def facts_about(
        self, vault: str, user_id: str, concepts: Sequence[str], limit: int = 50
    ) -> list[tuple[str, int]]:
        """Active fact ids in scope about any of `concepts`, most matches (then newest) first."""
        _check_scope(vault, user_id)
        _check_limit(limit)
        norms = dict.fromkeys(n for n in map(concept_norm, concepts) if n)
        if not norms:
            return []
        keys = [concept_node_key(vault, user_id, n) for n in norms]
        params = {"keys": keys, "vault": vault, "user_id": user_id, "limit": limit}
        return [(r[0], int(r[2])) for r in self._read(FACTS_ABOUT, params)]

    def related_concepts(
        self, vault: str, user_id: str, concepts: Sequence[str], limit: int = 20
    ) -> list[tuple[str, str, str, float]]:
        """One hop over RELATED / BROADER from `concepts`: (from norm, to norm, kind, weight),
        heaviest first."""
        _check_scope(vault, user_id)
        _check_limit(limit)
        norms = dict.fromkeys(n for n in map(concept_norm, concepts) if n)
        if not norms:
            return []
        keys = [concept_node_key(vault, user_id, n) for n in norms]
        params = {"keys": keys, "vault": vault, "user_id": user_id, "limit": limit}
        return [(r[0], r[1], r[2], float(r[3] or 0)) for r in self._read(RELATED_CONCEPTS, params)]

    def upsert_topics(self, topics: Sequence[TopicNode]) -> None:
        """Create topics, or set their label and size."""
        rows = []
        for t in topics:
            _check_scope(t.vault, t.user_id)
            rows.append(
                {
                    "key": topic_node_key(t.vault, t.user_id, t.tid),
                    "vault": t.vault,
                    "user_id": t.user_id,
                    "tid": t.tid,
                    "label": t.label,
                    "size": t.size,
                }
            )
        if rows:
            self._write(lambda run: _run_all(run, RELABEL_TOPICS, rows))

    def assign_topics(self, vault: str, user_id: str, assignment: dict[str, str]) -> None:
        """Move facts into topics (fact id -> topic id); then recount topic sizes and the
        concept -> topic weights of the scope (the hierarchy's middle layer)."""
        _check_scope(vault, user_id)
        keys = {f: topic_node_key(vault, user_id, t) for f, t in assignment.items()}
        keep = [{"id": f, "keys": [k]} for f, k in keys.items()]
        links = [{"fact": f, "key": k} for f, k in keys.items()]
        tids = sorted(set(assignment.values()))
        topics = [
            {"key": topic_node_key(vault, user_id, t), "vault": vault, "user_id": user_id,
             "tid": t, "label": t}
            for t in tids
        ]
        scope = {"vault": vault, "user_id": user_id}

        def work(run: Run) -> None:
            _run_all(run, MERGE_TOPICS, topics)
            _run_all(run, UNLINK_TOPICS, keep)
            _run_all(run, LINK_TOPICS, links)
            run(RECOUNT_TOPICS, scope)
            run(UNLINK_CONCEPT_TOPICS, scope)
            run(LINK_CONCEPT_TOPICS, scope)

        self._write(work)

    def add_to_topics(
        self, vault: str, user_id: str, weights: dict[tuple[str, str], float]
    ) -> None:
        """Add weight to concept -> topic edges ((concept, topic id) -> weight): the
        incremental step after new facts were placed (topic sizes come with `upsert_topics`)."""
        _check_scope(vault, user_id)
        rows = [
            {
                "concept": concept_node_key(vault, user_id, norm),
                "topic": topic_node_key(vault, user_id, tid),
                "w": w,
            }
            for (name, tid), w in weights.items()
            if (norm := concept_norm(name))
        ]

        self._write(lambda run: _run_all(run, ADD_CONCEPT_TOPICS, rows))

    def drop_topics(self, vault: str, user_id: str, keep: Sequence[str]) -> None:
        """Delete this scope's topics whose id is not in `keep`."""
        _check_scope(vault, user_id)
        params = {"vault": vault, "user_id": user_id, "keep": list(keep)}
        self._write(lambda run: run(DROP_TOPICS, params))

    def link_concepts(self, vault: str, user_id: str, links: Sequence[ConceptLink]) -> None:
        """Add weight to typed relations between existing concepts of one scope."""
        _check_scope(vault, user_id)
        rows: dict[str, dict[tuple[str, str], float]] = {"RELATED": {}, "BROADER": {}}
        for link in links:
            a, b = concept_norm(link.source), concept_norm(link.target)
            if a and b and a != b:
                if link.kind == "RELATED" and b < a:
                    a, b = b, a  # one undirected edge per pair
                pair = (concept_node_key(vault, user_id, a), concept_node_key(vault, user_id, b))
                rows[link.kind][pair] = rows[link.kind].get(pair, 0.0) + link.weight
        related = [{"a": a, "b": b, "w": w} for (a, b), w in rows["RELATED"].items()]
        broader = [{"a": a, "b": b, "w": w} for (a, b), w in rows["BROADER"].items()]
        if related or broader:

            def work(run: Run) -> None:
                _run_all(run, LINK_RELATED, related)
                _run_all(run, LINK_BROADER, broader)

            self._write(work)

    def set_events(self, events: Sequence[FactEvent]) -> None:
        """Store the time each fact speaks of (phrase, first and last day, event) on it."""
        rows = [e.model_dump() for e in {e.id: e for e in events}.values()]
        if rows:
            self._write(lambda run: _run_all(run, SET_EVENTS, rows))

    def link_entities(self, vault: str, user_id: str, links: Sequence[EntityLink]) -> None:
        """OF edges between existing entities of one scope: the entity to its owner."""
        _check_scope(vault, user_id)
        rows = [
            {"a": scoped_key(vault, user_id, a), "b": scoped_key(vault, user_id, b),
             "role": link.role}
            for link in links
            if (a := norm_entity(link.entity)) and (b := norm_entity(link.owner)) and a != b
        ]
        if rows:
            self._write(lambda run: _run_all(run, LINK_ENTITY_OWNERS, rows))

    def link_same_entity(self, vault: str, user_id: str,
                         mentions: Sequence[EntityMention]) -> int:
        """From each mentioning fact, a SAME_ENTITY edge to the latest earlier active fact of
        another session naming the same entity (one edge per fact and entity: a chain in
        time, never all pairs); the number written."""
        _check_scope(vault, user_id)
        rows = [
            {"key": scoped_key(vault, user_id, norm), "norm": norm, "fact": m.fact,
             "session": m.session_id or "", "at": m.at}
            for m in mentions if (norm := norm_entity(m.entity))
        ]
        if not rows:
            return 0
        scope = {"vault": vault, "user_id": user_id}

        def work(run: Run) -> int:
            return sum(_linked(run(LINK_SAME_ENTITY, {**scope, "rows": chunk}))
                       for chunk in batched(rows))

        return self._write(work)

    def supersede(self, new_id: str, old_id: str, at: float) -> None:
        """A lineage edge: `new_id` supersedes `old_id`."""
        params = {"new": new_id, "old": old_id, "at": at}
        self._write(lambda run: run(SUPERSEDE, params))

    def lineage(self, fact_id: str) -> list[str]:
        """The facts `fact_id` supersedes, nearest first."""
        return list(dict.fromkeys(r[0] for r in self._read(LINEAGE, {"id": fact_id})))

    def hierarchy(
        self, vault: str, user_id: str, facts_per_concept: int = 3, max_facts: int = 5000,
        per_topic: int = 8,
    ) -> list[dict[str, Any]]:
        """The topic -> concept -> fact tree of one scope: one dict per topic, `concepts`
        heaviest first, each with up to `facts_per_concept` of its newest facts in the topic;
        `entities` (most facts first) and dated `events` (earliest first), at most
        `per_topic` of each."""
        _check_scope(vault, user_id)
        scope = {"vault": vault, "user_id": user_id}
        entities = self._topic_entities(scope, per_topic, max_facts)
        events = self._topic_events(scope, per_topic, max_facts)
        facts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for tid, norm, fid, text, _t in self._read(HIERARCHY_FACTS, {**scope, "limit": max_facts}):
            got = facts.setdefault((tid, norm), [])
            if len(got) < facts_per_concept:
                got.append({"id": fid, "text": text})
        out = []
        for tid, label, size, concepts in self._read(HIERARCHY_TOPICS, scope):
            cs = sorted(
                (
                    {"name": name, "weight": float(w or 0), "facts": facts.get((tid, norm), [])}
                    for name, norm, w in concepts
                    if name is not None
                ),
                key=lambda c: (-c["weight"], c["name"]),
            )
            out.append({"tid": tid, "label": label, "size": int(size or 0), "concepts": cs,
                        "entities": entities.get(tid, []), "events": events.get(tid, [])})
        out.sort(key=lambda t: (-t["size"], t["tid"]))
        return out

    def _topic_entities(self, scope: dict[str, str], per_topic: int,
                        max_rows: int) -> dict[str, list[dict[str, Any]]]:
        """Per topic, the entities its facts name, most facts first."""
        out: dict[str, list[dict[str, Any]]] = {}
        for tid, name, n in self._read(HIERARCHY_ENTITIES, {**scope, "limit": max_rows}):
            got = out.setdefault(tid, [])
            if len(got) < per_topic:
                got.append({"name": name, "facts": int(n)})
        return out

    def _topic_events(self, scope: dict[str, str], per_topic: int,
                      max_rows: int) -> dict[str, list[dict[str, Any]]]:
        """Per topic, the dated facts in it, earliest first."""
        out: dict[str, list[dict[str, Any]]] = {}
        for tid, fid, event, phrase, start, end, text in self._read(
                HIERARCHY_EVENTS, {**scope, "limit": max_rows}):
            got = out.setdefault(tid, [])
            if len(got) < per_topic:
                got.append({"id": fid, "event": event or text, "phrase": phrase,
                            "start": float(start), "end": float(end if end is not None
                                                                 else start)})
        return out

    def organisation_counts(self, vault: str, user_id: str) -> dict[str, int]:
        """Concepts, topics, RELATED / BROADER relations and SUPERSEDES edges of one scope."""
        _check_scope(vault, user_id)
        scope = {"vault": vault, "user_id": user_id}
        return {name: int(self._read(q, scope)[0][0]) for name, q in CONCEPT_COUNTS.items()}

    def counts(self, vault: str | None = None, user_id: str | None = None) -> dict[str, int]:
        """Numbers of facts, entities, sources and edges, in one vault and/or user if given."""
        params = {k: v for k, v in (("vault", vault), ("user_id", user_id)) if v}
        return {
            name: int(self._read(q, params)[0][0])
            for name, q in count_queries(vault, user_id).items()
        }
