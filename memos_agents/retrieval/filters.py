"""What may be served: the pool filter (scope, state, TTL, `as_of`, tags, agent), the query's
time range resolved against the scope's memories, and the last check on each cube."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from ..cube import MemCube, Scope
from ..reader import MemoryIntent, TimeRange
from ..text import keyword_tokens
from .index import INDEXED, LIVE, ScopeIndex

CubesOf = Callable[[Sequence[str]], dict[str, MemCube]]


def filter_rows(
    idx: ScopeIndex,
    order: list[int],
    scope: Scope,
    tags: Sequence[str] | None,
    as_of: datetime | None,
    now: datetime,
    dropped: Counter[str],
    cubes_of: CubesOf,
) -> list[int]:
    """The rows of `order` that may be served, each drop counted by reason in `dropped`."""
    t_now = now.timestamp()
    t_as = as_of.timestamp() if as_of else None
    rows = np.asarray(order, dtype=np.int64)
    rows = rows[idx.col("alive")[rows]]
    left = np.ones(len(rows), dtype=bool)

    def drop(reason: str, bad: np.ndarray) -> None:
        hit = left & bad
        if k := int(hit.sum()):
            dropped[reason] += k
        left[hit] = False

    if scope.session_id:
        code = idx.columns.tables["sessions"].code.get(scope.session_id, -2)
        drop("session", idx.col("session")[rows] != code)
    with np.errstate(invalid="ignore"):
        drop("expired", idx.col("expires_at")[rows] <= t_now)  # NaN (none): False
        if t_as is None:
            states = idx.columns.tables["states"]
            live = [c for s, c in states.code.items() if s in LIVE]
            drop("superseded", ~np.isin(idx.col("state")[rows], live))
        else:
            # a cube that existed at `as_of` but was updated in place since stays a candidate:
            # the router serves the version that held then
            start = np.minimum(idx.col("valid_from")[rows], idx.col("created_at")[rows])
            drop("as_of", (start > t_as) | (idx.col("valid_to")[rows] <= t_as))
    out: list[int] = rows[left].tolist()
    if tags:
        wanted = set(tags)
        cubes = cubes_of(idx.ids_of(out))
        keep = [i for i in out if (c := cubes.get(idx.id_of(i))) is not None
                and wanted & set(c.organisation.tags)]
        dropped["tags"] += len(out) - len(keep)
        out = keep
    if scope.agent_id:
        cubes = cubes_of(idx.ids_of(out))
        keep = [i for i in out if (c := cubes.get(idx.id_of(i))) is not None
                and c.scope.agent_id == scope.agent_id]
        dropped["agent"] += len(out) - len(keep)
        out = keep
    return out


def is_explicit(tr: TimeRange) -> bool:
    """A stated date with its year ("in May 2023", "on 8 May, 2023"), not a relative or
    year-less one ("last week", "in June"), which only weighs in."""
    return not tr.relative and not tr.yearless


def time_mode(configured: str, intent: MemoryIntent, tr: TimeRange, in_range: np.ndarray) -> str:
    """"hard" (only the range is served) or "soft" (the range weighs in): "auto" is hard for an
    explicit date of the query itself that some candidate falls in."""
    if configured != "auto":
        return configured
    hard = (intent.time is not None and intent.time.anchor is None and bool(in_range.any())
            and tr.expression != "(chat model)" and is_explicit(tr))
    return "hard" if hard else "soft"


def to_dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _shifted(tr: TimeRange, times: np.ndarray, as_of: datetime | None) -> TimeRange:
    """A relative range moved to the scope's own present (its latest memory)."""
    shift = to_dt(times.max()) - (as_of or datetime.now(UTC))
    return tr.model_copy(update={
        "start": tr.start + shift + timedelta(days=1) if tr.start else None,
        "end": tr.end + shift + timedelta(days=1) if tr.end else None,
        "expression": f"{tr.expression} (before the latest memory)",
    })


def _latest_year(tr: TimeRange, times: np.ndarray) -> TimeRange:
    """A year-less month moved to the latest year that has memories in it."""
    assert tr.start is not None and tr.end is not None
    for back in range(1, 30):
        try:
            start = tr.start.replace(year=tr.start.year - back)
            end = tr.end.replace(year=tr.end.year - back)
        except ValueError:  # 29 February
            continue
        if ((times >= start.timestamp()) & (times < end.timestamp())).any():
            return tr.model_copy(update={
                "start": start, "end": end, "expression": f"{tr.expression} ({start.year})",
            })
    return tr


def _anchored(idx: ScopeIndex, tr: TimeRange) -> TimeRange | None:
    """"before the trip": the time of the best keyword match of the anchor."""
    assert tr.anchor is not None
    toks = keyword_tokens(tr.anchor)
    if not toks:
        return None
    scores = idx.keyword_scores(toks)["keyword"]
    if not len(scores) or scores.max() <= 0:
        return None
    at = to_dt(float(idx.col("valid_from")[int(scores.argmax())]))
    if tr.direction == "before":
        return tr.model_copy(update={"end": at})
    return tr.model_copy(update={"start": at})


def resolve_time(idx: ScopeIndex, intent: MemoryIntent, as_of: datetime | None) -> TimeRange | None:
    """The query's time range against this scope's memories: an event anchor ("after
    the trip") becomes the time of the best keyword match of the event; a relative range
    ("last week") or a month without a year that holds no memory is moved to the scope's
    own present (its latest memory), or the latest year that has memories in that month."""
    tr = intent.time
    if tr is None:
        return None
    if tr.anchor is not None:
        return _anchored(idx, tr)
    dead, all_times = idx.arrays()
    times = all_times[~dead]
    lo, hi = tr.bounds()
    if not len(times) or ((times >= lo) & (times < hi)).any():
        return tr
    if tr.relative:
        return _shifted(tr, times, as_of)
    if tr.yearless and tr.start is not None and tr.end is not None:
        return _latest_year(tr, times)
    return tr


def current(cube: MemCube, as_of: datetime | None, now: datetime) -> bool:
    """Live now, or (with `as_of`) current at that time and not expired."""
    if as_of is None:
        return cube.is_live(now)
    lc = cube.lifecycle
    if lc.state.value not in INDEXED:
        return False
    if lc.expires_at is not None and lc.expires_at <= now:
        return False
    start = lc.valid_from or lc.created_at
    return start <= as_of and (lc.valid_to is None or lc.valid_to > as_of)


def scope_mismatch(cube: MemCube, scope: Scope, tags: Sequence[str] | None) -> str | None:
    """Why `cube` is outside `scope` or the `tags` asked for ("" for another user or vault,
    never counted); None when it is inside."""
    if cube.scope.user_id != scope.user_id or cube.scope.vault != scope.vault:
        return ""
    if scope.session_id and cube.scope.session_id != scope.session_id:
        return "session"
    if scope.agent_id and cube.scope.agent_id != scope.agent_id:
        return "agent"
    if tags and not set(tags) & set(cube.organisation.tags):
        return "tags"
    return None
