"""A job child that computes forever (for the orphaned-compute test): it enters as every
job child does, writes its pid, and spins on the CPU until something kills it."""

from __future__ import annotations

import os
from pathlib import Path


def spin(pidfile: str, settings_json: str, conn, started: float) -> None:
    from worker.child import enter_child

    enter_child(settings_json, conn)
    Path(pidfile).write_text(str(os.getpid()))
    x = 0
    while True:
        x += 1


def warm_state(conn) -> None:
    """A child that reports what it found done when it was forked: whether torch's meta
    kernels' sympy is loaded and how many FLOP counts are cached."""
    import sys

    from ppr_engine.cost import forward_flops

    conn.send({"sympy": "sympy" in sys.modules,
               "flop_counts": forward_flops.cache_info().currsize})
    conn.close()
