"""API errors: every refusal is a JSON body naming what is wrong, never a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError as DBInterfaceError
from sqlalchemy.exc import OperationalError as DBOperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ppr_engine.errors import InputError

log = logging.getLogger("ppr.service")


class ApiError(Exception):
    """An error with an HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request",
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.retry_after = retry_after


class Unavailable(ApiError):
    """503: a dependency (database, broker) cannot be reached; nothing was changed."""

    def __init__(self, what: str, exc: BaseException | None = None,
                 then: str = "retry later") -> None:
        cause = f" ({type(exc).__name__})" if exc is not None else ""
        super().__init__(503, f"{what} is unreachable{cause}; {then}", "unavailable",
                         retry_after=5)


def body(status: int, message: str, kind: str) -> JSONResponse:
    """The one error shape: {"error": {"status", "type", "message"}}."""
    return JSONResponse({"error": {"status": status, "type": kind, "message": message}},
                        status_code=status)


def _allowed(request: Request) -> list[str]:
    """The methods some route serves at this request's path (Starlette answers a 405 with
    the methods of the first route that matched the path only)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        match_any = match != Match.NONE or route.matches(
            {**request.scope, "method": "POST"})[0] != Match.NONE
        if match_any and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the error shape."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        response = body(exc.status, exc.message, exc.kind)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError):
        return body(422, str(exc), type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        msg = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return body(422, msg, "validation_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        response = body(exc.status_code, str(exc.detail), "http_error")
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            response.headers["Allow"] = ", ".join(_allowed(request))
        return response

    @app.exception_handler(DBOperationalError)
    @app.exception_handler(DBInterfaceError)
    async def _database(request: Request, exc: Exception):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    type(exc).__name__)
        return await _api(request, Unavailable("the job database", exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return body(500, "internal error; the incident was logged", "internal_error")
