"""The Celery application shared by the gateway (which only sends job ids) and the workers.

Celery habits for long GPU jobs: late acks, reject on worker loss, prefetch 1, results
ignored (the job store is the source of truth), and on Redis a visibility timeout above the
longest job.
"""

from __future__ import annotations

from celery import Celery

from .settings import Settings

TASK_NAME = "ppr.run_job"
STAGE_TASK = "ppr.run_stage"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from `settings` (embedded: a filesystem queue)."""
    app = Celery("ppr", broker=settings.broker)
    app.conf.update(
        broker_transport_options=settings.broker_options(),
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_time_limit=settings.job_time_limit_s + 120,
        task_soft_time_limit=settings.job_time_limit_s,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


class Enqueuer:
    """Sends a job id to the workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = make_celery(settings)

    def enqueue(self, job_id: str) -> None:
        """Queue `job_id` (the message carries nothing else)."""
        self.app.send_task(TASK_NAME, args=[job_id], queue=self.settings.queue)

    def enqueue_stage(self, job_id: str, stage_id: str) -> None:
        """Queue one stage of a job (executor `stages`)."""
        self.app.send_task(STAGE_TASK, args=[job_id, stage_id], queue=self.settings.queue)

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=2)

    def depth(self) -> int | None:
        """Messages waiting in the queue (None where the transport cannot tell)."""
        try:
            with self.app.connection_for_write() as conn:
                _, count, _ = conn.default_channel.queue_declare(self.settings.queue,
                                                                 passive=True)
                return int(count)
        except Exception:  # noqa: BLE001 - depth is best-effort
            return None
