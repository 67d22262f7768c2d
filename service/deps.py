"""Annotated dependencies: settings, stores, the queue and the current principal.

They are `async def` on purpose: none of them blocks, and FastAPI runs a plain `def`
dependency in the thread pool, a thread hop per dependency per request."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from .errors import ApiError
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


def _authenticate(request: Request) -> str:
    settings: Settings = request.app.state.settings
    if not settings.tokens:
        return "local"
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)",
                       "unauthorized")
    principal = None
    for known, who in settings.tokens.items():  # compare with every token, constant time
        if hmac.compare_digest(known.encode(), token.strip().encode()):
            principal = who
    if principal is None:
        raise ApiError(401, "invalid bearer token", "unauthorized")
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[JobStore, Depends(get_store)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
QueueDep = Annotated[Enqueuer, Depends(get_queue)]
Principal = Annotated[str, Depends(current_principal)]
