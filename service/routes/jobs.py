"""Jobs: submit an audit or a purification, follow it, fetch its report and artifacts,
cancel it, list them."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse

from ppr_engine.defenses import DEFENSES
from ppr_engine.report import MEDIA_TYPES
from ppr_engine.spec import AuditSpec

from ..deps import ArtifactsDep, Principal, QueueDep, SettingsDep, StoreDep
from ..errors import ApiError
from ..schemas import ErrorBody, JobAccepted, JobPage, JobView, StageView
from ..store.db import FINAL
from ..submit import IDEMPOTENCY_HEADER, Accepted, accept

router = APIRouter(tags=["jobs"])

EXAMPLE_SPEC = {
    "model": {"arch": "small_cnn", "num_classes": 10},
    "data": {"clean": "synthetic:?n=1000&seed=2", "test": "synthetic:?n=1000&seed=1",
             "attacker": "synthetic:?n=2000&seed=3"},
    "triggers": [{"attack": "badnets", "target": 0}],
    "plan": {"methods": [{"name": "ft"}, {"name": "fst", "alpha": 0.1}, {"name": "ep"},
                         {"name": "pam", "rho": 0.5}],
             "retune": {"poison_num": 5, "clean_num": 995, "epochs": 5},
             "qra": {"enabled": True}, "lmc": {"points": 11}},
    "seed": 0,
    "gate": ["pam.p_asr <= 0.2", "all.o_cacc >= 0.80"],
}
MULTIPART = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["checkpoint", "spec"], "properties": {
        "checkpoint": {"type": "string", "format": "binary",
                       "description": ".safetensors (preferred) or .pt/.pth/.bin, loaded "
                                      "weights-only"},
        "spec": {"$ref": "#/components/schemas/AuditSpec"}}},
    "encoding": {"spec": {"contentType": "application/json"}}}}}}
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422,
                                                  429, 503)}


KeyHeader = Annotated[str | None, Header(
    alias=IDEMPOTENCY_HEADER, description="makes retries safe: a repeated key (same "
    "principal, same checkpoint and spec) answers with the job the first submission created, "
    "and the header Idempotent-Replayed: true; the same key with a different request is 422")]


def _accepted(done: Accepted, response: Response) -> JobAccepted:
    if done.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    url = f"/v1/jobs/{done.job_id}"
    response.headers["Location"] = url
    return JobAccepted(id=done.job_id, state=done.state, url=url)


@router.post("/audits", status_code=202, response_model=JobAccepted, operation_id="submit_audit",
             openapi_extra=MULTIPART, responses=ERRORS)
async def submit_audit(request: Request, response: Response, principal: Principal,
                       settings: SettingsDep, store: StoreDep, artifacts: ArtifactsDep,
                       queue: QueueDep, idempotency_key: KeyHeader = None) -> JobAccepted:
    """Submit an audit: the checkpoint and the spec (multipart). Answers 202 with the job."""
    return _accepted(await accept(request, kind="audit", method=None, principal=principal,
                                  settings=settings, store=store, artifacts=artifacts,
                                  queue=queue, key=idempotency_key), response)


@router.post("/purify", status_code=202, response_model=JobAccepted,
             operation_id="submit_purify", openapi_extra=MULTIPART, responses=ERRORS)
async def submit_purify(request: Request, response: Response, principal: Principal,
                        settings: SettingsDep, store: StoreDep, artifacts: ArtifactsDep,
                        queue: QueueDep,
                        method: str = Query(..., description="purification method, e.g. pam",
                                            examples=["pam"]),
                        until: Literal["robust"] | None = Query(
                            None, description="robust: audit the result with RA and its "
                            "sweep, and escalate the method's setting (rounds, then rho, then "
                            "the reversed-sample share; at most plan.max_attempts tries) until "
                            "the verdict is robust; the report lists every attempt"),
                        idempotency_key: KeyHeader = None) -> JobAccepted:
    """Submit a purification with one method; the result is a purified checkpoint (artifact
    `purified.safetensors`) and a report with before/after metrics and, unless the spec
    turns them off, RA, QRA and LMC. With `until=robust`, the first attempt judged robust
    (or the best one, with the reason)."""
    DEFENSES.get(method)  # unknown method: 422 naming the known ones
    return _accepted(await accept(request, kind="purify", method=method, principal=principal,
                                  settings=settings, store=store, artifacts=artifacts,
                                  queue=queue, key=idempotency_key, until=until), response)


def _job(store, job_id: str, principal: str):
    job = store.jobs.get(job_id, principal)
    if job is None:
        raise ApiError(404, f"no job {job_id}", "not_found")
    return job


@router.get("/jobs", response_model=JobPage, operation_id="list_jobs", responses=ERRORS)
def list_jobs(principal: Principal, store: StoreDep,
              state: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None
              = None, kind: Literal["audit", "purify"] | None = None,
              limit: int = Query(50, ge=1, le=500),
              offset: int = Query(0, ge=0, le=2**31 - 1)) -> JobPage:
    """The caller's jobs, newest first, filtered by state and kind."""
    rows, total = store.jobs.list(principal, state=state, kind=kind, limit=limit, offset=offset)
    return JobPage(items=[JobView.of(j) for j in rows], total=total, limit=limit, offset=offset)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@router.get("/jobs/{job_id}", response_model=JobView, operation_id="get_job", responses={
    304: {"description": "not modified since the ETag given in If-None-Match"}, **ERRORS})
