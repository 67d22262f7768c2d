"""The FastAPI application factory (settings injected, nothing read at import)."""

from __future__ import annotations

import contextlib
import gc
import logging

from fastapi import FastAPI

from ppr_engine import __version__

from . import errors
from .dispatch import Dispatcher
from .limits import RateLimiter
from .queue import Enqueuer
from .routes import api_router, health, jobs
from .settings import Settings, get_settings
from .store.artifacts import open_artifacts
from .store.db import JobStore, migrate

log = logging.getLogger("ppr.service")


def create_app(settings: Settings | None = None, *, queue: Enqueuer | None = None) -> FastAPI:
    """Build the app: migrate the database, open the stores, mount the routers."""
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.db_url)
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        dispatcher = Dispatcher(app.state.store, app.state.queue,
                                settings.dispatch_interval_s, resend_s=max(5.0, settings.lease_s))
        dispatcher.start()
        # The gateway imports the engine (torch and friends): hundreds of thousands of
        # long-lived objects that every full garbage collection would walk, a pause of
        # ~100 ms under load. Freeze them out of the collector once start-up is done.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            dispatcher.stop()

    app = FastAPI(title="ppr-audit", version=__version__, lifespan=lifespan, description=(
        "Post-purification robustness audits: does a backdoor defense remove the backdoor, "
        "or only hide it? Submit a checkpoint and a spec; workers purify, attack (RA, QRA) "
        "and trace the backdoor-connected path; fetch the report."))
    app.state.settings = settings
    app.state.store = JobStore(settings.db_url)
    app.state.artifacts = open_artifacts(settings)
    app.state.queue = queue or Enqueuer(settings)
    app.state.read_limiter = RateLimiter(settings.read_rate_per_s, settings.read_burst,
                                         "requests")
    app.state.submit_limiter = RateLimiter(settings.submit_rate_per_min / 60.0,
                                           settings.submit_burst, "submissions")
    app.state.auth_fail_limiter = RateLimiter(settings.auth_fail_rate_per_min / 60.0,
                                              settings.auth_fail_burst, "failed logins")
    if not settings.tokens:
        log.warning("NO TOKENS CONFIGURED: local single-user mode, every caller is 'local'. "
                    "Set PPR_TOKENS before exposing this service.")
    errors.install(app)
    app.include_router(api_router)
    app.include_router(health.router)
    # aliases of DESIGN.md: POST /audit and POST /purify?method=...
    app.add_api_route("/audit", jobs.submit_audit, methods=["POST"], status_code=202,
                      response_model=jobs.JobAccepted, operation_id="submit_audit_alias",
                      openapi_extra=jobs.MULTIPART, tags=["jobs"], responses=jobs.ERRORS)
    app.add_api_route("/purify", jobs.submit_purify, methods=["POST"], status_code=202,
                      response_model=jobs.JobAccepted, operation_id="submit_purify_alias",
                      openapi_extra=jobs.MULTIPART, tags=["jobs"], responses=jobs.ERRORS)
    _complete_openapi(app)
    return app


PUBLIC = {"/healthz", "/readyz", "/metrics", "/v1/methods"}  # no bearer token (metrics: its own)


def _complete_openapi(app: FastAPI) -> None:
    """What generated clients need beyond FastAPI's document: the AuditSpec and
    AuditReport schemas in the components (the multipart field and the report refer to
    them), the bearer scheme on every protected operation, the Location header of a 202,
    and the Idempotency-Key header as an optional string (a nullable header made clients
    send "None")."""
    from ppr_engine.report import AuditReport

    original = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        comps = schema.setdefault("components", {})
        schemas = comps.setdefault("schemas", {})
        for name, model_schema in (("AuditSpec", jobs.spec_schema()), ("AuditReport",
                                   AuditReport.model_json_schema(
                                       ref_template="#/components/schemas/{model}"))):
            schemas.update(model_schema.pop("$defs", {}))
            schemas[name] = model_schema
        schemas["AuditSpec"]["examples"] = [jobs.EXAMPLE_SPEC]
        comps["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "Authorization: Bearer <token> (PPR_TOKENS); a service without "
                           "tokens is local single-user and ignores it"}}
        for path, ops in schema["paths"].items():
            for op in ops.values():
                if path not in PUBLIC:
                    op["security"] = [{"bearer": []}]
                for param in op.get("parameters", []):
                    if param.get("in") == "header" and param["name"] == "Idempotency-Key":
                        param["schema"] = {"type": "string", "minLength": 1, "maxLength": 255}
                if "202" in op.get("responses", {}):
                    op["responses"]["202"]["headers"] = {"Location": {
                        "description": "the job's URL", "schema": {"type": "string"}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
