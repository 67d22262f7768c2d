"""Many machines, no shared disk (issue 35): two real `ppr worker` processes, each in its own
empty directory, share one audit through the real Redis, the real PostgreSQL and a real
S3-compatible server (moto's standalone server). The stages spread over both workers and
give the in-process report; a worker SIGKILLed mid-stage costs that stage only; reports and
the purified checkpoint come from the object store through the API; and after the jobs no
file of theirs is left on either worker's disk."""

from __future__ import annotations

import hashlib
import json

import pytest
import s3fs
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from ppr_engine import audit
from ppr_engine.spec import validate_spec
from service.app import create_app

from .conftest import HALF_THE_CORES, wait_for
from .test_stages import SPEC, _submit, assert_same_methods

pytestmark = pytest.mark.integration


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _finished(client, job_id, workers, seen: set | None = None):
    def done():
        if seen is not None:
            seen.update(r.worker for r in client.app.state.store.stages.of_job(job_id)
                        if r.state == "running" and r.worker)
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job["state"] in ("succeeded", "failed", "cancelled") and job

    job = wait_for(done, 600, 0.2, f"job {job_id}\n{workers.log('w1')}\n{workers.log('w2')}")
    assert job["state"] == "succeeded", job
    return job


def test_two_workers_share_an_audit_through_an_object_store(dist_settings, workers, bd3,
                                                             s3_bucket, tmp_path):
    url = f"{s3_bucket}/ppr"
    gateway = dist_settings.model_copy(update={"artifact_url": url})
    homes = {name: tmp_path / name for name in ("w1", "w2")}
    env = {name: {"PPR_ARTIFACT_URL": url, "PPR_DATA_DIR": str(home), **HALF_THE_CORES}
           for name, home in homes.items()}
    spec = json.loads(json.dumps(SPEC))
    spec["plan"]["methods"][0]["epochs"] = 20  # long enough to be killed in
    local = audit.run(validate_spec(spec), bd3).report
    for home in homes.values():
        home.mkdir()
    with TestClient(create_app(gateway)) as client:
        store = client.app.state.store
        procs = {n: workers.start(n, env[n], cwd=homes[n]) for n in homes}
        wait_for(lambda: store.workers.live(within_s=30) >= 2, 90, what="two heartbeats")
        job_id = _submit(client, bd3, spec)

        def owner():
            row = store.stages.get(job_id, "purify:ft")
            return row.state == "running" and row.progress > 0.05 and row.worker

        seen: set[str] = set()
        worker = wait_for(owner, 180, 0.2, f"purify:ft running\n{workers.log('w1')}")
        victim = next(n for n, p in procs.items() if worker.endswith(f":{p.pid}"))
        workers.kill_worker_only(procs[victim])
        assert _files(homes[victim] / "scratch")  # the killed stage's copies are left ...
        procs[victim] = workers.start(victim, env[victim], cwd=homes[victim])
        _finished(client, job_id, workers, seen)
        rows = {r.stage_id: r for r in store.stages.of_job(job_id)}
        assert rows["purify:ft"].attempts == 2  # the killed stage ran again ...
        assert all(r.attempts == 1 and r.state == "ok" for sid, r in rows.items()
                   if sid != "purify:ft"), {sid: (r.attempts, r.state) for sid, r in rows.items()}
        assert len(seen | {worker} | {r.worker for r in rows.values() if r.worker}) >= 2
        remote = client.get(f"/v1/jobs/{job_id}/report").json()
        md = client.get(f"/v1/jobs/{job_id}/report.md")
        html = client.get(f"/v1/jobs/{job_id}/report.html")
        assert md.status_code == html.status_code == 200 and "ft" in md.text
        assert "<html" in html.text.lower()

        pur = client.post("/v1/purify?method=ft",
                          files={"checkpoint": (bd3.name, bd3.read_bytes())},
                          data={"spec": json.dumps({**SPEC, "plan": {
                              **SPEC["plan"], "methods": [SPEC["plan"]["methods"][0]]}})})
        assert pur.status_code == 202, pur.text
        pur_job = _finished(client, pur.json()["id"], workers)
        blob = client.get(pur_job["links"]["artifacts"]["purified.safetensors"])
    assert blob.status_code == 200
    weights = tmp_path / "purified.safetensors"
    weights.write_bytes(blob.content)
    assert all(torch.isfinite(t).all() for t in load_file(weights).values())
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    stored = fs.cat(f"{url}/jobs/{pur_job['id']}/out/purified.safetensors")
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(blob.content).hexdigest()
    assert fs.exists(f"{url}/jobs/{job_id}/out/report.json")
    # ... and removed when that worker starts again: nothing of either job on any disk
    for name, home in homes.items():
        assert not [f for f in _files(home) if job_id in f or f.endswith(".safetensors")
                    or f.startswith("scratch/") and f.count("/") > 1], (name, _files(home))
    assert not [f for f in _files(dist_settings.data_dir) if f.endswith(".safetensors")]
    assert_same_methods(local, remote)
