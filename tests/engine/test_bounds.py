"""Every number a spec can carry is bounded above and below, and every list has a length
limit: a new parameter cannot be added without one (issue 22). The walk reads the JSON
schema pydantic derives from each parameter model, so tuples, optional values and nested
models are seen as the API sees them."""

from __future__ import annotations

import pytest

from ppr_engine.attacks import ATTACKS
from ppr_engine.bounds import BUDGET_KINDS, budget_values
from ppr_engine.data.refs import OPTIONS
from ppr_engine.defenses import DEFENSES
from ppr_engine.spec import AuditSpec, validate_spec

MODELS = ([("spec", AuditSpec)] + [(f"attack:{e.name}", e.params) for e in ATTACKS]
          + [(f"method:{e.name}", e.params) for e in DEFENSES])


def unbounded(schema: dict, defs: dict, path: str, seen: set[str]) -> list[str]:
    """Paths of numbers without both bounds and arrays without a length limit."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        return unbounded(defs[name], defs, path, seen | {name})
    out = []
    kind = schema.get("type")
    if kind in ("integer", "number"):
        low = "minimum" in schema or "exclusiveMinimum" in schema
        high = "maximum" in schema or "exclusiveMaximum" in schema
        if not (low and high):
            out.append(path)
    if kind == "array":
        fixed = "prefixItems" in schema and "items" not in schema
        if not fixed and "maxItems" not in schema:
            out.append(f"{path}[]")
        for i, item in enumerate(schema.get("prefixItems", [])):
            out += unbounded(item, defs, f"{path}[{i}]", seen)
        if isinstance(schema.get("items"), dict):
            out += unbounded(schema["items"], defs, f"{path}[]", seen)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            out += unbounded(sub, defs, path, seen)
    for name, sub in schema.get("properties", {}).items():
        out += unbounded(sub, defs, f"{path}.{name}", seen)
    return out


@pytest.mark.parametrize("name,model", MODELS, ids=[n for n, _ in MODELS])
def test_every_number_of_every_parameter_model_is_bounded(name, model):
    schema = model.model_json_schema()
    assert unbounded(schema, schema.get("$defs", {}), name, set()) == []


def test_the_walk_finds_an_unbounded_number():
    """The check above can fail: a model with an unbounded field is caught."""
    from pydantic import BaseModel, Field

    class Loose(BaseModel):
        steps: int = Field(1, ge=1)
        ok: float = Field(0.5, ge=0, le=1)
        many: list[int] = []

    schema = Loose.model_json_schema()
    assert unbounded(schema, {}, "loose", set()) == ["loose.steps", "loose.many[]",
                                                     "loose.many[]"]  # the list, its items


def test_every_data_reference_option_is_bounded():
    for key, (_kind, low, high) in OPTIONS.items():
        assert low <= high and high < float("inf"), key


@pytest.mark.parametrize("field,value", [
    ("plan.methods.0.scale_to", 2_000_000_000), ("plan.methods.0.rounds", 10**9),
    ("plan.qra.hidden", 10**9), ("plan.qra.batch_size", 10**9), ("seed", 2**70),
    ("plan.retune.seed", -1)])
def test_out_of_bound_values_are_refused_with_the_field_named(field, value):
    from ppr_engine.errors import SpecError

    raw = {"data": {"clean": "synthetic:?n=100", "test": "synthetic:?n=100&seed=1"},
           "plan": {"methods": [{"name": "pam"}]}}
    node = raw
    *parents, last = field.split(".")
    for part in parents:
        node = node.setdefault(part if not part.isdigit() else int(part), {}) \
            if not part.isdigit() else node[int(part)]
    node[last] = value
    with pytest.raises(SpecError, match=last):
        validate_spec(raw)


def test_budget_fields_are_tagged_and_walked():
    """Work-setting fields carry a budget kind the service can cap; the walk reaches nested
    models (a method's inversion and its scan)."""
    spec = validate_spec({"data": {"clean": "synthetic:?n=100", "test": "synthetic:?n=10&seed=1"},
                          "plan": {"methods": [{"name": "pam"}]}})
    found = {(path, kind) for path, kind, _ in budget_values(
        spec.plan.methods[0].parsed(), "pam")}
    assert ("pam.epochs", "epochs") in found and ("pam.inversion.scan.epochs", "epochs") in found
    assert ("pam.scale_to", "images") in found
    assert {k for _, k in found} <= set(BUDGET_KINDS)


def test_the_catalog_shows_every_numbers_bounds():
    """`ppr methods --json` and GET /v1/methods give each numeric parameter its bounds, so a
    caller sees what a spec may ask for before it is refused (issue 33 item 3)."""
    from ppr_engine.catalog import catalog

    shown = 0
    for entry in catalog()["methods"] + catalog()["attacks"]:
        for name, p in entry["params"].items():
            if p.get("type") in ("integer", "number"):
                shown += 1
                assert "minimum" in p or "exclusiveMinimum" in p, (entry["name"], name)
                assert "maximum" in p or "exclusiveMaximum" in p, (entry["name"], name)
    assert shown > 100
