"""What runs inside a job's child process (see `worker.supervise`): the audit itself, with
a progress writer that renews the lease, carries cancellation and applies the soft time
limit, and the outputs written atomically. Imported by the fork server, so that the engine
is loaded once per worker, not once per job."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import ppr_engine.audit  # noqa: F401  (loaded in the fork server, before any job)
from ppr_engine.errors import Cancelled, InputError, TimeLimitExceeded
from ppr_engine.spec import AuditSpec
from service.settings import Settings
from service.store.artifacts import ArtifactStore, open_artifacts
from service.store.db import JobStore

log = logging.getLogger("ppr.worker")


class ProgressWriter:
    """Throttled progress writes; raises Cancelled when the job was cancelled and
    TimeLimitExceeded past the job's time limit (the soft limit)."""

    def __init__(self, store: JobStore, job_id: str, worker: str, settings: Settings,
                 started: float | None = None) -> None:
        self.store, self.job_id, self.worker, self.settings = store, job_id, worker, settings
        self.started = time.monotonic() if started is None else started
        self.last = self.stage_written = 0.0
        self.stage = ""

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        limit = self.settings.job_time_limit_s
        if now - self.started > limit:
            raise TimeLimitExceeded(f"time limit: the job ran longer than {limit} s "
                                    "(PPR_JOB_TIME_LIMIT_S) and was stopped")
        stage_changed = stage != self.stage
        if not stage_changed and now - self.last < self.settings.progress_interval_s:
            return
        self.last, self.stage = now, stage
        cancel = self.store.jobs.heartbeat(self.job_id, self.worker, self.settings.lease_s,
                                      stage=stage, progress=max(0.0, min(1.0, fraction)),
                                      message=message)
        if cancel:
            raise Cancelled(f"job {self.job_id} was cancelled")

    def stage_progress(self, stage_id: str, fraction: float) -> None:
        """The running stage's own progress, in its row (throttled like the job's), so the
        stage view moves while a long stage runs, not only when it ends."""
        now = time.monotonic()
        if now - self.stage_written >= self.settings.progress_interval_s:
            self.stage_written = now
            self.store.stages.record(self.job_id, stage_id, progress=fraction)


STATES = {"ok": "ok", "failed": "failed", "skipped": "skipped", "running": "running"}


def stage_recorder(store: JobStore, job_id: str):
    """The in-process executor's `on_stage`: each stage's state, time and error in the
    job's stage rows (GET /v1/jobs/{id}/stages), as the distributed executor writes them."""

    def record(status) -> None:
        values = {"state": STATES.get(status.status, status.status), "error": status.error}
        if status.status != "running":
            values.update(seconds=status.seconds, progress=1.0)
        store.stages.record(job_id, status.name, **values)

    return record


def execute(job_id: str, worker: str, settings: Settings, store: JobStore,
            artifacts: ArtifactStore, started: float | None = None) -> dict[str, Any]:
    """Run the claimed job and return its outcome (the fields of `supervise.Finished`)."""
    job = store.jobs.get(job_id)
    assert job is not None
    writer = ProgressWriter(store, job_id, worker, settings, started)
    try:
        spec = AuditSpec.model_validate_json(job.spec)
        outcome = ppr_engine.audit.run(
            spec, artifacts.fetch(job.checkpoint_key), kind=job.kind, progress=writer,
            resolve_dataset=dataset_resolver(store, job.principal, artifacts),
            roots=settings.data_roots or [], max_checkpoint_bytes=settings.max_upload_bytes,
            checkpoint_name=job.checkpoint_name, max_work=settings.spec_limits.max_work,
            on_stage=stage_recorder(store, job_id), on_stage_progress=writer.stage_progress)
        written = time.perf_counter()
        saved = save_outputs(job_id, job.kind, spec, outcome.report, outcome.models,
                             artifacts)
        store.stages.record(job_id, "report", state="ok", progress=1.0,
                           seconds=round(time.perf_counter() - written, 3))
    except TimeLimitExceeded as exc:
        return {"status": "failed", "error": str(exc), "error_kind": "time_limit"}
    except Cancelled:
        return {"status": "cancelled"}
    except InputError as exc:
        return {"status": "failed", "error": str(exc), "error_kind": "input"}
    except Exception as exc:  # noqa: BLE001 - any other failure is the system's
        log.exception("job %s failed", job_id)
        artifacts.delete_prefix(f"jobs/{job_id}/out")  # no output of a failed attempt stays
        return {"status": "failed", "error": f"system error: {type(exc).__name__}: {exc}"[:2000],
                "error_kind": "system"}
    return {"status": "succeeded", "artifacts": saved}


