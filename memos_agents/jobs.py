"""JobStore: the scheduler's durable jobs, one row each in `memos_jobs` (in the catalog's
database, through SQLAlchemy like the catalog).

A job is queued, running, done, failed or cancelled, with its reason, progress and result, so
it survives restarts and every process sees it. A worker claims the oldest queued job, beats
while it runs and finishes it; a running job whose worker is gone (a dead pid on this host, or
a heartbeat older than the lease) is queued again, or failed after `max_attempts`.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import psutil
from pydantic import BaseModel
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from .errors import NotFound
from .tables import create_tables

JobKind = Literal["promote", "distil", "archive", "demote"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL: tuple[JobState, ...] = ("done", "failed", "cancelled")

jobs_t = Table(
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


def jobs_table() -> Table:
    """The `memos_jobs` table."""
    return jobs_t


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


def new_worker_id() -> str:
    """`host:pid:random`: lets another process on this host tell the worker died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def worker_gone(worker: str) -> bool:
    """True if `worker` ran on this host in a process that no longer exists."""
    parts = worker.split(":")
    return (
        len(parts) >= 2
        and parts[0] == socket.gethostname()
        and parts[1].isdigit()
        and not psutil.pid_exists(int(parts[1]))
    )


class JobStore:
    """Jobs in one database (give it the catalog's engine)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(jobs_t.metadata, engine, "job")

    def submit(
        self,
        *,
        kind: JobKind,
        vault: str,
        user_id: str,
        params: dict[str, Any],
        reason: str,
        dedup_key: str,
        created_by: str,
    ) -> Job | None:
        """Queue a job; None if one with the same `dedup_key` is already queued or running."""
        with self.engine.begin() as conn:
            dup = conn.execute(
                select(jobs_t.c.id).where(
                    jobs_t.c.dedup_key == dedup_key, jobs_t.c.state.in_(["queued", "running"])
                )
            ).first()
            if dup is not None:
                return None
            job_id = uuid.uuid4().hex
            conn.execute(
                insert(jobs_t).values(
                    id=job_id,
                    kind=kind,
                    state="queued",
                    vault=vault,
                    user_id=user_id,
                    params=json.dumps(params),
                    reason=reason,
                    dedup_key=dedup_key,
                    progress=0.0,
                    attempts=0,
                    created_by=created_by,
                    created_at=time.time(),
                )
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs_t).where(jobs_t.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job with id {job_id!r}")
        return _job(row)

    def list(self, state: str | None = None, limit: int = 50) -> list[Job]:
        """Jobs, latest first."""
        q = select(jobs_t).order_by(jobs_t.c.created_at.desc(), jobs_t.c.id).limit(limit)
        if state is not None:
            q = q.where(jobs_t.c.state == state)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(q).all()]

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        with self.engine.connect() as conn:
            q = select(jobs_t.c.state, func.count()).group_by(jobs_t.c.state)
            return dict(conn.execute(q).all())

    def failed_since(self, dedup_key: str, since: float) -> bool:
        """Whether a job with this `dedup_key` failed at or after `since` (a timestamp)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(jobs_t.c.id).where(
                    jobs_t.c.dedup_key == dedup_key,
                    jobs_t.c.state == "failed",
                    jobs_t.c.finished_at >= since,
                )
            ).first()
        return row is not None

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job (a running one finishes)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id, jobs_t.c.state == "queued")
                .values(state="cancelled", finished_at=time.time())
            )
        return done.rowcount == 1

    def retry(self, job_id: str) -> bool:
        """Queue a failed or cancelled job again."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id, jobs_t.c.state.in_(["failed", "cancelled"]))
                .values(state="queued", error=None, finished_at=None, progress=0.0)
            )
        return done.rowcount == 1

    def _recover(self, conn: Connection, now: float, lease_s: float, max_attempts: int) -> None:
        """Re-queue running jobs whose worker is gone (dead pid here, or a lapsed lease)."""
        for row in conn.execute(select(jobs_t).where(jobs_t.c.state == "running")).all():
            worker = row.worker or ""
            lapsed = (row.heartbeat_at or row.started_at or 0) < now - lease_s
            if worker_gone(worker) or lapsed:
                final = row.attempts >= max_attempts
                conn.execute(
                    update(jobs_t)
                    .where(jobs_t.c.id == row.id, jobs_t.c.state == "running")
                    .values(
                        state="failed" if final else "queued",
                        error=f"worker {worker} stopped mid-job" if final else None,
                        finished_at=now if final else None,
                    )
                )

    def claim(self, worker: str, *, lease_s: float, max_attempts: int) -> Job | None:
        """Recover jobs of gone workers, then mark the oldest queued job running by `worker`."""
        now = time.time()
        with self.engine.begin() as conn:
            self._recover(conn, now, lease_s, max_attempts)
            rows = conn.execute(
                select(jobs_t.c.id)
                .where(jobs_t.c.state == "queued")
                .order_by(jobs_t.c.created_at, jobs_t.c.id)
                .limit(5)
            ).all()
            for (job_id,) in rows:
                got = conn.execute(
                    update(jobs_t)
                    .where(jobs_t.c.id == job_id, jobs_t.c.state == "queued")
                    .values(
                        state="running",
                        worker=worker,
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

    def finish(
        self, job: Job, worker: str, result: dict[str, Any] | None, error: str | None
    ) -> Job:
        """Mark `job` done (with `result`) or failed (with `error`), if `worker` still owns it."""
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job.id, jobs_t.c.worker == worker)
                .values(
                    state="failed" if error else "done",
                    result=json.dumps(result, default=str) if result is not None else None,
                    error=error,
                    progress=1.0 if error is None else job.progress,
                    finished_at=time.time(),
                )
            )
        return self.get(job.id)

    def beat(self, job_id: str, progress: float | None = None) -> None:
        """A running job's heartbeat (and progress, 0..1)."""
        values: dict[str, Any] = {"heartbeat_at": time.time()}
        if progress is not None:
            values["progress"] = progress
        with self.engine.begin() as conn:
            conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(**values))
