"""`ppr serve`: the API, and in embedded mode a worker subprocess beside it.

Embedded mode needs nothing installed: SQLite and a filesystem queue under the data
directory. At start-up every queued job (and every running job whose worker died) is queued
again, so a job submitted before a restart runs after it; claims are idempotent, so a job
queued twice still runs once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Annotated

import typer

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _exit(signum, frame) -> None:
    raise SystemExit(0)


def _term_with_parent() -> None:
    """In the worker child, before exec: SIGTERM it when `ppr serve` dies, however it dies
    (Linux; elsewhere the `finally` of `main` is the only guard)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
app = typer.Typer(add_completion=False, help="Serve the ppr-audit API.")


@app.command()
def main(
    host: str = "127.0.0.1",
    port: int = 8000,
    worker: Annotated[bool | None, typer.Option(help="start a worker subprocess (default: "
                                                "yes in embedded mode)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="gateway processes (uvicorn workers); "
                                         "rate limits are counted per process")] = 1,
    access_log: Annotated[bool, typer.Option(help="log every request (costs about a tenth "
                                             "of the status-read throughput)")] = True,
) -> None:
    """Run the API (and, embedded, a worker)."""
    import uvicorn

    from .app import create_app
    from .settings import get_settings
    from .store.db import JobStore

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if not settings.tokens and host not in LOOPBACK and not settings.allow_open:
        typer.echo(f"ppr serve: refusing to listen on {host} without tokens (anyone could "
                   "submit jobs and read every report); set PPR_TOKENS or PPR_TOKENS_FILE, or "
                   "PPR_ALLOW_OPEN=1 to run open", err=True)
        raise typer.Exit(2)
    application = create_app(settings)
    mode = "embedded (SQLite + filesystem queue)" if settings.embedded else "distributed"
    typer.echo(f"ppr-audit: {mode}; data in {settings.data_dir.resolve()}; "
               f"http://{host}:{port}/docs", err=True)
    store = JobStore(settings.db_url)
    for job_id in store.jobs.recoverable():
        application.state.queue.enqueue(job_id)
    child = None
    if worker if worker is not None else settings.embedded:
        child = subprocess.Popen([sys.executable, "-m", "ppr_cli.main", "worker"],
                                 env={**os.environ, "PPR_DATA_DIR": str(settings.data_dir)},
                                 preexec_fn=_term_with_parent)
    # uvicorn handles SIGTERM itself, then raises it again once it has stopped: this handler
    # turns that into an exit that runs the `finally` below, so the worker is stopped too
    signal.signal(signal.SIGTERM, _exit)
    try:
        if workers > 1:  # each process builds its own app from the same environment
            uvicorn.run("service.app:create_app", factory=True, host=host, port=port,
                        workers=workers, log_level="info", access_log=access_log)
        else:
            uvicorn.run(application, host=host, port=port, log_level="info",
                        access_log=access_log)
    finally:
        if child is not None:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
