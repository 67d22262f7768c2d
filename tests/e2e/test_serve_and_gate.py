"""`ppr serve` in embedded mode (nothing else running: SQLite and a filesystem queue): a job
queued before a restart runs after it. `ppr gate` against such a server: test_gate.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..service.conftest import quick_spec

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPR_")}
    env.update(PPR_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return env


class Server:
    """A `ppr serve` subprocess."""

    def __init__(self, data_dir: Path, port: int, log: Path, worker: bool = True,
                 env: dict[str, str] | None = None) -> None:
        args = [sys.executable, "-m", "ppr_cli.main", "serve", "--port", str(port)]
        if not worker:
            args.append("--no-worker")
        self.log = log
        self.proc = subprocess.Popen(args, cwd=ROOT, env={**clean_env(data_dir), **(env or {})},
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"server did not start:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def ppr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppr_cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def wait_state(url: str, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


@pytest.mark.slow
def test_embedded_serve_restart(tmp_path, small_checkpoint):
    data_dir, port = tmp_path / "state", free_port()

    # 1. no worker: the job waits in the queue; then the service restarts
    server = Server(data_dir, port, tmp_path / "serve1.log", worker=False)
    with open(small_checkpoint, "rb") as fh:
        r = httpx.post(f"{server.url}/v1/audits", files={"checkpoint": ("small.safetensors",
                                                                        fh)},
                       data={"spec": json.dumps(quick_spec(["ft"]))}, timeout=30)
    assert r.status_code == 202, r.text
    queued_id = r.json()["id"]
    server.stop()

    # 2. after the restart (with its worker) the queued job runs
    server = Server(data_dir, port, tmp_path / "serve2.log")
    try:
        job = wait_state(server.url, queued_id)
        assert job["state"] == "succeeded", (job, (tmp_path / "serve2.log").read_text()[-3000:])
    finally:
        server.stop()
