"""The datasets repository: the records of uploaded, validated dataset archives."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from .tables import Dataset, Job, Repository, now


class DatasetRepository(Repository):
    """The operations on dataset rows (a principal sees only its own)."""


    def add(self, **fields: Any) -> Dataset:
        """Insert a dataset record."""
        ds = Dataset(created_at=now(), **fields)
        with self.session() as s, s.begin():
            s.add(ds)
        return ds


    def get(self, dataset_id: str, principal: str) -> Dataset | None:
        """The principal's dataset `dataset_id`."""
        with self.session() as s:
            ds = s.get(Dataset, dataset_id)
            return ds if ds is not None and ds.principal == principal else None


    def total_bytes(self, principal: str) -> int:
        """What the principal's datasets hold in the artifact store (their quota's use)."""
        with self.session() as s:
            return int(s.scalar(select(func.coalesce(func.sum(Dataset.size), 0)).where(
                Dataset.principal == principal)) or 0)


    def in_use(self, dataset_id: str, principal: str) -> bool:
        """Whether a queued or running job of the principal names `dataset:<id>`."""
        with self.session() as s:
            return bool(s.scalar(select(func.count()).select_from(Job).where(
                Job.principal == principal, Job.state.in_(("queued", "running")),
                Job.spec.contains(f"dataset:{dataset_id}", autoescape=True))))


    def delete(self, dataset_id: str, principal: str) -> Dataset | None:
        """Remove the principal's dataset record; returns it (None if there was none)."""
        with self.session() as s, s.begin():
            ds = s.get(Dataset, dataset_id)
            if ds is None or ds.principal != principal:
                return None
            s.delete(ds)
            return ds


    def list(self, principal: str) -> list[Dataset]:
        """The principal's datasets, newest first."""
        with self.session() as s:
            return list(s.scalars(select(Dataset).where(Dataset.principal == principal)
                                  .order_by(Dataset.created_at.desc())).all())
