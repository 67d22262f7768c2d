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
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, Field

from ppr_engine.bounds import budget_values
from ppr_engine.spec import AuditSpec

from .errors import ApiError


class SpecLimits(BaseModel):
    """The largest budgets one spec may ask for (defaults fit CIFAR-scale audits). Every
    budget-tagged parameter of the spec (`ppr_engine.bounds`: epochs, rounds, iterations,
    images, widths, batch sizes, wherever they are nested) is capped by its kind, and the
    estimated total work (`ppr_engine.cost`) by `max_work`."""

    max_spec_bytes: int = Field(64 << 10, description="size of the spec field")
    max_methods: int = 16
    max_triggers: int = 8
    max_sweep_points: int = 10
    max_epochs: int = Field(500, description="any epochs parameter, wherever it is")
    max_rounds: int = 20
    max_iterations: int = 100_000
    max_images: int = Field(200_000, description="images one data reference or budget takes")
    max_width: int = Field(4096, description="hidden widths (QRA's generator, UNet widths)")
    max_batch: int = 4096
    max_image_side: int = Field(512, description="the `size` a data reference may resize to")
    max_work: float = Field(2e8, description="estimated image passes of the whole audit (a "
                            "14-method CIFAR-10 audit at reference budgets on 2,500 "
                            "defender's images is about 1e7)")

    def cap(self, kind: str) -> float:
        """The cap of a budget kind."""
        return getattr(self, f"max_{kind}")


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

    def exhausted(self, key: str) -> float:
        """Seconds until `key` may take again (0: it may now), without taking."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                return 0.0
            tokens = min(float(self.burst), b.tokens + (time.monotonic() - b.stamp) * self.rate)
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

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


def check_budgets(spec: AuditSpec, limits: SpecLimits,
                  size_of: Callable[[str], int | None] = lambda ref: None) -> None:
    """422 when the spec asks for more than `limits` allow (the field is named). `size_of`
    gives a data reference's image count where the gateway knows it without reading the
    data; the total work is checked here when every count is known, and by the worker
    again once the data are loaded."""
    plan = spec.plan
    for what, items, cap in (("plan.methods", plan.methods, limits.max_methods),
                             ("triggers", spec.triggers, limits.max_triggers),
                             ("plan.retune.sweep", plan.retune.sweep, limits.max_sweep_points)):
        if len(items) > cap:
            raise _over(f"{what} (count)", len(items), cap)
    models = [("plan.retune", plan.retune), ("plan.qra", plan.qra), ("plan.lmc", plan.lmc)]
    models += [(f"plan.methods[{i}] ({m.key})", m.parsed()) for i, m in enumerate(plan.methods)]
    models += [(f"triggers[{i}] ({t.attack})", t.parsed()) for i, t in enumerate(spec.triggers)]
    for prefix, params in models:
        for where, kind, value in budget_values(params, prefix):
            if value > limits.cap(kind):
                raise _over(where, value, limits.cap(kind))
    refs = [(f"data.{role}", getattr(spec.data, role)) for role in ("clean", "test", "attacker")
            if getattr(spec.data, role)]
    refs += [(f"triggers[{i}] data", ref) for i, t in enumerate(spec.triggers)
             for ref in t.build().data_refs()]
    from ppr_engine.data.refs import parse_ref  # (ppr_engine.data imports torch)

    for where, text in refs:
        options = parse_ref(text).options
        for option, cap in (("n", limits.max_images), ("size", limits.max_image_side)):
            if option in options and options[option] > cap:
                raise _over(f"{where} {option}", options[option], cap)
        count = size_of(text)
        if count is not None and count > limits.max_images:
            raise _over(f"{where} (images)", count, limits.max_images)
    check_work(spec, limits, size_of)


def known_sizes(spec: AuditSpec, size_of: Callable[[str], int | None]):
    """The audit's sizes (`ppr_engine.cost.Sizes`) where the gateway knows every count
    without reading images, else None; refuses an attacker pool too small for RA and QRA."""
    from ppr_engine.audit import attacker_images
    from ppr_engine.audit.inputs import check_attacker_pool
    from ppr_engine.cost import Sizes

    clean, test = size_of(spec.data.clean), size_of(spec.data.test)
    pool = size_of(spec.data.attacker) if spec.data.attacker else attacker_images(spec)
    check_attacker_pool(spec, clean, pool if spec.data.attacker else None)
    if clean is None or test is None or pool is None:
        return None
    defender = clean - (0 if spec.data.attacker else pool)
    return Sizes(defender, test, pool, spec.model.num_classes)


def check_work(spec: AuditSpec, limits: SpecLimits,
               size_of: Callable[[str], int | None]) -> None:
    """422 when the estimated work of the spec (its plan's stage costs) exceeds `max_work`
    (with nominal CIFAR-scale sizes where a data reference's size is unknown here: the
    worker checks again with the loaded data)."""
    from ppr_engine.audit import estimated_work
    from ppr_engine.audit.plan import NOMINAL

    work = estimated_work(spec, known_sizes(spec, size_of) or NOMINAL)
    if work > limits.max_work:
        raise _over("the audit's estimated work (CIFAR ResNet-18 image passes)",
                    f"{work:.3g}", f"{limits.max_work:.3g}")
