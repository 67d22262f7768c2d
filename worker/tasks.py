"""The Celery task: a thin wrapper around `worker.runner.run_job`."""

from __future__ import annotations

import os
import socket

from celery import Celery
from celery.worker import state as worker_state

from service.queue import STAGE_TASK, TASK_NAME, Enqueuer, make_celery
from service.settings import Settings, get_settings
from service.store.artifacts import ArtifactStore, open_artifacts
from service.store.db import JobStore, migrate

from . import stages
from .retry import Busy, Retry
from .runner import run_job

MAX_RETRIES = 2


def worker_id() -> str:
    """hostname:pid, unique among live workers."""
    return f"{socket.gethostname()}:{os.getpid()}"


def stopping() -> bool:
    """Whether this worker was asked to stop (SIGTERM or SIGQUIT: Celery's warm or cold
    shutdown flags, which the pool only reads between tasks)."""
    return any(flag is not None and flag is not False
               for flag in (worker_state.should_stop, worker_state.should_terminate))


def build(settings: Settings | None = None) -> Celery:
    """The worker's Celery app with the job task registered."""
    settings = settings or get_settings()
    migrate(settings.db_url)
    app = make_celery(settings)
    state: dict = {}

    def stores() -> tuple[JobStore, ArtifactStore]:
        if "store" not in state:  # opened in the worker process, after any fork
            state["store"] = JobStore(settings.db_url)
            state["artifacts"] = open_artifacts(settings)
            state["queue"] = Enqueuer(settings)
        return state["store"], state["artifacts"]

    @app.task(name=TASK_NAME, bind=True, max_retries=None, acks_late=True,
              reject_on_worker_lost=True)
    def run(self, job_id: str) -> str:
        store, artifacts = stores()
        try:
            out = run_job(job_id, settings=settings, store=store, artifacts=artifacts,
                          worker=worker_id(), final_attempt=self.request.retries >= MAX_RETRIES,
                          should_stop=stopping, queue=state["queue"])
        except Busy:
            raise self.retry(countdown=max(5, int(settings.lease_s)), max_retries=None) from None
        except Retry as exc:
            raise self.retry(countdown=10 * (self.request.retries + 1),
                             max_retries=MAX_RETRIES) from exc
        return out.status

    @app.task(name=STAGE_TASK, bind=True, max_retries=None, acks_late=True,
              reject_on_worker_lost=True)
    def run_stage(self, job_id: str, stage_id: str) -> str:
        store, artifacts = stores()
        try:
            return stages.run_stage_task(job_id, stage_id, settings=settings, store=store,
                                         artifacts=artifacts, queue=state["queue"],
                                         worker=worker_id(), should_stop=stopping,
                                         final_attempt=self.request.retries >= MAX_RETRIES)
        except Busy:
            raise self.retry(countdown=max(5, int(settings.lease_s)), max_retries=None) from None
        except Retry as exc:
            raise self.retry(countdown=10 * (self.request.retries + 1),
                             max_retries=MAX_RETRIES) from exc

    app.conf.ppr_settings = settings
    app.conf.ppr_stores = stores
    return app
