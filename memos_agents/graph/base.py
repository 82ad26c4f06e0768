"""The `GraphStore` protocol: the topic-concept-fact graph behind a vault.

Every backend (one file each) stores the same schema::

    (:Fact {id, vault, user_id, session_id, agent_id, text, source_kind, speaker, state,
            importance, valid_from, valid_to, created_at})
    (:Entity {key, vault, user_id, name, norm})     key = vault|user_id|norm
    (:Source {key, vault, user_id, kind, ref})      key = vault|user_id|kind:ref
    (:Concept {key, vault, user_id, name, norm})    key = vault|user_id|concept:norm
    (:Topic {key, vault, user_id, tid, label, size}) key = vault|user_id|topic:tid
    (Fact)-[:MENTIONS]->(Entity)    (Fact)-[:FROM]->(Source)
    (Fact)-[:ABOUT]->(Concept)      (Fact)-[:IN_TOPIC]->(Topic)
    (Concept)-[:IN_TOPIC {weight}]->(Topic)                  topic -> concept -> fact
    (Concept)-[:RELATED {weight}]->(Concept)                 co-occurrence in facts
    (Concept)-[:BROADER {weight}]->(Concept)                 "sunset painting" -> "painting"
    (Fact)-[:SUPERSEDES {at}]->(Fact)                        lineage of updates
    (Entity)-[:OF {role}]->(Entity)                          "Caroline's sister" -> Caroline
    (Fact)-[:SAME_ENTITY {entity}]->(Fact)                   the latest earlier fact of another
                                                             session naming the same entity

A Fact may also carry the time it speaks of (`event`, `event_phrase`, `event_start`,
`event_end`: a resolved "last Saturday"; see `FactEvent`).

Every node but Fact belongs to one (vault, user_id) scope, so no traversal crosses
from one user's facts into another's. Superseded facts stay (state 'superseded') for
lineage; routing reads only active ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from ..text import concept_key

SEP = "\x1f"


def scoped_key(vault: str, user_id: str, name: str) -> str:
    """The key of a node that belongs to one (vault, user) scope."""
    return SEP.join((vault, user_id, name))


def norm_entity(name: str) -> str:
    """Normalise an entity surface form for matching ("Miso " -> "miso")."""
    return " ".join(name.casefold().split())


class FactNode(BaseModel):
    """What the vault writes to the graph for one plaintext cube."""

    id: str
    vault: str
    user_id: str
    session_id: str | None = None
    agent_id: str | None = None
    text: str
    source_kind: str
    source_refs: list[str] = Field(default_factory=list)
    entities: list[str] = Field(default_factory=list)
    concepts: list[str] = Field(default_factory=list)
    topic: str | None = None
    speaker: str | None = None
    state: str = "active"
    importance: float = 0.5
    valid_from: float | None = None
    valid_to: float | None = None
    created_at: float


class FactEvent(BaseModel):
    """The time one fact speaks of: its phrase, the days it names (UTC midnight timestamps of
    the first and last day) and what happened then."""

    id: str
    phrase: str
    start: float
    end: float
    event: str | None = None


class EntityLink(BaseModel):
    """An entity of one scope named through another: "Caroline's sister" (`entity`) is the
    `role` "sister" of "Caroline" (`owner`)."""

    entity: str
    owner: str
    role: str


class EntityMention(BaseModel):
    """One fact naming one entity: what `link_same_entity` chains across sessions."""

    fact: str
    entity: str
    session_id: str | None = None
    at: float


class TopicNode(BaseModel):
    """A topic of one scope: a cluster of facts, labelled by its salient concepts."""

    tid: str
    vault: str
    user_id: str
    label: str
    size: int = 0


class ConceptLink(BaseModel):
    """A weighted, typed relation between two concepts of one scope (names, not keys)."""

    source: str
    target: str
    kind: Literal["RELATED", "BROADER"] = "RELATED"
    weight: float = 1.0


def concept_norm(name: str) -> str:
    """Normalise a concept for matching: stemmed lower-case words ("Paintings" -> "paint")."""
    return concept_key(name)


@runtime_checkable
class GraphStore(Protocol):
    """What MemOS needs from a graph database."""

    def upsert_facts(self, facts: Sequence[FactNode], fresh: bool = False) -> None:
        """Create or replace facts with their MENTIONS, FROM, ABOUT, IN_TOPIC edges
        (idempotent); `fresh` says they are new (nothing to unlink)."""
        ...

    def delete_facts(self, ids: Sequence[str]) -> None:
        """Remove facts and their edges; entities/sources left with no fact go too."""
        ...

    def facts_mentioning(
        self, vault: str, user_id: str, entities: Sequence[str], limit: int = 50
    ) -> list[tuple[str, int]]:
        """Fact ids in scope mentioning any of `entities`, most matches first."""
        ...

    def entities_of(self, fact_ids: Sequence[str]) -> dict[str, list[str]]:
        """Entity names each fact mentions."""
        ...

    def related_entities(
        self, vault: str, user_id: str, entity: str, limit: int = 20
    ) -> list[tuple[str, int]]:
        """Entities co-mentioned with `entity` in scope, with co-mention counts."""
        ...

    def fact_links(
        self, vault: str, user_id: str, fact_ids: Sequence[str], limit: int = 1000
    ) -> list[tuple[str, str, str]]:
        """The entities and concepts these facts of one scope link to: (fact id, "entity" |
        "concept", norm), at most `limit` rows."""
        ...

    def node_facts(
        self, vault: str, user_id: str, entities: Sequence[str], concepts: Sequence[str],
        limit: int = 1000,
    ) -> list[tuple[str, str, str]]:
        """Active facts in scope mentioning these entities / about these concepts (norms):
        (kind, norm, fact id), at most `limit` rows of each kind."""
        ...

    def place_facts(self, facts: Sequence[FactNode]) -> None:
        """Link facts already written (fresh, without concepts / topic) to both."""
        ...

    def facts_about(
        self, vault: str, user_id: str, concepts: Sequence[str], limit: int = 50
    ) -> list[tuple[str, int]]:
        """Active fact ids in scope about any of `concepts` (normalised), most matches first."""
        ...

    def related_concepts(
        self, vault: str, user_id: str, concepts: Sequence[str], limit: int = 20
    ) -> list[tuple[str, str, str, float]]:
        """One hop from `concepts` over RELATED / BROADER: (from, to, kind, weight) norms."""
        ...

    def upsert_topics(self, topics: Sequence[TopicNode]) -> None:
        """Create or relabel topics."""
        ...

    def assign_topics(self, vault: str, user_id: str, assignment: dict[str, str]) -> None:
        """Move facts (id -> topic id) into topics; concept -> topic weights are recounted."""
        ...

    def drop_topics(self, vault: str, user_id: str, keep: Sequence[str]) -> None:
        """Delete this scope's topics not in `keep`."""
        ...

    def link_concepts(self, vault: str, user_id: str, links: Sequence[ConceptLink]) -> None:
        """Add weight to typed relations between concepts (created if missing)."""
        ...

    def add_to_topics(
        self, vault: str, user_id: str, weights: dict[tuple[str, str], float]
    ) -> None:
        """Add weight to concept -> topic edges ((concept, topic id) -> weight)."""
        ...

    def organisation_counts(self, vault: str, user_id: str) -> dict[str, int]:
        """Concepts, topics, typed relations and lineage edges of one scope."""
        ...

    def set_events(self, events: Sequence[FactEvent]) -> None:
        """Store the time each fact speaks of on the fact."""
        ...

    def link_entities(self, vault: str, user_id: str, links: Sequence[EntityLink]) -> None:
        """OF edges between existing entities of one scope ("Caroline's sister" -> Caroline)."""
        ...

    def link_same_entity(self, vault: str, user_id: str,
                         mentions: Sequence[EntityMention]) -> int:
        """A SAME_ENTITY edge from each mentioning fact to the latest earlier active fact of
        another session that names the same entity; the number of edges written."""
        ...

    def supersede(self, new_id: str, old_id: str, at: float) -> None:
        """Record that fact `new_id` supersedes `old_id` (a lineage edge)."""
        ...

    def lineage(self, fact_id: str) -> list[str]:
        """The ids this fact supersedes, directly or through earlier versions, newest first."""
        ...

    def hierarchy(
        self, vault: str, user_id: str, facts_per_concept: int = 3
    ) -> list[dict[str, object]]:
        """Topic -> concept -> fact rows of one scope (see `CypherGraphStore.hierarchy`)."""
        ...

    def counts(self, vault: str | None = None, user_id: str | None = None) -> dict[str, int]:
        """Number of facts, entities, sources and edges (optionally in one scope)."""
        ...

    def close(self) -> None:
        """Release connections (the embedded server stops itself when idle)."""
        ...
