"""The job store: one database, one repository per aggregate (`jobs`, `stages`,
`datasets`, `workers`), in the style of full-stack-fastapi-template's crud modules. Callers
hold a `JobStore` and name the aggregate: `store.jobs.claim(...)`, `store.stages.ready(...)`.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .datasets import DatasetRepository
from .jobs import JobRepository, KeyTaken
from .stages import StageRepository
from .tables import (
    FINAL,
    STATES,
    Base,
    Dataset,
    Job,
    JobStage,
    Worker,
    make_engine,
    migrate,
    new_id,
    now,
)
from .workers import WorkerRepository

__all__ = ["FINAL", "STATES", "Base", "Dataset", "Job", "JobStage", "JobStore", "KeyTaken",
           "Worker", "migrate", "new_id", "now"]


class JobStore:
    """The database of jobs, their stages, datasets and workers."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.local = url.startswith("sqlite")  # a file on this machine, no network
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.jobs = JobRepository(self.engine, self.sessions)
        self.stages = StageRepository(self.engine, self.sessions)
        self.datasets = DatasetRepository(self.engine, self.sessions)
        self.workers = WorkerRepository(self.engine, self.sessions)

    def session(self) -> Session:
        """A new session (use as a context manager)."""
        return self.sessions()

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.session() as s:
            s.execute(select(1))
