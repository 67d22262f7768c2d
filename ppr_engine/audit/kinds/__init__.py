"""The registry of stage kinds, in plan order (see `base` for what a kind declares).

The audit-wide kinds plan first (`invert`, `evaluate`, `purify`, `baseline`, and where RA is
batched `retune-batch`), then the per-subject chains (for each purified model, or the
submitted model without methods, then the baseline: for each trigger, its `retune` budgets,
`qra` and `lmc`), then, where QRA is batched, `qra-batch` with the `qra` stages that read
it, then `qra-transfer` and `report`. The chains depend on each other only through
`retune-batch` and `qra-batch` (each waits for every model it trains against),
`qra-transfer` and `report`, so executors may run them side by side.
"""

from __future__ import annotations

from .base import Filling, Planner, StageKind, restore_triggers
from .baseline import Baseline
from .evaluate import Evaluate
from .invert import Invert
from .lmc import LMC
from .purify import Purify
from .qra import QRA
from .qra_batch import QRABatch
from .qra_transfer import QRATransfer
from .report import Report
from .retune import Retune
from .retune_batch import RetuneBatch

# audit-wide kinds before the chains, the chain kinds in a chain's order, then the closing
BEFORE_CHAINS: tuple[StageKind, ...] = (Invert(), Evaluate(), Purify(), Baseline(),
                                        RetuneBatch())
CHAIN: tuple[StageKind, ...] = (Retune(), QRA(), LMC())
AFTER_CHAINS: tuple[StageKind, ...] = (QRABatch(), QRATransfer(), Report())
KINDS: dict[str, StageKind] = {k.name: k for k in BEFORE_CHAINS + CHAIN + AFTER_CHAINS}


def field_kinds() -> dict[str, StageKind]:
    """Each gate field that only one kind's stages compute, and that kind."""
    return {name: k for k in KINDS.values() for name in k.gate_fields}


__all__ = ["AFTER_CHAINS", "BEFORE_CHAINS", "CHAIN", "KINDS", "Filling", "Planner",
           "StageKind", "field_kinds", "restore_triggers"]