async def get_job(job_id: str, principal: Principal, store: StoreDep,
            if_none_match: Annotated[str | None, Header(
                description="an ETag of an earlier answer: 304 while the job is unchanged")]
            = None) -> Response:
    """A job's state, stage, progress, attempts, timings and links. Answers carry an ETag;
    a poll with If-None-Match gets an empty 304 until something changed. Rather than poll,
    follow GET /v1/jobs/{id}/events."""
    # SQLite answers a keyed lookup in about 0.2 ms: on the event loop that costs less than
    # a hop to the thread pool. A networked database is read from the pool.
    row = (store.jobs.status(job_id, principal) if store.local
           else await run_in_threadpool(store.jobs.status, job_id, principal))
    if row is None:
        raise ApiError(404, f"no job {job_id}", "not_found")
    body = JobView.of(row).model_dump_json().encode()
    etag = _etag(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.get("/jobs/{job_id}/stages", response_model=list[StageView], operation_id="job_stages",
            responses=ERRORS)
def job_stages(job_id: str, principal: Principal, store: StoreDep) -> list[StageView]:
    """The job's stages in plan order, from before it starts to after it ends: id, state,
    when it started, how long it took, why it failed or was skipped."""
    _job(store, job_id, principal)
    return [StageView.of(st) for st in store.stages.of_job(job_id)]


@router.get("/jobs/{job_id}/events", operation_id="job_events", response_class=StreamingResponse,
            responses={
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
          "description": "server-sent events: one "
          "`job` event (a JobView as JSON) per change of the job and one `stage` event (a "
          "StageView) per change of a stage's state, until the job is final"}, **ERRORS})
async def job_events(job_id: str, request: Request, principal: Principal, store: StoreDep,
                     settings: SettingsDep) -> StreamingResponse:
    """Follow a job without polling: a `stage` event for each stage's state now and after
    every change, then a `job` event with the job's status now and after every change (state,
    stage, progress), the last one when the job is final; a comment line every few seconds
    keeps the connection open through proxies."""
    await run_in_threadpool(_job, store, job_id, principal)  # 404 before the stream starts

    async def stream():
        last, quiet, seen = None, 0.0, {}
        while not await request.is_disconnected():
            job = await run_in_threadpool(store.jobs.get, job_id, principal)
            if job is None:
                return
            for st in await run_in_threadpool(store.stages.of_job, job_id):
                if seen.get(st.stage_id) != st.state:
                    seen[st.stage_id] = st.state
                    quiet = 0.0
                    yield f"event: stage\ndata: {StageView.of(st).model_dump_json()}\n\n"
            body = JobView.of(job).model_dump_json()
            if body != last:
                last, quiet = body, 0.0
                yield f"event: job\ndata: {body}\n\n"
                if job.state in FINAL:
                    return
            elif quiet >= settings.events_keepalive_s:
                quiet = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(settings.events_interval_s)
            quiet += settings.events_interval_s

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.delete("/jobs/{job_id}", response_model=JobView, operation_id="cancel_job",
               responses=ERRORS)
