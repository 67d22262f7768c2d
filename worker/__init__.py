"""Celery workers: thin tasks that load a job, run the engine, and write results back."""

from __future__ import annotations

import logging
import os

# One log format for a worker and the job and stage processes it starts: their lines land
# in the same stream (the children inherit the worker's stderr).
LOG_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"


def configure_logging(level: str | None = None) -> None:
    """Log at `level` (default $PPR_LOG_LEVEL, else INFO) in LOG_FORMAT, and pass the level
    on to the processes this one starts; a process already configured is left as it is."""
    level = (level or os.environ.get("PPR_LOG_LEVEL") or "INFO").upper()
    os.environ["PPR_LOG_LEVEL"] = level
    logging.basicConfig(level=level, format=LOG_FORMAT)
