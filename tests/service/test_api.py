"""The API against the real app, a real database (SQLite and PostgreSQL) and a real
filesystem queue. Jobs are run by the worker's own runner in-process here; the Celery
path with a real worker process is in tests/integration."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import pytest
import torch

from ppr_engine import checkpoint as ckpt_mod
from service.settings import Settings
from worker.runner import run_job

from .conftest import files_under, quick_spec


def submit(client, path, spec, url="/v1/audits", name=None, **kw):
    return client.post(url, files={"checkpoint": (name or path.name, path.read_bytes())},
                       data={"spec": json.dumps(spec)}, **kw)


def run(app, job_id, worker="w-test"):
    s = app.state
    return run_job(job_id, settings=s.settings, store=s.store, artifacts=s.artifacts,
                   worker=worker)


def test_audit_end_to_end(client, app, small_checkpoint):
    r = submit(client, small_checkpoint, quick_spec(["ft", "fst"]))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["url"] == f"/v1/jobs/{job_id}" == r.headers["Location"]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["attempts"] == 0
    assert job["checkpoint_sha256"] == ckpt_mod.sha256_file(small_checkpoint)
    assert run(app, job_id).status == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["attempts"] == 1 and job["progress"] == 1.0
    assert job["started_at"] and job["finished_at"]
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert [m["key"] for m in report["methods"]] == ["ft", "fst"]
    assert report["provenance"]["checkpoint_name"] == "small.safetensors"
    assert report["gate"]["passed"] is True
    md = client.get(f"/v1/jobs/{job_id}/report?format=md")
    html = client.get(f"/v1/jobs/{job_id}/report?format=html")
    assert md.headers["content-type"].startswith("text/markdown")
    assert html.headers["content-type"].startswith("text/html")
    o_cacc = f"{report['methods'][0]['o_cacc']:.3f}"
    assert o_cacc in md.text and o_cacc in html.text
    # a redelivered task for a finished job does nothing
    assert run(app, job_id, worker="w-other").status == "skipped"
    assert app.state.store.jobs.get(job_id).completions == 1


def test_purify_returns_a_purified_checkpoint(client, app, small_checkpoint, tmp_path):
    spec = quick_spec()
    spec["plan"]["methods"] = [{"name": "pam", "epochs": 1, "data": "trigger"}]
    r = submit(client, small_checkpoint, spec, url="/purify?method=pam")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert run(app, job_id).status == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["kind"] == "purify" and "purified.safetensors" in job["links"]["artifacts"]
    blob = client.get(job["links"]["artifacts"]["purified.safetensors"])
    assert blob.status_code == 200
    out = tmp_path / "p.safetensors"
    out.write_bytes(blob.content)
    purified = ckpt_mod.load_model(out, "small_cnn", 10)
    original = ckpt_mod.load_model(small_checkpoint, "small_cnn", 10)
    assert not torch.equal(purified.linear.weight, original.linear.weight)
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["kind"] == "purify" and report["methods"][0]["params"]["data"] == "trigger"


def test_purify_until_robust_lists_every_attempt(client, app, small_checkpoint):
    """POST /purify?method=M&until=robust: the stage rows and the work estimate hold every
    attempt, the report lists them, each attempt's checkpoint is an artifact. (The untrained
    checkpoint answers no trigger, so no attempt is robust: both run.)"""
    spec = quick_spec()
    spec["plan"]["max_attempts"] = 2
    r = submit(client, small_checkpoint, spec, url="/v1/purify?method=ft&until=robust")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # the estimate counts both attempts, the shared stages (evaluate, baseline) once
    until = client.get(f"/v1/jobs/{job_id}").json()["estimated_work"]
    plain_id = submit(client, small_checkpoint, spec, url="/v1/purify?method=ft").json()["id"]
    plain = client.get(f"/v1/jobs/{plain_id}").json()["estimated_work"]
    assert plain < until < 2 * plain
    assert run(app, job_id).status == "succeeded"
    stages = {s["id"]: s["state"] for s in client.get(f"/v1/jobs/{job_id}/stages").json()}
    assert stages["purify:ft"] == stages["purify:ft#2"] == "ok"
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    esc = report["escalation"]
    assert [a["overrides"] for a in esc["attempts"]] == [{}, {"epochs": 2}]
    assert esc["robust"] is False and esc["reason"].startswith("no attempt of 2 was robust")
    assert report["methods"][0]["key"] == "ft"
    artifacts = client.get(f"/v1/jobs/{job_id}").json()["links"]["artifacts"]
    assert {"purified.safetensors", "attempt-1.safetensors", "attempt-2.safetensors"} <= set(
        artifacts)
    md = client.get(f"/v1/jobs/{job_id}/report?format=md").text
    assert "Purified until robust: no attempt of 2 was robust" in md


@pytest.mark.parametrize("query, says", [
    ("method=ft&until=never", "until"),
    ("method=ft&until=robust&x=1", None)])
def test_purify_until_is_validated(client, small_checkpoint, query, says):
    spec = quick_spec()
    spec["plan"]["max_attempts"] = 99
    r = submit(client, small_checkpoint, spec, url=f"/v1/purify?{query}")
    assert r.status_code == 422, r.text
    assert (says or "max_attempts") in r.text


def test_list_jobs_filters_and_pages(client, app, small_checkpoint):
    ids = [submit(client, small_checkpoint, quick_spec()).json()["id"] for _ in range(3)]
    client.delete(f"/v1/jobs/{ids[0]}")
    page = client.get("/v1/jobs?limit=2").json()
    assert page["total"] == 3 and len(page["items"]) == 2
    assert client.get("/v1/jobs?limit=2&offset=2").json()["items"][0]["id"] in ids
    cancelled = client.get("/v1/jobs?state=cancelled").json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert client.get("/v1/jobs?state=bogus").status_code == 422


def test_cancel_a_queued_job_and_the_worker_skips_it(client, app, small_checkpoint):
    job_id = submit(client, small_checkpoint, quick_spec()).json()["id"]
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert run(app, job_id).status == "skipped"
    r = client.get(f"/v1/jobs/{job_id}/report")
    assert r.status_code == 409 and "cancelled" in r.json()["error"]["message"]


BAD = {
    "malformed spec": (lambda s: "{not json", "spec is not valid JSON"),
    "unknown field": (lambda s: json.dumps({**s, "colour": 1}), "colour: Extra inputs"),
    "unknown method": (lambda s: json.dumps({**s, "plan": {"methods": [{"name": "nope"}]}}),
                       "unknown purification method 'nope'"),
    "bad gate": (lambda s: json.dumps({**s, "gate": ["pam.speed < 1"]}), "unknown field"),
    "server path without roots": (lambda s: json.dumps({**s, "data": {
        "clean": "imagefolder:/etc", "test": "synthetic:"}}), "server paths are disabled"),
    "foreign dataset": (lambda s: json.dumps({**s, "data": {
        "clean": "dataset:1234", "test": "synthetic:"}}), "no such dataset"),
    # a trigger's own data is checked as the clean data is
    "examples on a server path": (lambda s: json.dumps({**s, "triggers": [{
        "attack": "examples", "target": 3, "data": "backdoorbench:/srv/record/x"}]}),
        "backdoorbench:/srv/record/x: server paths are disabled"),
    "examples from a foreign dataset": (lambda s: json.dumps({**s, "triggers": [{
        "attack": "examples", "target": 3, "data": "dataset:77", "train_data":
        "dataset:78"}]}), "dataset:77: no such dataset"),
    # refused before any work, not when the stage runs
    "batchnorm methods on an architecture without it": (lambda s: json.dumps({
        **s, "model": {"arch": "vit_b_16"}, "plan": {"methods": [{"name": "clp"},
                                                                {"name": "npd"}]}}),
        "clp, npd need BatchNorm layers, and vit_b_16 has none"),
    "ssba arrays on a server path": (lambda s: json.dumps({**s, "triggers": [{
        "attack": "ssba", "test_images": "/etc/x.npz"}]}), "npz:/etc/x.npz: server paths"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_specs_get_422_and_leave_no_files(client, settings, small_checkpoint, case):
    make, message = BAD[case]
    r = client.post("/v1/audits", files={"checkpoint": ("m.safetensors",
                                                        small_checkpoint.read_bytes())},
                    data={"spec": make(quick_spec())})
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]["message"]
    assert files_under(settings.artifact_dir) == []
    assert client.get("/v1/jobs").json()["total"] == 0


def test_unknown_purify_method(client, settings, small_checkpoint):
    r = submit(client, small_checkpoint, quick_spec(), url="/v1/purify?method=nope")
    assert r.status_code == 422 and "known: anp" in r.json()["error"]["message"]


def test_wrong_architecture_is_refused_with_the_keys(client, settings, small_checkpoint):
    spec = {**quick_spec(), "model": {"arch": "preact_resnet18", "num_classes": 10}}
    r = submit(client, small_checkpoint, spec)
    assert r.status_code == 422
    msg = r.json()["error"]["message"]
    assert "small.safetensors does not fit architecture preact_resnet18" in msg
    assert "missing keys" in msg and "upload-" not in msg
    assert files_under(settings.artifact_dir) == []


def test_pickle_payload_is_refused_and_never_runs(client, settings, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    # padded to a checkpoint's size, so that the unpickler, not the size check, refuses it
    evil = pickle.dumps((Payload(), b"\0" * 300_000))
    r = client.post("/v1/audits", files={"checkpoint": ("evil.pt", evil)},
                    data={"spec": json.dumps(quick_spec())})
    assert r.status_code == 422
    assert "evil.pt: refused" in r.json()["error"]["message"]
    assert not marker.exists()
    assert files_under(settings.artifact_dir) == []


@pytest.mark.parametrize("name,blob,says", [
    ("m.safetensors", b"abc", "m.safetensors: not a valid safetensors file"),
    ("m.safetensors", pickle.dumps({"w": 1}), "m.safetensors: not a valid safetensors file"),
    ("m.pt", b"abc", "m.pt: not a readable checkpoint (expected safetensors, or a PyTorch"),
])
def test_truncated_or_mislabelled_checkpoints_say_what_they_are(client, settings, name, blob,
                                                                says):
    r = client.post("/v1/audits", files={"checkpoint": (name, blob)},
                    data={"spec": json.dumps(quick_spec())})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(says), r.text
    assert files_under(settings.artifact_dir) == []


def test_oversized_upload_gets_413_and_leaves_nothing(client, settings):
    big = b"\0" * (settings.max_upload_bytes + (2 << 20))
    r = client.post("/v1/audits", files={"checkpoint": ("big.safetensors", big)},
                    data={"spec": json.dumps(quick_spec())})
    assert r.status_code == 413 and "upload limit" in r.json()["error"]["message"]
    # the same refusal while streaming, when the client sends no length up front
    def chunks():
        yield b"--B\r\nContent-Disposition: form-data; name=\"checkpoint\"; filename=\"b.pt\""
        yield b"\r\n\r\n"
        for _ in range(5):
            yield b"\0" * (1 << 20)
        yield b"\r\n--B--\r\n"
    r = client.post("/v1/audits", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    assert files_under(settings.artifact_dir) == []


def test_not_multipart_is_415(client):
    r = client.post("/v1/audits", json={"spec": {}})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]["message"]


def _archive(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(out, format="PNG")
    return out.getvalue()


def test_dataset_upload_validation_and_use(client, app, settings, small_checkpoint):
    bad = _archive({"train/cat/0.png": _png(), "../../evil.png": _png()})
    r = client.post("/v1/datasets", files={"archive": ("d.tar.gz", bad)})
    assert r.status_code == 422 and r.json()["error"]["message"] == (
        "archive d.tar.gz: member '../../evil.png' escapes the archive with '..'")
    r = client.post("/v1/datasets", files={"archive": ("mine.zip", b"not a zip")})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(
        "archive mine.zip is unreadable")  # the caller's name, never our temporary one
    assert files_under(settings.artifact_dir) == []
    r = client.post("/v1/datasets", files={"archive": ("d.txt", b"hello")})
    assert r.status_code == 415
    good = _archive({f"{c}/{i}.png": _png() for c in ("a", "b") for i in range(10)})
    r = client.post("/v1/datasets", files={"archive": ("d.tar.gz", good)}, data={"name": "tiny"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["ref"] == f"dataset:{ds['id']}" and ds["files"] == 20 and ds["name"] == "tiny"
    assert [d["id"] for d in client.get("/v1/datasets").json()] == [ds["id"]]
    spec = quick_spec()
    spec["data"]["clean"] = ds["ref"]
    spec["data"]["attacker"] = "synthetic:?n=300&seed=3"  # 20 images cannot spare RA's 100
    spec["model"]["num_classes"] = 10
    job_id = submit(client, small_checkpoint, spec).json()["id"]
    assert run(app, job_id).status == "succeeded"
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["provenance"]["data"]["clean"]["n"] == 20


def test_a_trigger_given_by_example_through_an_uploaded_dataset(client, app,
                                                               small_checkpoint):
    """Poisoned images (true classes as numbered folders, no target-class folder) uploaded
    with POST /v1/datasets, then named as the trigger's data in an audit spec."""
    from PIL import Image

    from ppr_engine import attacks, data

    src = data.load("synthetic:?n=200&seed=5")
    poisoned = attacks.build_trigger("badnets", {"target": 3}).apply_set(src)
    members = {}
    for i, (img, label) in enumerate(zip(poisoned.permute(0, 2, 3, 1).numpy(),
                                         src.y.tolist(), strict=True)):
        if label != 3:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            members[f"{label}/{i}.png"] = buf.getvalue()
    r = client.post("/v1/datasets", files={"archive": ("ex.tar.gz", _archive(members))})
    assert r.status_code == 201, r.text
    spec = quick_spec()
    spec["triggers"] = [{"attack": "examples", "target": 3, "data": r.json()["ref"],
                         "holdout": 0.5}]
    job_id = submit(client, small_checkpoint, spec).json()["id"]
    assert run(app, job_id).status == "succeeded"
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert "examples->3" in report["model"]["asr"]
    given = report["provenance"]["data"]["trigger examples->3"]
    assert given["n"] == len(members) and given["measured"] + given["attacking"] == len(members)
    assert all(s["status"] == "ok" for s in report["methods"][0]["stages"]), report["methods"]
    md = client.get(f"/v1/jobs/{job_id}/report?format=md").text
    assert "given by example" in md


