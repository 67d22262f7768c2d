"""Job records: SQLAlchemy models and the operations the API and the workers need.

SQLite by default, PostgreSQL by URL; the schema is created by Alembic migrations
(`migrate`). State changes are single conditional UPDATEs, so two workers can never both
own a job: a worker claims a job only if it is queued, or running with an expired lease
(its worker died). A finished job is never claimed again.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")


def now() -> dt.datetime:
    """The current UTC time (naive, as stored)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class KeyTaken(Exception):
    """The principal already submitted a job with this idempotency key."""


class Base(DeclarativeBase):
    """Declarative base of the job store."""


class Job(Base):
    """One audit or purification job."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    principal: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    stage: Mapped[str] = mapped_column(String(128), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    spec: Mapped[str] = mapped_column(Text)
    checkpoint_name: Mapped[str] = mapped_column(String(255), default="")
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), default="")
    checkpoint_key: Mapped[str] = mapped_column(String(255), default="")
    artifacts: Mapped[str] = mapped_column(Text, default="{}")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    completions: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (Index("ux_jobs_principal_idempotency_key", "principal",
                            "idempotency_key", unique=True),)

    def artifact_map(self) -> dict[str, str]:
        """Artifact name -> store key."""
        return json.loads(self.artifacts or "{}")


STAGE_FINAL = ("ok", "failed", "skipped", "cancelled")


class JobStage(Base):
    """One stage of a job's plan (see ppr_engine.audit.plan): its state, timing, owner and,
    once finished, its result (JSON: the values, and the artifact keys of its models)."""

    __tablename__ = "job_stages"
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    stage_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    needs: Mapped[str] = mapped_column(Text, default="[]")
    waits: Mapped[str] = mapped_column(Text, default="[]")
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)


class Dataset(Base):
    """An uploaded, validated dataset archive."""

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    principal: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


class Worker(Base):
    """A worker's heartbeat (readiness: at least one worker seen recently)."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    device: Mapped[str] = mapped_column(String(64), default="")
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


# The columns of a job's status (JobView): everything but the spec.
STATUS_COLUMNS = ("id", "kind", "state", "stage", "progress", "message", "attempts",
                           "error", "error_kind", "cancel_requested", "checkpoint_name",
                           "checkpoint_sha256", "created_at", "started_at", "finished_at",
                           "updated_at", "artifacts")
# Status reads come from the API's thread pool (40 threads): a pool smaller than that makes
# them queue for a connection, and overflow connections are closed and reopened each time.
POOL = {"pool_size": 40, "max_overflow": 20}


def _work_of(job_id_column):
    """The estimated work of a job: the sum of its plan's stage costs."""
    return (select(func.sum(JobStage.cost)).where(JobStage.job_id == job_id_column)
            .scalar_subquery())


_STATUS = select(*[getattr(Job, c) for c in STATUS_COLUMNS],
                 _work_of(Job.id).label("work")).where(
    Job.id == bindparam("id"), Job.principal == bindparam("principal"))


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite runs in WAL mode (readers never wait for the worker's
    progress writes) with a busy timeout; its folder is created."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               **POOL)

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **POOL)


