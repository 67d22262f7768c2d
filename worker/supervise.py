"""Running one job in a child process the worker can always stop.

Celery's one-thread pool (one job at a time, in the worker process: CUDA does not survive
a fork) applies no time limit, and a job that is computing never looks at its cancel flag between
two progress reports. So the worker runs each job in a child process and watches it: every
`heartbeat_s` it renews the job's lease (a stage that reports nothing for minutes keeps its
lease) and reads the cancel flag; it kills the child when the job is cancelled (the job is
`cancelled` within seconds, whatever loop it was in), when the job outlives
`job_time_limit_s` plus a grace period (the job fails with "time limit", never retried), or
when the worker itself is asked to stop (the job is released to the queue, never orphaned).
The child reports progress itself (and stops at its next report past the time limit: the
soft limit); it sends its outcome back through a pipe.

The children fork from a server process that has imported the engine but never touched
CUDA (`forkserver`), so a job starts in milliseconds rather than re-importing torch.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("ppr.worker")

_CONTEXT: Any = None


def context():
    """The multiprocessing context children start from (forkserver on Linux, with the
    engine imported and warmed once, `worker.preload`; spawn elsewhere)."""
    global _CONTEXT
    if _CONTEXT is None:
        if sys.platform.startswith("linux"):
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["worker.preload"])
        else:
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


def warm_up() -> None:
    """Start the fork server now and wait until it has imported the engine (seconds), not
    inside a job's lease: a worker calls this before it takes its first task. A first
    child started and joined is what waits for it."""
    proc = context().Process(target=_nothing, daemon=True)
    proc.start()
    proc.join(300)


def _nothing() -> None:
    """The child `warm_up` starts."""


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (best effort elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def die_with_worker(conn) -> None:
    """SIGKILL this child as soon as the worker that started it dies, however it dies.

    The child's parent is the fork server, so Linux's parent-death signal (above) follows
    the server, not the worker: a SIGKILLed worker left its job computing. The worker holds
    the only read end of the pipe the child reports on (`conn` is the write end); when the
    worker dies the kernel closes that end and the write end reports POLLERR, which a
    thread here waits for without a timer. The worker closing the pipe after the outcome
    arrived is the same event, but the child has sent its outcome and is exiting by then."""
    import select
    import threading

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), 0)  # POLLERR and POLLHUP are always reported
        while True:
            for _, event in poller.poll():
                if event & select.POLLNVAL:  # the child closed its end: it is finishing
                    return
                if event & (select.POLLERR | select.POLLHUP):
                    os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-worker", daemon=True).start()


@dataclass
class Finished:
    """How a supervised job ended: the child's own outcome, or why it was stopped."""

    status: str  # succeeded | failed | cancelled | released | crashed
    error: str | None = None
    error_kind: str | None = None
    artifacts: dict[str, str] | None = None
    result: str | None = None  # a stage's result (JSON)
    seconds: float | None = None


def grace_s(limit_s: float) -> float:
    """How long past the time limit a child may run before it is killed (the soft limit
    stops it at its next progress report before that)."""
    return min(120.0, max(2.0, 0.1 * limit_s))


def supervise(target: Callable, args: tuple, *, renew: Callable[[], bool],
              should_stop: Callable[[], bool], time_limit_s: float,
              started: float | None = None, heartbeat_s: float = 1.0) -> Finished:
    """Run `target(*args, conn, started)` in a child and watch it (see module): `renew`
    renews the lease and says whether the job was cancelled; `time_limit_s` counts from
    `started` (monotonic; default now), the job's start when a stage of it runs."""
    ctx = context()
    receive, send = ctx.Pipe(duplex=False)
    started = time.monotonic() if started is None else started
    proc = ctx.Process(target=target, args=(*args, send, started), daemon=True)
    proc.start()
    send.close()
    renew()  # starting may take a while (the fork server's first start): keep the lease
    deadline = started + time_limit_s + grace_s(time_limit_s)
    try:
        while True:
            if receive.poll(heartbeat_s):
                try:
                    outcome = receive.recv()
                except EOFError:  # the child died without a word (killed, out of memory)
                    proc.join(10)
                    return Finished("crashed", f"the job's process died (exit code "
                                    f"{proc.exitcode})", "system")
                proc.join(30)
                return Finished(**outcome)
            if not proc.is_alive():
                return Finished("crashed", f"the job's process died (exit code "
                                f"{proc.exitcode})", "system")
            if renew():
                _stop(proc)
                return Finished("cancelled")
            if time.monotonic() > deadline:
                _stop(proc)
                return Finished("failed", f"time limit: the job ran longer than "
                                f"{time_limit_s:g} s (PPR_JOB_TIME_LIMIT_S) and was stopped",
                                "time_limit")
            if should_stop():
                _stop(proc)
                return Finished("released", "the worker was stopped; the job went back to "
                                "the queue", "system")
    finally:
        receive.close()
        if proc.is_alive():
            _stop(proc)


def _stop(proc, wait_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `wait_s`."""
    proc.terminate()
    proc.join(wait_s)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
