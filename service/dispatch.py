"""Getting job ids to the broker even when it was down at submission time.

The database is the source of truth: a job row is written first, then its id is sent to the
broker and the row marked `dispatched`. If the send fails (the broker went away between the
readiness check and the send), the job stays queued and undispatched, and this sweeper,
running in every gateway process, sends it once the broker answers again. Sending twice is
harmless: a worker claims a job with one conditional UPDATE, so a duplicate message finds
the job taken and is dropped.
"""

from __future__ import annotations

import logging
import threading
import time

from .queue import Enqueuer
from .store.db import JobStore

log = logging.getLogger("ppr.dispatch")


def dispatch(store: JobStore, queue: Enqueuer, job_id: str) -> bool:
    """Send `job_id` and mark it; False (logged, not raised) if the broker is unreachable."""
    try:
        queue.enqueue(job_id)
    except Exception as exc:  # noqa: BLE001 - the sweeper retries; the caller has its 202
        log.warning("job %s stored but not yet queued (broker: %s); the dispatcher retries",
                    job_id, type(exc).__name__)
        return False
    store.jobs.mark_dispatched(job_id)
    return True


class Dispatcher:
    """A daemon thread that re-sends undispatched jobs every `interval_s` seconds."""

    def __init__(self, store: JobStore, queue: Enqueuer, interval_s: float = 5.0,
                 min_age_s: float = 2.0, resend_s: float = 30.0) -> None:
        # min_age_s leaves a fresh job to the request that is sending it right now
        self.store, self.queue, self.interval_s = store, queue, interval_s
        self.min_age_s = min_age_s
        self.resend_s = resend_s  # an expired stage is sent again at most this often
        self._resent: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> int:
        """One pass; returns how many jobs and stages were sent."""
        sent = 0
        try:
            for job_id in self.store.jobs.undispatched(self.min_age_s):
                if not dispatch(self.store, self.queue, job_id):
                    return sent  # the broker is still down: try again next pass
                sent += 1
            sent += self.sweep_stages()
        except Exception as exc:  # noqa: BLE001 - the database or the broker may be down
            log.warning("dispatch sweep skipped: %s", type(exc).__name__)
        return sent

    def sweep_stages(self) -> int:
        """Stages of running jobs that can start but were never sent (their sender died
        between finishing its stage and sending the next), and stages whose worker died
        (expired lease): sent again; each expired one at most once a lease period."""
        sent = 0
        for job_id in self.store.jobs.staged():
            for stage_id in self.store.stages.ready(job_id):
                try:
                    self.queue.enqueue_stage(job_id, stage_id)
                except Exception:
                    self.store.stages.undispatch(job_id, stage_id)
                    raise
                sent += 1
        now = time.monotonic()
        for job_id, stage_id in self.store.stages.stale():
            if now - self._resent.get((job_id, stage_id), -1e9) < self.resend_s:
                continue
            self._resent[(job_id, stage_id)] = now
            log.info("job %s: stage %s lost its worker; sending it again", job_id, stage_id)
            self.queue.enqueue_stage(job_id, stage_id)
            sent += 1
        return sent

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ppr-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sweep()
