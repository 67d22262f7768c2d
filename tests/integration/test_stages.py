"""One audit spread over real workers (issue 24): the stages of one job run as Celery tasks
on two real `ppr worker` processes over the real Redis and PostgreSQL, and give the report
the in-process executor gives; a worker SIGKILLed mid-stage costs that stage only and
leaves no process of its own computing (issue 34 item 5); the
stages are listed before, during and after the run; an impossible plan is refused."""

from __future__ import annotations

import json
import os
import signal

import pytest
from fastapi.testclient import TestClient

from ppr_engine import audit
from ppr_engine.spec import validate_spec
from service.app import create_app

from .conftest import HALF_THE_CORES, group_members, wait_for

pytestmark = pytest.mark.integration

SPEC = {
    "model": {"arch": "small_cnn", "num_classes": 10},
    "data": {"clean": "synthetic:?n=600&seed=2", "test": "synthetic:?n=400&seed=1",
             "attacker": "synthetic:?n=600&seed=3"},
    "triggers": [{"attack": "badnets", "target": 3}],
    "plan": {"methods": [{"name": "ft", "epochs": 2, "augment": False},
                         {"name": "fst", "epochs": 2, "augment": False},
                         {"name": "ep", "epochs": 2, "augment": False}],
             "retune": {"poison_num": 10, "clean_num": 190, "epochs": 1, "sweep": [[20, 1]]},
             "qra": {"epochs": 1, "hidden": 32, "clean_num": 100, "poison_num": 100},
             "lmc": {"points": 3}},
    "gate": ["all.o_cacc >= 0.0"],
}
NUMBERS = ("o_cacc", "o_asr", "p_asr", "baseline_p_asr", "max_gap", "qra_asr", "lmc_lambda50")


def assert_same_methods(local, remote: dict) -> None:
    """Every method of the in-process report `local` has the verdict and, within 0.02, the
    numbers of the served report `remote` (the executors' random streams are the same)."""
    for m in local.methods:
        r = next(x for x in remote["methods"] if x["key"] == m.key)
        assert r["verdict"] == m.verdict, m.key
        for name in NUMBERS:
            a, b = getattr(m, name), r[name]
            assert (a is None) == (b is None) and (a is None or abs(a - b) <= 0.02), \
                (m.key, name, a, b)


def _submit(client, checkpoint, spec) -> str:
    r = client.post("/v1/audits", files={"checkpoint": (checkpoint.name,
                                                        checkpoint.read_bytes())},
                    data={"spec": json.dumps(spec)})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _stages(client, job_id) -> list[dict]:
    return client.get(f"/v1/jobs/{job_id}/stages").json()


def _both_alive(client, n: int = 2) -> bool:
    return client.app.state.store.workers.live(within_s=30) >= n


def _imagefolder_archive(path, refs: dict[str, str]):
    """The synthetic sets `refs` names (role -> ref), as one ImageFolder tar.gz of PNGs
    with one top folder per role."""
    import io

    from PIL import Image

    from ppr_engine import data

    from ..service.test_api import _archive

    def png(x) -> bytes:
        out = io.BytesIO()
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(out, format="PNG")
        return out.getvalue()

    members = {}
    for role, ref in refs.items():
        ds = data.load(ref)
        for i, (x, y) in enumerate(zip(ds.x, ds.y, strict=True)):
            members[f"{role}/{int(y)}/{i:04d}.png"] = png(x)
    path.write_bytes(_archive(members))
    return path


def test_two_workers_give_the_in_process_report(dist_settings, workers, bd3, tmp_path):
    """The data come as an uploaded archive, as users' do: each reference is decoded by
    the first stage that needs it and read back by every other stage, on either worker
    (worker.decoded), and the report is the in-process one. RA and QRA are batched (a
    `retune-batch` stage per budget, which waits for every purification and feeds every
    subject's `retune` stage; a `qra-batch` stage, which waits for every RA model and feeds
    every `qra` stage), as `auto` plans them on a GPU."""
    spec = json.loads(json.dumps(SPEC))
    spec["plan"]["retune"]["batched"] = spec["plan"]["qra"]["batched"] = "on"
    archive = _imagefolder_archive(tmp_path / "data.tar.gz", spec["data"])
    local_spec = {**spec, "data": {r: f"imagefolder:{archive}?split={r}" for r in spec["data"]}}
    local = audit.run(validate_spec(local_spec), bd3)
    with TestClient(create_app(dist_settings)) as client:
        workers.start("w1", HALF_THE_CORES), workers.start("w2", HALF_THE_CORES)
        wait_for(lambda: _both_alive(client), 90, what="two workers' heartbeats")
        up = client.post("/v1/datasets", files={"archive": ("data.tar.gz",
                                                            archive.read_bytes())})
        assert up.status_code == 201, up.text
        refs = {r: f"{up.json()['ref']}?split={r}" for r in spec["data"]}
        job_id = _submit(client, bd3, {**spec, "data": refs})
        before = _stages(client, job_id)
        assert [s["id"] for s in before] == local.plan.ids  # listed before anything ran
        seen_running = set()

        def finished():
            job = client.get(f"/v1/jobs/{job_id}").json()
            seen_running.update(s["id"] for s in _stages(client, job_id)
                                if s["state"] == "running")
            return job["state"] in ("succeeded", "failed", "cancelled") and job

        job = wait_for(finished, 300, 0.2, f"the job\n{workers.log('w1')}\n{workers.log('w2')}")
        assert job["state"] == "succeeded", job
        remote = client.get(f"/v1/jobs/{job_id}/report").json()
        after = _stages(client, job_id)
        rows = client.app.state.store.stages.of_job(job_id)
    assert seen_running  # stages were seen running during the run
    assert [s["id"] for s in after] == local.plan.ids
    assert sum(s["kind"] == "retune-batch" for s in after) == 2
    assert sum(s["kind"] == "qra-batch" for s in after) == 1
    assert all(s["state"] == "ok" and s["attempts"] == 1 for s in after), [
        (s["id"], s["state"], s["attempts"], s["error"]) for s in after]
    assert len({r.worker for r in rows if r.worker}) == 2  # one audit, two workers
    assert [s["name"] for s in remote["stages"]] == [s.name for s in local.report.stages]
    assert_same_methods(local.report, remote)
    assert remote["baseline"]["p_asr"] == pytest.approx(local.report.baseline.p_asr, abs=0.02)
    # `seconds` is the wall time and `stage_seconds` the stages' sum in both executors: in
    # one process the stages run one after another within the wall time
    assert local.report.seconds >= local.report.stage_seconds > 0
    assert remote["stage_seconds"] > 0 and remote["seconds"] >= max(
        s["seconds"] for s in remote["stages"])
    decoded = [line for name in ("w1", "w2") for line in workers.log(name, None).splitlines()
               if f"job {job_id}: decoded" in line]
    assert sorted(line.split("decoded ")[1].split(" (")[0] for line in decoded) == sorted(
        refs.values()), decoded  # each reference once, whichever worker ran the stage
    assert remote["provenance"]["data"]["clean"]["sha256"] == local.report.provenance.data[
        "clean"]["sha256"]


