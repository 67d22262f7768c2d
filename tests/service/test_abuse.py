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
    with make(tmp_path, submit_rate_per_min=600, submit_burst=1) as c:
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
    (lambda s: s["plan"]["methods"][0].update(epochs=10_000),
     "plan.methods[0] (ft).epochs is 10000, the limit is 500"),
    (lambda s: s["plan"]["methods"].__setitem__(0, {"name": "bti_dbf", "inversion": {
        "gen_epochs": 9999}}), "inversion.gen_epochs is 9999"),
    (lambda s: s["plan"]["retune"].update(sweep=[[5, 1]] * 11),
     "plan.retune.sweep (points) is 11, the limit is 10"),
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