def test_auth_and_isolation(tmp_path, small_checkpoint):
    from fastapi.testclient import TestClient

    from service.app import create_app

    s = Settings(data_dir=tmp_path, tokens={"tok-a": "alice", "tok-b": "bob"})
    with TestClient(create_app(s)) as c:
        assert c.get("/v1/jobs").status_code == 401
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        a = {"Authorization": "Bearer tok-a"}
        b = {"Authorization": "Bearer tok-b"}
        job_id = submit(c, small_checkpoint, quick_spec(), headers=a).json()["id"]
        assert c.get(f"/v1/jobs/{job_id}", headers=a).status_code == 200
        r = c.get(f"/v1/jobs/{job_id}", headers=b)
        assert r.status_code == 404 and r.json()["error"]["message"] == f"no job {job_id}"
        assert c.delete(f"/v1/jobs/{job_id}", headers=b).status_code == 404
        assert c.get("/v1/jobs", headers=b).json()["total"] == 0
        assert c.get("/healthz").status_code == 200  # health needs no token


def test_settings_parse_tokens_from_the_environment(monkeypatch):
    monkeypatch.setenv("PPR_TOKENS", "alice:tok-a,bob:tok-b")
    assert Settings().tokens == {"tok-a": "alice", "tok-b": "bob"}