def cancel_job(job_id: str, principal: Principal, store: StoreDep) -> JobView:
    """Cancel a job: a queued job at once, a running one between two steps."""
    job = store.jobs.request_cancel(job_id, principal)
    if job is None:
        raise ApiError(404, f"no job {job_id}", "not_found")
    return JobView.of(job)


@router.get("/jobs/{job_id}/report", operation_id="get_report", response_class=Response,
            responses={200: {"description": "the report (format=json: an AuditReport)",
                             "content": {
                                 "application/json": {"schema": {
                                     "$ref": "#/components/schemas/AuditReport"}},
                                 "text/markdown": {"schema": {"type": "string"}},
                                 "text/html": {"schema": {"type": "string"}}}}, **ERRORS})
def get_report(job_id: str, principal: Principal, store: StoreDep, artifacts: ArtifactsDep,
               format: Literal["json", "md", "html"] = "json") -> Response:
    """The report of a finished job as JSON, Markdown or self-contained HTML. (Generated
    clients read one media type per operation: they use this one for JSON and
    `get_report_html` / `get_report_markdown` for the others.)"""
    return _report(job_id, principal, store, artifacts, format)


@router.get("/jobs/{job_id}/report.html", operation_id="get_report_html",
            response_class=Response, responses={200: {
                "description": "the report as one self-contained HTML page",
                "content": {"text/html": {"schema": {"type": "string"}}}}, **ERRORS})
def get_report_html(job_id: str, principal: Principal, store: StoreDep,
                    artifacts: ArtifactsDep) -> Response:
    """The report of a finished job as self-contained HTML."""
    return _report(job_id, principal, store, artifacts, "html")


@router.get("/jobs/{job_id}/report.md", operation_id="get_report_markdown",
            response_class=Response, responses={200: {
                "description": "the report as Markdown (a pull-request comment)",
                "content": {"text/markdown": {"schema": {"type": "string"}}}}, **ERRORS})
def get_report_markdown(job_id: str, principal: Principal, store: StoreDep,
                        artifacts: ArtifactsDep) -> Response:
    """The report of a finished job as Markdown."""
    return _report(job_id, principal, store, artifacts, "md")


def _report(job_id: str, principal: str, store, artifacts, format: str) -> Response:
    job = _job(store, job_id, principal)
    key = job.artifact_map().get(f"report.{format}")
    if job.state != "succeeded" or key is None:
        raise ApiError(409, f"job {job_id} is {job.state}; the report exists once it has "
                       "succeeded" + (f" ({job.error})" if job.error else ""), "not_ready")
    return Response(artifacts.read_bytes(key), media_type=MEDIA_TYPES[format])


@router.get("/jobs/{job_id}/artifacts/{name}", operation_id="get_artifact",
            response_class=Response, responses={
    200: {"description": "the artifact's bytes", "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}, **ERRORS})
def get_artifact(job_id: str, name: str, principal: Principal, store: StoreDep,
                 artifacts: ArtifactsDep) -> Response:
    """A job's artifact (e.g. `purified.safetensors`)."""
    job = _job(store, job_id, principal)
    key = job.artifact_map().get(name)
    if key is None:
        known = ", ".join(job.artifact_map()) or "none yet"
        raise ApiError(404, f"job {job_id} has no artifact {name!r} (artifacts: {known})",
                       "not_found")
    local = artifacts.local_path(key)
    if local is not None:
        return FileResponse(local, filename=name, media_type="application/octet-stream")
    return StreamingResponse(_chunks(artifacts.open(key)), media_type="application/octet-stream",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _chunks(fh, size: int = 1 << 20):
    """An object's bytes, streamed in chunks and closed at the end."""
    with fh:
        while chunk := fh.read(size):
            yield chunk


def spec_schema() -> dict:
    """The AuditSpec JSON schema (published in the OpenAPI components)."""
    return AuditSpec.model_json_schema(ref_template="#/components/schemas/{model}")
