"""The workers repository: heartbeats, and the fleet they describe (readiness, devices)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from .tables import Repository, Worker, now


class WorkerRepository(Repository):
    """The operations on worker rows."""


    def seen(self, worker_id: str, device: str) -> None:
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


    def devices(self, within_s: float = 30.0) -> list[str]:
        """The devices that the workers seen in the last `within_s` seconds advertise
        (`cpu` or `cuda:K`, see worker.cli.advertised_device)."""
        t = now() - dt.timedelta(seconds=within_s)
        with self.session() as s:
            return list(s.scalars(select(Worker.device).where(Worker.last_seen >= t)).all())


    def live(self, within_s: float = 30.0) -> int:
        """Workers seen in the last `within_s` seconds."""
        t = now() - dt.timedelta(seconds=within_s)
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Worker).where(
                Worker.last_seen >= t)) or 0)