def test_health_readiness_and_metrics(client, app):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["database"] == "ok"
    app.state.store.workers.seen("w1", "cpu")
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    text = client.get("/metrics").text
    assert 'ppr_jobs{state="queued"} 0' in text and "ppr_workers_live 1" in text
    assert "ppr_queue_depth" in text


def test_methods_come_from_the_registries(client):
    body = client.get("/v1/methods").json()
    names = [m["name"] for m in body["methods"]]
    assert {"ft", "fst", "fp", "nad", "anp", "ibau", "ft_sam", "bti_dbf", "ep", "pam", "nc",
            "sau", "clp", "bnp", "rnp", "npd", "mcr"} <= set(names)
    kinds = {m["name"]: m["kind"] for m in body["methods"]}
    assert kinds["clp"] == "data-free" and kinds["pam"] == "mitigation" and kinds["ep"] == "oracle"
    assert all(m["reference"] for m in body["methods"])
    pam = next(m for m in body["methods"] if m["name"] == "pam")
    assert pam["params"]["rho"]["default"] == 0.5
    examples = next(a for a in body["attacks"] if a["name"] == "examples")
    assert {"data", "train_data", "holdout"} <= set(examples["params"])
    inverted = next(a for a in body["attacks"] if a["name"] == "inverted")
    assert {"rounds", "inversion"} <= set(inverted["params"])
    assert "target" not in inverted["params"]  # the inversion finds it
    assert "backdoorbench" in [k["name"] for k in body["data_kinds"]]


