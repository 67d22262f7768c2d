"""What a worker does with one job id (no Celery here, so it can be read and tested alone).

Claim the job (a finished job is left alone; one leased by a live worker is retried
later), run `ppr_engine.audit.run` with a throttled progress callback that renews the lease
and carries cancellation, write the reports and artifacts atomically, then mark the job
final. Input errors fail the job for good; system errors are retried a few times.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ppr_engine.errors import Cancelled, InputError
from ppr_engine.spec import AuditSpec
from service.settings import Settings
from service.store.artifacts import ArtifactStore
from service.store.db import JobStore

log = logging.getLogger("ppr.worker")


class Busy(Exception):
    """Another live worker holds the job's lease: try again later."""


class Retry(Exception):
    """A system error; the job went back to the queue."""


@dataclass
class Outcome:
    """What happened to one delivery of a job id."""

    status: str  # succeeded | failed | cancelled | skipped


class ProgressWriter:
    """Throttled progress writes; raises Cancelled when the job was cancelled."""

    def __init__(self, store: JobStore, job_id: str, worker: str, settings: Settings) -> None:
        self.store, self.job_id, self.worker, self.settings = store, job_id, worker, settings
        self.last = 0.0
        self.stage = ""

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        stage_changed = stage != self.stage
        if not stage_changed and now - self.last < self.settings.progress_interval_s:
            return
        self.last, self.stage = now, stage
        cancel = self.store.heartbeat(self.job_id, self.worker, self.settings.lease_s,
                                      stage=stage, progress=max(0.0, min(1.0, fraction)),
                                      message=message)
        if cancel:
            raise Cancelled(f"job {self.job_id} was cancelled")


def run_job(job_id: str, *, settings: Settings, store: JobStore, artifacts: ArtifactStore,
            worker: str, final_attempt: bool = True) -> Outcome:
    """Process one delivery of `job_id`."""
    claim = store.claim(job_id, worker, settings.lease_s)
    log.info("job %s: claim by %s -> %s", job_id, worker, claim)
    if claim in ("finished", "missing", "cancelled"):
        log.info("job %s: %s, nothing to do", job_id, claim)
        return Outcome("skipped")
    if claim == "busy":
        raise Busy(job_id)
    job = store.get(job_id)
    assert job is not None
    writer = ProgressWriter(store, job_id, worker, settings)
    try:
        spec = AuditSpec.model_validate_json(job.spec)
        from ppr_engine.audit import run

        outcome = run(spec, artifacts.path(job.checkpoint_key), kind=job.kind,
                      progress=writer, resolve_dataset=_dataset_resolver(store, job.principal,
                                                                         artifacts),
                      roots=settings.data_roots or [],
                      max_checkpoint_bytes=settings.max_upload_bytes,
                      checkpoint_name=job.checkpoint_name)
        saved = _save_outputs(job_id, job.kind, spec, outcome, artifacts)
    except Cancelled:
        store.finish(job_id, worker, "cancelled")
        return Outcome("cancelled")
    except InputError as exc:
        store.finish(job_id, worker, "failed", error=str(exc), error_kind="input")
        return Outcome("failed")
    except Exception as exc:  # noqa: BLE001 - any other failure is the system's
        msg = f"system error: {type(exc).__name__}: {exc}"[:2000]
        log.exception("job %s failed", job_id)
        artifacts.delete_prefix(f"jobs/{job_id}/out")  # no output of a failed attempt stays
        if final_attempt:
            store.finish(job_id, worker, "failed", error=msg, error_kind="system")
            return Outcome("failed")
        store.requeue(job_id, worker, msg)
        raise Retry(msg) from exc
    log.info("job %s: outputs saved, marking succeeded", job_id)
    if not store.finish(job_id, worker, "succeeded", artifacts=saved):
        log.warning("job %s: lost the lease before finishing; another worker owns it", job_id)
        return Outcome("skipped")
    return Outcome("succeeded")


def _dataset_resolver(store: JobStore, principal: str, artifacts: ArtifactStore):
    from ppr_engine.errors import DatasetError

    def resolve(dataset_id: str) -> Path:
        ds = store.get_dataset(dataset_id, principal)
        if ds is None:
            raise DatasetError(f"dataset:{dataset_id}: no such dataset")
        return artifacts.path(ds.key)

    return resolve


def _save_outputs(job_id: str, kind: str, spec: AuditSpec, outcome, artifacts: ArtifactStore
                  ) -> dict[str, str]:
    """Write reports (and the purified checkpoint) atomically; return name -> key."""
    from ppr_engine.checkpoint import save_model
    from ppr_engine.report import render

    saved: dict[str, str] = {}
    prefix = f"jobs/{job_id}/out"
    if kind == "purify" and spec.plan.methods:
        key = spec.plan.methods[0].key
        model = outcome.models.get(key)
        if model is None:
            stages = [s for m in outcome.report.methods for s in m.stages if s.status == "failed"]
            raise InputError(f"{key} failed: " + "; ".join(f"{s.name}: {s.error}"
                                                           for s in stages))
        path = artifacts.path(f"{prefix}/purified.safetensors")
        save_model(model, path, method=key,
                   source_sha256=outcome.report.provenance.checkpoint_sha256)
        saved["purified.safetensors"] = f"{prefix}/purified.safetensors"
    for fmt in ("json", "md", "html"):
        body, _ = render(outcome.report, fmt)
        artifacts.write_bytes(f"{prefix}/report.{fmt}", body.encode("utf-8"))
        saved[f"report.{fmt}"] = f"{prefix}/report.{fmt}"
    return saved
