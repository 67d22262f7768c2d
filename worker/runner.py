"""What a worker does with one job id (no Celery here, so it can be read and tested alone).

Claim the job (a finished job is left alone; one leased by a live worker is retried
later), run it in a supervised child process (`worker.supervise`: the lease renewed every
second, cancellation and the time limit enforced by stopping the child, the job released
when the worker stops), then mark the job final. Input errors and time limits fail the job
for good; system errors (the child's own, or its death) are retried a few times.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from service.queue import Enqueuer
from service.settings import Settings
from service.store.artifacts import ArtifactStore
from service.store.db import JobStore

from .retry import Busy, Retry
from .supervise import Finished, supervise


def executor(settings: Settings, spec_json: str | None = None) -> str:
    """How a job's plan runs: `process` (every stage in one supervised child, in order: the
    embedded mode) or `stages` (each stage its own task, on any worker: with a broker). A
    purification run until robust is always `process`: whether its next attempt runs
    depends on the last one's verdict, which the stage scheduler does not decide."""
    if spec_json is not None and json.loads(spec_json).get("plan", {}).get("until"):
        return "process"
    if settings.executor != "auto":
        return settings.executor
    return "process" if settings.embedded else "stages"

log = logging.getLogger("ppr.worker")



@dataclass
class Outcome:
    """What happened to one delivery of a job id."""

    status: str  # succeeded | failed | cancelled | released | skipped | dispatched


def run_job(job_id: str, *, settings: Settings, store: JobStore, artifacts: ArtifactStore,
            worker: str, final_attempt: bool = True,
            should_stop: Callable[[], bool] = lambda: False, queue=None) -> Outcome:
    """Process one delivery of `job_id`."""
    claim = store.jobs.claim(job_id, worker, settings.lease_s)
    log.info("job %s: claim by %s -> %s", job_id, worker, claim)
    if claim in ("finished", "missing", "cancelled"):
        log.info("job %s: %s, nothing to do", job_id, claim)
        return Outcome("skipped")
    if claim == "busy":
        raise Busy(job_id)
    job = store.jobs.get(job_id)
    if executor(settings, job.spec if job is not None else None) == "stages":
        from .stages import dispatch_ready

        dispatch_ready(job_id, store, queue or Enqueuer(settings))
        return Outcome("dispatched")
    from .child import execute, run_child

    if settings.job_process == "inline":
        done = Finished(**execute(job_id, worker, settings, store, artifacts))
    else:
        done = supervise(run_child, (job_id, worker, settings.model_dump_json()),
                         renew=lambda: store.jobs.renew(job_id, worker, settings.lease_s),
                         should_stop=should_stop, time_limit_s=settings.job_time_limit_s)
    return _record(job_id, worker, done, store, artifacts, final_attempt)


def _record(job_id: str, worker: str, done: Finished, store: JobStore,
            artifacts: ArtifactStore, final_attempt: bool) -> Outcome:
    """Mark the job as `done` says (or give it back to the queue)."""
    if done.status == "released":
        store.jobs.release(job_id, worker, done.error or "released")
        return Outcome("released")
    if done.status != "succeeded":
        artifacts.delete_prefix(f"jobs/{job_id}/out")  # no output of an attempt that failed
    if done.status == "cancelled":
        store.jobs.finish(job_id, worker, "cancelled")
        return Outcome("cancelled")
    if done.status in ("failed", "crashed") and done.error_kind == "system":
        if not final_attempt:
            store.jobs.requeue(job_id, worker, done.error or "system error")
            raise Retry(done.error)
        store.jobs.finish(job_id, worker, "failed", error=done.error, error_kind="system")
        return Outcome("failed")
    if done.status == "failed":
        store.jobs.finish(job_id, worker, "failed", error=done.error, error_kind=done.error_kind)
        return Outcome("failed")
    log.info("job %s: outputs saved, marking succeeded", job_id)
    if not store.jobs.finish(job_id, worker, "succeeded", artifacts=done.artifacts):
        log.warning("job %s: lost the lease before finishing; another worker owns it", job_id)
        return Outcome("skipped")
    return Outcome("succeeded")
