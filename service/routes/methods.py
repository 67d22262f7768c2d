"""The engine's registries: architectures, attacks and purification methods, as typed
models, so that generated clients get classes rather than dictionaries."""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ppr_engine.catalog import catalog

router = APIRouter(tags=["methods"])


class ParamInfo(BaseModel):
    """One parameter: its default, what it means, and the bounds a spec must keep."""

    model_config = ConfigDict(populate_by_name=True)
    default: Any = None
    description: str = ""
    required: bool = False
    type: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = Field(None, alias="exclusiveMinimum")
    exclusive_maximum: float | None = Field(None, alias="exclusiveMaximum")
    enum: list[Any] | None = None


class CatalogEntry(BaseModel):
    """An attack or a purification method."""

    name: str
    summary: str = ""
    tags: list[str] = Field(default_factory=list)
    kind: str = ""
    reference: str = ""
    params: dict[str, ParamInfo] = Field(default_factory=dict)


class ArchitectureEntry(BaseModel):
    """An architecture: its input size, normalization, head and stages."""

    name: str
    summary: str = ""
    input_size: int
    mean: list[float]
    std: list[float]
    head: str
    stages: list[str]


class DataKind(BaseModel):
    """A kind of data reference (`synthetic:`, `imagefolder:`, `dataset:`, ...)."""

    name: str
    summary: str


class Catalog(BaseModel):
    """Everything a spec may name."""

    architectures: list[ArchitectureEntry]
    attacks: list[CatalogEntry]
    methods: list[CatalogEntry]
    data_kinds: list[DataKind]


@router.get("/methods", operation_id="list_methods", response_model=Catalog,
            response_model_exclude_none=True, response_model_by_alias=True)
def list_methods() -> Catalog:
    """Architectures, attacks and methods with their parameters, defaults and bounds."""
    return Catalog.model_validate(catalog())
