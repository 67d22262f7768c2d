"""The contract as generated clients see it (issue 33): openapi-python-client builds a client
from the committed OpenAPI document, and that client, unchanged, drives a real `ppr serve`
(embedded mode, with a bearer token): list the methods with their bounds, submit an audit
with the spec as the typed `AuditSpec` (the sweep in its short form), follow it, read its
stages and events, fetch the typed report, its HTML and Markdown, and an artifact, cancel a
job, and get a typed 401 without the token."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..e2e.test_serve_and_gate import ROOT, Server, free_port
from ..service.conftest import quick_spec

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def pprc(tmp_path_factory):
    """The generated client package, imported from a temporary folder."""
    out = tmp_path_factory.mktemp("client")
    bin_dir = Path(sys.executable).parent  # the generator formats with this venv's ruff
    gen = subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path",
                          str(ROOT / "openapi" / "openapi.json"), "--meta", "none",
                          "--output-path", str(out / "pprc")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert gen.returncode == 0, gen.stdout + gen.stderr
    assert "Warning" not in gen.stdout + gen.stderr, gen.stdout + gen.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("pprc")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "pprc" or m.startswith("pprc.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("client-server")
    srv = Server(root / "state", free_port(), root / "serve.log",
                 env={"PPR_TOKENS": f"alice:{TOKEN}"})
    yield srv
    srv.stop()


def test_a_generated_client_drives_the_service(pprc, server, small_checkpoint):
    from pprc import AuthenticatedClient, Client
    from pprc.api.jobs import (
        cancel_job,
        get_artifact,
        get_job,
        get_report,
        get_report_html,
        get_report_markdown,
        job_events,
        job_stages,
        submit_audit,
    )
    from pprc.api.methods import list_methods
    from pprc.models import (
        AuditReport,
        AuditSpec,
        CatalogEntry,
        ErrorBody,
        JobViewState,
        SubmitAuditBody,
    )
    from pprc.types import File

    client = AuthenticatedClient(base_url=server.url, token=TOKEN, timeout=60)
    anonymous = Client(base_url=server.url, timeout=60)

    catalog = list_methods.sync(client=anonymous)
    pam = next(m for m in catalog.methods if m.name == "pam")
    assert isinstance(pam, CatalogEntry)
    assert (pam.params["rho"].minimum, pam.params["rho"].maximum) == (0, 100)
    assert pam.params["ratio"].exclusive_maximum == 1
    assert "resnet18_cifar" in {a.name for a in catalog.architectures}

    raw = quick_spec(["ft"])
    raw["plan"]["retune"]["sweep"] = [[10, 1]]  # the README's short form of a sweep point
    spec = AuditSpec.from_dict(raw)
    body = SubmitAuditBody(checkpoint=File(payload=small_checkpoint.read_bytes(),
                                           file_name=small_checkpoint.name), spec=spec)
    refused = submit_audit.sync_detailed(client=anonymous, body=body)
    assert refused.status_code == 401 and isinstance(refused.parsed, ErrorBody)

    accepted = submit_audit.sync_detailed(client=client, body=body)
    assert accepted.status_code == 202, accepted.content
    job_id = accepted.parsed.id
    assert accepted.headers["location"] == f"/v1/jobs/{job_id}"

    # the event stream ends when the job is final; its last event is the final status
    stream = job_events.sync(job_id, client=client)
    assert isinstance(stream, str) and "event:" in stream
    last = json.loads([ln for ln in stream.splitlines() if ln.startswith("data:")][-1][5:])
    assert last["state"] == "succeeded", last

    job = get_job.sync(job_id, client=client)
    assert job.state == JobViewState.SUCCEEDED
    stages = job_stages.sync(job_id, client=client)
    assert {s.id for s in stages} >= {"evaluate", "purify:ft", "retune:ft:badnets->0:10x1",
                                      "report"}
    assert all(s.state.value in ("ok", "skipped") and s.seconds is not None for s in stages)

    report = get_report.sync(job_id, client=client)
    assert isinstance(report, AuditReport) and report.methods[0].key == "ft"
    assert report.methods[0].verdict.value == "no_backdoor"  # an untrained checkpoint
    html = get_report_html.sync(job_id, client=client)
    md = get_report_markdown.sync(job_id, client=client)
    assert html.startswith("<!doctype html>") and "ppr-audit audit report" in html
    assert md.startswith("## ppr-audit audit report")
    blob = get_artifact.sync(job_id, "report.json", client=client)
    assert json.loads(blob.payload.read())["methods"][0]["key"] == "ft"

    # a second job, sent twice with one Idempotency-Key (one job), cancelled while it waits
    # or runs
    second = submit_audit.sync(client=client, body=body, idempotency_key="release-42")
    again = submit_audit.sync(client=client, body=body, idempotency_key="release-42")
    assert again.id == second.id != job_id
    cancelled = cancel_job.sync(second.id, client=client)
    assert cancelled.state.value in ("cancelled", "running", "queued")
    missing = get_job.sync_detailed("no-such-job", client=client)
    assert missing.status_code == 404 and isinstance(missing.parsed, ErrorBody)
