"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from ..deps import QueueDep, StoreDep, metrics_access
from ..schemas import ErrorBody

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", operation_id="readyz", responses={503: {"description": "not ready"}})
def readyz(store: StoreDep, queue: QueueDep) -> JSONResponse:
    """Ready when the database and the broker answer and a worker was seen recently."""
    checks: dict[str, str] = {}
    for name, probe in (("database", store.ping), ("broker", queue.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
            checks[name] = f"unreachable: {type(exc).__name__}"
    try:
        n = store.workers.live()
        checks["workers"] = f"{n} live" if n else "none seen in the last 30 s"
    except Exception as exc:  # noqa: BLE001
        n, checks["workers"] = 0, f"unknown: {type(exc).__name__}"
    ready = checks["database"] == "ok" and checks["broker"] == "ok" and n > 0
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", operation_id="metrics", response_class=PlainTextResponse,
            dependencies=[Depends(metrics_access)],
            responses={code: {"model": ErrorBody} for code in (401, 429)})
def metrics(store: StoreDep, queue: QueueDep) -> PlainTextResponse:
    """Prometheus text format: jobs by state, job durations, queue depth, live workers."""
    lines = ["# HELP ppr_jobs Jobs by state.", "# TYPE ppr_jobs gauge"]
    lines += [f'ppr_jobs{{state="{s}"}} {n}' for s, n in store.jobs.counts().items()]
    durations = store.jobs.durations()
    lines += ["# HELP ppr_job_duration_seconds Wall time of finished jobs.",
              "# TYPE ppr_job_duration_seconds summary",
              f"ppr_job_duration_seconds_count {len(durations)}",
              f"ppr_job_duration_seconds_sum {sum(durations):.3f}"]
    depth = queue.depth()
    lines += ["# HELP ppr_queue_depth Messages waiting in the broker queue.",
              "# TYPE ppr_queue_depth gauge", f"ppr_queue_depth {-1 if depth is None else depth}",
              "# HELP ppr_workers_live Workers seen in the last 30 seconds.",
              "# TYPE ppr_workers_live gauge", f"ppr_workers_live {store.workers.live()}"]
    return PlainTextResponse("\n".join(lines) + "\n",
                             media_type="text/plain; version=0.0.4; charset=utf-8")
