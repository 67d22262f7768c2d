"""Accepting a job: stream the checkpoint in, validate everything, store, then enqueue.

Order matters (DESIGN.md, the path of one audit): the checkpoint streams to a temporary
file while hashed and size-checked; the spec is validated against the registries; data
references are checked (uploaded datasets must be the caller's, server paths must lie under
the data roots); the checkpoint is loaded safely against the architecture; only then is the
file renamed into place, the job row inserted, and the job id queued. Any refusal removes
what was written.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from ppr_engine.checkpoint import SUFFIXES, load_model
from ppr_engine.data.refs import confine, parse_ref
from ppr_engine.errors import DatasetError, SpecError
from ppr_engine.spec import AuditSpec, spec_for

from .dispatch import dispatch
from .errors import ApiError, Unavailable
from .limits import RateLimited, check_budgets, known_sizes
from .queue import Enqueuer
from .settings import Settings
from .store.artifacts import ArtifactStore
from .store.db import JobStore, KeyTaken, new_id
from .uploads import read_form

SPEC_FIELD = "spec"
FILE_FIELD = "checkpoint"


def check_data_refs(spec: AuditSpec, principal: str, store: JobStore,
                    settings: Settings) -> None:
    """Refuse references the caller may not read."""
    refs = [spec.data.clean, spec.data.test] + ([spec.data.attacker] if spec.data.attacker
                                                else [])
    refs += [ref for t in spec.triggers for ref in t.build().data_refs()]
    for text in refs:
        ref = parse_ref(text)
        if ref.kind == "synthetic":
            continue
        if ref.kind == "dataset":
            if store.datasets.get(ref.location, principal) is None:
                raise DatasetError(f"{text}: no such dataset")
            continue
        if not settings.data_roots:
            raise DatasetError(f"{text}: server paths are disabled (no data roots are "
                               "configured); upload the data and use dataset:<id>")
        confine(ref, settings.data_roots)
    if spec.reference:
        raise SpecError("reference: server-side reference checkpoints are not accepted over "
                        "HTTP; omit it (the EP model is the baseline)")


def check_device(spec: AuditSpec, store: JobStore) -> None:
    """Refuse a CUDA device that no live worker has (`cuda:N` with N at or past the most
    GPUs one worker sees); with no live worker the job waits for one, as any job does."""
    if not spec.device or not spec.device.startswith("cuda"):
        return
    fleet = store.workers.devices()
    if not fleet:
        return
    gpus = max((int(d.partition(":")[2] or 1) for d in fleet if d.startswith("cuda")),
               default=0)
    index = int(spec.device.partition(":")[2] or 0)
    if index >= gpus:
        have = "no worker has a GPU" if gpus == 0 else f"workers see at most {gpus} GPU(s)"
        raise SpecError(f"device {spec.device} cannot run here: {have}; use auto, cpu"
                        + (f" or cuda:0 to cuda:{gpus - 1}" if gpus else ""))


def plan_rows(spec: AuditSpec, sizes=None) -> list[dict]:
    """The job's stages as rows: id, kind, needs, what it waits for, estimated cost (with
    the data's `sizes` where known, else nominal CIFAR-scale ones)."""
    from ppr_engine.audit.plan import NOMINAL, plan_for

    return [{"id": str(s.id), "kind": s.kind, "needs": [str(n) for n in s.needs],
             "waits": [str(w) for w in s.waits_for()],
             "cost": s.cost} for s in plan_for(spec, sizes or NOMINAL)]


def check_active_work(rows: list[dict], principal: str, store: JobStore,
                      settings: Settings) -> None:
    """429 when this job's estimated work on top of the principal's queued and running
    jobs' would pass `max_active_work`: one principal cannot hold the fleet for days with
    many jobs each under the per-job cap."""
    work = sum(r["cost"] for r in rows)
    active = store.jobs.active_work(principal)
    if active + work > settings.max_active_work:
        raise RateLimited(f"this job's estimated work ({work:.3g} image passes) on top of your "
                          f"queued and running jobs' ({active:.3g}) passes the limit of "
                          f"{settings.max_active_work:.3g} (PPR_MAX_ACTIVE_WORK); wait for "
                          "one to finish", 60)


def data_size(text: str, principal: str, store: JobStore) -> int | None:
    """A data reference's image count where the gateway knows it without reading images:
    synthetic sets and subsets by `n`, uploads by their file count; None otherwise."""
    ref = parse_ref(text)
    n = ref.options.get("n")
    if ref.kind == "synthetic":
        return int(n or 6000)
    if ref.kind == "dataset" and (ds := store.datasets.get(ref.location, principal)) is not None:
        files = int(ds.files)
        frac = ref.options.get("fraction")
        return min(files, int(n)) if n else round(files * float(frac)) if frac else files
    return int(n) if n else None