def test_a_repeated_idempotency_key_returns_the_first_job(client, settings, small_checkpoint):
    """On SQLite and PostgreSQL: one job per (principal, key); the same key with another
    request is refused and leaves nothing behind; a bad key is refused."""
    key = {"Idempotency-Key": "ci-run-42-model-a"}
    first = submit(client, small_checkpoint, quick_spec(), headers=key)
    again = submit(client, small_checkpoint, quick_spec(), headers=key)
    assert first.status_code == again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert client.get("/v1/jobs").json()["total"] == 1
    before = files_under(settings.data_dir / "artifacts")
    other = submit(client, small_checkpoint, quick_spec(["fst"]), headers=key)
    assert other.status_code == 422
    assert other.json()["error"]["type"] == "idempotency_key_reused"
    assert first.json()["id"] in other.json()["error"]["message"]
    assert files_under(settings.data_dir / "artifacts") == before
    assert client.get("/v1/jobs").json()["total"] == 1
    # no key, or another key: a new job each time
    assert submit(client, small_checkpoint, quick_spec()).json()["id"] != first.json()["id"]
    assert submit(client, small_checkpoint, quick_spec(),
                  headers={"Idempotency-Key": "other"}).json()["id"] != first.json()["id"]
    for bad in ("has space", "x" * 256):
        r = submit(client, small_checkpoint, quick_spec(), headers={"Idempotency-Key": bad})
        assert r.status_code == 422 and "Idempotency-Key" in r.json()["error"]["message"]


