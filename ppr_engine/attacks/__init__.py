"""Attacks (triggers) and poisoning: badnets, blended, sig, wanet, lc, ssba (imported), and
triggers given by example or inverted from the model."""

from . import examples, inverted, lc, ssba, triggers, wanet  # noqa: F401  (registration)
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
