"""MemScheduler: moves memory between forms, and plans which forms a task uses.

Policies (`SchedulerPolicy`, kept in the catalog so every process sees the same):

- hot plaintext (read often and recently) is promoted to activation memory: one KV cache per
  user, named "hot", rebuilt when the hot set or a source changes;
- stable clusters (memories sharing a topic or tag, unchanged for a while) become parameter
  memory (a LoRA adapter) on request, or by policy when `auto_distil` is on;
- cold plaintext (not read for a long time, not important) is archived; activation caches
  nobody used for a while are demoted (archived, blob removed: a cache is rebuilt, never
  restored);
- byte budgets bound the live KV caches (`kv_budget_bytes`) and adapters
  (`adapter_budget_bytes`) of the whole data dir: over budget, the least recently used are
  demoted (a KV blob is removed, an adapter unloaded and archived with its files kept);
  plaintext is never touched. A cache demoted for the budget is promoted again only once its
  memories are read after the demotion (least recently used, not round robin).

Changes run as jobs. A job is a row of `memos_jobs` (a `JobStore`, in the catalog's database):
queued, running, done or failed, with its reason, progress and result, so it survives restarts
and every process (and `memos-agents scheduler status`) sees it. Jobs run in a background
thread (`start()`), or in the caller's (`run_pending()`); a job whose worker died is picked up
again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from .cube import ActivationMeta, Form, MemCube, ParameterMeta, SearchHit, State, utcnow
from .errors import InvalidInput, MemOSError, NotFound
from .jobs import FINAL, Job, JobKind, JobState, JobStore, new_worker_id, worker_gone
from .lifecycle import check_transition, next_version

if TYPE_CHECKING:
    from .catalog import Catalog
    from .model.memory import ModelMemory

__all__ = [
    "Job",
    "JobKind",
    "JobState",
    "MemScheduler",
    "Plan",
    "PlanStep",
    "Proposal",
    "SchedulerPolicy",
]

log = logging.getLogger(__name__)

POLICY_KEY = "scheduler_policy"  # where data dirs before typed settings kept the policy


class SchedulerPolicy(BaseModel):
    """When memory moves between forms. Durations are seconds."""

    settings_kind: ClassVar[str] = "SchedulerPolicy"  # its rows in the settings table

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
    retry_failed_after_s: float = Field(600, ge=0, description="a failed change waits this long")
    tick_interval_s: float = Field(30, gt=0, description="policy passes of a started worker")
    kv_budget_bytes: int = Field(1 << 30, ge=0, description="live KV caches, all users")
    adapter_budget_bytes: int = Field(1 << 30, ge=0, description="live adapters, all users")


class WorkerBeat(BaseModel):
    """A running worker's heartbeat, one settings row per worker (scope: its id)."""

    settings_kind: ClassVar[str] = "SchedulerWorker"

    interval_s: float
    started_at: datetime
    beat_at: datetime
    last_pass_at: datetime | None = None


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


def _cluster_key(cube: MemCube) -> str | None:
    org = cube.organisation
    if org.topic:
        return org.topic
    if org.concept:
        return org.concept
    tags = [t for t in org.tags if t not in {f.value for f in Form}]
    return tags[0] if tags else None


