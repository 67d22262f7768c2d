"""Attacks (triggers) and poisoning: badnets, blended, sig, wanet, lc, ssba (imported), and
triggers given by example."""

from . import examples, lc, ssba, triggers, wanet  # noqa: F401  (registration)
from .base import (
    ATTACKS,
    PoisonedSet,
    Trigger,
    TriggerParams,
    build_trigger,
    poison_training_set,
    quantize,
    triggered_test,
)

__all__ = ["ATTACKS", "PoisonedSet", "Trigger", "TriggerParams", "build_trigger",
           "poison_training_set", "quantize", "triggered_test"]
