"""The job store's tables (SQLAlchemy models), its engine and migrations, and the base of
its repositories.

SQLite by default, PostgreSQL by URL; the schema is created by Alembic migrations
(`migrate`). State changes are single conditional UPDATEs, so two workers can never both
own a job or a stage: a worker claims one only if it is queued (pending), or running with
an expired lease (its worker died). A finished job is never claimed again.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")


def now() -> dt.datetime:
    """The current UTC time (naive, as stored)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of the job store."""


class Job(Base):
    """One audit or purification job."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    principal: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    stage: Mapped[str] = mapped_column(String(128), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    spec: Mapped[str] = mapped_column(Text)
    checkpoint_name: Mapped[str] = mapped_column(String(255), default="")
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), default="")
    checkpoint_key: Mapped[str] = mapped_column(String(255), default="")
    artifacts: Mapped[str] = mapped_column(Text, default="{}")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    completions: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (Index("ux_jobs_principal_idempotency_key", "principal",
                            "idempotency_key", unique=True),)

    def artifact_map(self) -> dict[str, str]:
        """Artifact name -> store key."""
        return json.loads(self.artifacts or "{}")


STAGE_FINAL = ("ok", "failed", "skipped", "cancelled")


class JobStage(Base):
    """One stage of a job's plan (see ppr_engine.audit.plan): its state, timing, owner and,
    once finished, its result (JSON: the values, and the artifact keys of its models)."""

    __tablename__ = "job_stages"
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    stage_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    needs: Mapped[str] = mapped_column(Text, default="[]")
    waits: Mapped[str] = mapped_column(Text, default="[]")
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)


class Dataset(Base):
    """An uploaded, validated dataset archive."""

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    principal: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


class Worker(Base):
    """A worker's heartbeat (readiness: at least one worker seen recently)."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    device: Mapped[str] = mapped_column(String(64), default="")
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


# Status reads come from the API's thread pool (40 threads): a pool smaller than that makes
# them queue for a connection, and overflow connections are closed and reopened each time.
POOL = {"pool_size": 40, "max_overflow": 20}


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite runs in WAL mode (readers never wait for the worker's
    progress writes) with a busy timeout; its folder is created."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               **POOL)

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **POOL)


def migrate(url: str) -> None:
    """Bring the schema at `url` to the latest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent.parent
                                               / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def new_id() -> str:
    """A fresh job or dataset id."""
    return str(uuid.uuid4())


class Repository:
    """The operations on one aggregate's rows, over the store's engine and sessions."""

    def __init__(self, engine: Engine, sessions: sessionmaker[Session]) -> None:
        self.engine, self.sessions = engine, sessions

    def session(self) -> Session:
        """A new session (use as a context manager)."""
        return self.sessions()