class MemScheduler:
    """Policies, durable jobs and task plans over one catalog and its model memory.

    `catalog` is read for the memories to move (and keeps the policy), `models` builds and
    drops activation and parameter memory, `jobs` keeps the jobs (default: a `JobStore` in the
    catalog's database). `search(task, user_id=, k=, vault=)` retrieves for a plan, `sweep(now)`
    runs the lifecycle sweep before each tick, `write_version(cube, op, by, expected)` stores a
    new version, `audit(op, cube_ids=, vault=, outcome=, detail=)` writes one audit entry (as
    the system: the jobs are system actions) for each job before it runs; `vault` is the vault
    used when a call names none. Blobs are reached only through `models` (blob names, never
    paths: a demoted cube whose content is not a blob name inside the blob folder keeps its
    file, and the skip is logged)."""

    def __init__(
        self,
        catalog: Catalog,
        models: ModelMemory,
        *,
        search: Callable[..., Sequence[SearchHit]],
        sweep: Callable[[datetime | None], Any],
        write_version: Callable[[MemCube, str, str, int], None],
        audit: Callable[..., None],
        vault: str = "default",
        jobs: JobStore | None = None,
        policy: SchedulerPolicy | None = None,
    ) -> None:
        self.catalog = catalog
        self.models = models
        self.store = jobs if jobs is not None else JobStore(catalog.engine)
        self.default_vault = vault
        self._search = search
        self._sweep = sweep
        self._write_version = write_version
        self._audit = audit
        self._policy = policy
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.worker_id = new_worker_id()
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
            stored = self.catalog.settings.get(SchedulerPolicy, legacy_key=POLICY_KEY)
            self._policy = stored or SchedulerPolicy()
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
        self.catalog.settings.set(policy)
        self._policy = policy
        return policy

    # what to move
    def _users(self, vault: str, user_id: str | None) -> list[str]:
        if user_id is not None:
            return [user_id]
        return sorted(self.catalog.count_users(vault))

    def _plaintext(self, vault: str, user_id: str) -> list[MemCube]:
        """Active plaintext of a user, oldest first (at most 20,000)."""
        return self.catalog.active_cubes(vault=vault, user_id=user_id, limit=20_000)

    def _derived(self, form: Form, vault: str, user_id: str) -> list[MemCube]:
        return self.models.derived(form, vault=vault, user_id=user_id)

    def hot_set(self, vault: str, user_id: str, now: datetime | None = None) -> list[MemCube]:
        """The memories the hot KV cache should hold: read at least `hot_min_access` times,
        last within `hot_window_s`, scored by reads, recency and importance, up to the token
        budget."""
        from .model.protocol import estimate_tokens

        p = self.policy
        now = now or utcnow()
        rows = self.catalog.most_read(
            vault,
            user_id,
            min_access=p.hot_min_access,
            since=now - timedelta(seconds=p.hot_window_s),
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
        recorded = ActivationMeta.from_cube(act).source_versions
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
        vault = vault or self.default_vault
        now = now or utcnow()
        out: list[Proposal] = []
        for user in self._users(vault, user_id):
            acts = self._derived(Form.activation, vault, user)
            hot = self.hot_set(vault, user, now)
            out += self._hot(vault, user, acts, hot)
            out += self._idle_or_stale(vault, user, acts, bool(hot), now)
            if self.policy.archive_cold:
                out += self._cold(vault, user, now)
            out += self._stable(vault, user, now)
        out += self._over_budget(Form.activation, self.policy.kv_budget_bytes, now)
        out += self._over_budget(Form.parameter, self.policy.adapter_budget_bytes, now)
        return out

    def usage(self) -> dict[str, dict[str, int]]:
        """Bytes and count of the live KV caches and adapters of the data dir, and budgets."""
        p = self.policy
        out = {}
        for key, form, budget in (
            ("kv", Form.activation, p.kv_budget_bytes),
            ("adapters", Form.parameter, p.adapter_budget_bytes),
        ):
            cubes = self.models.derived(form, vault=None)
            out[key] = {"budget": budget, "used": sum(map(_bytes, cubes)), "cubes": len(cubes)}
        return out

    def _over_budget(self, form: Form, budget: int, now: datetime) -> list[Proposal]:
        """Demote the least recently used caches (or adapters) that do not fit the budget."""
        cubes = sorted(self.models.derived(form, vault=None), key=_last_used, reverse=True)
        used = sum(map(_bytes, cubes))
        what = "KV" if form is Form.activation else "adapter"
        out, kept = [], 0
        for cube in cubes:
            size = _bytes(cube)
            if kept + size <= budget:
                kept += size
                continue
            idle = (now - _last_used(cube)).total_seconds()
            meta = ActivationMeta if form is Form.activation else ParameterMeta
            out.append(
                Proposal(
                    kind="demote",
                    vault=cube.scope.vault,
                    user_id=cube.scope.user_id,
                    cube_ids=[cube.id],
                    reason=f"{what} budget: {used} bytes live, budget {budget}; {cube.id} "
                    f"({size} bytes) is the least recently used (idle {idle:.0f} s)",
                    params={
                        "budget": True,
                        "name": meta.from_cube(cube).name or "",
                        "derived_from": list(cube.provenance.derived_from),
                    },
                )
            )
        return out

    def _budget_demoted(self, vault: str, user: str) -> list[Job]:
        """This user's caches and adapters demoted for a budget, latest first."""
        return [
            j
            for j in self.store.list("done", limit=500)
            if j.kind == "demote" and j.params.get("budget") and (j.vault, j.user_id) == (
                vault,
                user,
            )
        ]

    def _hot(
        self, vault: str, user: str, acts: list[MemCube], hot: list[MemCube]
    ) -> list[Proposal]:
        """Promote the hot set when there is no hot cache yet, or it holds another set or a
        stale one."""
        p = self.policy
        if not hot:
            return []
        hot_ids = [c.id for c in hot]
        current = next(
            (a for a in acts if ActivationMeta.from_cube(a).name == p.activation_name), None
        )
        top = max(hot, key=lambda c: c.lifecycle.access_count)
        why = (
            f"{len(hot)} memories read >= {p.hot_min_access} times in the last "
            f"{p.hot_window_s / 86400:g} days (most read: {top.lifecycle.access_count}x "
            f"{top.content[:40]!r})"
        )
        if current is None:
            evicted = [
                j
                for j in self._budget_demoted(vault, user)
                if j.params.get("name") == p.activation_name
            ]
            last_read = max(_last_used(c) for c in hot)
            if evicted and evicted[0].finished_at and last_read <= evicted[0].finished_at:
                return []  # demoted for the budget, not read since: stays plaintext
            change: str | None = "no hot KV cache yet"
        else:
            _, stale = self._stale(current)
            moved = set(hot_ids) != set(current.provenance.derived_from)
            change = stale or ("the hot set changed" if moved else None)
        if change is None:
            return []
        return [
            Proposal(
                kind="promote",
                vault=vault,
                user_id=user,
                cube_ids=hot_ids,
                reason=f"{why}: {change}",
                params={"name": p.activation_name},
            )
        ]

    def _idle_or_stale(
        self, vault: str, user: str, acts: list[MemCube], any_hot: bool, now: datetime
    ) -> list[Proposal]:
        """Demote caches unused too long or with no live source; rebuild stale ones."""
        p = self.policy
        out = []
        for act in acts:
            name = ActivationMeta.from_cube(act).name
            if name == p.activation_name and any_hot:
                continue  # `_hot` decides about it
            last = act.lifecycle.last_accessed_at or act.lifecycle.updated_at
            idle = (now - last).total_seconds()
            live, stale = self._stale(act)
            if idle > p.activation_idle_s:
                days = f"{idle / 86400:.1f}"
                kind, ids, reason = "demote", [act.id], f"KV cache unused for {days} days"
            elif stale and live:
                kind, ids, reason = "promote", live, f"KV cache {act.id} is stale: {stale}"
            elif stale:
                kind, ids, reason = "demote", [act.id], f"KV cache {act.id} has no live sources"
            else:
                continue
            out.append(
                Proposal(
                    kind=kind,
                    vault=vault,
                    user_id=user,
                    cube_ids=ids,
                    reason=reason,
                    params={"name": name} if kind == "promote" else {},
                )
            )
        return out

    def _cold(self, vault: str, user: str, now: datetime) -> list[Proposal]:
        p = self.policy
        cold = self.catalog.cold_cubes(
            vault,
            user,
            before=now - timedelta(seconds=p.cold_after_s),
            max_importance=p.cold_max_importance,
            limit=1000,
        )
        if not cold:
            return []
        return [
            Proposal(
                kind="archive",
                vault=vault,
                user_id=user,
                cube_ids=[c.id for c in cold],
                reason=f"{len(cold)} memories unread for {p.cold_after_s / 86400:g}+ days, "
                f"importance < {p.cold_max_importance}",
            )
        ]

    def _stable(self, vault: str, user: str, now: datetime) -> list[Proposal]:
        p = self.policy
        cutoff = now - timedelta(seconds=p.stable_after_s)
        clusters: dict[str, list[MemCube]] = defaultdict(list)
        recent: set[str] = set()
        for c in self._plaintext(vault, user):
            key = _cluster_key(c)
            if key is None or not c.is_live(now):
                continue
            clusters[key].append(c)
            if c.lifecycle.updated_at > cutoff:
                recent.add(key)
        covered = {
            frozenset(pc.provenance.derived_from)
            for pc in self._derived(Form.parameter, vault, user)
        } | {
            frozenset(j.params.get("derived_from") or [])
            for j in self._budget_demoted(vault, user)
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
        for (distillation only with `auto_distil` or `distil=True`; a change whose job failed
        in the last `retry_failed_after_s` waits); returns the jobs queued."""
        want_distil = self.policy.auto_distil if distil is None else distil
        self._sweep(now)  # lifecycle first: expire TTLs, apply vault retention
        since = time.time() - self.policy.retry_failed_after_s
        jobs = []
        for prop in self.scan(user_id=user_id, vault=vault, now=now):
            if prop.kind == "distil" and not want_distil:
                continue
            if self.store.failed_since(prop.dedup_key, since):
                continue
            job = self.submit(prop, created_by="scheduler:policy")
            if job is not None:
                jobs.append(job)
        return jobs

    # jobs
    def submit(self, proposal: Proposal, *, created_by: str = "user") -> Job | None:
        """Queue a job; None if an identical one is already queued or running."""
        job = self.store.submit(
            kind=proposal.kind,
            vault=proposal.vault,
            user_id=proposal.user_id,
            params={**proposal.params, "cube_ids": proposal.cube_ids},
            reason=proposal.reason,
            dedup_key=proposal.dedup_key,
            created_by=created_by,
        )
        if job is not None:
            self._wake.set()
        return job

    def promote(
        self,
        user_id: str,
        cube_ids: Sequence[str] | None = None,
        *,
        vault: str | None = None,
        name: str | None = None,
    ) -> Job | None:
        """Queue building a KV cache of these memories (default: the user's hot set)."""
        vault = vault or self.default_vault
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
        vault = vault or self.default_vault
        if cube_ids is None:
            if not tag:
                raise InvalidInput("give cube ids or a tag")
            cube_ids = [
                c.id
                for c in self._plaintext(vault, user_id)
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
        return self.store.get(job_id)

    def jobs(self, state: str | None = None, limit: int = 50) -> list[Job]:
        return self.store.list(state, limit)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job (a running one finishes)."""
        return self.store.cancel(job_id)

    def retry(self, job_id: str) -> bool:
        done = self.store.retry(job_id)
        self._wake.set()
        return done

    def workers(self) -> dict[str, WorkerBeat]:
        """Workers running now, in any process on this data dir (by their heartbeats)."""
        settings = self.catalog.settings
        now = utcnow()
        busy = {j.worker for j in self.jobs("running")}  # a long job blocks the beat
        out = {}
        for wid in settings.scopes(WorkerBeat):
            beat = settings.get(WorkerBeat, wid)
            fresh = beat is not None and (now - beat.beat_at).total_seconds() < 30
            fresh = fresh or wid in busy
            if beat is not None and fresh and not worker_gone(wid):
                out[wid] = beat
        return out

    def hot(self) -> list[dict[str, Any]]:
        """The live KV caches: whose, how big, made from which memories, last used when."""
        out = []
        for cube in self.models.derived(Form.activation, vault=None):
            meta = ActivationMeta.from_cube(cube)
            out.append(
                {
                    "cube_id": cube.id,
                    "name": meta.name,
                    "vault": cube.scope.vault,
                    "user_id": cube.scope.user_id,
                    "tokens": meta.tokens,
                    "bytes": meta.bytes,
                    "sources": list(cube.provenance.derived_from),
                    "last_used": _last_used(cube).isoformat(),
                }
            )
        return out

    def status(self, limit: int = 20) -> dict[str, Any]:
        """Whether a worker runs (here or in another process), budgets and their use, the hot
        caches, the latest decisions (jobs, with cube ids and reasons) and job counts."""
        workers = self.workers()
        jobs = self.jobs(limit=limit)
        return {
            "running": bool(workers) or self.running,
            "counts": self.store.counts(),
            "worker": {"id": self.worker_id, "running": self.running},
            "workers": {w: b.model_dump(mode="json") for w, b in workers.items()},
            "budgets": self.usage(),
            "hot": self.hot(),
            "decisions": [
                {
                    "at": j.created_at.isoformat(),
                    "kind": j.kind,
                    "state": j.state,
                    "user_id": j.user_id,
                    "cube_ids": self._ids(j),
                    "reason": j.reason,
                    "by": j.created_by,
                    "result": j.result,
                    "error": j.error,
                }
                for j in jobs
            ],
            "policy": self.policy.model_dump(),
            "jobs": [j.model_dump(mode="json") for j in jobs],
        }

    def _claim(self) -> Job | None:
        p = self.policy
        return self.store.claim(self.worker_id, lease_s=p.lease_s, max_attempts=p.max_attempts)

    def _finish(self, job: Job, result: dict[str, Any] | None, error: str | None) -> Job:
        return self.store.finish(job, self.worker_id, result, error)

    def _beat(self, job_id: str, progress: float | None = None) -> None:
        self.store.beat(job_id, progress)

    def run_one(self) -> Job | None:
        """Claim and run the oldest queued job in this thread."""
        job = self._claim()
        if job is None:
            return None
        try:
            self._audit(
                f"scheduler.{job.kind}",
                cube_ids=self._ids(job),
                vault=job.vault,
                detail=f"job {job.id} (attempt {job.attempts}) for {job.user_id}: {job.reason}",
            )
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

    def start(self, *, interval: float | None = None, policies: bool = True) -> None:
        """Run jobs in a background thread; every `interval` seconds (default: the policy's
        `tick_interval_s`) also apply the policies (`tick`) when `policies` is on. The worker
        beats in the catalog, so `status()` in any process sees it running."""
        if self.running:
            return
        self._stop.clear()
        every = interval if interval is not None else self.policy.tick_interval_s
        beat = WorkerBeat(interval_s=every, started_at=utcnow(), beat_at=utcnow())

        def loop() -> None:
            last_tick = 0.0
            while not self._stop.is_set():
                try:
                    beat.beat_at = utcnow()
                    if policies and time.monotonic() - last_tick >= every:
                        last_tick = time.monotonic()
                        beat.last_pass_at = beat.beat_at
                        self.tick()
                    self.catalog.settings.set(beat, self.worker_id)
                    if self.run_one() is not None:
                        continue
                except Exception:
                    log.exception("scheduler loop error")
                self._wake.wait(min(every, 5.0))
                self._wake.clear()

        self._thread = threading.Thread(target=loop, name="memos-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
            with contextlib.suppress(MemOSError):
                self.catalog.settings.delete(WorkerBeat, self.worker_id)

    def wait(self, job_id: str, timeout: float = 600.0, poll: float = 0.2) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.state in FINAL or time.monotonic() > deadline:
                return job
            time.sleep(poll)

    # handlers
    def _ids(self, job: Job) -> list[str]:
        return list(job.params.get("cube_ids") or [])

    def _do_promote(self, job: Job) -> dict[str, Any]:
        # sources archived or edited since the job was queued are dropped / taken as they are
        found = self.catalog.get_many(self._ids(job))
        ids = [i for i in self._ids(job) if i in found and found[i].is_live()]
        if not ids:
            raise InvalidInput("none of the memories to promote is live any more")
        cube = self.models.build_activation(
            ids,
            user_id=job.user_id,
            vault=job.vault,
            name=job.params.get("name"),
            by="scheduler",
        )
        meta = ActivationMeta.from_cube(cube)
        return {
            "cube_id": cube.id,
            "version": cube.lifecycle.version,
            "tokens": meta.tokens,
            "bytes": meta.bytes,
            "build_s": meta.build_s,
        }

    def _do_distil(self, job: Job) -> dict[str, Any]:
        last = [0.0]

        def progress(event: dict[str, Any]) -> None:
            if time.monotonic() - last[0] > 1.0 or event.get("step") == event.get("steps"):
                last[0] = time.monotonic()
                self._beat(job.id, float(event.get("step", 0)) / max(1, event.get("steps", 1)))

        steps = int(job.params.get("steps") or self.policy.distil_steps)
        cube = self.models.distil(
            self._ids(job),
            user_id=job.user_id,
            vault=job.vault,
            name=job.params.get("name"),
            steps=steps,
            progress=progress,
            by="scheduler",
        )
        meta = ParameterMeta.from_cube(cube)
        return {
            "cube_id": cube.id,
            "version": cube.lifecycle.version,
            "loss_start": meta.loss_start,
            "loss_end": meta.loss_end,
            "seconds": meta.seconds,
        }

    def _archive(self, cube: MemCube, op: str) -> None:
        check_transition(cube, State.archived)
        new = next_version(cube, State.archived)
        self._write_version(new, op, "scheduler", cube.lifecycle.version)

    def _active(self, job: Job) -> tuple[list[MemCube], int]:
        """The job's cubes that are still active, in the job's order, and how many exist."""
        found = self.catalog.get_many(self._ids(job))
        cubes = [found.get(cid) for cid in self._ids(job)]
        return [c for c in cubes if c is not None and c.lifecycle.state is State.active], len(found)

    def _do_archive(self, job: Job) -> dict[str, Any]:
        cubes, total = self._active(job)
        archived = 0
        for cube in cubes:
            self._archive(cube, "archive")
            archived += 1
            self._beat(job.id, archived / max(1, total))
        return {"archived": archived}

    def _do_demote(self, job: Job) -> dict[str, Any]:
        demoted = []
        for cube in self._active(job)[0]:
            self._archive(cube, "demote")
            demoted.append(cube.id)
            if cube.form is Form.activation:
                self.models.drop_activation(cube)
            elif cube.form is Form.parameter:
                self.models.drop_parameter(cube)
        return {"demoted": demoted}

    # planning
    def plan(
        self,
        task: str,
        *,
        user_id: str,
        vault: str | None = None,
        k: int = 5,
        search: Callable[..., Sequence[SearchHit]] | None = None,
        readable: Callable[[Sequence[MemCube]], list[MemCube]] | None = None,
        system_prompt: str | None = None,
    ) -> Plan:
        """Which memory forms to use for `task`, in order, and why:

        1. parameter: an adapter distilled from memories relevant to the task (no prompt tokens);
        2. activation: a fresh KV cache holding relevant or hot memories (no prefill for them);
        3. plaintext: the retrieved memories no cache holds, sent as text after the cached block.

        For a caller other than the system, `search` is its own search and `readable` its
        filter: an adapter or cache is chosen only if the caller may read it and every memory
        it was made from. With `system_prompt`, only caches built with it are chosen.
        """
        from .model.memory import lora_name

        vault = vault or self.default_vault
        hits = (search or self._search)(task, user_id=user_id, k=k, vault=vault)
        hit_ids = [h.id for h in hits]
        steps: list[PlanStep] = []
        notes: list[str] = []
        words = {w.strip(".,?!:;'\"").casefold() for w in task.split()}

        allowed = _Allowed(self.catalog, readable, notes)
        param = self._pick_parameter(vault, user_id, hit_ids, words, allowed)
        if param is not None:
            overlap = len(set(param.provenance.derived_from) & set(hit_ids))
            steps.append(
                PlanStep(
                    order=len(steps) + 1,
                    form=Form.parameter,
                    cube_ids=[param.id],
                    reason=f"adapter {ParameterMeta.from_cube(param).name!r} was distilled "
                    f"from {len(param.provenance.derived_from)} memories, "
                    f"{overlap} of them among the top {len(hit_ids)} hits: "
                    "it carries them with no prompt tokens",
                )
            )
        want_adapter = lora_name(param) if param is not None else None

        act = self._pick_activation(
            vault, user_id, hit_ids, (want_adapter, system_prompt), notes, allowed
        )
        covered: set[str] = set()
        if act is not None:
            covered = set(act.provenance.derived_from)
            overlap = len(covered & set(hit_ids))
            tokens = ActivationMeta.from_cube(act).tokens
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

    def _pick_parameter(
        self, vault: str, user_id: str, hit_ids: list[str], words: set[str], allowed: _Allowed
    ) -> MemCube | None:
        """The adapter made from the most hits (or named in the task), latest first."""
        param: MemCube | None = None
        best = (0, 0.0)
        for pc in allowed(self._derived(Form.parameter, vault, user_id)):
            overlap = len(set(pc.provenance.derived_from) & set(hit_ids))
            named = str(ParameterMeta.from_cube(pc).name or "").casefold() in words
            score = (overlap + (1 if named else 0), pc.lifecycle.updated_at.timestamp())
            if score[0] > 0 and score > best:
                best, param = score, pc
        return param

    def _pick_activation(
        self,
        vault: str,
        user_id: str,
        hit_ids: list[str],
        want: tuple[str | None, str | None],
        notes: list[str],
        allowed: _Allowed,
    ) -> MemCube | None:
        """The fresh KV cache (under the adapter `want[0]`, built with the system prompt
        `want[1]` if given) holding the most hits, or the hot one."""
        want_adapter, system_prompt = want
        act: MemCube | None = None
        act_best = (-1, 0.0)
        for ac in allowed(self._derived(Form.activation, vault, user_id)):
            meta = ActivationMeta.from_cube(ac)
            _, stale = self._stale(ac)
            if stale:
                notes.append(f"activation {ac.id} skipped: stale ({stale})")
                continue
            if (meta.adapter or None) != want_adapter:
                notes.append(f"activation {ac.id} skipped: computed under another adapter")
                continue
            if system_prompt is not None and meta.system_prompt != system_prompt:
                notes.append(f"activation {ac.id} skipped: built with another system prompt")
                continue
            overlap = len(set(ac.provenance.derived_from) & set(hit_ids))
            hot = meta.name == self.policy.activation_name
            if overlap == 0 and not hot:
                continue
            score = (overlap, ac.lifecycle.updated_at.timestamp())
            if score > act_best:
                act_best, act = score, ac
        return act


class _Allowed:
    """The derived cubes a caller may use: it may read the cube and every memory it was made
    from (everything, without a `readable` filter); a refusal is noted, not raised."""

    def __init__(
        self,
        catalog: Catalog,
        readable: Callable[[Sequence[MemCube]], list[MemCube]] | None,
        notes: list[str],
    ) -> None:
        self.catalog, self.readable, self.notes = catalog, readable, notes

    def __call__(self, cubes: list[MemCube]) -> list[MemCube]:
        if self.readable is None:
            return cubes
        out = []
        for cube in cubes:
            found = self.catalog.get_many(cube.provenance.derived_from)
            parts = [cube, *found.values()]
            if len(self.readable(parts)) == len(parts):
                out.append(cube)
            else:
                self.notes.append(f"{cube.form.value} {cube.id} skipped: not readable here")
        return out


def _last_used(cube: MemCube) -> datetime:
    return cube.lifecycle.last_accessed_at or cube.lifecycle.updated_at


def _bytes(cube: MemCube) -> int:
    meta = ActivationMeta if cube.form is Form.activation else ParameterMeta
    return int(meta.from_cube(cube).bytes or 0)
