"""Accepting a job: stream the checkpoint in, validate everything, store, then enqueue.

Order matters (DESIGN.md, the path of one audit): the checkpoint streams to a temporary
file while hashed and size-checked; the spec is validated against the registries; data
references are checked (uploaded datasets must be the caller's, server paths must lie under
the data roots); the checkpoint is loaded safely against the architecture; only then is the
file renamed into place, the job row inserted, and the job id queued. Any refusal removes
what was written.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from ppr_engine.checkpoint import SUFFIXES, load_model
from ppr_engine.data.refs import confine, parse_ref
from ppr_engine.errors import CheckpointError, DatasetError, SpecError
from ppr_engine.spec import AuditSpec, MethodSpec, validate_spec

from .errors import ApiError
from .queue import Enqueuer
from .settings import Settings
from .store.artifacts import ArtifactStore
from .store.db import JobStore, new_id
from .uploads import read_form

SPEC_FIELD = "spec"
FILE_FIELD = "checkpoint"


def check_data_refs(spec: AuditSpec, principal: str, store: JobStore,
                    settings: Settings) -> None:
    """Refuse references the caller may not read."""
    refs = [spec.data.clean, spec.data.test] + ([spec.data.attacker] if spec.data.attacker
                                                else [])
    for text in refs:
        ref = parse_ref(text)
        if ref.kind == "synthetic":
            continue
        if ref.kind == "dataset":
            if store.get_dataset(ref.location, principal) is None:
                raise DatasetError(f"{text}: no such dataset")
            continue
        if not settings.data_roots:
            raise DatasetError(f"{text}: server paths are disabled (no data roots are "
                               "configured); upload the data and use dataset:<id>")
        confine(ref, settings.data_roots)
    if spec.reference:
        raise SpecError("reference: server-side reference checkpoints are not accepted over "
                        "HTTP; omit it (the EP model is the baseline)")


def parse_spec(raw: str | None, method: str | None) -> AuditSpec:
    """The spec field as an AuditSpec (reduced to `method` for a purification)."""
    if not raw:
        raise SpecError(f"missing form field {SPEC_FIELD!r} (the audit spec as JSON)")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec is not valid JSON: {exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}") from None
    if not isinstance(data, dict):
        raise SpecError("spec must be a JSON object")
    if method is None:
        return validate_spec(data)
    given = [m for m in (data.get("plan") or {}).get("methods", []) if isinstance(m, dict)
             and m.get("name") == method]
    plan = dict(data.get("plan") or {})
    plan["methods"] = [given[0] if given else {"name": method}]
    spec = validate_spec({**data, "plan": plan})
    return spec.for_purify(MethodSpec.model_validate(spec.plan.methods[0].model_dump()))


async def accept(request: Request, *, kind: str, method: str | None, principal: str,
                 settings: Settings, store: JobStore, artifacts: ArtifactStore,
                 queue: Enqueuer) -> str:
    """Run the whole acceptance path; returns the new job id."""
    form = await read_form(request, artifacts, FILE_FIELD, settings.max_upload_bytes)
    upload = form.upload
    job_id = new_id()
    prefix = f"jobs/{job_id}"
    try:
        if upload is None or upload.size == 0:
            raise ApiError(422, f"missing or empty file field {FILE_FIELD!r}")
        spec = parse_spec(form.fields.get(SPEC_FIELD), method)
        check_data_refs(spec, principal, store, settings)
        try:
            await run_in_threadpool(load_model, upload.path, spec.model.arch,
                                    spec.model.num_classes, max_bytes=settings.max_upload_bytes)
        except CheckpointError as exc:  # name the caller's file, not our temporary one
            raise CheckpointError(str(exc).replace(upload.path.name, form.filename or
                                                   FILE_FIELD)) from None
        suffix = Path(form.filename).suffix.lower()
        key = f"{prefix}/checkpoint{suffix if suffix in SUFFIXES else '.bin'}"
        upload.commit(key)
        store.create_job(job_id=job_id, principal=principal, kind=kind,
                         spec=spec.model_dump(mode="json"),
                         checkpoint_name=Path(form.filename).name[:255] or "checkpoint",
                         checkpoint_sha256=upload.sha256, checkpoint_key=key)
    except BaseException:
        if upload is not None:
            upload.abort()
        artifacts.delete_prefix(prefix)
        raise
    queue.enqueue(job_id)
    return job_id
