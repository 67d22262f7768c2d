"""Purification methods, one module each, registered in `DEFENSES` by name."""

from . import (  # noqa: F401  (registration)
    anp,
    bnp,
    bti,
    clp,
    ep,
    fp,
    fst,
    ft,
    ibau,
    mcr,
    nad,
    nc,
    npd,
    pam,
    rnp,
    sam,
    sau,
    tsbd,
)
from .base import (
    DEFENSES,
    NEEDS_BATCHNORM,
    DefenseContext,
    Purified,
    TuneParams,
    purify,
    reinit_head,
)

__all__ = ["DEFENSES", "NEEDS_BATCHNORM", "DefenseContext", "Purified", "TuneParams", "purify",
           "reinit_head"]
