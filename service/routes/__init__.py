"""One router per resource, collected in `api_router` under /v1."""

from fastapi import APIRouter

from . import datasets, health, jobs, methods

api_router = APIRouter(prefix="/v1")
api_router.include_router(jobs.router)
api_router.include_router(datasets.router)
api_router.include_router(methods.router)

__all__ = ["api_router", "health", "jobs"]
