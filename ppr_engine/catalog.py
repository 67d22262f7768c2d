"""The registries as one JSON-able catalog (for `ppr methods` and `GET /v1/methods`)."""

from __future__ import annotations

from typing import Any


def catalog() -> dict[str, list[dict[str, Any]]]:
    """Architectures, attacks (parametric; `examples`: a trigger given by poisoned images;
    `inverted`: a trigger inverted from the model under audit), purification methods with
    parameters and defaults, and the data reference kinds (`backdoorbench` reads a
    BackdoorBench result's poisoned samples)."""
    from .attacks import ATTACKS
    from .data.refs import KIND_SUMMARIES
    from .defenses import DEFENSES
    from .models import ARCHITECTURES

    archs = []
    for e in ARCHITECTURES:
        a = e.obj
        archs.append({"name": e.name, "summary": e.summary, "input_size": a.input_size,
                      "mean": list(a.mean), "std": list(a.std), "head": a.head,
                      "stages": list(a.stages), "params": {}})
    return {"architectures": archs,
            "attacks": [e.describe() for e in ATTACKS],
            "methods": [e.describe() for e in DEFENSES],
            "data_kinds": [{"name": k, "summary": v} for k, v in KIND_SUMMARIES.items()]}