def test_a_worker_killed_mid_stage_costs_that_stage_only(dist_settings, workers, bd3):
    spec = json.loads(json.dumps(SPEC))
    spec["plan"]["methods"][0]["epochs"] = 20  # long enough to be killed in
    with TestClient(create_app(dist_settings)) as client:
        procs = {n: workers.start(n, HALF_THE_CORES) for n in ("w1", "w2")}
        wait_for(lambda: _both_alive(client), 90, what="two workers' heartbeats")
        job_id = _submit(client, bd3, spec)
        store = client.app.state.store

        def owner():
            row = store.stages.get(job_id, "purify:ft")
            return row.state == "running" and row.progress > 0.05 and row.worker

        worker = wait_for(owner, 180, 0.2, f"purify:ft running\n{workers.log('w1')}")
        victim = next(n for n, p in procs.items() if worker.endswith(f":{p.pid}"))
        assert len(group_members(procs[victim].pid)) >= 3  # worker, fork server, stage
        workers.kill_worker_only(procs[victim])
        # its stage's child and fork server die with it: no compute left orphaned
        wait_for(lambda: not group_members(procs[victim].pid), 15,
                 what="the killed worker's processes to die")
        job = wait_for(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["state"] in (
            "succeeded", "failed") and j, 600, what=f"the job after the kill\n"
            f"{workers.log('w1' if victim == 'w2' else 'w2')}")
        assert job["state"] == "succeeded", job
        rows = {r.stage_id: r for r in store.stages.of_job(job_id)}
        assert store.jobs.get(job_id).completions == 1  # the audit completed once
    assert rows["purify:ft"].attempts == 2  # the killed stage ran again ...
    assert all(r.attempts == 1 for sid, r in rows.items() if sid != "purify:ft"), \
        {sid: r.attempts for sid, r in rows.items()}  # ... and nothing else did
    assert all(r.state == "ok" for r in rows.values())


def test_a_sigterm_restart_leaves_no_stage_running_and_runs_nothing_stale(
        dist_settings, workers, bd3):
    """SIGTERM a worker mid-stage, then start another (a rolling restart): the stage goes
    back to pending and is sent again, the old message is dropped, and the job completes
    with every stage `ok`, none left `running`, no stage run on missing inputs (issue 34
    item 9)."""
    spec = json.loads(json.dumps(SPEC))
    spec["plan"]["methods"][0]["epochs"] = 20
    with TestClient(create_app(dist_settings)) as client:
        first = workers.start("w1")
        wait_for(lambda: _both_alive(client, 1), 90, what="the worker's heartbeat")
        job_id = _submit(client, bd3, spec)
        store = client.app.state.store
        wait_for(lambda: (r := store.stages.get(job_id, "purify:ft")).state == "running"
                 and r.progress > 0.05, 180, 0.2, f"purify:ft running\n{workers.log('w1')}")
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=60)
        # it stopped its stage's child on the way out; multiprocessing's resource tracker
        # ignores SIGTERM by design and leaves when the worker's end of its pipe closes
        wait_for(lambda: not group_members(first.pid), 15,
                 what="the stopped worker's processes to end")
        assert store.stages.get(job_id, "purify:ft").state == "pending"  # given back
        workers.start("w2")
        job = wait_for(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["state"] in (
            "succeeded", "failed") and j, 600, what=f"the job after the restart\n"
            f"{workers.log('w2')}")
        rows = store.stages.of_job(job_id)
    assert job["state"] == "succeeded", job
    assert all(r.state == "ok" for r in rows), [(r.stage_id, r.state, r.error) for r in rows]
    assert "KeyError" not in workers.log("w2")


def test_an_impossible_plan_is_refused_naming_the_stage(dist_settings, small_checkpoint):
    spec = json.loads(json.dumps(SPEC))
    spec["plan"]["retune"] = {"enabled": False}
    with TestClient(create_app(dist_settings)) as client:
        r = client.post("/v1/audits", files={"checkpoint": ("m.safetensors",
                                                            small_checkpoint.read_bytes())},
                        data={"spec": json.dumps(spec)})
        assert r.status_code == 422
        assert "plan.qra needs the retune stages" in r.json()["error"]["message"]
        assert client.get("/v1/jobs").json()["total"] == 0
