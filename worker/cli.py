"""`ppr worker`: start a Celery worker bound to one device (one process per GPU).

One task at a time: a pool of one thread, so that the main thread stays free to answer
Celery's control commands (`celery -A worker.celery_app inspect ping`) while a job runs;
the job's compute runs in a supervised child of the fork server (`worker.supervise`). The
device is chosen here, before torch initializes CUDA (CUDA does not survive fork). A
heartbeat thread records the worker in the job store so /readyz can see it.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, help="Run a Celery worker for ppr-audit jobs.")


HEARTBEAT_S = 10.0


def health(max_age: float) -> int:
    """0 when a worker on this host recorded a heartbeat in the last `max_age` seconds (the
    heartbeat needs the process alive and the job store reachable), else 1; says which."""
    from service.settings import get_settings
    from service.store.db import JobStore

    host = socket.gethostname()
    try:
        age = JobStore(get_settings().db_url).workers.heartbeat_age(f"{host}:")
    except Exception as exc:  # noqa: BLE001 - an unreachable store is an unhealthy worker
        typer.echo(f"unhealthy: the job store is unreachable ({type(exc).__name__})", err=True)
        return 1
    if age is None or age > max_age:
        seen = "never" if age is None else f"{age:.0f} s ago"
        typer.echo(f"unhealthy: no heartbeat from a worker on {host} in the last "
                   f"{max_age:.0f} s (last: {seen})", err=True)
        return 1
    typer.echo(f"healthy: worker on {host} seen {age:.0f} s ago")
    return 0


def advertised_device(configured: str | None) -> str:
    """What this worker can run, as its heartbeat tells the gateway: `cpu`, or `cuda:K`
    with K the GPUs it sees (after --gpu), so that a spec asking for a device no worker has
    is refused at submission. Called after the fork server started: a CUDA query here
    cannot leak into job processes."""
    import torch

    count = 0 if configured == "cpu" else torch.cuda.device_count()
    return f"cuda:{count}" if count else "cpu"


def heartbeat(settings, worker: str, device: str, stop: threading.Event,
              every: float = HEARTBEAT_S) -> None:
    """Record this worker in the job store every `every` seconds until `stop`."""
    from service.store.db import JobStore

    store = JobStore(settings.db_url)
    while not stop.is_set():
        try:
            store.workers.seen(worker, device)
        except Exception:  # noqa: BLE001 - a missed heartbeat only delays readiness
            pass
        stop.wait(every)


def own_scratch(settings, hostname: str | None):
    """`settings` with this worker's own scratch directory (under the configured one, named
    by its node name), emptied first: local copies of an object store's artifacts that a
    killed run of this worker left are removed when it starts again, and never those of
    another worker on the same disk."""
    import re
    import shutil

    node = (hostname or "celery@%h").replace("%h", socket.gethostname())
    scratch = settings.scratch / re.sub(r"[^A-Za-z0-9_.@-]", "_", node)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ["PPR_SCRATCH_DIR"] = str(scratch)
    return settings.model_copy(update={"scratch_dir": scratch})


@app.command()
def main(
    gpu: Annotated[int | None, typer.Option(help="GPU index to bind (sets "
                                            "CUDA_VISIBLE_DEVICES)")] = None,
    loglevel: str = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name")] = None,
    check: Annotated[bool, typer.Option("--check", help="health check: exit 0 if a worker "
                                        "on this host sent a heartbeat recently, else 1")]
    = False,
    max_age: Annotated[float, typer.Option(help="--check: oldest acceptable heartbeat, "
                                           "seconds")] = HEARTBEAT_S * 3,
    threads: Annotated[int | None, typer.Option(min=1, max=1024, help="CPU compute threads "
                                                "per job (sets PPR_TORCH_THREADS); with N "
                                                "workers on one CPU machine, cores / N")]
    = None,
) -> None:
    """Consume jobs until stopped (or, with --check, report this host's worker health)."""
    if check:
        raise typer.Exit(health(max_age))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if threads is not None:
        os.environ["PPR_TORCH_THREADS"] = str(threads)
    from . import configure_logging

    configure_logging(loglevel)
    from service.settings import get_settings

    from .tasks import build, worker_id

    settings = own_scratch(get_settings(), hostname)
    celery_app = build(settings)
    from .supervise import warm_up

    warm_up()
    device = advertised_device(settings.device)
    stop = threading.Event()
    threading.Thread(target=heartbeat, args=(settings, worker_id(), device, stop),
                     daemon=True).start()
    argv = ["worker", "--pool=threads", "--concurrency=1", f"--loglevel={loglevel}",
            "-Q", settings.queue, "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["-n", hostname]
    try:
        celery_app.worker_main(argv)
    finally:
        stop.set()
