"""Purification methods, one module each, registered in `DEFENSES` by name."""

from . import anp, bti, ep, fp, fst, ft, ibau, nad, pam, sam, tsbd  # noqa: F401  (registration)
from .base import DEFENSES, DefenseContext, Purified, TuneParams, purify, reinit_head

__all__ = ["DEFENSES", "DefenseContext", "Purified", "TuneParams", "purify", "reinit_head"]
