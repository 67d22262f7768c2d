"""End to end through the real queue: HTTP submission, Redis, a real Celery worker
process, PostgreSQL, and the worker's health check. (A worker killed in the middle of an
audit: tests/integration/test_stages.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from ..service.conftest import quick_spec
from .conftest import ROOT, settings_env, wait_for

pytestmark = pytest.mark.integration


def _submit(client, checkpoint, spec):
    r = client.post("/v1/audits", files={"checkpoint": (checkpoint.name,
                                                        checkpoint.read_bytes())},
                    data={"spec": json.dumps(spec)})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _state(client, job_id):
    return client.get(f"/v1/jobs/{job_id}").json()


def _check(settings, max_age: float) -> subprocess.CompletedProcess:
    """The worker's compose healthcheck, `ppr worker --check`, as Docker runs it."""
    return subprocess.run([sys.executable, "-m", "ppr_cli.main", "worker", "--check",
                           "--max-age", str(max_age)], cwd=ROOT, env=settings_env(settings),
                          capture_output=True, text=True, timeout=60)


def _ping(settings) -> subprocess.CompletedProcess:
    """`celery inspect ping` through the named app, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "worker.celery_app",
                           "inspect", "ping", "--timeout", "5"], cwd=ROOT,
                          env=settings_env(settings), capture_output=True, text=True,
                          timeout=60)


def test_job_runs_on_a_real_worker(dist_settings, workers, small_checkpoint):
    with TestClient(create_app(dist_settings)) as client:
        before = _check(dist_settings, 60)
        assert before.returncode == 1 and "no heartbeat" in before.stderr
        w1 = workers.start("w1")
        # a stage that outlasts the ping by far, cancelled once the ping has answered
        long_spec = quick_spec(["ft"])
        long_spec["plan"]["methods"][0]["epochs"] = 500  # the service's limit: a minute or more
        long_id = _submit(client, small_checkpoint, long_spec)
        wait_for(lambda: any(s["state"] == "running" and s["id"] == "purify:ft" for s in
                             client.get(f"/v1/jobs/{long_id}/stages").json()), 180,
                 what=f"purify:ft running\n{workers.log('w1')}")
        # the worker answers Celery's control commands while it runs a job (issue 33)
        busy = _ping(dist_settings)
        assert busy.returncode == 0 and "w1@" in busy.stdout and "pong" in busy.stdout, (
            busy.stdout + busy.stderr)
        assert any(s["id"] == "purify:ft" and s["state"] == "running"
                   for s in client.get(f"/v1/jobs/{long_id}/stages").json())
        assert client.delete(f"/v1/jobs/{long_id}").status_code == 200
        wait_for(lambda: _state(client, long_id)["state"] == "cancelled", 120,
                 what=f"job {long_id} cancelled\n{workers.log('w1')}")
        job_id = _submit(client, small_checkpoint, quick_spec(["ft"]))
        job = wait_for(lambda: (j := _state(client, job_id))["state"] in (
            "succeeded", "failed") and j, 180, what=f"job {job_id}\n{workers.log('w1')}")
        assert job["state"] == "succeeded", job
        report = client.get(f"/v1/jobs/{job_id}/report").json()
        assert report["methods"][0]["key"] == "ft" and report["gate"]["passed"] is True
        assert wait_for(lambda: client.get("/readyz").status_code == 200, 30,
                        what="readiness with a live worker")
        alive = _check(dist_settings, 60)
        assert alive.returncode == 0 and "healthy" in alive.stdout
        workers.kill(w1)
        time.sleep(2.5)
        dead = _check(dist_settings, 2)
        assert dead.returncode == 1 and "last:" in dead.stderr
