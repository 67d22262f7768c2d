"""Annotated dependencies: settings, stores, the queue and the current principal.

They are `async def` on purpose: none of them blocks, and FastAPI runs a plain `def`
dependency in the thread pool, a thread hop per dependency per request."""

from __future__ import annotations

import hmac
import math
from typing import Annotated

from fastapi import Depends, Request

from .errors import ApiError
from .limits import RateLimited
from .queue import Enqueuer
from .settings import Settings
from .store.artifacts import ArtifactStore
from .store.db import JobStore


async def get_settings_dep(request: Request) -> Settings:
    """The app's settings (injected at app creation)."""
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    """The job store."""
    return request.app.state.store


async def get_artifacts(request: Request) -> ArtifactStore:
    """The artifact store."""
    return request.app.state.artifacts


async def get_queue(request: Request) -> Enqueuer:
    """The queue that carries job ids to the workers."""
    return request.app.state.queue


async def current_principal(request: Request) -> str:
    """The caller: the principal of its bearer token, or "local" when auth is off; each
    principal's requests pass its rate limit (429 past it)."""
    principal = _authenticate(request)
    request.app.state.read_limiter.take(principal)
    return principal


def _bearer(request: Request) -> str:
    """The request's bearer token, or a 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)",
                       "unauthorized")
    return token.strip()


def _match(token: str, known: dict[str, str]) -> str | None:
    """The principal of `token`, compared with every known token in constant time."""
    principal = None
    for candidate, who in known.items():
        if hmac.compare_digest(candidate.encode(), token.encode()):
            principal = who
    return principal


def _checked(request: Request, known: dict[str, str]) -> str:
    """The principal of the request's token among `known`. Failed logins are throttled per
    client address: past `auth_fail_rate_per_min` an address gets 429 for every request
    until its budget refills, whatever token it sends, so tokens cannot be guessed at speed."""
    limiter = request.app.state.auth_fail_limiter
    address = request.client.host if request.client else "unknown"
    if wait := limiter.exhausted(address):
        raise RateLimited(f"too many failed logins from this address; retry after "
                          f"{math.ceil(wait)} s", wait)
    try:
        principal = _match(_bearer(request), known)
    except ApiError:
        limiter.take(address)
        raise
    if principal is None:
        limiter.take(address)  # 429 from here on once the address is over its budget
        raise ApiError(401, "invalid bearer token", "unauthorized")
    return principal


def _authenticate(request: Request) -> str:
    settings: Settings = request.app.state.settings
    if not settings.tokens:
        return "local"
    return _checked(request, settings.tokens)


async def metrics_access(request: Request) -> None:
    """/metrics: the metrics token when one is set, else any principal's token (open only
    in local single-user mode)."""
    settings: Settings = request.app.state.settings
    if settings.metrics_token:
        _checked(request, {settings.metrics_token: "metrics"})
    elif settings.tokens:
        _authenticate(request)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[JobStore, Depends(get_store)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
QueueDep = Annotated[Enqueuer, Depends(get_queue)]
Principal = Annotated[str, Depends(current_principal)]
