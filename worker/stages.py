"""The distributed executor: one audit's stages as Celery tasks on any number of workers.

The job store schedules. A job's stage rows are written with the job (its plan); the job's
task only claims the job and sends the stages that need nothing. Each stage task claims its
stage (leased like a job), runs it in a supervised child (the same stage functions as the
in-process executor), stores its result once (values as JSON in the row; models as
safetensors in the artifact store, with their hashes), then sends every stage whose waits
are now all finished: after the shared stages (invert, evaluate, baseline) the per-method
chains (purify -> RA budgets -> QRA -> LMC) run side by side on whichever workers are free,
and `report` runs last, assembling the report from the rows. Sending is claimed in the
database (one sender wins each stage), and the gateways' dispatcher sends again what was
never sent or whose worker died (an expired lease), so a SIGKILLed worker costs its stage
only. A redelivered task for a finished stage does nothing.

Inputs (the checkpoint, the data) are loaded by each stage's child, deterministically, so
every stage sees what the in-process executor's stages see.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

import torch
from torch import nn

from service.queue import Enqueuer
from service.settings import Settings
from service.store.artifacts import ArtifactStore, open_artifacts
from service.store.db import JobStore

from .retry import Busy, Retry
from .supervise import Finished, supervise

log = logging.getLogger("ppr.worker")



def dispatch_ready(job_id: str, store: JobStore, queue: Enqueuer) -> list[str]:
    """Send every stage of `job_id` that can start now (each once)."""
    sent = store.stages.ready(job_id)
    for i, stage_id in enumerate(sent):
        try:
            queue.enqueue_stage(job_id, stage_id)
        except Exception:  # the broker went away: the dispatcher sends these later
            for unsent in sent[i:]:
                store.stages.undispatch(job_id, unsent)
            raise
    return sent


class StoredResults:
    """Finished stages' results as the job store and the artifact store keep them."""

    def __init__(self, store: JobStore, artifacts: ArtifactStore, job_id: str, spec,
                 device: torch.device) -> None:
        self.rows = {r.stage_id: r for r in store.stages.of_job(job_id)}
        self.artifacts, self.spec, self.device = artifacts, spec, device
        self._models: dict[tuple[str, str], nn.Module] = {}

    def ok(self, stage_id: str) -> bool:
        row = self.rows.get(stage_id)
        return row is not None and row.state == "ok"

    def values(self, stage_id: str) -> dict[str, Any]:
        return json.loads(self.rows[stage_id].result or "{}")["values"]

    def model(self, stage_id: str, name: str = "model") -> nn.Module:
        from ppr_engine.audit import codec

        key = (stage_id, name)
        if key not in self._models:
            record = json.loads(self.rows[stage_id].result)["models"][name]
            self._models[key] = codec.read(record, self.artifacts.fetch(record["key"]),
                                           self.spec, self.device)
        return self._models[key]

    def records(self):
        """Every finished stage's record (StageStatus)."""
        from ppr_engine.report import StageStatus

        state = {"ok": "ok", "failed": "failed", "skipped": "skipped"}
        return {sid: StageStatus(name=sid, status=state[r.state], error=r.error,
                                 seconds=r.seconds or 0.0)
                for sid, r in self.rows.items() if r.state in state}


def cached_inputs(job, settings: Settings, store: JobStore, artifacts: ArtifactStore):
    """The job's spec and inputs, loaded as the in-process executor loads them, each data
    reference decoded once per job (`decoded.StoredDecodes`)."""
    from ppr_engine.audit import load_inputs
    from ppr_engine.spec import AuditSpec

    from .child import dataset_resolver
    from .decoded import StoredDecodes

    spec = AuditSpec.model_validate_json(job.spec)
    return spec, load_inputs(spec, artifacts.fetch(job.checkpoint_key),
                             resolve_dataset=dataset_resolver(store, job.principal, artifacts),
                             roots=settings.data_roots or [],
                             max_checkpoint_bytes=settings.max_upload_bytes,
                             load_data=StoredDecodes(artifacts, job.id))