def migrate(url: str) -> None:
    """Bring the schema at `url` to the latest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent.parent
                                               / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


class JobStore:
    """The operations on job, dataset and worker records."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.local = url.startswith("sqlite")  # a file on this machine, no network
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        """A new session (use as a context manager)."""
        return self.sessions()

    # -- jobs ------------------------------------------------------------------------------
    def create_job(self, *, job_id: str, principal: str, kind: str, spec: dict[str, Any],
                   checkpoint_name: str, checkpoint_sha256: str, checkpoint_key: str,
                   idempotency_key: str | None = None, request_sha256: str | None = None,
                   stages: list[dict[str, Any]] | None = None) -> Job:
        """Insert a queued job (its inputs are already stored). With an idempotency key
        that the principal already used, raises `KeyTaken` (the database decides, so two
        concurrent submissions cannot both win)."""
        job = Job(id=job_id, principal=principal, kind=kind, state="queued",
                  spec=json.dumps(spec), checkpoint_name=checkpoint_name,
                  checkpoint_sha256=checkpoint_sha256, checkpoint_key=checkpoint_key,
                  idempotency_key=idempotency_key, request_sha256=request_sha256,
                  dispatched=False, created_at=now(), updated_at=now())
        try:
            with self.session() as s, s.begin():
                s.add(job)
                s.flush()
                for pos, st in enumerate(stages or []):
                    s.add(JobStage(job_id=job_id, stage_id=st["id"], position=pos,
                                   kind=st["kind"], needs=json.dumps(st["needs"]),
                                   waits=json.dumps(st["waits"]), cost=float(st["cost"]),
                                   state="pending", dispatched=False))
        except IntegrityError:
            if idempotency_key is None:
                raise
            raise KeyTaken(idempotency_key) from None
        return job

    def by_idempotency_key(self, principal: str, key: str) -> Job | None:
        """The principal's job submitted with `key`, if any."""
        with self.session() as s:
            return s.scalar(select(Job).where(Job.principal == principal,
                                              Job.idempotency_key == key))

    def status(self, job_id: str, principal: str) -> Any | None:
        """The columns of a job's status view (not its spec), one indexed lookup with a
        statement built once: the read path that pollers hit hundreds of times a second."""
        with self.engine.connect() as conn:
            return conn.execute(_STATUS, {"id": job_id, "principal": principal}).first()

    def get(self, job_id: str, principal: str | None = None) -> Job | None:
        """The job `job_id` (only if it belongs to `principal`, when given)."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None or (principal is not None and job.principal != principal):
                return None
            return job

    def list(self, principal: str, *, state: str | None = None, kind: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
        """A page of the principal's jobs, newest first, and the total count."""
        q = select(Job).where(Job.principal == principal)
        if state:
            q = q.where(Job.state == state)
        if kind:
            q = q.where(Job.kind == kind)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit)
                             .offset(offset)).all()
            return list(rows), int(total)

    def mark_dispatched(self, job_id: str) -> None:
        """The job's id reached the broker."""
        with self.session() as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id).values(dispatched=True))

    def undispatched(self, older_than_s: float = 2.0) -> list[str]:
        """Queued jobs whose id never reached the broker (it was down when they were
        accepted), oldest first."""
        t = now() - dt.timedelta(seconds=older_than_s)
        with self.session() as s:
            return list(s.scalars(select(Job.id).where(
                Job.state == "queued", Job.dispatched.is_(False), Job.created_at < t)
                .order_by(Job.created_at)).all())

    def active_work(self, principal: str) -> float:
        """The estimated work of the principal's queued and running jobs, summed."""
        with self.session() as s:
            return float(s.scalar(
                select(func.coalesce(func.sum(JobStage.cost), 0.0)).join(
                    Job, Job.id == JobStage.job_id).where(
                    Job.principal == principal, Job.state.in_(("queued", "running")))) or 0.0)

    def active(self, principal: str) -> int:
        """The principal's queued or running jobs."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Job).where(
                Job.principal == principal, Job.state.in_(("queued", "running")))) or 0)

    def claim(self, job_id: str, worker: str, lease_s: float) -> str:
        """Take the job for `worker`: 'claimed', 'finished', 'busy' (leased by a live
        worker), 'cancelled' or 'missing'."""
        t = now()
        lease = t + dt.timedelta(seconds=lease_s)
        with self.session() as s, s.begin():
            res = s.execute(update(Job).where(
                Job.id == job_id, Job.cancel_requested.is_(False),
                or_(Job.state == "queued",
                    (Job.state == "running") & (or_(Job.lease_until.is_(None),
                                                    Job.lease_until < t)))
            ).values(state="running", worker=worker, lease_until=lease,
                     attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, t),
                     updated_at=t, stage="starting", error=None, error_kind=None))
            if res.rowcount == 1:
                return "claimed"
            job = s.get(Job, job_id)
            if job is None:
                return "missing"
            if job.state in FINAL:
                return "finished"
            if job.cancel_requested:
                s.execute(update(Job).where(Job.id == job_id, Job.state.in_(
                    ("queued", "running"))).values(state="cancelled", finished_at=t,
                                                   updated_at=t))
                return "cancelled"
            return "busy"

    def heartbeat(self, job_id: str, worker: str, lease_s: float, *, stage: str,
                  progress: float, message: str) -> bool:
        """Record progress and renew the lease; returns True if cancel was requested."""
        t = now()
        with self.session() as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id, Job.worker == worker,
                                        Job.state == "running").values(
                stage=stage[:128], progress=progress, message=message[:2000],
                lease_until=t + dt.timedelta(seconds=lease_s), updated_at=t))
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def renew(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Renew the lease of a running job (the supervisor's heartbeat, which needs no
        progress); returns True if cancel was requested."""
        t = now()
        with self.session() as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id, Job.worker == worker,
                                        Job.state == "running").values(
                lease_until=t + dt.timedelta(seconds=lease_s)))
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def release(self, job_id: str, worker: str, reason: str) -> None:
        """Give a running job back to the queue because its worker is stopping: queued and
        not dispatched, so a gateway's dispatcher sends it to another worker; the attempt
        does not count."""
        with self.session() as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id, Job.worker == worker,
                                        Job.state == "running").values(
                state="queued", lease_until=None, worker=None, dispatched=False,
                attempts=Job.attempts - 1, message=reason[:2000], updated_at=now()))

    def finish(self, job_id: str, worker: str, state: str, *, error: str | None = None,
               error_kind: str | None = None, artifacts: dict[str, str] | None = None) -> bool:
        """Mark the job final, only if this worker still owns it; True if it did."""
        t = now()
        values: dict[str, Any] = {"state": state, "finished_at": t, "updated_at": t,
                                  "error": error, "error_kind": error_kind,
                                  "lease_until": None}
        if state == "succeeded":
            values.update(progress=1.0, stage="done", completions=Job.completions + 1)
        if artifacts is not None:
            values["artifacts"] = json.dumps(artifacts)
        with self.session() as s, s.begin():
            res = s.execute(update(Job).where(Job.id == job_id, Job.worker == worker,
                                              Job.state == "running").values(**values))
            return res.rowcount == 1

    def requeue(self, job_id: str, worker: str, error: str) -> None:
        """Give a running job back to the queue after a system error (it will be retried)."""
        with self.session() as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id, Job.worker == worker,
                                        Job.state == "running").values(
                state="queued", lease_until=None, error=error, error_kind="system",
                updated_at=now()))

    def request_cancel(self, job_id: str, principal: str) -> Job | None:
        """Ask for cancellation: a queued job is cancelled at once, a running one between
        two steps."""
        t = now()
        with self.session() as s, s.begin():
            job = s.get(Job, job_id)
            if job is None or job.principal != principal:
                return None
            if job.state in FINAL:
                return job
            job.cancel_requested = True
            job.updated_at = t
            if job.state == "queued":
                job.state, job.finished_at = "cancelled", t
        return self.get(job_id)

    def recoverable(self) -> list[str]:
        """Jobs to (re-)enqueue at start-up: queued ones and running ones whose lease ran
        out (their worker died)."""
        t = now()
        with self.session() as s:
            return list(s.scalars(select(Job.id).where(or_(
                Job.state == "queued",
                (Job.state == "running") & (Job.lease_until < t)))).all())

    def counts(self) -> dict[str, int]:
        """Number of jobs by state."""
        with self.session() as s:
            rows = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        out = dict.fromkeys(STATES, 0)
        out.update({k: int(v) for k, v in rows})
        return out

    def durations(self) -> list[float]:
        """Wall times (seconds) of finished jobs."""
        with self.session() as s:
            rows = s.execute(select(Job.started_at, Job.finished_at).where(
                Job.state.in_(FINAL), Job.started_at.is_not(None))).all()
        return [(b - a).total_seconds() for a, b in rows if a and b]

    # -- stages ----------------------------------------------------------------------------
    def stages(self, job_id: str) -> list[JobStage]:
        """A job's stages in plan order."""
        with self.session() as s:
            return list(s.scalars(select(JobStage).where(JobStage.job_id == job_id)
                                  .order_by(JobStage.position)).all())

    def stage(self, job_id: str, stage_id: str) -> JobStage | None:
        with self.session() as s:
            return s.get(JobStage, (job_id, stage_id))

    def record_stage(self, job_id: str, stage_id: str, **values: Any) -> None:
        """Set a stage's fields (the in-process executor's records)."""
        if values.get("state") == "running":
            values.setdefault("started_at", now())
        if values.get("state") in STAGE_FINAL:
            values.setdefault("finished_at", now())
        with self.session() as s, s.begin():
            s.execute(update(JobStage).where(JobStage.job_id == job_id,
                                             JobStage.stage_id == stage_id).values(**values))

    def claim_stage(self, job_id: str, stage_id: str, worker: str, lease_s: float) -> str:
        """Take a stage for `worker`: 'claimed', 'finished', 'busy', 'stale' or 'missing'
        (as `claim` for jobs: a running stage whose lease expired can be taken over).

        Only a stage the scheduler sent may be claimed: a pending stage whose `dispatched`
        flag is down was given back (its worker stopped) and is sent again once it is ready,
        so a message still in the broker for it is stale and must not run it; neither may
        one whose waits are not all final (its inputs are not there)."""
        t = now()
        with self.session() as s, s.begin():
            st = s.get(JobStage, (job_id, stage_id))
            if st is None:
                return "missing"
            if st.state in STAGE_FINAL:
                return "finished"
            waits = set(json.loads(st.waits))
            final = set(s.scalars(select(JobStage.stage_id).where(
                JobStage.job_id == job_id, JobStage.state.in_(STAGE_FINAL))).all())
            if st.state == "pending" and (not st.dispatched or not waits <= final):
                return "stale"
            res = s.execute(update(JobStage).where(
                JobStage.job_id == job_id, JobStage.stage_id == stage_id,
                or_((JobStage.state == "pending") & JobStage.dispatched.is_(True),
                    (JobStage.state == "running") & (or_(JobStage.lease_until.is_(None),
                                                         JobStage.lease_until < t)))
            ).values(state="running", worker=worker, lease_until=t + dt.timedelta(
                seconds=lease_s), attempts=JobStage.attempts + 1, started_at=t, error=None))
            if res.rowcount == 1:
                return "claimed"
            s.refresh(st)
            return "finished" if st.state in STAGE_FINAL else "busy"

    def renew_stage(self, job_id: str, stage_id: str, worker: str, lease_s: float) -> bool:
        """Renew a stage's lease (and its job's); True if the job's cancel was requested."""
        t = now()
        lease = t + dt.timedelta(seconds=lease_s)
        with self.session() as s, s.begin():
            s.execute(update(JobStage).where(JobStage.job_id == job_id,
                                             JobStage.stage_id == stage_id,
                                             JobStage.worker == worker,
                                             JobStage.state == "running").values(
                lease_until=lease))
            s.execute(update(Job).where(Job.id == job_id, Job.state == "running").values(
                lease_until=lease))
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def finish_stage(self, job_id: str, stage_id: str, worker: str, state: str, *,
                     error: str | None = None, result: str | None = None,
                     seconds: float | None = None) -> bool:
        """Mark a stage final, only if `worker` still owns it (a stage's result is stored
        once); True if it did."""
        t = now()
        with self.session() as s, s.begin():
            res = s.execute(update(JobStage).where(
                JobStage.job_id == job_id, JobStage.stage_id == stage_id,
                JobStage.worker == worker, JobStage.state == "running").values(
                state=state, error=error, result=result, finished_at=t, lease_until=None,
                seconds=seconds, progress=1.0 if state == "ok" else JobStage.progress))
            return res.rowcount == 1

    def requeue_stage(self, job_id: str, stage_id: str, worker: str, error: str) -> None:
        """Give a stage back (a system error, or its worker stopping): pending again."""
        with self.session() as s, s.begin():
            s.execute(update(JobStage).where(
                JobStage.job_id == job_id, JobStage.stage_id == stage_id,
                JobStage.worker == worker, JobStage.state == "running").values(
                state="pending", worker=None, lease_until=None, dispatched=False, error=error))

    def ready_stages(self, job_id: str) -> list[str]:
        """Pending, undispatched stages of a running job whose every wait is final; each
        is marked dispatched here (one caller wins each), so it is sent once."""
        with self.session() as s, s.begin():
            job = s.get(Job, job_id)
            if job is None or job.state != "running" or job.cancel_requested:
                return []
            rows = list(s.scalars(select(JobStage).where(JobStage.job_id == job_id)).all())
            final = {r.stage_id for r in rows if r.state in STAGE_FINAL}
            out = []
            for r in sorted(rows, key=lambda r: r.position):
                if r.state != "pending" or r.dispatched:
                    continue
                if set(json.loads(r.waits)) <= final:
                    won = s.execute(update(JobStage).where(
                        JobStage.job_id == job_id, JobStage.stage_id == r.stage_id,
                        JobStage.dispatched.is_(False), JobStage.state == "pending").values(
                        dispatched=True))
                    if won.rowcount == 1:
                        out.append(r.stage_id)
            return out

    def finish_staged_job(self, job_id: str, state: str, *, error: str | None = None,
                          error_kind: str | None = None,
                          artifacts: dict[str, str] | None = None) -> bool:
        """Mark a job run by stages final (whichever stage ends it: the report, a cancel, an
        input error); only a running job, so it is finished once."""
        t = now()
        values: dict[str, Any] = {"state": state, "finished_at": t, "updated_at": t,
                                  "error": error, "error_kind": error_kind, "lease_until": None}
        if state == "succeeded":
            values.update(progress=1.0, stage="done", completions=Job.completions + 1)
        if artifacts is not None:
            values["artifacts"] = json.dumps(artifacts)
        with self.session() as s, s.begin():
            res = s.execute(update(Job).where(Job.id == job_id, Job.state == "running")
                            .values(**values))
            if state != "succeeded":  # stages not yet run will not run
                s.execute(update(JobStage).where(JobStage.job_id == job_id,
                                                 JobStage.state == "pending").values(
                    state="cancelled" if state == "cancelled" else "skipped",
                    error=f"the job {state}"))
            return res.rowcount == 1

    def update_staged_progress(self, job_id: str) -> None:
        """A staged job's progress: the share of its plan's cost finished, and the stages
        running now as its `stage`."""
        with self.session() as s, s.begin():
            rows = list(s.scalars(select(JobStage).where(JobStage.job_id == job_id)).all())
            total = sum(r.cost for r in rows) or 1.0
            done = sum(r.cost for r in rows if r.state in STAGE_FINAL)
            running = [r.stage_id for r in rows if r.state == "running"]
            s.execute(update(Job).where(Job.id == job_id, Job.state == "running").values(
                progress=min(1.0, done / total), stage=(", ".join(running) or "waiting")[:128],
                updated_at=now()))

    def undispatch_stage(self, job_id: str, stage_id: str) -> None:
        """A stage marked sent whose message never reached the broker: to be sent again."""
        with self.session() as s, s.begin():
            s.execute(update(JobStage).where(JobStage.job_id == job_id,
                                             JobStage.stage_id == stage_id,
                                             JobStage.state == "pending").values(
                dispatched=False))

    def stale_stages(self) -> list[tuple[str, str]]:
        """(job, stage) of running jobs' stages whose lease expired (their worker died):
        they must be sent again."""
        t = now()
        with self.session() as s:
            rows = s.execute(select(JobStage.job_id, JobStage.stage_id).join(
                Job, Job.id == JobStage.job_id).where(
                Job.state == "running", Job.cancel_requested.is_(False),
                JobStage.state == "running", JobStage.lease_until < t)).all()
        return [(a, b) for a, b in rows]

    def staged_jobs(self) -> list[str]:
        """Running jobs that still have pending stages (the dispatcher looks for ready
        ones that were never sent)."""
        with self.session() as s:
            return list(s.scalars(select(JobStage.job_id).join(Job, Job.id == JobStage.job_id)
                                  .where(Job.state == "running", JobStage.state == "pending",
                                         JobStage.dispatched.is_(False)).distinct()).all())

    # -- datasets --------------------------------------------------------------------------
    def add_dataset(self, **fields: Any) -> Dataset:
        """Insert a dataset record."""
        ds = Dataset(created_at=now(), **fields)
        with self.session() as s, s.begin():
            s.add(ds)
        return ds

    def get_dataset(self, dataset_id: str, principal: str) -> Dataset | None:
        """The principal's dataset `dataset_id`."""
        with self.session() as s:
            ds = s.get(Dataset, dataset_id)
            return ds if ds is not None and ds.principal == principal else None

    def dataset_bytes(self, principal: str) -> int:
        """What the principal's datasets hold in the artifact store (their quota's use)."""
        with self.session() as s:
            return int(s.scalar(select(func.coalesce(func.sum(Dataset.size), 0)).where(
                Dataset.principal == principal)) or 0)

    def dataset_in_use(self, dataset_id: str, principal: str) -> bool:
        """Whether a queued or running job of the principal names `dataset:<id>`."""
        with self.session() as s:
            return bool(s.scalar(select(func.count()).select_from(Job).where(
                Job.principal == principal, Job.state.in_(("queued", "running")),
                Job.spec.contains(f"dataset:{dataset_id}", autoescape=True))))

    def delete_dataset(self, dataset_id: str, principal: str) -> Dataset | None:
        """Remove the principal's dataset record; returns it (None if there was none)."""
        with self.session() as s, s.begin():
            ds = s.get(Dataset, dataset_id)
            if ds is None or ds.principal != principal:
                return None
            s.delete(ds)
            return ds

    def list_datasets(self, principal: str) -> list[Dataset]:
        """The principal's datasets, newest first."""
        with self.session() as s:
            return list(s.scalars(select(Dataset).where(Dataset.principal == principal)
                                  .order_by(Dataset.created_at.desc())).all())

    # -- workers ---------------------------------------------------------------------------
    def worker_seen(self, worker_id: str, device: str) -> None:
        """Record a worker heartbeat."""
        with self.session() as s, s.begin():
            w = s.get(Worker, worker_id)
            if w is None:
                s.add(Worker(id=worker_id, device=device, last_seen=now()))
            else:
                w.last_seen, w.device = now(), device

    def heartbeat_age(self, worker_prefix: str) -> float | None:
        """Seconds since the freshest heartbeat of a worker whose id starts with
        `worker_prefix` (None if there was none)."""
        with self.session() as s:
            seen = s.scalar(select(func.max(Worker.last_seen)).where(
                Worker.id.startswith(worker_prefix, autoescape=True)))
        return None if seen is None else max(0.0, (now() - seen).total_seconds())

    def fleet_devices(self, within_s: float = 30.0) -> list[str]:
        """The devices that the workers seen in the last `within_s` seconds advertise
        (`cpu` or `cuda:K`, see worker.cli.advertised_device)."""
        t = now() - dt.timedelta(seconds=within_s)
        with self.session() as s:
            return list(s.scalars(select(Worker.device).where(Worker.last_seen >= t)).all())

    def live_workers(self, within_s: float = 30.0) -> int:
        """Workers seen in the last `within_s` seconds."""
        t = now() - dt.timedelta(seconds=within_s)
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Worker).where(
                Worker.last_seen >= t)) or 0)

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.session() as s:
            s.execute(select(1))


def new_id() -> str:
    """A fresh job or dataset id."""
    return str(uuid.uuid4())