def enter_child(settings_json: str, conn) -> Settings:
    """What every job or stage child does first: log as the worker does, die with the fork
    server and with the worker (`conn`: the pipe it reports on), leave Ctrl-C to the
    worker, and use the worker's share of the cores (`PPR_TORCH_THREADS`); its settings."""
    import torch

    from . import configure_logging
    from .supervise import die_with_parent, die_with_worker

    configure_logging()  # the worker's level and format, into the worker's log
    die_with_parent()
    die_with_worker(conn)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides what a Ctrl-C means
    settings = Settings.model_validate_json(settings_json)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    return settings


def run_child(job_id: str, worker: str, settings_json: str, conn, started: float) -> None:
    """The child's entry point: run the job, send its outcome, exit."""
    settings = enter_child(settings_json, conn)
    store = JobStore(settings.db_url)
    artifacts = open_artifacts(settings)
    try:
        outcome = execute(job_id, worker, settings, store, artifacts, started)
    finally:
        artifacts.release()  # nothing of the job stays on this machine's disk
    conn.send(outcome)
    conn.close()


def dataset_resolver(store: JobStore, principal: str, artifacts: ArtifactStore):
    from ppr_engine.errors import DatasetError

    def resolve(dataset_id: str) -> Path:
        ds = store.datasets.get(dataset_id, principal)
        if ds is None:
            raise DatasetError(f"dataset:{dataset_id}: no such dataset")
        return artifacts.fetch(ds.key)

    return resolve


def save_outputs(job_id: str, kind: str, spec: AuditSpec, report, models: dict,
                 artifacts: ArtifactStore) -> dict[str, str]:
    """Write reports (and the purified checkpoint) atomically; return name -> key."""
    from ppr_engine.checkpoint import save_model
    from ppr_engine.report import render

    saved: dict[str, str] = {}
    prefix = f"jobs/{job_id}/out"
    if kind == "purify" and spec.plan.methods:
        key = spec.plan.methods[0].key
        model = models.get(key)
        if model is None:
            stages = [s for m in report.methods for s in m.stages if s.status == "failed"]
            raise InputError(f"{key} failed: " + "; ".join(f"{s.name}: {s.error}"
                                                           for s in stages))
        with artifacts.writing(f"{prefix}/purified.safetensors") as path:
            save_model(model, path, method=key,
                       source_sha256=report.provenance.checkpoint_sha256)
        saved["purified.safetensors"] = f"{prefix}/purified.safetensors"
        for name, attempt in models.items():  # a purification run until robust: each try
            if name.startswith(f"{key}#"):
                n = name.rsplit("#", 1)[1]
                with artifacts.writing(f"{prefix}/attempt-{n}.safetensors") as path:
                    save_model(attempt, path, method=key,
                               source_sha256=report.provenance.checkpoint_sha256)
                saved[f"attempt-{n}.safetensors"] = f"{prefix}/attempt-{n}.safetensors"
    for fmt in ("json", "md", "html"):
        body, _ = render(report, fmt)
        artifacts.write_bytes(f"{prefix}/report.{fmt}", body.encode("utf-8"))
        saved[f"report.{fmt}"] = f"{prefix}/report.{fmt}"
    return saved
