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
    store.mark_dispatched(job_id)
    return True


class Dispatcher:
    """A daemon thread that re-sends undispatched jobs every `interval_s` seconds."""

    def __init__(self, store: JobStore, queue: Enqueuer, interval_s: float = 5.0,
                 min_age_s: float = 2.0) -> None:
        # min_age_s leaves a fresh job to the request that is sending it right now
        self.store, self.queue, self.interval_s = store, queue, interval_s
        self.min_age_s = min_age_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> int:
        """One pass; returns how many jobs were sent."""
        sent = 0
        try:
            for job_id in self.store.undispatched(self.min_age_s):
                if not dispatch(self.store, self.queue, job_id):
                    break  # the broker is still down: try again next pass
                sent += 1
        except Exception as exc:  # noqa: BLE001 - the database may be down too
            log.warning("dispatch sweep skipped: %s", type(exc).__name__)
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
