"""MemLifecycle: states and their transitions, TTL sweeping, retention, rollback, and
bi-temporal "what was true at time X" reads.

Every transition writes a new version (so `history` shows it), and every new version of a
cube, whatever changed, is made here by `next_version`. Purge, which really erases, is the
facade's `purge`; the audit log keeps that it happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from .cube import LIVE_STATES, MemCube, Organisation, Provenance, State, VersionRecord, utcnow
from .errors import InvalidInput

LIVE = LIVE_STATES
"""States a cube is found in by search, get-by-scope and list (`cube.LIVE_STATES`)."""

TRANSITIONS: dict[State, frozenset[State]] = {
    State.active: frozenset(
        {State.archived, State.frozen, State.expired, State.superseded, State.deleted}
    ),
    State.frozen: frozenset({State.active, State.archived}),  # read-only: unfreeze to delete
    State.archived: frozenset({State.active, State.deleted}),
    State.expired: frozenset({State.active, State.archived, State.deleted}),
    State.superseded: frozenset({State.active, State.archived, State.deleted}),
    State.deleted: frozenset({State.active}),
}


OPS = {
    State.active: "restore",
    State.archived: "archive",
    State.frozen: "freeze",
    State.expired: "expire",
    State.superseded: "supersede",
    State.deleted: "delete",
}
"""The history op recorded for a transition into each state."""


class RetentionPolicy(BaseModel):
    """Per-vault retention, applied by the sweeper: archive what is too old or too many."""

    settings_kind: ClassVar[str] = "RetentionPolicy"  # its rows in the settings table

    max_age_days: float | None = Field(default=None, gt=0)
    max_count: int | None = Field(default=None, gt=0, description="per user in the vault")


def check_transition(cube: MemCube, to: State) -> None:
    now = cube.lifecycle.state
    if to is now:
        raise InvalidInput(f"cube {cube.id} is already {to.value}")
    if to not in TRANSITIONS[now]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[now]))
        raise InvalidInput(
            f"cube {cube.id} cannot go from {now.value} to {to.value} (allowed: {allowed})"
        )


def next_version(
    cube: MemCube,
    to: State | None = None,
    when: datetime | None = None,
    *,
    content: str | None = None,
    organisation: Organisation | None = None,
    provenance: Provenance | None = None,
    metadata: dict[str, Any] | None = None,
    valid_from: datetime | None = None,
) -> MemCube:
    """The cube as its next version: in state `to` (None: the state it is in), with whatever
    else changed. The one place a version is made; `check_transition` first where the state
    changes by request."""
    when = when or utcnow()
    new = cube.model_copy(deep=True)
    new.lifecycle.version = cube.lifecycle.version + 1
    new.lifecycle.updated_at = when
    if content is not None:
        new.content = content
    if organisation is not None:
        new.organisation = organisation.model_copy(deep=True)
    if provenance is not None:
        new.provenance = provenance.model_copy(deep=True)
    if metadata is not None:
        new.metadata = dict(metadata)
    if valid_from is not None:
        new.lifecycle.valid_from = valid_from
    if to is not None:
        new.lifecycle.state = to
        if to in LIVE:
            new.lifecycle.valid_to = None
        elif to is not State.archived:
            new.lifecycle.valid_to = new.lifecycle.valid_to or when
    return new


def rolled_back(cube: MemCube, target: VersionRecord) -> MemCube:
    """A new active version carrying the content and organisation of `target`."""
    if cube.lifecycle.state is not State.active:
        check_transition(cube, State.active)
    now = utcnow()
    return next_version(
        cube,
        State.active,
        now,
        content=target.cube.content,
        organisation=target.cube.organisation,
        metadata={**cube.metadata, "rolled_back_to": target.version},
        valid_from=now,
    )


def version_at(history: Sequence[VersionRecord], when: datetime) -> MemCube | None:
    """The version that was true at `when` (valid_from <= when < next valid_from), if it was
    live then; None if the cube did not hold at that time."""
    current: MemCube | None = None
    for rec in history:
        start = rec.cube.lifecycle.valid_from or rec.cube.lifecycle.created_at
        if rec.cube.lifecycle.state not in LIVE:
            start = rec.cube.lifecycle.valid_to or rec.changed_at
        if start > when:
            break
        current = rec.cube
    if current is None or current.lifecycle.state not in LIVE:
        return None
    end = current.lifecycle.valid_to
    return current if end is None or end > when else None


def expired_by_retention(
    cubes: Sequence[MemCube], policy: RetentionPolicy, now: datetime | None = None
) -> list[MemCube]:
    """Live cubes the policy says to archive: older than max age, or beyond max count
    (oldest first) per user."""
    now = now or utcnow()
    out: dict[str, MemCube] = {}
    if policy.max_age_days is not None:
        cutoff = now - timedelta(days=policy.max_age_days)
        out |= {c.id: c for c in cubes if c.lifecycle.created_at < cutoff}
    if policy.max_count is not None:
        by_user: dict[str, list[MemCube]] = {}
        for c in cubes:
            by_user.setdefault(c.scope.user_id, []).append(c)
        for group in by_user.values():
            group.sort(key=lambda c: c.lifecycle.created_at)
            excess = len(group) - policy.max_count
            out |= {c.id: c for c in group[: max(0, excess)]}
    return list(out.values())
