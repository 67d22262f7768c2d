"""The stages repository: a staged job's stage rows, claimed, leased, finished and sent by
the distributed executor (`worker.stages`)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import or_, select, update

from .tables import STAGE_FINAL, Job, JobStage, Repository, now


class StageRepository(Repository):
    """The operations on stage rows."""


    def of_job(self, job_id: str) -> list[JobStage]:
        """A job's stages in plan order."""
        with self.session() as s:
            return list(s.scalars(select(JobStage).where(JobStage.job_id == job_id)
                                  .order_by(JobStage.position)).all())


    def get(self, job_id: str, stage_id: str) -> JobStage | None:
        with self.session() as s:
            return s.get(JobStage, (job_id, stage_id))


    def record(self, job_id: str, stage_id: str, **values: Any) -> None:
        """Set a stage's fields (the in-process executor's records)."""
        if values.get("state") == "running":
            values.setdefault("started_at", now())
        if values.get("state") in STAGE_FINAL:
            values.setdefault("finished_at", now())
        with self.session() as s, s.begin():
            s.execute(update(JobStage).where(JobStage.job_id == job_id,
                                             JobStage.stage_id == stage_id).values(**values))


    def claim(self, job_id: str, stage_id: str, worker: str, lease_s: float) -> str:
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


    def renew(self, job_id: str, stage_id: str, worker: str, lease_s: float) -> bool:
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


    def finish(self, job_id: str, stage_id: str, worker: str, state: str, *,
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


    def requeue(self, job_id: str, stage_id: str, worker: str, error: str) -> None:
        """Give a stage back (a system error, or its worker stopping): pending again."""
        with self.session() as s, s.begin():
            s.execute(update(JobStage).where(
                JobStage.job_id == job_id, JobStage.stage_id == stage_id,
                JobStage.worker == worker, JobStage.state == "running").values(
                state="pending", worker=None, lease_until=None, dispatched=False, error=error))


    def ready(self, job_id: str) -> list[str]:
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


    def undispatch(self, job_id: str, stage_id: str) -> None:
        """A stage marked sent whose message never reached the broker: to be sent again."""
        with self.session() as s, s.begin():
            s.execute(update(JobStage).where(JobStage.job_id == job_id,
                                             JobStage.stage_id == stage_id,
                                             JobStage.state == "pending").values(
                dispatched=False))


    def stale(self) -> list[tuple[str, str]]:
        """(job, stage) of running jobs' stages whose lease expired (their worker died):
        they must be sent again."""
        t = now()
        with self.session() as s:
            rows = s.execute(select(JobStage.job_id, JobStage.stage_id).join(
                Job, Job.id == JobStage.job_id).where(
                Job.state == "running", Job.cancel_requested.is_(False),
                JobStage.state == "running", JobStage.lease_until < t)).all()
        return [(a, b) for a, b in rows]
