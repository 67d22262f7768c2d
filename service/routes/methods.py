"""The engine's registries: architectures, attacks and purification methods."""

from typing import Any

from fastapi import APIRouter

from ppr_engine.catalog import catalog

router = APIRouter(tags=["methods"])


@router.get("/methods", operation_id="list_methods")
def list_methods() -> dict[str, list[dict[str, Any]]]:
    """Architectures, attacks and methods with their parameters and defaults."""
    return catalog()
