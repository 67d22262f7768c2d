"""A job the worker can always stop (issue 22): cancellation reaches every method mid-stage,
the time limit holds in Celery's one-thread pool, a silent child is killed at the hard limit, and
SIGTERM stops `ppr worker` and `ppr serve` cleanly, the running job released, never
orphaned. Real child processes, a real SQLite job store, real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

from ppr_engine.defenses import DEFENSES
from service.app import create_app
from service.settings import Settings
from worker.runner import run_job
from worker.supervise import supervise

from ..e2e.test_serve_and_gate import ROOT, Server, clean_env, free_port
from ..integration.conftest import wait_for
from ..service.conftest import quick_spec
from ..service.test_api import submit

# each method at a budget that runs for minutes here, so the cancel lands mid-stage
LONG = {"ft": {"epochs": 500}, "lp": {"epochs": 500}, "ft_init": {"epochs": 500},
        "fe_tuning": {"epochs": 500}, "fst": {"epochs": 500}, "ep": {"epochs": 500},
        "fp": {"epochs": 500}, "nad": {"epochs": 500, "teacher_epochs": 500},
        "anp": {"iterations": 100_000}, "ibau": {"rounds": 20, "K": 100},
        "ft_sam": {"epochs": 500}, "tsbd": {"epochs": 500, "max_unlearn_epochs": 500,
                                            "unlearn_acc": 0.0},
        "bti_dbf": {"inversion": {"pretrain_epochs": 500}},
        "pam": {"inversion": {"pretrain_epochs": 500}},
        "nc": {"scan": {"epochs": 200}}, "sau": {"epochs": 500}, "npd": {"epochs": 500},
        "mcr": {"ft_epochs": 500}, "rnp": {"unlearning_epochs": 500, "clean_threshold": 0.0}}
# One pass over the weights (CLP) or over one batch (BNP): nothing runs long enough to be
# cancelled mid-way; the job's cancellation before and after its stages covers them.
INSTANT = {"clp", "bnp"}


def _long_spec(method: str) -> dict:
    spec = quick_spec([method])
    spec["plan"]["methods"] = [{"name": method, **LONG.get(method, {"epochs": 500})}]
    spec["data"]["clean"] = "synthetic:?n=600&seed=2"
    return spec


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("supervised")
    settings = Settings(data_dir=root / "state", progress_interval_s=0.2, lease_s=5,
                        submit_rate_per_min=0, max_active_jobs=1000)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def _start(client, settings, job_id: str) -> tuple[threading.Thread, dict]:
    """run_job in a thread, as the Celery task runs it; the outcome lands in the dict."""
    out: dict = {}
    st = client.app.state

    def work() -> None:
        out["outcome"] = run_job(job_id, settings=settings, store=st.store,
                                 artifacts=st.artifacts, worker="w-test")

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, out


def test_every_method_is_cancelled_mid_stage():
    assert sorted([*LONG, *INSTANT]) == sorted(DEFENSES.names())


@pytest.mark.parametrize("method", sorted(LONG))
def test_cancel_stops_a_running_method(service, small_checkpoint, method):
    """DELETE while the method purifies: the job is `cancelled` within seconds (its child
    is stopped, whatever loop it was in: ANP's pruning and I-BAU's fixed point report no
    progress), and nothing of it is served."""
    client, settings = service
    job_id = submit(client, small_checkpoint, _long_spec(method)).json()["id"]
    thread, out = _start(client, settings, job_id)
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["stage"] == f"purify:{method}",
             120, 0.1, f"{method} purifying")
    time.sleep(0.5)  # well into the stage
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
    thread.join(30)
    assert not thread.is_alive(), f"{method}: the job did not stop within 30 s of the cancel"
    assert out["outcome"].status == "cancelled"
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    assert client.get(f"/v1/jobs/{job_id}/report").status_code == 409


def test_the_time_limit_holds_and_is_never_retried(tmp_path, small_checkpoint):
    """PPR_JOB_TIME_LIMIT_S at 3 s, an FT job of 500 epochs: the job fails with "time
    limit" on its first attempt, and the failure is final (the task would not retry it)."""
    settings = Settings(data_dir=tmp_path / "state", job_time_limit_s=3)
    with TestClient(create_app(settings)) as client:
        job_id = submit(client, small_checkpoint, _long_spec("ft")).json()["id"]
        st = client.app.state
        outcome = run_job(job_id, settings=settings, store=st.store, artifacts=st.artifacts,
                          worker="w", final_attempt=False)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert outcome.status == "failed"
    assert job["state"] == "failed" and job["error_kind"] == "time_limit", job
    assert "time limit" in job["error"] and job["attempts"] == 1


