"""What the fork server loads before it forks any job or stage child (`worker.supervise`).

Importing the engine is not all a child would otherwise pay for on its own: the first model
built on the meta device (a checkpoint's shape check, the work estimate's FLOP count)
imports torch's meta kernels and sympy, and the first PostgreSQL connection imports the
driver. Every stage child used to do that again, about 0.8 s of each stage in a distributed
audit whatever its size (docs/RESULTS.md). Done here once, every child is forked with it
done. Nothing here touches CUDA: the children must be free to initialize it.
"""

from __future__ import annotations

import contextlib

import worker.child  # noqa: F401  (the engine and the child's entry points)
from ppr_engine.cost import REFERENCE_ARCH, forward_flops


def warm() -> None:
    """Run, once, the first-use work every child repeats (see module)."""
    forward_flops(REFERENCE_ARCH, 10)  # meta kernels, sympy, the FLOP counter
    with contextlib.suppress(ImportError):  # the PostgreSQL driver, where installed
        import psycopg  # noqa: F401
        import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401


warm()
