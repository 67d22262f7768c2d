"""Trigger inversion: BTI-DBF's generator, its feature mask, target detection, and the
smallest-trigger scans that verify a detection.

Used by BTI-DBF(U) and PAM (`ppr_engine.defenses`) and by the `inverted` trigger
(`ppr_engine.attacks`). It sees only the defender's data (`InversionContext`), never a known
trigger, and imports nothing from the defenses or the attacks.
"""

from .context import InversionContext
from .detection import Detection, detect_target
from .inverter import InversionParams, Inverter, RoundRecord, invert
from .scan import FAMILIES, Scan, ScanParams, ScanResult, smallest_triggers

__all__ = ["FAMILIES", "Detection", "InversionContext", "InversionParams", "Inverter",
           "RoundRecord", "Scan", "ScanParams", "ScanResult", "detect_target", "invert",
           "smallest_triggers"]
