"""What the stages of an audit cost, in image passes (one forward and backward pass of one
image; a forward pass alone counts a third), weighted by the audited architecture's cost
per image against a CIFAR ResNet-18's.

These are the pieces the audit plan (`ppr_engine.audit.plan`) prices its stages with; the
plan's total is the one estimate of a spec's work, so the service's cap (`max_work`,
checked at submission with the sizes it knows and again by the worker with the loaded
data), progress and scheduling all count what runs. It is an estimate within a small
factor, not a bill.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .spec import AuditSpec

# the unit of work: one image pass through a CIFAR ResNet-18, the paper's model
REFERENCE_ARCH = "resnet18_cifar"


@dataclass(frozen=True)
class Sizes:
    """The images an audit works on: the defender's set, the test set, the attacker's
    pool, and the number of classes."""

    clean: int
    test: int
    pool: int
    classes: int


def evaluation_work(sizes: Sizes, triggers: int) -> float:
    """C-Acc and every trigger's ASR of one model."""
    return (sizes.test * (1 + triggers)) / 3


def qra_work(spec: AuditSpec, sizes: Sizes, *, training: bool = True,
             numbers: bool = True) -> float:
    """QRA against one model and trigger: the generator's training (three models per
    step), then its four numbers (a batched QRA prices the two in different stages)."""
    q = spec.plan.qra
    if not q.enabled:
        return 0.0
    return float(q.epochs * (q.clean_num + q.poison_num) * 2 * training
                 + 4 * sizes.test / 3 * numbers)


def lmc_work(spec: AuditSpec, sizes: Sizes, triggers: int) -> float:
    """LMC for one model and trigger: BN statistics and the metrics at every point."""
    lm = spec.plan.lmc
    if not lm.enabled:
        return 0.0
    return float(lm.points * (sizes.clean + sizes.test * (1 + triggers)) / 3)


@functools.cache
def forward_flops(arch: str, num_classes: int, width: int | None = None) -> float:
    """FLOPs of one image's forward pass through `arch`, counted on the meta device (no
    memory, no data; a fraction of a second even for a ViT)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import models

    size = models.architecture(arch).input_size
    with torch.device("meta"):
        model = models.create(arch, num_classes, width=width)
        x = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def image_cost(spec: AuditSpec) -> float:
    """What one image pass through the audited model costs, in passes of the unit model
    (REFERENCE_ARCH, full width): a ResNet-50 at 224 pixels weighs about 7, a width-16
    CIFAR ResNet-18 about 0.06, so a cap in these units bounds compute, not image counts."""
    m = spec.model
    return (forward_flops(m.arch, m.num_classes, m.width)
            / forward_flops(REFERENCE_ARCH, m.num_classes))


# CIFAR ResNet-18 training passes per second, as measured (docs/RESULTS.md): about 8,400 on
# one H100 with today's engine, about 15 per CPU core (a width-16 copy ran 565 img/s on 2
# cores at 1/16 of the FLOPs)
PASSES_PER_SECOND = {"cuda": 8000.0, "cpu_per_thread": 15.0}


def estimated_seconds(work: float, device_type: str, threads: int = 1) -> float:
    """Rough wall time of `work` (CIFAR ResNet-18 image passes) on a device: a figure to
    plan by, stated before a long job starts, not a promise."""
    rate = (PASSES_PER_SECOND["cuda"] if device_type == "cuda"
            else PASSES_PER_SECOND["cpu_per_thread"] * max(1, threads))
    return work / rate


def describe_estimate(work: float, device_type: str, threads: int = 1) -> str:
    """"estimated 2.1e+05 image passes, about 4 min on cpu (2 threads)"."""
    seconds = estimated_seconds(work, device_type, threads)
    when = (f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400
            else f"{seconds / 3600:.1f} h")
    where = "cuda" if device_type == "cuda" else f"cpu ({threads} threads)"
    return f"estimated {work:.2g} image passes, about {when} on {where}"
