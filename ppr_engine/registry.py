"""A small generic registry: name -> entry with a pydantic parameter model.

Architectures, triggers, purification methods and reactivation attacks all register here
(timm's `@register_model` pattern), so `ppr methods`, `GET /v1/methods`, spec validation
and parametrized tests read one source of truth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import SpecError

T = TypeVar("T")


class NoParams(BaseModel):
    """Parameter model of an entry that takes none."""

    model_config = {"extra": "forbid"}


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object, its parameter model and a one-line description."""

    name: str
    obj: T
    params: type[BaseModel] = NoParams
    summary: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)  # the first is the kind
    reference: str = ""  # the paper (and code) the entry follows

    def parse(self, values: dict[str, Any] | None) -> BaseModel:
        """Validate `values` against this entry's parameter model, naming the bad field."""
        try:
            return self.params.model_validate(values or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise SpecError(f"{self.name}: invalid parameters: {problems}") from None

    def describe(self) -> dict[str, Any]:
        """A JSON-able description: name, summary, tags, and each parameter's default, type
        and bounds (minimum, maximum, allowed values: what a spec may ask for)."""
        fields = {}
        props = self.params.model_json_schema().get("properties", {})
        for fname, finfo in self.params.model_fields.items():
            default = None if finfo.is_required() else finfo.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            fields[fname] = {
                "default": default if _jsonable(default) else repr(default),
                "description": finfo.description or "",
                "required": finfo.is_required(),
                **_bounds(props.get(finfo.alias or fname, {})),
            }
        return {"name": self.name, "summary": self.summary, "tags": list(self.tags),
                "kind": self.tags[0] if self.tags else "", "reference": self.reference,
                "params": fields}


BOUND_KEYS = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum")


def _bounds(prop: dict[str, Any]) -> dict[str, Any]:
    """A parameter's type and bounds from its JSON schema (an optional one's non-null
    branch)."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    out: dict[str, Any] = {}
    for branch in branches[:1]:
        out.update({k: branch[k] for k in BOUND_KEYS if k in branch})
    if "const" in prop:
        out["enum"] = [prop["const"]]
    return out


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | tuple | dict)


class Registry(Generic[T]):
    """Named entries of one kind (e.g. "purification method")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, params: type[BaseModel] = NoParams, summary: str = "",
        tags: tuple[str, ...] = (), reference: str = "",
    ) -> Callable[[T], T]:
        """Decorator that registers `obj` under `name`."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            doc = summary or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, params, doc, tags, reference)
            return obj

        return deco

    def get(self, name: str) -> Entry[T]:
        """The entry called `name`, or a SpecError listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise SpecError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """All registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())
