"""Response models of the API (the request schema is the engine's AuditSpec)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from ppr_engine.cost import estimated_seconds

from .store.db import Dataset, Job

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
StageState = Literal["pending", "running", "ok", "failed", "skipped", "cancelled"]


class Links(BaseModel):
    """Where to find a job's parts."""

    self: str
    report: str
    report_html: str
    report_md: str
    cancel: str
    artifacts: dict[str, str] = Field(default_factory=dict)


def utc(t: dt.datetime | None) -> dt.datetime | None:
    """A stored time (naive UTC) as an aware one, so it is sent as RFC 3339 with an offset."""
    return None if t is None else t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t


class JobView(BaseModel):
    """A job's status."""

    id: str
    kind: Literal["audit", "purify"]
    state: JobState
    stage: str
    progress: float
    message: str
    attempts: int
    error: str | None = None
    stages: str | None = Field(None, description="the job's stages: GET this URL")
    error_kind: str | None = Field(None, description="'time_limit' (the job outlived "
                                   "PPR_JOB_TIME_LIMIT_S), 'input' (the request was wrong) or "
                                   "'system' (the service failed)")
    cancel_requested: bool
    estimated_work: float | None = Field(None, description="the job's estimated work: the sum "
                                         "of its plan's stage costs, in CIFAR ResNet-18 image "
                                         "passes (what PPR_SPEC_LIMITS.max_work and "
                                         "PPR_MAX_ACTIVE_WORK cap)")
    estimated_seconds: dict[str, float] | None = Field(
        None, description="rough wall time of that work, a figure to plan by: `cuda` on one "
        "H100-class GPU, `cpu_core` on one CPU core (divide by the worker's threads)")
    checkpoint_name: str
    checkpoint_sha256: str
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    updated_at: dt.datetime
    links: Links

    @classmethod
    def of(cls, job: Job | Any) -> JobView:
        """The view of a job record (or of a row of JobStore.STATUS_COLUMNS)."""
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id, kind=job.kind, state=job.state, stage=job.stage, progress=job.progress,
            message=job.message, attempts=job.attempts, error=job.error,
            error_kind=job.error_kind, cancel_requested=job.cancel_requested,
            estimated_work=(work := getattr(job, "work", None)),
            estimated_seconds=None if work is None else {
                "cuda": round(estimated_seconds(work, "cuda"), 1),
                "cpu_core": round(estimated_seconds(work, "cpu", 1), 1)},
            stages=f"{base}/stages",
            checkpoint_name=job.checkpoint_name, checkpoint_sha256=job.checkpoint_sha256,
            created_at=utc(job.created_at), started_at=utc(job.started_at),
            finished_at=utc(job.finished_at), updated_at=utc(job.updated_at),
            links=Links(self=base, report=f"{base}/report", report_html=f"{base}/report?format="
                        "html", report_md=f"{base}/report?format=md", cancel=base,
                        artifacts={name: f"{base}/artifacts/{name}"
                                   for name in json.loads(job.artifacts or "{}")}))


class StageView(BaseModel):
    """One stage of a job's plan (ppr_engine.audit.plan)."""

    id: str = Field(..., description="stable id, e.g. purify:pam or retune:pam:badnets->0:20x5")
    kind: str
    state: StageState
    needs: list[str]
    attempts: int
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    seconds: float | None = None
    progress: float
    error: str | None = Field(None, description="why it failed or was skipped")

    @classmethod
    def of(cls, st: Any) -> StageView:
        return cls(id=st.stage_id, kind=st.kind, state=st.state, needs=json.loads(st.needs),
                   attempts=st.attempts, started_at=utc(st.started_at),
                   finished_at=utc(st.finished_at), seconds=st.seconds, progress=st.progress,
                   error=st.error)


class JobAccepted(BaseModel):
    """The answer to a submission."""

    id: str
    state: JobState
    url: str


class JobPage(BaseModel):
    """A page of jobs."""

    items: list[JobView]
    total: int
    limit: int
    offset: int


class DatasetView(BaseModel):
    """An uploaded dataset, usable as `dataset:<id>`."""

    id: str
    name: str
    ref: str
    sha256: str
    size: int
    files: int
    created_at: dt.datetime

    @classmethod
    def of(cls, ds: Dataset) -> DatasetView:
        """The view of a dataset record."""
        return cls(id=ds.id, name=ds.name, ref=f"dataset:{ds.id}", sha256=ds.sha256,
                   size=ds.size, files=ds.files, created_at=utc(ds.created_at))


class ErrorBody(BaseModel):
    """The shape of every error answer."""

    error: dict[str, object]