def run_stage_child(job_id: str, stage_id: str, worker: str, settings_json: str, conn,
                    started: float) -> None:
    """A stage's child process: run it, store its models, send its outcome."""
    from .child import enter_child

    settings = enter_child(settings_json, conn)
    store, artifacts = JobStore(settings.db_url), open_artifacts(settings)
    try:
        outcome = execute_stage(job_id, stage_id, worker, settings, store, artifacts)
    finally:
        artifacts.release()  # nothing of the job stays on this machine's disk
    conn.send(outcome)
    conn.close()


def execute_stage(job_id: str, stage_id: str, worker: str, settings: Settings,
                  store: JobStore, artifacts: ArtifactStore) -> dict[str, Any]:
    """Run one stage (the fields of `supervise.Finished`)."""
    from ppr_engine.audit import check_work, plan_for, sizes_of
    from ppr_engine.audit.execute import run_recorded
    from ppr_engine.errors import Cancelled, InputError, TimeLimitExceeded

    job = store.jobs.get(job_id)
    try:
        spec, inputs = cached_inputs(job, settings, store, artifacts)
        if stage_id == "evaluate":
            check_work(spec, inputs, settings.spec_limits.max_work)
        plan = plan_for(spec, sizes_of(inputs))
        stage = plan.get(stage_id)
        results = StoredResults(store, artifacts, job_id, spec, inputs.device)
        if stage.kind == "report":
            t0 = time.perf_counter()
            saved = _report(job, spec, inputs, plan, results, artifacts)
            return {"status": "ok", "artifacts": saved,
                    "seconds": round(time.perf_counter() - t0, 3)}
        progress = _stage_progress(store, job_id, stage_id, settings)
        status, out = run_recorded(stage, inputs, results, progress, plan.ids,
                                   results.records())
    except TimeLimitExceeded as exc:
        return {"status": "failed", "error": str(exc), "error_kind": "time_limit"}
    except Cancelled:
        return {"status": "cancelled"}
    except InputError as exc:
        return {"status": "failed", "error": str(exc), "error_kind": "input"}
    except Exception as exc:  # noqa: BLE001 - the system's
        log.exception("job %s stage %s failed", job_id, stage_id)
        return {"status": "failed", "error": f"system error: {type(exc).__name__}: {exc}"[
            :2000], "error_kind": "system"}
    result = None
    if out is not None:
        result = _store_result(job_id, stage_id, out, artifacts)
    return {"status": status.status, "error": status.error, "result": result,
            "seconds": status.seconds, "error_kind": "stage"}


def _store_result(job_id: str, stage_id: str, out, artifacts: ArtifactStore) -> str:
    """The stage's values and its models' records (written to the artifact store)."""
    from ppr_engine.audit import codec

    models = {}
    for name, module in out.models.items():
        key = f"jobs/{job_id}/stages/{stage_id.replace('/', '_')}/{name}.safetensors"
        with artifacts.writing(key) as path:
            models[name] = {**codec.write(module, path), "key": key}
    return codec.dumps({"values": out.values, "models": models})


def _stage_progress(store: JobStore, job_id: str, stage_id: str, settings: Settings):
    """A stage's progress callback: its share written to its row (throttled)."""
    last = [0.0]

    def progress(message: str, fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] >= settings.progress_interval_s:
            last[0] = now
            store.stages.record(job_id, stage_id, progress=max(0.0, min(1.0, fraction)))

    return progress


