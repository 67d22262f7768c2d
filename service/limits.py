"""Abuse limits: per-principal request rates, a cap on active jobs, and the budgets a spec
may ask for.

A shared service runs other people's GPU jobs, so one principal must not be able to starve
the rest: a flood of status reads (429 past a token bucket), a flood of submissions (429
past a slower bucket, and past `max_active_jobs` queued or running), or one spec that asks
for a month of GPU time (422 naming the field and the limit). Rates are counted per gateway
process; with `--workers N` a principal gets up to N times the rate.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from ppr_engine.data.refs import parse_ref
from ppr_engine.spec import AuditSpec

from .errors import ApiError


class SpecLimits(BaseModel):
    """The largest budgets one spec may ask for (defaults fit CIFAR-scale audits)."""

    max_spec_bytes: int = Field(64 << 10, description="size of the spec field")
    max_methods: int = 16
    max_epochs: int = Field(500, description="any *epochs parameter of a method, RA or QRA")
    max_rounds: int = 20
    max_iterations: int = 100_000
    max_sweep_points: int = 10
    max_images: int = Field(200_000, description="images one data reference or budget takes")


class RateLimited(ApiError):
    """429 with the seconds after which a retry will be admitted."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(429, message, "rate_limited", max(1, math.ceil(retry_after)))


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: `rate` requests per second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int, what: str) -> None:
        self.rate, self.burst, self.what = rate, burst, what
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Admit one request for `key`, or raise RateLimited."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(key) or _Bucket(float(self.burst), now)
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
            self._buckets[key] = b
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return
            wait = (1.0 - b.tokens) / self.rate
        raise RateLimited(f"too many {self.what} from this principal (limit {self.rate:g}/s, "
                          f"burst {self.burst}); retry after {math.ceil(wait)} s", wait)


def _over(field: str, value: float, limit: float) -> ApiError:
    return ApiError(422, f"spec asks too much: {field} is {value}, the limit is {limit}",
                    "budget_exceeded")


def _walk_params(prefix: str, params: Any, limits: SpecLimits) -> None:
    """Refuse any epochs/rounds/iterations value above its limit, nested parameters too."""
    if isinstance(params, BaseModel):
        params = params.model_dump()
    if not isinstance(params, dict):
        return
    for key, value in params.items():
        where = f"{prefix}.{key}"
        if isinstance(value, dict | BaseModel):
            _walk_params(where, value, limits)
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        limit = (limits.max_epochs if key.endswith("epochs") else limits.max_rounds
                 if key == "rounds" else limits.max_iterations if key == "iterations" else None)
        if limit is not None and value > limit:
            raise _over(where, value, limit)


def check_budgets(spec: AuditSpec, limits: SpecLimits) -> None:
    """422 when the spec asks for more than `limits` allow (the field is named)."""
    plan = spec.plan
    if len(plan.methods) > limits.max_methods:
        raise _over("plan.methods (count)", len(plan.methods), limits.max_methods)
    for i, m in enumerate(plan.methods):
        _walk_params(f"plan.methods[{i}] ({m.key})", m.parsed(), limits)
    _walk_params("plan.retune", plan.retune, limits)
    _walk_params("plan.qra", plan.qra, limits)
    rs = plan.retune
    if len(rs.sweep) > limits.max_sweep_points:
        raise _over("plan.retune.sweep (points)", len(rs.sweep), limits.max_sweep_points)
    for i, (poison, epochs) in enumerate(rs.sweep):
        if poison > limits.max_images:
            raise _over(f"plan.retune.sweep[{i}] poisoned samples", poison, limits.max_images)
        if epochs > limits.max_epochs:
            raise _over(f"plan.retune.sweep[{i}] epochs", epochs, limits.max_epochs)
    for field in ("poison_num", "clean_num"):
        for name, part in (("retune", rs), ("qra", plan.qra)):
            value = getattr(part, field)
            if value > limits.max_images:
                raise _over(f"plan.{name}.{field}", value, limits.max_images)
    for role in ("clean", "test", "attacker"):
        text = getattr(spec.data, role)
        if not text:
            continue
        n = parse_ref(text).options.get("n")
        if n is not None and str(n).isdigit() and int(n) > limits.max_images:
            raise _over(f"data.{role} n", int(n), limits.max_images)
