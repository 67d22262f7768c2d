"""The jobs repository: submitting, claiming, leasing, finishing and listing jobs (a job's
stage rows are written with it, and a staged job's state follows its stages)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from .tables import FINAL, STAGE_FINAL, STATES, Job, JobStage, Repository, now


class KeyTaken(Exception):
    """The principal already submitted a job with this idempotency key."""


# The columns of a job's status (JobView): everything but the spec.
STATUS_COLUMNS = ("id", "kind", "state", "stage", "progress", "message", "attempts",
                  "error", "error_kind", "cancel_requested", "checkpoint_name",
                  "checkpoint_sha256", "created_at", "started_at", "finished_at",
                  "updated_at", "artifacts")


def _work_of(job_id_column):
    """The estimated work of a job: the sum of its plan's stage costs."""
    return (select(func.sum(JobStage.cost)).where(JobStage.job_id == job_id_column)
            .scalar_subquery())


_STATUS = select(*[getattr(Job, c) for c in STATUS_COLUMNS],
                 _work_of(Job.id).label("work")).where(
    Job.id == bindparam("id"), Job.principal == bindparam("principal"))


class JobRepository(Repository):
    """The operations on job rows."""


    def create(self, *, job_id: str, principal: str, kind: str, spec: dict[str, Any],
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


    def finish_staged(self, job_id: str, state: str, *, error: str | None = None,
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


    def staged(self) -> list[str]:
        """Running jobs that still have pending stages (the dispatcher looks for ready
        ones that were never sent)."""
        with self.session() as s:
            return list(s.scalars(select(JobStage.job_id).join(Job, Job.id == JobStage.job_id)
                                  .where(Job.state == "running", JobStage.state == "pending",
                                         JobStage.dispatched.is_(False)).distinct()).all())