def silent(job_id, worker, settings_json, conn, started) -> None:
    """A child that computes without ever reporting (a stage with no progress)."""
    time.sleep(3600)


def test_a_silent_child_is_killed_at_the_hard_limit_and_its_lease_kept(tmp_path,
                                                                       small_checkpoint):
    """The soft limit needs a progress report; a child that never reports is killed at the
    limit plus its grace, and while it ran the supervisor kept renewing its lease."""
    settings = Settings(data_dir=tmp_path / "state", job_time_limit_s=1, lease_s=2)
    with TestClient(create_app(settings)) as client:
        job_id = submit(client, small_checkpoint, quick_spec()).json()["id"]
        store = client.app.state.store
        assert store.jobs.claim(job_id, "w", settings.lease_s) == "claimed"
        done = supervise(silent, (job_id, "w", settings.model_dump_json()),
                         renew=lambda: store.jobs.renew(job_id, "w", settings.lease_s),
                         should_stop=lambda: False, time_limit_s=settings.job_time_limit_s)
        lease = store.jobs.get(job_id).lease_until
    assert done.status == "failed" and done.error_kind == "time_limit"
    assert lease is not None  # renewed past the 2 s lease while the child was silent


def report_threads(job_id, worker, settings_json, conn, started) -> None:
    """A child that enters as every job child does and says how many threads it computes
    with."""
    import torch

    from worker.child import enter_child

    enter_child(settings_json, conn)
    conn.send({"status": "succeeded", "result": str(torch.get_num_threads())})


