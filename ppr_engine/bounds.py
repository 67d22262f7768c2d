"""Bounds on every number a spec can carry, and the budget kinds a service may tighten.

A spec is a request for work, and a shared service runs other people's specs: every
numeric parameter of every method, trigger, inversion, scan, RA/QRA/LMC setting and data
reference option is declared here with an upper and a lower bound (the engine's own
ceilings, generous enough for any real audit), so that no value can ask for unbounded work
or overflow a seed. Parameters that set how much work is done also carry a *budget kind*
(`epochs`, `rounds`, `iterations`, `images`, `width`, `batch`) in their JSON schema; the
service's `SPEC_LIMITS` caps each kind lower, and `tests/engine/test_bounds.py` walks every
parameter model and fails on a number without both bounds, so a new parameter cannot be
added without one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

BUDGET_KINDS = ("epochs", "rounds", "iterations", "images", "width", "batch")
# the engine's ceilings per budget kind (a service caps lower with SPEC_LIMITS)
CEILINGS = {"epochs": 1000, "rounds": 50, "iterations": 1_000_000, "images": 10_000_000,
            "width": 8192, "batch": 8192}
MAX_SEED = 2**32 - 1  # what torch.manual_seed and NumPy take


def budget(kind: str, default: Any, *, ge: float = 1, le: float | None = None,
           description: str = "") -> Any:
    """A field that sets an amount of work of `kind`, bounded by [ge, le] (le: the kind's
    ceiling)."""
    assert kind in BUDGET_KINDS, kind
    return Field(default, ge=ge, le=CEILINGS[kind] if le is None else le,
                 description=description, json_schema_extra={"budget": kind})


def seed_field(default: int = 0, description: str = "random seed") -> Any:
    """A seed: 0 to 2**32 - 1."""
    return Field(default, ge=0, le=MAX_SEED, description=description)


def budget_kind(model: type[BaseModel], name: str) -> str | None:
    """The budget kind of field `name` of `model`, if it sets an amount of work."""
    extra = model.model_fields[name].json_schema_extra
    return extra.get("budget") if isinstance(extra, dict) else None


def budget_values(obj: BaseModel, prefix: str) -> Iterator[tuple[str, str, float]]:
    """(dotted path, budget kind, value) of every budget field set in `obj`, nested models
    and lists of models included."""
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        where = f"{prefix}.{name}"
        kind = budget_kind(type(obj), name)
        if kind is not None and isinstance(value, int | float) and not isinstance(value, bool):
            yield where, kind, value
        if isinstance(value, BaseModel):
            yield from budget_values(value, where)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from budget_values(item, f"{where}[{i}]")
