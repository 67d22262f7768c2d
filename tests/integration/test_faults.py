"""Faults survived, with real services: a private `redis-server` (append-only, as in the
compose file) that the test crashes and restarts, the real PostgreSQL behind a TCP proxy
that the test cuts, and real `ppr worker` processes. A failing artifact store is injected
into the worker's own runner (the disk cannot be filled safely in CI)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.dispatch import Dispatcher, dispatch
from service.settings import Settings
from service.store.db import JobStore

from ..service.conftest import POSTGRES_URL, files_under, postgres_schema_url, quick_spec
from ..service.test_api import submit
from .conftest import Workers, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server with append-only persistence, crashed and restarted at will."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is needed for the fault tests")
        self.folder, self.port, self.proc = folder, free_port(), None
        folder.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._answers(), 20, what="redis-server to start")

    def crash(self) -> None:
        """SIGKILL: no shutdown save, only what the append-only file already holds."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    if server.proc.poll() is None:
        server.crash()


@pytest.fixture
def fault_settings(tmp_path, redis_server):
    url, drop = postgres_schema_url()
    s = Settings(data_dir=tmp_path / "state", database_url=url, broker_url=redis_server.url,
                 queue=f"ppr-fault-{uuid.uuid4().hex[:8]}", lease_s=4.0,
                 progress_interval_s=0.3, visibility_timeout_s=30, max_upload_bytes=8 << 20,
                 dispatch_interval_s=0.5)
    yield s
    drop()


@pytest.mark.slow
def test_jobs_queued_before_a_redis_crash_all_run_after_it(fault_settings, redis_server,
                                                          small_checkpoint, tmp_path):
    with TestClient(create_app(fault_settings)) as c:
        ids = [submit(c, small_checkpoint, quick_spec()).json()["id"] for _ in range(3)]
    redis_server.crash()
    redis_server.start()  # replays the append-only file
    store = JobStore(fault_settings.db_url)
    workers = Workers(fault_settings, tmp_path)
    workers.start("w1")
    try:
        done = wait_for(lambda: all(store.jobs.get(i).state == "succeeded" for i in ids), 240,
                        what="every job queued before the crash to run")
        assert done, workers.log("w1")
    finally:
        workers.stop_all()
    assert [store.jobs.get(i).completions for i in ids] == [1, 1, 1]


@pytest.mark.slow
def test_while_redis_is_down_submissions_get_503_reads_work_and_it_recovers(
        fault_settings, redis_server, small_checkpoint):
    with TestClient(create_app(fault_settings)) as c:
        first = submit(c, small_checkpoint, quick_spec()).json()["id"]
        redis_server.crash()
        before = files_under(fault_settings.artifact_dir)
        r = submit(c, small_checkpoint, quick_spec())
        assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable"
        assert r.headers["Retry-After"] == "5"
        assert "the job queue (broker) is unreachable" in r.json()["error"]["message"]
        assert files_under(fault_settings.artifact_dir) == before  # nothing stored
        assert c.get(f"/v1/jobs/{first}").json()["state"] == "queued"  # reads work
        assert c.get("/v1/jobs").json()["total"] == 1
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith(
            "unreachable")
        redis_server.start()  # back, without restarting the API
        assert submit(c, small_checkpoint, quick_spec()).status_code == 202
        assert c.get("/readyz").json()["checks"]["broker"] == "ok"


@pytest.mark.slow
def test_a_job_stored_while_the_broker_died_is_dispatched_when_it_returns(
        fault_settings, redis_server, small_checkpoint):
    """The broker dies between the readiness check and the send: the job is stored,
    undispatched, and the gateway's dispatcher sends it once the broker answers."""
    import redis

    with TestClient(create_app(fault_settings)) as c:
        job_id = submit(c, small_checkpoint, quick_spec()).json()["id"]
    store = JobStore(fault_settings.db_url)
    with store.session() as s, s.begin():  # as if the send had failed
        s.get(type(store.jobs.get(job_id)), job_id).dispatched = False
    redis.Redis.from_url(redis_server.url).delete(fault_settings.queue)
    redis_server.crash()
    app = create_app(fault_settings)
    assert dispatch(store, app.state.queue, job_id) is False  # broker down: logged, kept
    assert store.jobs.undispatched(older_than_s=0) == [job_id]
    redis_server.start()
    sent = Dispatcher(store, app.state.queue, min_age_s=0).sweep()
    assert sent == 1 and store.jobs.undispatched(older_than_s=0) == []
    assert redis.Redis.from_url(redis_server.url).llen(fault_settings.queue) == 1


class Proxy:
    """A TCP proxy to PostgreSQL that the test can cut (close every connection and refuse
    new ones) and restore on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def up(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        try:  # wakes the accept() blocked in the other thread (close alone does not)
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


@pytest.mark.slow
def test_while_postgres_is_unreachable_the_api_answers_503_and_recovers(tmp_path,
                                                                       small_checkpoint):
    from sqlalchemy.engine import make_url

    url, drop = postgres_schema_url()
    real = make_url(POSTGRES_URL)
    proxy = Proxy((real.host or "127.0.0.1", real.port or 5432))
    proxy.up()
    proxied = url.replace(f"{real.host}:{real.port or 5432}", f"127.0.0.1:{proxy.port}")
    assert proxied != url
    s = Settings(data_dir=tmp_path / "state", database_url=proxied, max_upload_bytes=8 << 20)
    try:
        with TestClient(create_app(s)) as c:
            job_id = submit(c, small_checkpoint, quick_spec()).json()["id"]
            proxy.down()
            r = c.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 503 and r.headers["Retry-After"] == "5"
            assert "the job database is unreachable" in r.json()["error"]["message"]
            r = submit(c, small_checkpoint, quick_spec())
            assert r.status_code == 503
            assert c.get("/readyz").json()["checks"]["database"].startswith("unreachable")
            proxy.up()  # back, without restarting the API
            time.sleep(0.2)
            assert c.get(f"/v1/jobs/{job_id}").status_code == 200
            assert submit(c, small_checkpoint, quick_spec()).status_code == 202
            assert c.get("/v1/jobs").json()["total"] == 2
    finally:
        proxy.down()
        drop()


def test_an_artifact_store_failing_mid_write_fails_the_job_and_serves_nothing(
        tmp_path, small_checkpoint, monkeypatch):
    """The disk fills while the worker writes the reports: the first report is on disk,
    the second write fails. The job fails with the reason, and nothing of it is served or
    left behind."""
    import errno

    from service.store.artifacts import ArtifactStore
    from worker.runner import run_job

    # inline: the write is patched in this process (a job's child would not see it)
    s = Settings(data_dir=tmp_path / "state", job_process="inline")
    with TestClient(create_app(s)) as c:
        job_id = submit(c, small_checkpoint, quick_spec()).json()["id"]
        real, written = ArtifactStore.write_bytes, []

        def disk_fills(self, key, data):
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(key)
            return real(self, key, data)

        monkeypatch.setattr(ArtifactStore, "write_bytes", disk_fills)
        st = c.app.state
        out = run_job(job_id, settings=s, store=st.store, artifacts=st.artifacts, worker="w")
        assert out.status == "failed" and written == [f"jobs/{job_id}/out/report.json"]
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "failed" and "No space left on device" in job["error"]
        r = c.get(f"/v1/jobs/{job_id}/report")
        assert r.status_code == 409 and "failed" in r.json()["error"]["message"]
        assert c.get(f"/v1/jobs/{job_id}/artifacts/report.json").status_code == 404
        assert not (s.artifact_dir / "jobs" / job_id / "out").exists()