@pytest.mark.parametrize("threads", [1, 5])
def test_a_job_child_computes_with_the_workers_share_of_the_cores(tmp_path, threads):
    """PPR_TORCH_THREADS reaches the child that runs the job (with two workers on two
    cores, one thread each instead of two: four threads on two cores made one audit 2.8x
    slower on two workers than on one)."""
    settings = Settings(data_dir=tmp_path / "state", torch_threads=threads)
    done = supervise(report_threads, ("j", "w", settings.model_dump_json()),
                     renew=lambda: False, should_stop=lambda: False, time_limit_s=60)
    assert done.status == "succeeded" and done.result == str(threads)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigterm_stops_a_worker_and_releases_its_job(tmp_path, small_checkpoint):
    """A real `ppr worker` (embedded: SQLite and the filesystem queue) runs a long job;
    SIGTERM stops the worker and its job's process, and the job goes back to the queue
    (queued and marked undispatched, so a gateway's dispatcher sends it again)."""
    settings = Settings(data_dir=tmp_path / "state", lease_s=5, progress_interval_s=0.2)
    log = open(tmp_path / "worker.log", "wb")
    with TestClient(create_app(settings)) as client:
        proc = subprocess.Popen([sys.executable, "-m", "ppr_cli.main", "worker"], cwd=ROOT,
                                env=clean_env(settings.data_dir), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            job_id = submit(client, small_checkpoint, _long_spec("ft")).json()["id"]
            wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["stage"] == "purify:ft",
                     120, what=f"the job running\n{(tmp_path / 'worker.log').read_text()}")
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(60)
            wait_for(lambda: _group_gone(proc.pid), 30, what="the job's process gone")
        finally:
            if proc.poll() is None or not _group_gone(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
        job = client.get(f"/v1/jobs/{job_id}").json()
        row = client.app.state.store.jobs.get(job_id)
    assert job["state"] == "queued", (job, (tmp_path / "worker.log").read_text()[-3000:])
    # released: no owner, and sent again (this test's gateway runs the dispatcher)
    assert row.worker is None and "worker was stopped" in job["message"]


def test_sigterm_on_serve_stops_its_worker_too(tmp_path):
    """SIGTERM to `ppr serve` alone (not its process group): the server and the worker it
    started both exit; nothing is left running to take jobs."""
    server = Server(tmp_path / "state", free_port(), tmp_path / "serve.log")
    try:
        wait_for(lambda: len(_group_members(server.proc.pid)) >= 2, 60,
                 what="the embedded worker started")
        os.kill(server.proc.pid, signal.SIGTERM)
        server.proc.wait(60)
        wait_for(lambda: _group_gone(server.proc.pid), 60,
                 what=f"the worker gone\n{(tmp_path / 'serve.log').read_text()[-2000:]}")
    finally:
        if not _group_gone(server.proc.pid):
            os.killpg(server.proc.pid, signal.SIGKILL)


def _group_members(pgid: int) -> list[int]:
    """Processes in process group `pgid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")
def test_a_sigkilled_worker_takes_its_job_child_with_it(tmp_path):
    """The job child's parent is the fork server, so the parent-death signal never fired
    when the worker was SIGKILLed and the child computed on (issue 34 item 5). Now it
    dies within seconds, whatever killed the worker."""
    pidfile = tmp_path / "child.pid"
    script = (
        "from service.settings import Settings\n"
        "from worker.supervise import supervise\n"
        "from tests.worker.spin import spin\n"
        f"supervise(spin, ({str(pidfile)!r}, Settings().model_dump_json()),\n"
        "          renew=lambda: False, should_stop=lambda: False, time_limit_s=600)\n")
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                              env=clean_env(tmp_path / "state"))
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=120)
        child = int(pidfile.read_text())
        assert _alive(child)
        time.sleep(1.0)
        assert _alive(child)  # the watchdog does not fire while the worker lives
        worker.kill()
        worker.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the job child outlived its SIGKILLed worker"
    finally:
        worker.kill()
        if pidfile.exists() and _alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_running_stage_shows_its_own_progress_and_every_stage_its_seconds(
        service, small_checkpoint):
    """The stage view moves while a long stage runs (it sat at 0.0 until the stage ended),
    and every finished stage, `report` included, has its seconds (issue 33 item 4)."""
    client, settings = service
    spec = quick_spec(["ft"])
    spec["plan"]["methods"] = [{"name": "ft", "epochs": 40}]
    spec["data"]["clean"] = "synthetic:?n=600&seed=2"
    job_id = submit(client, small_checkpoint, spec).json()["id"]
    thread, out = _start(client, settings, job_id)
    seen: list[float] = []

    def moving() -> bool:
        row = next(s for s in client.get(f"/v1/jobs/{job_id}/stages").json()
                   if s["id"] == "purify:ft")
        if row["state"] == "running":
            seen.append(row["progress"])
        return len({p for p in seen if 0 < p < 1}) >= 2

    wait_for(moving, 120, 0.1, "purify:ft reporting its progress")
    thread.join(120)
    assert out["outcome"].status == "succeeded"
    stages = client.get(f"/v1/jobs/{job_id}/stages").json()
    assert all(s["state"] in ("ok", "skipped") and s["seconds"] is not None for s in stages), [
        (s["id"], s["state"], s["seconds"]) for s in stages]


def test_children_are_forked_from_a_warmed_server():
    """What every stage child would otherwise pay for itself (the meta-device model build
    behind the shape check and the FLOP count) is done in the fork server, once."""
    from worker.supervise import context

    from .spin import warm_state

    ctx = context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=warm_state, args=(send,))
    proc.start()
    send.close()
    state = receive.recv()
    proc.join(30)
    assert state == {"sympy": True, "flop_counts": 1}


def test_the_worker_health_check_imports_no_torch():
    """`ppr worker --check` runs as a container health check every few seconds: what it
    imports (the settings, the job store, the worker CLI) must not pull in torch."""
    probe = ("import sys, service.settings, service.store.db, worker.cli; "
             "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, timeout=120).returncode == 0
