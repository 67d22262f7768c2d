"""Wall time of one demo-sized audit spread over 1 and 2 `ppr worker` processes (Celery over
Redis, the job store in SQLite), against the in-process executor, and the stage critical
path (the longest chain of dependent stages: what no number of workers can beat).

Run: `python bench/stages_walltime.py [--broker redis://127.0.0.1:6379/14] [--workers 1 2]
[--threads N]` (writes bench/results/stages_walltime.json). Needs a Redis; on a machine with
two cores the workers share them, so the figure says how much of the plan runs side by
side, not what two GPUs would give. Each worker gets cores / workers compute threads
(`PPR_TORCH_THREADS`) unless `--threads` says otherwise; `--threads 0` leaves torch's
default (one per core in every worker: oversubscribed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from bench.common import write  # noqa: E402
from ppr_engine import audit  # noqa: E402
from ppr_engine.demo import demo_spec, make_demo_model  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402


def distributed(spec: dict, checkpoint: Path, n: int, broker: str, tmp: Path,
                threads: int | None) -> dict:
    """One audit on `n` fresh workers with `threads` compute threads each (None: torch's
    default): wall time from submission to the final state, and each stage's seconds as
    the job store recorded them."""
    settings = Settings(data_dir=tmp / f"state-{n}", broker_url=broker,
                        queue=f"ppr-bench-{uuid.uuid4().hex[:8]}", lease_s=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPR_")}
    env.update(PPR_DATA_DIR=str(settings.data_dir), PPR_DATABASE_URL=settings.db_url,
               PPR_BROKER_URL=broker, PPR_QUEUE=settings.queue, PPR_LEASE_S="10")
    if threads:
        env["PPR_TORCH_THREADS"] = str(threads)
    with TestClient(create_app(settings)) as client:
        procs = [subprocess.Popen([sys.executable, "-m", "ppr_cli.main", "worker", "--hostname",
                                   f"b{i}@%h"], cwd=ROOT, env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(n)]
        try:
            while client.app.state.store.workers.live(within_s=30) < n:
                time.sleep(0.5)
            start = time.perf_counter()
            r = client.post("/v1/audits", files={"checkpoint": (checkpoint.name,
                                                                checkpoint.read_bytes())},
                            data={"spec": json.dumps(spec)})
            job_id = r.json()["id"]
            while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in (
                    "succeeded", "failed", "cancelled"):
                time.sleep(0.5)
            wall = time.perf_counter() - start
            stages = client.get(f"/v1/jobs/{job_id}/stages").json()
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
    return {"workers": n, "threads_per_worker": threads or "torch default",
            "state": job["state"], "wall_seconds": round(wall, 1),
            "stage_seconds": {s["id"]: s["seconds"] for s in stages}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=None, help="compute threads per worker "
                    "(default: cores / workers; 0: torch's default)")
    args = ap.parse_args()
    spec = demo_spec(quick=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "bd.safetensors"
        make_demo_model(ckpt)
        start = time.perf_counter()
        local = audit.run(spec, ckpt)
        local_wall = time.perf_counter() - start
        seconds = {s.name: s.seconds for s in local.report.stages}
        seconds.update({s.name: s.seconds for m in local.report.methods for s in m.stages})
        critical, chain = local.plan.critical_path(seconds)
        cores = os.cpu_count() or 1
        runs = [distributed(spec.model_dump(mode="json"), ckpt, n, args.broker, Path(tmp),
                            max(1, cores // n) if args.threads is None else args.threads)
                for n in args.workers]
    write("stages_walltime", {
        "what": "the quick demo audit (FT, LP, FST, BTI-DBF, EP, PAM; RA with sweep, QRA, "
                "LMC) in-process and as Celery stages over 1 and 2 workers on this machine, each "
                "worker with its share of the cores (PPR_TORCH_THREADS)",
        "in_process_seconds": round(local_wall, 1), "stage_sum_seconds": round(sum(
            seconds.values()), 1),
        "critical_path_seconds": round(critical, 1), "critical_path": chain,
        "runs": runs})


if __name__ == "__main__":
    main()
