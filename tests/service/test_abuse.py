"""Abuse limits against the real app: per-principal rates (429 with Retry-After), a cap on
active jobs, spec budgets (422 naming the field), tokens from a file, tokens never logged."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.limits import SpecLimits
from service.settings import Settings

from .conftest import files_under, quick_spec
from .test_api import submit


def make(tmp_path, **kw) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path / "state", **kw)))


def test_reads_past_the_rate_get_429_with_retry_after(tmp_path):
    with make(tmp_path, read_rate_per_s=0.5, read_burst=3,
              tokens={"tok-a": "alice", "tok-b": "bob"}) as c:
        alice, bob = {"Authorization": "Bearer tok-a"}, {"Authorization": "Bearer tok-b"}
        assert [c.get("/v1/jobs", headers=alice).status_code for _ in range(3)] == [200] * 3
        r = c.get("/v1/jobs", headers=alice)
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert "limit 0.5/s, burst 3" in r.json()["error"]["message"]
        assert c.get("/v1/jobs", headers=bob).status_code == 200  # per principal
        assert c.get("/healthz").status_code == 200  # health is never limited


def test_submissions_have_their_own_rate_and_an_active_job_cap(tmp_path, small_checkpoint):
    with make(tmp_path, submit_rate_per_min=6, submit_burst=1) as c:
        assert submit(c, small_checkpoint, quick_spec()).status_code == 202
        r = submit(c, small_checkpoint, quick_spec())
        assert r.status_code == 429 and "submissions" in r.json()["error"]["message"]
    with make(tmp_path / "cap", max_active_jobs=2) as c:
        ids = [submit(c, small_checkpoint, quick_spec()).json()["id"] for _ in range(2)]
        r = submit(c, small_checkpoint, quick_spec())
        assert r.status_code == 429 and r.headers["Retry-After"] == "30"
        assert "2 of your jobs are queued or running (the limit is 2)" in \
            r.json()["error"]["message"]
        assert c.get("/v1/jobs").json()["total"] == 2
        c.delete(f"/v1/jobs/{ids[0]}")  # a cancelled job no longer counts
        assert submit(c, small_checkpoint, quick_spec()).status_code == 202


@pytest.mark.parametrize("change,says", [
    (lambda s: s["plan"]["methods"][0].update(epochs=900),
     "plan.methods[0] (ft).epochs is 900, the limit is 500"),
    (lambda s: s["plan"]["methods"].__setitem__(0, {"name": "bti_dbf", "inversion": {
        "gen_epochs": 999}}), "inversion.gen_epochs is 999"),
    (lambda s: s["plan"]["retune"].update(sweep=[[5, 1]] * 11),
     "plan.retune.sweep (count) is 11, the limit is 10"),
    (lambda s: s["plan"]["qra"].update(epochs=501), "plan.qra.epochs is 501"),
    (lambda s: s["data"].update(clean="synthetic:?n=5000000&seed=2"),
     "data.clean n is 5000000, the limit is 200000"),
    (lambda s: s.update(gate=["all.o_cacc >= 0.0"] * 5000), "bytes, the limit is 65536"),
])
def test_budgets_a_spec_may_not_ask_for(tmp_path, small_checkpoint, change, says):
    spec = quick_spec()
    change(spec)
    with make(tmp_path) as c:
        r = submit(c, small_checkpoint, spec)
        assert r.status_code == 422, r.text
        assert says in r.json()["error"]["message"]
        assert r.json()["error"]["type"] == "budget_exceeded"
        assert files_under(tmp_path / "state" / "artifacts") == []


def test_limits_are_settings(tmp_path, small_checkpoint, monkeypatch):
    monkeypatch.setenv("PPR_SPEC_LIMITS", json.dumps({"max_epochs": 3}))
    assert Settings().spec_limits == SpecLimits(max_epochs=3)
    spec = quick_spec()
    spec["plan"]["retune"]["epochs"] = 4
    with make(tmp_path) as c:
        assert submit(c, small_checkpoint, spec).status_code == 422


def test_tokens_from_a_file_and_never_in_the_logs(tmp_path, small_checkpoint, caplog,
                                                  monkeypatch):
    secret = tmp_path / "tokens"
    secret.write_text("alice:s3cret-token-a\nbob:s3cret-token-b\n")
    monkeypatch.setenv("PPR_TOKENS_FILE", str(secret))
    settings = Settings(data_dir=tmp_path / "state")
    assert settings.tokens == {"s3cret-token-a": "alice", "s3cret-token-b": "bob"}
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings)) as c:
        ok = {"Authorization": "Bearer s3cret-token-a"}
        assert submit(c, small_checkpoint, quick_spec(), headers=ok).status_code == 202
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer s3cret-wrong"}) \
            .status_code == 401
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged and "s3cret" not in logged


def test_failed_logins_are_throttled_per_address_whatever_the_token(tmp_path):
    """300 wrong tokens at full speed: past the failure budget the address gets 429 with
    Retry-After, even for a valid token (guessing cannot continue with one right guess in
    between), while other principals' requests from elsewhere are unaffected."""
    with make(tmp_path, tokens={"right-token": "alice"}, auth_fail_rate_per_min=6,
              auth_fail_burst=5) as c:
        codes = [c.get("/v1/jobs", headers={"Authorization": f"Bearer wrong-{i}"}).status_code
                 for i in range(300)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes[:10]
        r = c.get("/v1/jobs", headers={"Authorization": "Bearer right-token"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "failed logins" in r.json()["error"]["message"]
    with make(tmp_path / "b", tokens={"right-token": "alice"}) as c:
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer right-token"}
                     ).status_code == 200


def test_metrics_need_a_token_when_the_service_has_tokens(tmp_path):
    with make(tmp_path, tokens={"tok-a": "alice"}) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer tok-a"}).status_code == 200
    with make(tmp_path / "m", tokens={"tok-a": "alice"}, metrics_token="scrape-me") as c:
        assert c.get("/metrics", headers={"Authorization": "Bearer tok-a"}).status_code == 401
        r = c.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert r.status_code == 200 and "ppr_jobs" in r.text
    with make(tmp_path / "open") as c:  # local single-user mode: open, as every route
        assert c.get("/metrics").status_code == 200


def test_serve_refuses_to_listen_beyond_loopback_without_tokens(tmp_path):
    import subprocess
    import sys

    from ..e2e.test_serve_and_gate import ROOT, clean_env

    r = subprocess.run([sys.executable, "-m", "ppr_cli.main", "serve", "--host", "0.0.0.0",
                        "--no-worker"], cwd=ROOT, env=clean_env(tmp_path / "state"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "refusing to listen on 0.0.0.0 without tokens" in r.stderr


def test_text_parts_count_toward_one_total_chunked_or_not(tmp_path, small_checkpoint):
    """Many text parts (unknown names are refused at once; here repeated and oversized
    ones), sent chunked without a Content-Length: refused once the text passes the limit,
    before the rest is read."""
    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n"
        for _ in range(40):
            yield b"x" * (1 << 20)  # 40 MB of spec text
        yield b"\r\n--b--\r\n"

    with make(tmp_path) as c:
        r = c.post("/v1/audits", content=body(),
                   headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 422 and "spec is more than 65536 bytes" in r.text