def decode_json(raw: str) -> object:
    """The spec text as JSON, or a SpecError that says why not: malformed, nested too deep
    (Python's parser recurses), or holding a number too long to read."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec is not valid JSON: {exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}") from None
    except RecursionError:
        raise SpecError("spec is nested too deeply to be a spec") from None
    except ValueError as exc:  # an integer of thousands of digits; the interpreter's own
        # message gives advice meant for the server's developer, so it is not passed on
        what = ("a number with more than 4300 digits" if "digits" in str(exc)
                else "a value that cannot be read")
        raise SpecError(f"spec holds {what}") from None


def parse_spec(raw: str | None, method: str | None, until: str | None = None) -> AuditSpec:
    """The spec field as an AuditSpec (reduced to `method` for a purification; with
    `until`, run until the verdict is that)."""
    if not raw:
        raise SpecError(f"missing form field {SPEC_FIELD!r} (the audit spec as JSON)")
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise SpecError("spec must be a JSON object")
    if until is not None:
        plan = data.get("plan") if isinstance(data.get("plan"), dict) else {}
        data = {**data, "plan": {**plan, "until": until}}
    return spec_for(data, method)


IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class Accepted:
    """The job a submission led to; `replayed` when an Idempotency-Key named an earlier one."""

    job_id: str
    state: str
    replayed: bool = False


def check_key(key: str | None) -> str | None:
    """The Idempotency-Key header, validated (printable ASCII, 1-255 characters)."""
    if key is None:
        return None
    if not _KEY.match(key):
        raise ApiError(422, f"header {IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII "
                       "characters without spaces")
    return key


def fingerprint(kind: str, method: str | None, checkpoint_sha256: str,
                raw_spec: str | None) -> str:
    """What makes two submissions the same request: kind, method, checkpoint, spec (as
    canonical JSON when it parses, else as sent)."""
    try:
        spec = json.dumps(json.loads(raw_spec or ""), sort_keys=True, separators=(",", ":"))
    except (ValueError, RecursionError):  # malformed: the parse that follows says why
        spec = raw_spec or ""
    text = "\n".join([kind, method or "", checkpoint_sha256, spec])
    return hashlib.sha256(text.encode()).hexdigest()


def _replay(store: JobStore, principal: str, key: str, request_sha256: str) -> Accepted:
    """The earlier job of `key`, if it came from the same request; 422 otherwise."""
    job = store.jobs.by_idempotency_key(principal, key)
    if job is None:  # pragma: no cover - only after a concurrent delete, which has no API
        raise ApiError(409, f"{IDEMPOTENCY_HEADER} {key!r} is being used; retry")
    if job.request_sha256 != request_sha256:
        raise ApiError(422, f"{IDEMPOTENCY_HEADER} {key!r} was already used for a different "
                       f"request (job {job.id}); use a new key for a new checkpoint or spec",
                       "idempotency_key_reused")
    return Accepted(job.id, job.state, replayed=True)


async def accept(request: Request, *, kind: str, method: str | None, principal: str,
                 settings: Settings, store: JobStore, artifacts: ArtifactStore,
                 queue: Enqueuer, key: str | None = None, until: str | None = None
                 ) -> Accepted:
    """Run the whole acceptance path; returns the new job (or, for a repeated
    Idempotency-Key with the same request, the job the first submission created)."""
    key = check_key(key)
    request.app.state.submit_limiter.take(principal)
    try:  # refuse before the upload, not after it, when jobs cannot be queued
        await run_in_threadpool(queue.ping)
    except Exception as exc:  # noqa: BLE001 - any broker failure means the same to the caller
        raise Unavailable("the job queue (broker)", exc, "nothing was stored; retry later") \
            from None
    form = await read_form(request, artifacts, FILE_FIELD, settings.max_upload_bytes,
                           (SPEC_FIELD,), {SPEC_FIELD: settings.spec_limits.max_spec_bytes})
    upload = form.upload
    job_id = new_id()
    prefix = f"jobs/{job_id}"
    request_sha256 = None
    try:
        if upload is None or upload.size == 0:
            raise ApiError(422, f"missing or empty file field {FILE_FIELD!r}")
        if key is not None:
            request_sha256 = fingerprint(kind, method if until is None else
                                         f"{method}?until={until}", upload.sha256,
                                         form.fields.get(SPEC_FIELD))
            if store.jobs.by_idempotency_key(principal, key) is not None:
                upload.abort()
                return _replay(store, principal, key, request_sha256)
        raw_spec = form.fields.get(SPEC_FIELD)
        limits = settings.spec_limits
        if raw_spec and len(raw_spec.encode()) > limits.max_spec_bytes:
            raise ApiError(422, f"spec is {len(raw_spec.encode())} bytes, the limit is "
                           f"{limits.max_spec_bytes}", "budget_exceeded")
        spec = parse_spec(raw_spec, method, until)
        check_device(spec, store)
        size_of = lambda ref: data_size(ref, principal, store)  # noqa: E731
        check_budgets(spec, limits, size_of)
        active = store.jobs.active(principal)
        if active >= settings.max_active_jobs:
            raise RateLimited(f"{active} of your jobs are queued or running (the limit is "
                              f"{settings.max_active_jobs}); wait for one to finish", 30)
        check_data_refs(spec, principal, store, settings)
        # an impossible plan is refused here, naming the stage
        stages = plan_rows(spec, known_sizes(spec, size_of))
        check_active_work(stages, principal, store, settings)
        await run_in_threadpool(load_model, upload.path, spec.model.arch,
                                spec.model.num_classes, max_bytes=settings.max_upload_bytes,
                                name=form.filename or FILE_FIELD, width=spec.model.width)
        suffix = Path(form.filename).suffix.lower()
        ckpt_key = f"{prefix}/checkpoint{suffix if suffix in SUFFIXES else '.bin'}"
        upload.commit(ckpt_key)
        try:
            store.jobs.create(job_id=job_id, principal=principal, kind=kind,
                             spec=spec.model_dump(mode="json"),
                             checkpoint_name=Path(form.filename).name[:255] or "checkpoint",
                             checkpoint_sha256=upload.sha256, checkpoint_key=ckpt_key,
                             idempotency_key=key, request_sha256=request_sha256,
                             stages=stages)
        except KeyTaken:  # a concurrent submission with the same key won the race
            artifacts.delete_prefix(prefix)
            return _replay(store, principal, key, request_sha256)
    except BaseException:
        if upload is not None:
            upload.abort()
        artifacts.delete_prefix(prefix)
        raise
    await run_in_threadpool(dispatch, store, queue, job_id)  # on failure: the dispatcher
    return Accepted(job_id, "queued")