def _report(job, spec, inputs, plan, results: StoredResults, artifacts: ArtifactStore
            ) -> dict[str, str]:
    """The `report` stage: assemble the report from the rows, write every output."""
    from ppr_engine.audit import (
        finish_report,
        purified_models,
        start_report,
        trigger_provenance,
    )
    from ppr_engine.audit.assemble import assemble
    from ppr_engine.audit.kinds import restore_triggers
    from ppr_engine.report import StageStatus

    from .child import save_outputs

    started = job.started_at.isoformat(timespec="seconds") + "+00:00" if job.started_at else ""
    report = start_report(spec, inputs, job.kind, artifacts.fetch(job.checkpoint_key),
                          job.checkpoint_name, started)
    restore_triggers(inputs, results, plan.ids)
    trigger_provenance(report, inputs)
    records = results.records()
    records["report"] = StageStatus(name="report")
    assemble(spec, plan, results, records, report)
    finish_report(report, job.started_at.replace(tzinfo=dt.UTC).timestamp()
                  if job.started_at else time.time())
    return save_outputs(job.id, job.kind, spec, report, purified_models(spec, results, inputs),
                        artifacts)


def run_stage_task(job_id: str, stage_id: str, *, settings: Settings, store: JobStore,
                   artifacts: ArtifactStore, queue: Enqueuer, worker: str,
                   final_attempt: bool, should_stop) -> str:
    """One delivery of a stage task (see the module)."""
    job = store.jobs.get(job_id)
    if job is None or job.state != "running":  # final, or released back to the queue
        return "skipped"
    claim = store.stages.claim(job_id, stage_id, worker, settings.lease_s)
    log.info("job %s: stage %s: claim by %s -> %s", job_id, stage_id, worker, claim)
    if claim in ("finished", "missing", "stale"):  # a stale message is dropped, never run
        return "skipped"
    if claim == "busy":
        raise Busy(stage_id)
    started = time.monotonic() - _elapsed(job)
    done = supervise(run_stage_child, (job_id, stage_id, worker, settings.model_dump_json()),
                     renew=lambda: store.stages.renew(job_id, stage_id, worker, settings.lease_s),
                     should_stop=should_stop, time_limit_s=settings.job_time_limit_s,
                     started=started)
    return _record(job_id, stage_id, worker, done, store, queue, final_attempt)


def _elapsed(job) -> float:
    """Seconds since the job started (its time limit counts from there)."""
    from service.store.db import now

    return max(0.0, (now() - job.started_at).total_seconds()) if job.started_at else 0.0


def _record(job_id: str, stage_id: str, worker: str, done: Finished, store: JobStore,
            queue: Enqueuer, final_attempt: bool) -> str:
    """Store what the stage's child reported, then send what can run next."""
    if done.status == "released":
        store.stages.requeue(job_id, stage_id, worker, done.error or "released")
        return "released"
    if done.status == "cancelled":
        store.stages.finish(job_id, stage_id, worker, "cancelled")
        store.jobs.finish_staged(job_id, "cancelled")
        return "cancelled"
    if done.error_kind in ("input", "time_limit"):  # the job's fault: it ends here
        store.stages.finish(job_id, stage_id, worker, "failed", error=done.error)
        store.jobs.finish_staged(job_id, "failed", error=done.error, error_kind=done.error_kind)
        return "failed"
    if done.error_kind == "system" or done.status == "crashed":
        if not final_attempt:
            store.stages.requeue(job_id, stage_id, worker, done.error or "system error")
            raise Retry(done.error)
        store.stages.finish(job_id, stage_id, worker, "failed", error=done.error)
    elif stage_id == "report":
        if store.stages.finish(job_id, stage_id, worker, "ok", seconds=done.seconds):
            store.jobs.finish_staged(job_id, "succeeded", artifacts=done.artifacts)
        return "succeeded"
    else:
        store.stages.finish(job_id, stage_id, worker, done.status, error=done.error,
                           result=done.result, seconds=done.seconds)
    store.jobs.update_staged_progress(job_id)
    dispatch_ready(job_id, store, queue)
    return done.status


__all__ = ["dispatch_ready", "run_stage_task"]
