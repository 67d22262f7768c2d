"""`ppr gate` as a CI pipeline calls it: against a real embedded `ppr serve` started here,
and in-process with --local. Each case checks the exit code and the files CI reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from ..client.test_ci_formats import validate_junit, validate_sarif
from ..service.conftest import quick_spec
from .test_serve_and_gate import ROOT, Server, clean_env, free_port, wait_state

# `ppr gate` with torch made unimportable: the base install has no torch.
NO_TORCH = ("import sys; sys.modules['torch'] = None; from ppr_cli.main import main; main()")


def gate(*args: str, env: dict[str, str], torch: bool = False):
    import subprocess

    cmd = ([sys.executable, "-m", "ppr_cli.main"] if torch else [sys.executable, "-c",
                                                                  NO_TORCH])
    return subprocess.run([*cmd, "gate", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def outputs(d: Path) -> list[str]:
    return ["--junit", str(d / "junit.xml"), "--sarif", str(d / "gate.sarif"),
            "--json", str(d / "gate.json"), "--markdown", str(d / "report.md")]


def read_outputs(d: Path) -> tuple:
    """(JUnit root, SARIF log, JSON summary, Markdown), each validated where a schema exists."""
    junit = validate_junit((d / "junit.xml").read_text())
    sarif = json.loads((d / "gate.sarif").read_text())
    validate_sarif(sarif)
    return junit, sarif, json.loads((d / "gate.json").read_text()), (d / "report.md").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate-server")
    srv = Server(root / "state", free_port(), root / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "audit.yaml"
    path.write_text(yaml.safe_dump(quick_spec(["ft"])))
    return path


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return clean_env(tmp_path / "client-state")


@pytest.mark.slow
def test_a_passing_gate_and_a_repeated_idempotency_key(server, spec_file, small_checkpoint,
                                                       env, tmp_path):
    args = [str(small_checkpoint), "--server", server.url, "--spec", str(spec_file),
            "--require", "ft.o_cacc >= 0.0", "--idempotency-key", "pipeline-7-model-a"]
    first = gate(*args, *outputs(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr
    junit, sarif, summary, md = read_outputs(tmp_path / "a")
    assert summary["passed"] is True and summary["exit_code"] == 0
    assert [c.get("name") for c in junit.findall("testcase")] == ["all.o_cacc >= 0.0",
                                                                  "ft.o_cacc >= 0.0"]
    assert junit.get("failures") == "0" and junit.get("errors") == "0"
    assert not [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "PPR001"]
    assert "| ft |" in md and summary["headline"] in md
    assert "pass  ft.o_cacc >= 0.0: measured" in first.stdout
    # the gate followed the job's event stream, not a polling loop
    assert f"GET /v1/jobs/{summary['job']}/events HTTP/1.1\" 200" in server.log.read_text()
    jobs = httpx.get(f"{server.url}/v1/jobs").json()["total"]
    # a retried pipeline step with the same key gets the same job, not a second audit
    again = gate(*args, "--json", "-", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["job"] == summary["job"]
    assert httpx.get(f"{server.url}/v1/jobs").json()["total"] == jobs


@pytest.mark.slow
def test_a_failing_gate(server, spec_file, small_checkpoint, env, tmp_path):
    r = gate(str(small_checkpoint), "--server", server.url, "--spec", str(spec_file),
             "--require", "ft.o_cacc > 1.5", *outputs(tmp_path), env=env)
    assert r.returncode == 1, r.stderr
    junit, sarif, summary, _ = read_outputs(tmp_path)
    assert summary["passed"] is False
    failure = junit.find("testcase[@name='ft.o_cacc > 1.5']/failure")
    assert failure is not None and "required > 1.5" in failure.get("message")
    results = sarif["runs"][0]["results"]
    assert [r["message"]["text"].split(":")[0] for r in results if r["ruleId"] == "PPR001"] \
        == ["ft.o_cacc > 1.5"]
    assert r.stderr.strip().splitlines()[-1] == "gate FAILED"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad expression", "unreachable server"])
def test_refusals_and_unreachable_write_an_error_report(case, server, spec_file,
                                                        small_checkpoint, env, tmp_path):
    url = server.url if case == "bad expression" else f"http://127.0.0.1:{free_port()}"
    r = gate(str(small_checkpoint), "--server", url, "--spec", str(spec_file), "--require",
             "ft.o_cacc >> 1", "--retries", "1", *outputs(tmp_path), env=env)
    want = {"bad expression": (2, "gate clause 'ft.o_cacc >> 1' must look like"),
            "unreachable server": (3, "cannot reach the service")}[case]
    assert (r.returncode, len(r.stderr.strip().splitlines())) == (want[0], 1), r.stderr
    assert want[1] in r.stderr
    junit, sarif, summary, md = read_outputs(tmp_path)
    assert junit.get("errors") == "1" and want[1] in junit.find("testcase/error").get("message")
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is False
    assert summary["exit_code"] == want[0] and want[1] in md


@pytest.mark.slow
def test_a_timeout_cancels_the_job(server, small_checkpoint, env, tmp_path):
    spec = quick_spec(["ft"])
    spec["plan"]["methods"][0]["epochs"] = 30  # long enough to outlast the timeout
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = gate(str(small_checkpoint), "--server", server.url, "--spec", str(path), "--timeout",
             "1", "--poll", "0.2", "--json", str(tmp_path / "g.json"), env=env)
    assert r.returncode == 3 and "after 1 s; the job was cancelled" in r.stderr, r.stderr
    job_id = json.loads((tmp_path / "g.json").read_text())["job"]
    assert wait_state(server.url, job_id)["state"] == "cancelled"


@pytest.mark.slow
def test_local_gate_pass_fail_refusal_and_timeout(spec_file, small_checkpoint, env, tmp_path):
    base = [str(small_checkpoint), "--local", "--spec", str(spec_file)]
    ok = gate(*base, "--require", "ft.o_cacc >= 0.0", *outputs(tmp_path / "ok"), env=env,
              torch=True)
    assert ok.returncode == 0, ok.stderr
    junit, _, summary, md = read_outputs(tmp_path / "ok")
    assert summary["passed"] is True and summary["job"] is None and "| ft |" in md
    assert len(junit.findall("testcase")) == 2
    failed = gate(*base, "--require", "ft.o_cacc > 1.5", *outputs(tmp_path / "no"), env=env,
                  torch=True)
    assert failed.returncode == 1, failed.stderr
    assert read_outputs(tmp_path / "no")[2]["passed"] is False
    bad = gate(*base, "--require", "ft.o_cacc >> 1", "--json", "-", env=env, torch=True)
    assert bad.returncode == 2 and "must look like" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    slow = gate(*base, "--timeout", "0.01", "--json", "-", env=env, torch=True)
    assert slow.returncode == 3 and "timed out" in slow.stderr
    assert json.loads(slow.stdout)["exit_code"] == 3


def test_without_torch_local_mode_says_what_is_missing(spec_file, small_checkpoint, env):
    r = gate(str(small_checkpoint), "--local", "--spec", str(spec_file), env=env)
    assert r.returncode == 3 and "--local needs the engine and torch" in r.stderr
    usage = gate(str(small_checkpoint), "--spec", str(spec_file), env=env)
    assert usage.returncode == 2 and "exactly one of --server" in usage.stderr
