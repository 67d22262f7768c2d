"""`ppr worker`: start a Celery worker bound to one device (one process per GPU).

CUDA does not survive fork, so the worker uses the solo pool (one job at a time, in the
worker process itself) and the device is chosen here, before torch initializes CUDA.
A heartbeat thread records the worker in the job store so /readyz can see it.
"""

from __future__ import annotations

import os
import threading
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, help="Run a Celery worker for ppr-audit jobs.")


def heartbeat(settings, worker: str, device: str, stop: threading.Event,
              every: float = 10.0) -> None:
    """Record this worker in the job store every `every` seconds until `stop`."""
    from service.store.db import JobStore

    store = JobStore(settings.db_url)
    while not stop.is_set():
        try:
            store.worker_seen(worker, device)
        except Exception:  # noqa: BLE001 - a missed heartbeat only delays readiness
            pass
        stop.wait(every)


@app.command()
def main(
    gpu: Annotated[int | None, typer.Option(help="GPU index to bind (sets "
                                            "CUDA_VISIBLE_DEVICES)")] = None,
    loglevel: str = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name")] = None,
) -> None:
    """Consume jobs until stopped."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import logging

    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s %(levelname)s "
                        "%(name)s] %(message)s")
    from service.settings import get_settings

    from .tasks import build, worker_id

    settings = get_settings()
    celery_app = build(settings)
    device = settings.device or ("cuda" if gpu is not None else "auto")
    stop = threading.Event()
    threading.Thread(target=heartbeat, args=(settings, worker_id(), device, stop),
                     daemon=True).start()
    argv = ["worker", "--pool=solo", "--concurrency=1", f"--loglevel={loglevel}",
            "-Q", settings.queue, "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["-n", hostname]
    try:
        celery_app.worker_main(argv)
    finally:
        stop.set()