def test_idempotency_keys_belong_to_their_principal(tmp_path, small_checkpoint):
    from fastapi.testclient import TestClient

    from service.app import create_app

    s = Settings(data_dir=tmp_path, tokens={"tok-a": "alice", "tok-b": "bob"})
    with TestClient(create_app(s)) as c:
        key = {"Idempotency-Key": "same"}
        a = submit(c, small_checkpoint, quick_spec(), headers={**key,
                                                                "Authorization": "Bearer tok-a"})
        b = submit(c, small_checkpoint, quick_spec(), headers={**key,
                                                                "Authorization": "Bearer tok-b"})
        assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


def test_job_status_has_an_etag_and_an_event_stream(client, app, small_checkpoint):
    job_id = submit(client, small_checkpoint, quick_spec()).json()["id"]
    first = client.get(f"/v1/jobs/{job_id}")
    etag = first.headers["ETag"]
    again = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    assert run(app, job_id).status == "succeeded"
    changed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["state"] == "succeeded"
    assert changed.headers["ETag"] != etag
    # the event stream of a final job: one `stage` event per stage, one `job` event, the end
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    events = [(lines[i][7:], json.loads(lines[i + 1][5:])) for i in range(0, len(lines), 2)]
    stages = client.get(f"/v1/jobs/{job_id}/stages").json()
    assert [e for e, _ in events] == ["stage"] * len(stages) + ["job"]
    assert {body["id"]: body["state"] for _, body in events[:-1]} == {
        st["id"]: st["state"] for st in stages}
    assert events[-1][1]["state"] == "succeeded"
    assert client.get("/v1/jobs/nope/events").status_code == 404
