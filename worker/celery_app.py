"""The Celery app, importable by name, for Celery's own commands against the fleet:

    celery -A worker.celery_app inspect ping      # which workers answer
    celery -A worker.celery_app inspect active    # what each one runs

It reads the same PPR_ settings as `ppr worker` (the broker, the queue) and touches no
database. Start workers with `ppr worker`, which registers the tasks, binds a device and
runs jobs in supervised children; its task runs in a one-thread pool, so a worker busy
with a job still answers control commands (`ping`, `active`).
"""

from __future__ import annotations

from service.queue import make_celery
from service.settings import get_settings

app = make_celery(get_settings())
