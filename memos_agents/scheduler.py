"""MemScheduler: moves memory between forms, and plans which forms a task uses.

Policies (`SchedulerPolicy`, kept in the catalog so every process sees the same):

- hot plaintext (read often and recently) is promoted to activation memory: one KV cache per
  user, named "hot", rebuilt when the hot set or a source changes;
- stable clusters (memories sharing a topic or tag, unchanged for a while) become parameter
  memory (a LoRA adapter) on request, or by policy when `auto_distil` is on;
- cold plaintext (not read for a long time, not important) is archived; activation caches
  nobody used for a while are demoted (archived, blob removed: a cache is rebuilt, never
  restored).

Changes run as jobs. A job is a row in the catalog (`memos_jobs`): queued, running, done or
failed, with its reason, progress and result, so it survives restarts and every process (and
`memos-agents scheduler status`) sees it. Jobs run in a background thread (`start()`), or in
the caller's (`run_pending()`); a job whose worker died is picked up again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from .cube import Form, MemCube, State, utcnow
from .errors import InvalidInput, MemOSError, NotFound

if TYPE_CHECKING:
    from .mos import MemOS

log = logging.getLogger(__name__)

JobKind = Literal["promote", "distil", "archive", "demote"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
POLICY_KEY = "scheduler_policy"


class _LazySQLAlchemy:
    """sqlalchemy, imported on first use: `memos-agents --help` does not pay for it."""

    def __getattr__(self, name: str) -> Any:
        import sqlalchemy

        return getattr(sqlalchemy, name)


sa = _LazySQLAlchemy()


@functools.cache
def jobs_table() -> Any:
    """The `memos_jobs` table (in the catalog's database)."""
    from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

    return Table(
        "memos_jobs",
        MetaData(),
        Column("id", String(32), primary_key=True),
        Column("kind", String(16), nullable=False),
        Column("state", String(16), nullable=False, index=True),
        Column("vault", String(256), nullable=False),
        Column("user_id", String(256), nullable=False),
        Column("params", Text, nullable=False),
        Column("reason", Text, nullable=False, default=""),
        Column("dedup_key", String(256), index=True),
        Column("result", Text),
        Column("error", Text),
        Column("progress", Float, nullable=False, default=0.0),
        Column("attempts", Integer, nullable=False, default=0),
        Column("worker", String(256)),
        Column("created_by", String(256), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("started_at", Float),
        Column("heartbeat_at", Float),
        Column("finished_at", Float),
    )


def _cubes() -> Any:
    from .catalog import cubes_t

    return cubes_t


def _row_cube(row: Any) -> MemCube:
    from .catalog import _cube_from_row

    return _cube_from_row(row)


def _ts(dt: datetime) -> float:
    return dt.timestamp()


class SchedulerPolicy(BaseModel):
    """When memory moves between forms. Durations are seconds."""

    hot_min_access: int = Field(3, ge=1, description="reads before a memory counts as hot")
    hot_window_s: float = Field(7 * 86400, gt=0, description="... within this long")
    hot_max_tokens: int = Field(2048, ge=64, description="size bound of the hot KV cache")
    hot_max_cubes: int = Field(128, ge=1)
    activation_name: str = "hot"
    activation_idle_s: float = Field(14 * 86400, gt=0, description="unused caches are demoted")
    cold_after_s: float = Field(90 * 86400, gt=0, description="unread this long: cold")
    cold_max_importance: float = Field(0.7, ge=0, le=1, description="never archive above this")
    archive_cold: bool = True
    stable_min_size: int = Field(4, ge=2, description="memories a cluster needs")
    stable_after_s: float = Field(7 * 86400, ge=0, description="unchanged this long: stable")
    auto_distil: bool = False
    distil_steps: int = Field(30, ge=1, le=2000)
    lease_s: float = Field(900, gt=0, description="a running job silent this long is retried")
    max_attempts: int = Field(3, ge=1)


class Proposal(BaseModel):
    kind: JobKind
    vault: str
    user_id: str
    cube_ids: list[str]
    reason: str
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def dedup_key(self) -> str:
        ids = ",".join(sorted(self.cube_ids))
        digest = uuid.uuid5(uuid.NAMESPACE_OID, ids).hex[:16]
        return f"{self.kind}:{self.vault}:{self.user_id}:{self.params.get('name', '')}:{digest}"


class Job(BaseModel):
    id: str
    kind: JobKind
    state: JobState
    vault: str
    user_id: str
    params: dict[str, Any]
    reason: str
    result: dict[str, Any] | None = None
    error: str | None = None
    progress: float = 0.0
    attempts: int = 0
    worker: str | None = None
    created_by: str
    created_at: datetime
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None


class PlanStep(BaseModel):
    order: int
    form: Form
    cube_ids: list[str]
    reason: str


class Plan(BaseModel):
    """Which memory forms a task uses, in the order they are applied, and why."""

    task: str
    user_id: str
    vault: str
    steps: list[PlanStep]
    notes: list[str] = Field(default_factory=list)

    def _first(self, form: Form) -> PlanStep | None:
        return next((s for s in self.steps if s.form is form), None)

    @property
    def parameter(self) -> str | None:
        step = self._first(Form.parameter)
        return step.cube_ids[0] if step else None

    @property
    def activation(self) -> str | None:
        step = self._first(Form.activation)
        return step.cube_ids[0] if step else None

    @property
    def plaintext(self) -> list[str]:
        step = self._first(Form.plaintext)
        return list(step.cube_ids) if step else []

    def explain(self) -> str:
        lines = [f"plan for {self.task!r}:"]
        for s in self.steps:
            lines.append(f"  {s.order}. {s.form.value} {', '.join(s.cube_ids) or '-'}: {s.reason}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        kind=row.kind,
        state=row.state,
        vault=row.vault,
        user_id=row.user_id,
        params=json.loads(row.params),
        reason=row.reason or "",
        result=json.loads(row.result) if row.result else None,
        error=row.error,
        progress=row.progress or 0.0,
        attempts=row.attempts or 0,
        worker=row.worker,
        created_by=row.created_by,
        created_at=_dt(row.created_at),
        started_at=_dt(row.started_at),
        heartbeat_at=_dt(row.heartbeat_at),
        finished_at=_dt(row.finished_at),
    )


def _cluster_key(cube: MemCube) -> str | None:
    org = cube.organisation
    if org.topic:
        return org.topic
    if org.concept:
        return org.concept
    tags = [t for t in org.tags if t not in {f.value for f in Form}]
    return tags[0] if tags else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MemScheduler:
    """Policies, durable jobs and task plans over one `MemOS`."""

    def __init__(self, mem: MemOS, policy: SchedulerPolicy | None = None) -> None:
        self.mem = mem
        self.catalog = mem.vault.catalog
        jobs_table().metadata.create_all(self.catalog.engine)
        self._policy = policy
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.handlers: dict[str, Callable[[Job], dict[str, Any]]] = {
            "promote": self._do_promote,
            "distil": self._do_distil,
            "archive": self._do_archive,
            "demote": self._do_demote,
        }

    # policy
    @property
    def policy(self) -> SchedulerPolicy:
        if self._policy is None:
            raw = self.catalog.get_meta(POLICY_KEY)
            self._policy = SchedulerPolicy.model_validate_json(raw) if raw else SchedulerPolicy()
        return self._policy

    def set_policy(self, **changes: Any) -> SchedulerPolicy:
        """Change policy fields and keep them in the catalog."""
        try:
            policy = SchedulerPolicy.model_validate({**self.policy.model_dump(), **changes})
        except Exception as exc:
            raise InvalidInput(f"bad scheduler policy: {exc}") from exc
        unknown = set(changes) - set(SchedulerPolicy.model_fields)
        if unknown:
            raise InvalidInput(f"unknown policy fields: {sorted(unknown)}")
        self.catalog.set_meta(POLICY_KEY, policy.model_dump_json())
        self._policy = policy
        return policy

    # what to move
    def _users(self, vault: str, user_id: str | None) -> list[str]:
        if user_id is not None:
            return [user_id]
        return sorted(self.catalog.count_users(vault))

    def _plaintext(
        self, vault: str, user_id: str, *conds: Any, order: Any = None, limit: int = 20_000
    ) -> list[MemCube]:
        cubes_t = _cubes()
        q = sa.select(cubes_t).where(
            cubes_t.c.vault == vault,
            cubes_t.c.user_id == user_id,
            cubes_t.c.form == Form.plaintext.value,
            cubes_t.c.state == State.active.value,
            *conds,
        )
        if order is not None:
            q = q.order_by(*order)
        with self.catalog.engine.connect() as conn:
            rows = conn.execute(q.limit(limit)).all()
        return [_row_cube(r) for r in rows]

    def _derived(self, form: Form, vault: str, user_id: str) -> list[MemCube]:
        from .model.memory import derived_cubes

        return derived_cubes(self.mem, form, vault=vault, user_id=user_id)

    def hot_set(self, vault: str, user_id: str, now: datetime | None = None) -> list[MemCube]:
        """The memories the hot KV cache should hold: read at least `hot_min_access` times,
        last within `hot_window_s`, scored by reads, recency and importance, up to the token
        budget."""
        cubes_t = _cubes()
        from .model.protocol import estimate_tokens

        p = self.policy
        now = now or utcnow()
        since = _ts(now - timedelta(seconds=p.hot_window_s))
        rows = self._plaintext(
            vault,
            user_id,
            cubes_t.c.access_count >= p.hot_min_access,
            cubes_t.c.last_accessed_at >= since,
            order=[cubes_t.c.access_count.desc(), cubes_t.c.id],
            limit=p.hot_max_cubes * 4,
        )
        live = [c for c in rows if c.is_live(now)]

        def score(c: MemCube) -> float:
            age = (now - (c.lifecycle.last_accessed_at or now)).total_seconds()
            recency = math.exp(-max(age, 0.0) / p.hot_window_s)
            return c.lifecycle.access_count * recency * (0.5 + c.organisation.importance)

        chosen, budget = [], p.hot_max_tokens - 40  # the block's header
        for c in sorted(live, key=lambda c: (-score(c), c.id)):
            cost = estimate_tokens(c.content) + 2
            if cost > budget or len(chosen) >= p.hot_max_cubes:
                continue
            chosen.append(c)
            budget -= cost
        # keep time order inside the block: stable prefixes when the set grows
        return sorted(chosen, key=lambda c: (c.lifecycle.created_at, c.id))

    def _stale(self, act: MemCube) -> tuple[list[str], str | None]:
        """Live source ids of an activation cube, and why it is stale (None if fresh)."""
        recorded = {s[0]: s[1] for s in act.metadata.get("sources") or []}
        found = self.catalog.get_many(act.provenance.derived_from)
        live, why = [], None
        for cid in act.provenance.derived_from:
            src = found.get(cid)
            if src is None or not src.is_live():
                why = why or f"source {cid} is no longer live"
                continue
            if recorded.get(cid) not in (None, src.lifecycle.version):
                why = (
                    why
                    or f"source {cid} changed (v{recorded.get(cid)} -> v{src.lifecycle.version})"
                )
            live.append(cid)
        return live, why

    def scan(
        self, *, user_id: str | None = None, vault: str | None = None, now: datetime | None = None
    ) -> list[Proposal]:
        """What the policies would change now, with reasons (nothing is changed)."""
        cubes_t = _cubes()
        p = self.policy
        vault = vault or self.mem.config.vault
        now = now or utcnow()
        out: list[Proposal] = []
        for user in self._users(vault, user_id):
            acts = self._derived(Form.activation, vault, user)
            hot = self.hot_set(vault, user, now)
            hot_ids = [c.id for c in hot]
            current = next((a for a in acts if a.metadata.get("name") == p.activation_name), None)
            if hot:
                top = max(hot, key=lambda c: c.lifecycle.access_count)
                why = (
                    f"{len(hot)} memories read >= {p.hot_min_access} times in the last "
                    f"{p.hot_window_s / 86400:g} days (most read: {top.lifecycle.access_count}x "
                    f"{top.content[:40]!r})"
                )
                if current is None:
                    out.append(
                        Proposal(
                            kind="promote",
                            vault=vault,
                            user_id=user,
                            cube_ids=hot_ids,
                            reason=f"{why}: no hot KV cache yet",
                            params={"name": p.activation_name},
                        )
                    )
                else:
                    _, stale = self._stale(current)
                    if set(hot_ids) != set(current.provenance.derived_from) or stale:
                        change = stale or "the hot set changed"
                        out.append(
                            Proposal(
                                kind="promote",
                                vault=vault,
                                user_id=user,
                                cube_ids=hot_ids,
                                reason=f"{why}: {change}",
                                params={"name": p.activation_name},
                            )
                        )
            for act in acts:
                if act.metadata.get("name") == p.activation_name and hot:
                    continue  # handled above
                last = act.lifecycle.last_accessed_at or act.lifecycle.updated_at
                idle = (now - last).total_seconds()
                live, stale = self._stale(act)
                if idle > p.activation_idle_s:
                    out.append(
                        Proposal(
                            kind="demote",
                            vault=vault,
                            user_id=user,
                            cube_ids=[act.id],
                            reason=f"KV cache unused for {idle / 86400:.1f} days",
                        )
                    )
                elif stale and live:
                    out.append(
                        Proposal(
                            kind="promote",
                            vault=vault,
                            user_id=user,
                            cube_ids=live,
                            reason=f"KV cache {act.id} is stale: {stale}",
                            params={"name": act.metadata.get("name")},
                        )
                    )
                elif stale:
                    out.append(
                        Proposal(
                            kind="demote",
                            vault=vault,
                            user_id=user,
                            cube_ids=[act.id],
                            reason=f"KV cache {act.id} has no live sources",
                        )
                    )
            if p.archive_cold:
                cutoff = _ts(now - timedelta(seconds=p.cold_after_s))
                cold = self._plaintext(
                    vault,
                    user,
                    sa.or_(
                        cubes_t.c.last_accessed_at < cutoff,
                        cubes_t.c.last_accessed_at.is_(None) & (cubes_t.c.updated_at < cutoff),
                    ),
                    cubes_t.c.importance < p.cold_max_importance,
                    order=[cubes_t.c.updated_at, cubes_t.c.id],
                    limit=1000,
                )
                if cold:
                    out.append(
                        Proposal(
                            kind="archive",
                            vault=vault,
                            user_id=user,
                            cube_ids=[c.id for c in cold],
                            reason=f"{len(cold)} memories unread for "
                            f"{p.cold_after_s / 86400:g}+ days, importance < "
                            f"{p.cold_max_importance}",
                        )
                    )
            out += self._stable(vault, user, now)
        return out

    def _stable(self, vault: str, user: str, now: datetime) -> list[Proposal]:
        cubes_t = _cubes()
        p = self.policy
        cutoff = now - timedelta(seconds=p.stable_after_s)
        clusters: dict[str, list[MemCube]] = defaultdict(list)
        recent: set[str] = set()
        for c in self._plaintext(vault, user, order=[cubes_t.c.created_at, cubes_t.c.id]):
            key = _cluster_key(c)
            if key is None or not c.is_live(now):
                continue
            clusters[key].append(c)
            if c.lifecycle.updated_at > cutoff:
                recent.add(key)
        covered = {
            frozenset(pc.provenance.derived_from)
            for pc in self._derived(Form.parameter, vault, user)
        }
        out = []
        for key, members in sorted(clusters.items()):
            if len(members) < p.stable_min_size or key in recent:
                continue
            ids = [c.id for c in members]
            if frozenset(ids) in covered:
                continue
            out.append(
                Proposal(
                    kind="distil",
                    vault=vault,
                    user_id=user,
                    cube_ids=ids,
                    reason=f"cluster {key!r}: {len(ids)} memories, none changed for "
                    f"{p.stable_after_s / 86400:g}+ days",
                    params={"name": key},
                )
            )
        return out

    def tick(
        self,
        *,
        user_id: str | None = None,
        vault: str | None = None,
        now: datetime | None = None,
        distil: bool | None = None,
    ) -> list[Job]:
        """Sweep the lifecycle (TTL, retention), then scan and queue what the policies call
        for (distillation only with `auto_distil` or `distil=True`); returns the jobs queued."""
        want_distil = self.policy.auto_distil if distil is None else distil
        self.mem.sweep(now)  # lifecycle first: expire TTLs, apply vault retention
        jobs = []
        for prop in self.scan(user_id=user_id, vault=vault, now=now):
            if prop.kind == "distil" and not want_distil:
                continue
            job = self.submit(prop, created_by="scheduler:policy")
            if job is not None:
                jobs.append(job)
        return jobs

    # jobs
    def submit(self, proposal: Proposal, *, created_by: str = "user") -> Job | None:
        """Queue a job; None if an identical one is already queued or running."""
        jobs_t = jobs_table()
        key = proposal.dedup_key
        now = time.time()
        with self.catalog.engine.begin() as conn:
            dup = conn.execute(
                sa.select(jobs_t.c.id).where(
                    jobs_t.c.dedup_key == key, jobs_t.c.state.in_(["queued", "running"])
                )
            ).first()
            if dup is not None:
                return None
            job_id = uuid.uuid4().hex
            conn.execute(
                sa.insert(jobs_t).values(
                    id=job_id,
                    kind=proposal.kind,
                    state="queued",
                    vault=proposal.vault,
                    user_id=proposal.user_id,
                    params=json.dumps({**proposal.params, "cube_ids": proposal.cube_ids}),
                    reason=proposal.reason,
                    dedup_key=key,
                    progress=0.0,
                    attempts=0,
                    created_by=created_by,
                    created_at=now,
                )
            )
        self._wake.set()
        return self.get(job_id)

    def promote(
        self,
        user_id: str,
        cube_ids: Sequence[str] | None = None,
        *,
        vault: str | None = None,
        name: str | None = None,
    ) -> Job | None:
        """Queue building a KV cache of these memories (default: the user's hot set)."""
        vault = vault or self.mem.config.vault
        if cube_ids is None:
            cube_ids = [c.id for c in self.hot_set(vault, user_id)]
            reason = "on request: the current hot set"
        else:
            reason = "on request"
        if not cube_ids:
            raise InvalidInput(f"{user_id} has no hot memories to promote")
        return self.submit(
            Proposal(
                kind="promote",
                vault=vault,
                user_id=user_id,
                cube_ids=list(cube_ids),
                reason=reason,
                params={"name": name or self.policy.activation_name},
            ),
            created_by=f"user:{user_id}",
        )

    def distil(
        self,
        user_id: str,
        cube_ids: Sequence[str] | None = None,
        *,
        tag: str | None = None,
        vault: str | None = None,
        name: str | None = None,
        steps: int | None = None,
    ) -> Job | None:
        """Queue distilling memories (ids, or all live ones with `tag`) into parameter memory."""
        cubes_t = _cubes()
        vault = vault or self.mem.config.vault
        if cube_ids is None:
            if not tag:
                raise InvalidInput("give cube ids or a tag")
            cube_ids = [
                c.id
                for c in self._plaintext(vault, user_id, order=[cubes_t.c.created_at])
                if tag in c.organisation.tags and c.is_live()
            ]
            if not cube_ids:
                raise NotFound(f"no live memories of {user_id} tagged {tag!r}")
        params: dict[str, Any] = {"name": name or tag or "distilled"}
        if steps is not None:
            params["steps"] = steps
        return self.submit(
            Proposal(
                kind="distil",
                vault=vault,
                user_id=user_id,
                cube_ids=list(cube_ids),
                reason="on request",
                params=params,
            ),
            created_by=f"user:{user_id}",
        )

    def get(self, job_id: str) -> Job:
        jobs_t = jobs_table()
        with self.catalog.engine.connect() as conn:
            row = conn.execute(sa.select(jobs_t).where(jobs_t.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job with id {job_id!r}")
        return _job(row)

    def jobs(self, state: str | None = None, limit: int = 50) -> list[Job]:
        jobs_t = jobs_table()
        q = sa.select(jobs_t).order_by(jobs_t.c.created_at.desc(), jobs_t.c.id).limit(limit)
        if state is not None:
            q = q.where(jobs_t.c.state == state)
        with self.catalog.engine.connect() as conn:
            return [_job(r) for r in conn.execute(q).all()]

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job (a running one finishes)."""
        jobs_t = jobs_table()
        with self.catalog.engine.begin() as conn:
            done = conn.execute(
                sa.update(jobs_t)
                .where(jobs_t.c.id == job_id, jobs_t.c.state == "queued")
                .values(state="cancelled", finished_at=time.time())
            )
        return done.rowcount == 1

    def retry(self, job_id: str) -> bool:
        jobs_t = jobs_table()
        with self.catalog.engine.begin() as conn:
            done = conn.execute(
                sa.update(jobs_t)
                .where(jobs_t.c.id == job_id, jobs_t.c.state.in_(["failed", "cancelled"]))
                .values(state="queued", error=None, finished_at=None, progress=0.0)
            )
        self._wake.set()
        return done.rowcount == 1

    def status(self) -> dict[str, Any]:
        jobs_t = jobs_table()
        with self.catalog.engine.connect() as conn:
            counts = dict(
                conn.execute(
                    sa.select(jobs_t.c.state, sa.func.count()).group_by(jobs_t.c.state)
                ).all()
            )
        return {
            "counts": counts,
            "worker": {"id": self.worker_id, "running": self.running},
            "policy": self.policy.model_dump(),
            "jobs": [j.model_dump(mode="json") for j in self.jobs(limit=20)],
        }

    def _recover(self, conn: Any, now: float) -> None:
        """Re-queue running jobs whose worker is gone (dead pid here, or a lapsed lease)."""
        jobs_t = jobs_table()
        host = socket.gethostname()
        lease = self.policy.lease_s
        for row in conn.execute(sa.select(jobs_t).where(jobs_t.c.state == "running")).all():
            worker = row.worker or ""
            parts = worker.split(":")
            dead = (
                len(parts) >= 2
                and parts[0] == host
                and parts[1].isdigit()
                and not (_pid_alive(int(parts[1])))
            )
            lapsed = (row.heartbeat_at or row.started_at or 0) < now - lease
            if dead or lapsed:
                final = row.attempts >= self.policy.max_attempts
                conn.execute(
                    sa.update(jobs_t)
                    .where(jobs_t.c.id == row.id, jobs_t.c.state == "running")
                    .values(
                        state="failed" if final else "queued",
                        error=f"worker {worker} stopped mid-job" if final else None,
                        finished_at=now if final else None,
                    )
                )

    def _claim(self) -> Job | None:
        jobs_t = jobs_table()
        now = time.time()
        with self.catalog.engine.begin() as conn:
            self._recover(conn, now)
            rows = conn.execute(
                sa.select(jobs_t.c.id)
                .where(jobs_t.c.state == "queued")
                .order_by(jobs_t.c.created_at, jobs_t.c.id)
                .limit(5)
            ).all()
            for (job_id,) in rows:
                got = conn.execute(
                    sa.update(jobs_t)
                    .where(jobs_t.c.id == job_id, jobs_t.c.state == "queued")
                    .values(
                        state="running",
                        worker=self.worker_id,
                        started_at=now,
                        heartbeat_at=now,
                        attempts=jobs_t.c.attempts + 1,
                    )
                )
                if got.rowcount == 1:
                    break
            else:
                return None
        return self.get(job_id)

    def _finish(self, job: Job, result: dict[str, Any] | None, error: str | None) -> Job:
        jobs_t = jobs_table()
        with self.catalog.engine.begin() as conn:
            conn.execute(
                sa.update(jobs_t)
                .where(jobs_t.c.id == job.id, jobs_t.c.worker == self.worker_id)
                .values(
                    state="failed" if error else "done",
                    result=json.dumps(result, default=str) if result is not None else None,
                    error=error,
                    progress=1.0 if error is None else job.progress,
                    finished_at=time.time(),
                )
            )
        return self.get(job.id)

    def _beat(self, job_id: str, progress: float | None = None) -> None:
        jobs_t = jobs_table()
        values: dict[str, Any] = {"heartbeat_at": time.time()}
        if progress is not None:
            values["progress"] = progress
        with self.catalog.engine.begin() as conn:
            conn.execute(sa.update(jobs_t).where(jobs_t.c.id == job_id).values(**values))

    def run_one(self) -> Job | None:
        """Claim and run the oldest queued job in this thread."""
        job = self._claim()
        if job is None:
            return None
        try:
            result = self.handlers[job.kind](job)
        except MemOSError as exc:
            log.warning("job %s (%s) failed: %s", job.id, job.kind, exc)
            return self._finish(job, None, str(exc))
        except Exception as exc:
            log.exception("job %s (%s) crashed", job.id, job.kind)
            return self._finish(job, None, f"{type(exc).__name__}: {exc}")
        return self._finish(job, result, None)

    def run_pending(self, limit: int | None = None) -> list[Job]:
        """Run queued jobs in this thread until none is left (or `limit` ran)."""
        done = []
        while limit is None or len(done) < limit:
            job = self.run_one()
            if job is None:
                break
            done.append(job)
        return done

    # background
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, interval: float = 30.0, policies: bool = True) -> None:
        """Run jobs in a background thread; every `interval` seconds also apply the policies
        (`tick`) when `policies` is on."""
        if self.running:
            return
        self._stop.clear()

        def loop() -> None:
            last_tick = 0.0
            while not self._stop.is_set():
                try:
                    if policies and time.monotonic() - last_tick >= interval:
                        last_tick = time.monotonic()
                        self.tick()
                    if self.run_one() is not None:
                        continue
                except Exception:
                    log.exception("scheduler loop error")
                self._wake.wait(min(interval, 5.0))
                self._wake.clear()

        self._thread = threading.Thread(target=loop, name="memos-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait(self, job_id: str, timeout: float = 600.0, poll: float = 0.2) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.state in ("done", "failed", "cancelled") or time.monotonic() > deadline:
                return job
            time.sleep(poll)

    # handlers
    def _ids(self, job: Job) -> list[str]:
        return list(job.params.get("cube_ids") or [])

    def _do_promote(self, job: Job) -> dict[str, Any]:
        from .model.memory import build_activation

        # sources archived or edited since the job was queued are dropped / taken as they are
        found = self.catalog.get_many(self._ids(job))
        ids = [i for i in self._ids(job) if i in found and found[i].is_live()]
        if not ids:
            raise InvalidInput("none of the memories to promote is live any more")
        cube = build_activation(
            self.mem,
            ids,
            user_id=job.user_id,
            vault=job.vault,
            name=job.params.get("name"),
            by="scheduler",
        )
        return {
            "cube_id": cube.id,
            "version": cube.lifecycle.version,
            "tokens": cube.metadata.get("tokens"),
            "bytes": cube.metadata.get("bytes"),
            "build_s": cube.metadata.get("build_s"),
        }

    def _do_distil(self, job: Job) -> dict[str, Any]:
        from .model.memory import distil

        last = [0.0]

        def progress(event: dict[str, Any]) -> None:
            if time.monotonic() - last[0] > 1.0 or event.get("step") == event.get("steps"):
                last[0] = time.monotonic()
                self._beat(job.id, float(event.get("step", 0)) / max(1, event.get("steps", 1)))

        steps = int(job.params.get("steps") or self.policy.distil_steps)
        cube = distil(
            self.mem,
            self._ids(job),
            user_id=job.user_id,
            vault=job.vault,
            name=job.params.get("name"),
            steps=steps,
            progress=progress,
            by="scheduler",
        )
        return {
            "cube_id": cube.id,
            "version": cube.lifecycle.version,
            "loss_start": cube.metadata.get("loss_start"),
            "loss_end": cube.metadata.get("loss_end"),
            "seconds": cube.metadata.get("seconds"),
        }

    def _archive(self, cube: MemCube, op: str) -> None:
        new = cube.model_copy(deep=True)
        new.lifecycle.state = State.archived
        new.lifecycle.version = cube.lifecycle.version + 1
        new.lifecycle.updated_at = utcnow()
        self.mem.vault.write_version(new, op, "scheduler", cube.lifecycle.version)

    def _do_archive(self, job: Job) -> dict[str, Any]:
        found = self.catalog.get_many(self._ids(job))
        archived = 0
        for cid in self._ids(job):
            cube = found.get(cid)
            if cube is None or cube.lifecycle.state is not State.active:
                continue
            self._archive(cube, "archive")
            archived += 1
            self._beat(job.id, archived / max(1, len(found)))
        return {"archived": archived}

    def _do_demote(self, job: Job) -> dict[str, Any]:
        from .model.memory import _drop_blob, runtime

        found = self.catalog.get_many(self._ids(job))
        demoted = []
        for cid in self._ids(job):
            cube = found.get(cid)
            if cube is None or cube.lifecycle.state is not State.active:
                continue
            self._archive(cube, "demote")
            demoted.append(cid)
            if cube.form is Form.activation:
                _drop_blob(self.mem, cube.content)
                client = runtime(self.mem).client
                if client is not None:
                    with contextlib.suppress(MemOSError):
                        client.evict(cube.metadata.get("fingerprint"))
        return {"demoted": demoted}

    # planning
    def plan(self, task: str, *, user_id: str, vault: str | None = None, k: int = 5) -> Plan:
        """Which memory forms to use for `task`, in order, and why:

        1. parameter: an adapter distilled from memories relevant to the task (no prompt tokens);
        2. activation: a fresh KV cache holding relevant or hot memories (no prefill for them);
        3. plaintext: the retrieved memories no cache holds, sent as text after the cached block.
        """
        from .model.memory import lora_name

        vault = vault or self.mem.config.vault
        hits = self.mem.search(task, user_id=user_id, k=k, vault=vault)
        hit_ids = [h.id for h in hits]
        steps: list[PlanStep] = []
        notes: list[str] = []
        words = {w.strip(".,?!:;'\"").casefold() for w in task.split()}

        param: MemCube | None = None
        best = (0, 0.0)
        for pc in self._derived(Form.parameter, vault, user_id):
            overlap = len(set(pc.provenance.derived_from) & set(hit_ids))
            named = str(pc.metadata.get("name") or "").casefold() in words
            score = (overlap + (1 if named else 0), pc.lifecycle.updated_at.timestamp())
            if score[0] > 0 and score > best:
                best, param = score, pc
        if param is not None:
            overlap = len(set(param.provenance.derived_from) & set(hit_ids))
            steps.append(
                PlanStep(
                    order=len(steps) + 1,
                    form=Form.parameter,
                    cube_ids=[param.id],
                    reason=f"adapter {param.metadata.get('name')!r} was distilled "
                    f"from {len(param.provenance.derived_from)} memories, "
                    f"{overlap} of them among the top {len(hit_ids)} hits: "
                    "it carries them with no prompt tokens",
                )
            )
        want_adapter = lora_name(param) if param is not None else None

        act: MemCube | None = None
        act_best = (-1, 0.0)
        for ac in self._derived(Form.activation, vault, user_id):
            _, stale = self._stale(ac)
            if stale:
                notes.append(f"activation {ac.id} skipped: stale ({stale})")
                continue
            if (ac.metadata.get("adapter") or None) != want_adapter:
                notes.append(f"activation {ac.id} skipped: computed under another adapter")
                continue
            overlap = len(set(ac.provenance.derived_from) & set(hit_ids))
            hot = ac.metadata.get("name") == self.policy.activation_name
            if overlap == 0 and not hot:
                continue
            score = (overlap, ac.lifecycle.updated_at.timestamp())
            if score > act_best:
                act_best, act = score, ac
        covered: set[str] = set()
        if act is not None:
            covered = set(act.provenance.derived_from)
            overlap = len(covered & set(hit_ids))
            tokens = act.metadata.get("tokens")
            steps.append(
                PlanStep(
                    order=len(steps) + 1,
                    form=Form.activation,
                    cube_ids=[act.id],
                    reason=f"KV cache of {len(covered)} memories ({tokens} tokens) "
                    f"holds {overlap} of the top {len(hit_ids)} hits"
                    + ("" if overlap else ", and the user's most-read ones")
                    + ": the model skips re-reading them",
                )
            )
        rest = [h for h in hits if h.id not in covered]
        if rest:
            scores = ", ".join(f"{h.score:.2f}" for h in rest)
            steps.append(
                PlanStep(
                    order=len(steps) + 1,
                    form=Form.plaintext,
                    cube_ids=[h.id for h in rest],
                    reason=f"retrieved by similarity (scores {scores}), not in any "
                    "cache: sent as text" + (" after the cached block" if act else ""),
                )
            )
        if not steps:
            notes.append("no memory of this user matches the task")
        return Plan(task=task, user_id=user_id, vault=vault, steps=steps, notes=notes)


def scheduler_of(mem: MemOS) -> MemScheduler:
    sched = mem.__dict__.get("_scheduler")
    if sched is None:
        sched = mem.__dict__.setdefault("_scheduler", MemScheduler(mem))
    return sched

