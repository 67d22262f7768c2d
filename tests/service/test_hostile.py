"""A hostile-spec corpus through the real gateway (issue 22): each spec is what an attacker
with a valid token sent, and each must get a 4xx (never a 5xx) whose message names the
field, with nothing stored. Cases reproduce the attacks of the issue: budgets hidden where
the old check never looked (inside triggers, `scale_to`, ANP's steps and threshold step,
I-BAU's K, QRA's width and batch), data options that ask for memory, seeds and nesting that
broke the parser, and server paths read through a trigger's parameters."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

from .conftest import files_under, quick_spec
from .test_api import submit

BIG = 10**9


def _method(spec: dict, method: dict) -> None:
    spec["plan"]["methods"] = [method]


def _trigger(spec: dict, trigger: dict) -> None:
    spec["triggers"] = [trigger]


CORPUS = [
    ("pam scale_to", lambda s: _method(s, {"name": "pam", "scale_to": 2_000_000_000}),
     "scale_to"),
    ("bti_dbf scale_to", lambda s: _method(s, {"name": "bti_dbf", "scale_to": BIG}), "scale_to"),
    ("anp steps", lambda s: _method(s, {"name": "anp", "steps": BIG}), "steps"),
    ("anp prune_step", lambda s: _method(s, {"name": "anp", "prune_step": 1e-12}), "prune_step"),
    ("anp iterations", lambda s: _method(s, {"name": "anp", "iterations": 150_000}),
     "iterations"),
    ("ibau K", lambda s: _method(s, {"name": "ibau", "K": BIG}), "K"),
    ("qra hidden", lambda s: s["plan"]["qra"].update(hidden=BIG), "hidden"),
    ("qra batch", lambda s: s["plan"]["qra"].update(batch_size=BIG), "batch_size"),
    ("qra width past the service cap", lambda s: s["plan"]["qra"].update(hidden=6000),
     "plan.qra.hidden is 6000, the limit is 4096"),
    ("inverted pretrain", lambda s: _trigger(s, {"attack": "inverted", "inversion": {
        "pretrain_epochs": BIG}}), "pretrain_epochs"),
    ("inverted mask", lambda s: _trigger(s, {"attack": "inverted", "inversion": {
        "mask_epochs": 800}}), "inversion.mask_epochs is 800, the limit is 500"),
    ("inverted scan", lambda s: _trigger(s, {"attack": "inverted", "inversion": {
        "scan": {"epochs": BIG}}}), "epochs"),
    ("lc steps", lambda s: _trigger(s, {"attack": "lc", "steps": BIG}), "steps"),
    ("examples n", lambda s: _trigger(s, {"attack": "examples", "target": 1,
                                          "data": "synthetic:?n=1000000000"}), "n"),
    ("examples n past the service cap", lambda s: _trigger(s, {
        "attack": "examples", "target": 1, "data": "synthetic:?n=5000000"}),
     "triggers[0] data n is 5000000, the limit is 200000"),
    ("classes", lambda s: s["data"].update(clean="synthetic:?n=300&classes=100000000"),
     "classes"),
    ("size", lambda s: s["data"].update(clean="synthetic:?n=300&size=20000"), "size"),
    ("size past the service cap", lambda s: s["data"].update(test="synthetic:?n=300&size=800"),
     "data.test size is 800, the limit is 512"),
    ("seed 2**70", lambda s: s.update(seed=2**70), "seed"),
    ("negative RA seed", lambda s: s["plan"]["retune"].update(seed=-1), "seed"),
    ("sweep points", lambda s: s["plan"]["retune"].update(sweep=[[5, 1]] * 200), "sweep"),
    ("methods", lambda s: s["plan"].update(methods=[{"name": "ft", "label": f"m{i}"}
                                                    for i in range(100)]), "methods"),
    ("total work", lambda s: (s["model"].update(arch="resnet18_cifar"), _method(
        s, {"name": "pam", "rounds": 20, "epochs": 500, "scale_to": 100_000})),
     "estimated work"),
    ("blended bare path", lambda s: _trigger(s, {"attack": "blended", "image": "/etc/passwd"}),
     "image"),
    ("blended server path", lambda s: _trigger(s, {"attack": "blended",
                                                   "image": "image:/etc/hostname"}),
     "server paths are disabled"),
    ("unknown budget key hidden in a trigger", lambda s: _trigger(
        s, {"attack": "badnets", "target": 1, "epochs": 9}), "epochs"),
    # round 3: what only the worker used to refuse, after a 202
    ("device meta", lambda s: s.update(device="meta"), "device"),
    ("device of 1000 characters", lambda s: s.update(device="x" * 1000), "device"),
    ("target past the classes", lambda s: _trigger(s, {"attack": "badnets", "target": 50}),
     "target 50 is not a class of a 10-class model"),
    ("all-to-all shift of the class count", lambda s: _trigger(
        s, {"attack": "badnets", "label_map": "all_to_all", "shift": 10}),
     "shift 10 maps every class of 10 to itself"),
    ("attacker pool smaller than QRA's draw", lambda s: (
        s["data"].update(attacker="synthetic:?n=100&seed=3"),
        s["plan"]["qra"].update(clean_num=500, poison_num=500)),
     "data.attacker has 100 images, and RA and QRA draw up to 1000"),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    with TestClient(create_app(Settings(data_dir=root / "state",
                                        submit_rate_per_min=0))) as c:
        yield c, root


@pytest.mark.parametrize("case,change,names", CORPUS, ids=[c for c, _, _ in CORPUS])
def test_a_hostile_spec_is_refused_with_the_field_named(gateway, small_checkpoint, case, change,
                                                        names):
    client, root = gateway
    spec = quick_spec()
    change(spec)
    r = submit(client, small_checkpoint, spec)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    assert names in r.json()["error"]["message"], (case, r.json())
    assert files_under(root / "state" / "artifacts") == []
    assert client.get("/v1/jobs").json()["total"] == 0


@pytest.mark.parametrize("body,says", [
    ("[" * 30_000 + "]" * 30_000, "nested too deeply"),
    ('{"seed": ' + "9" * 5000 + "}", "more than 4300 digits"),
    ("[1, 2]", "must be a JSON object"),
    ('{"data": ' + "[" * 50 + "]" * 50 + "}", "data"),
])
def test_malformed_specs_get_4xx_never_500(gateway, small_checkpoint, body, says):
    client, _ = gateway
    r = client.post("/v1/audits", files={"checkpoint": ("m.safetensors",
                                                        small_checkpoint.read_bytes())},
                    data={"spec": body})
    assert r.status_code == 422, r.text[:300]
    assert says in r.json()["error"]["message"]


def test_no_message_reveals_whether_a_server_path_exists(tmp_path, small_checkpoint):
    """With data roots, a path outside them is refused with the same words whether it
    exists, is a directory, or is another principal's stored upload."""
    roots = tmp_path / "roots"
    roots.mkdir()
    settings = Settings(data_dir=tmp_path / "state", data_roots=[roots])
    messages = set()
    with TestClient(create_app(settings)) as c:
        for path in ("/nonexistent/x", "/root", str(tmp_path / "state" / "jobs.db"),
                     "/etc/hostname"):
            spec = quick_spec()
            spec["triggers"] = [{"attack": "blended", "image": f"image:{path}"}]
            r = c.post("/v1/audits", files={"checkpoint": ("m.safetensors",
                                                           small_checkpoint.read_bytes())},
                       data={"spec": json.dumps(spec)})
            assert r.status_code == 422, r.text
            messages.add(r.json()["error"]["message"].replace(path, "PATH"))
    assert len(messages) == 1, messages
    assert "outside the allowed data roots" in messages.pop()


def test_a_checkpoint_that_cannot_fit_is_refused_before_the_model_is_built(gateway):
    """A 2-byte checkpoint that looks like a PyTorch pickle, with a 100,000-class ViT: refused
    by its size against the architecture's parameter count (a model built on the meta
    device), never by building the 440 MB model first."""
    client, _ = gateway
    spec = quick_spec()
    spec["model"] = {"arch": "vit_b_16", "num_classes": 100_000}
    spec["data"] = {"clean": "synthetic:?n=300&size=224", "test": "synthetic:?n=300&size=224"}
    r = client.post("/v1/audits", files={"checkpoint": ("m.pt", b"\x80\x04")},
                    data={"spec": json.dumps(spec)})
    assert r.status_code == 422, r.text
    assert "too small for vit_b_16 with 100000 classes" in r.json()["error"]["message"]


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels and carries none of them."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_decompression_bomb_fails_the_job_once_as_the_callers_input(tmp_path,
                                                                      small_checkpoint):
    """An uploaded archive whose PNG claims 20000x20000 pixels: the worker refuses it
    before decoding, and the job fails on its first attempt as an input error (no retries:
    the same input would fail again)."""
    from worker.runner import run_job

    from .test_api import _archive

    settings = Settings(data_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as c:
        members = {f"{k}/{i}.png": bomb_png(20_000, 20_000) for k in range(2) for i in range(2)}
        r = c.post("/v1/datasets", files={"archive": ("bomb.tar.gz", _archive(members))})
        assert r.status_code == 201, r.text
        spec = quick_spec()
        spec["data"]["clean"] = r.json()["ref"]
        spec["data"]["attacker"] = "synthetic:?n=300&seed=3"
        job_id = submit(c, small_checkpoint, spec).json()["id"]
        st = c.app.state
        outcome = run_job(job_id, settings=settings, store=st.store, artifacts=st.artifacts,
                          worker="w", final_attempt=False)
        job = c.get(f"/v1/jobs/{job_id}").json()
    assert outcome.status == "failed" and job["attempts"] == 1
    assert job["error_kind"] == "input" and "claims more pixels than the 40000000" in job["error"]


def test_an_unbounded_dataset_name_is_refused_before_anything_is_kept(gateway):
    from .test_api import _archive

    client, root = gateway
    before = files_under(root / "state" / "artifacts")
    r = client.post("/v1/datasets", files={"archive": ("a.tar.gz", _archive({"0/a.png": b""}))},
                    data={"name": "x" * 5000})
    assert r.status_code == 422 and "name" in r.json()["error"]["message"], r.text
    assert files_under(root / "state" / "artifacts") == before


@pytest.mark.parametrize("plan,says", [
    ("x", "plan: must be an object"),
    ({"methods": 5}, "plan.methods: must be a list"),
    ({"methods": [{"name": "ft"}, {"name": "pam"}]}, "plan.methods lists ft, pam"),
    ({"methods": ["ep"]}, "a purification runs only method=pam"),
])
def test_a_purify_spec_is_validated_like_an_audit_spec(gateway, small_checkpoint, plan, says):
    """/v1/purify refuses a malformed plan with a 422 (it answered 500), and a plan that
    lists other methods than the one asked for (it ran the method with defaults and dropped
    the listed parameters)."""
    client, root = gateway
    spec = quick_spec()
    spec["plan"] = plan
    r = submit(client, small_checkpoint, spec, url="/v1/purify?method=pam")
    assert r.status_code == 422, r.text
    assert says in r.json()["error"]["message"]
    assert files_under(root / "state" / "artifacts") == []


def test_a_device_no_worker_has_is_refused_at_the_door(tmp_path, small_checkpoint):
    """Workers advertise their devices in their heartbeat; a CUDA device none of them has is
    a 422 (it was accepted, failed as a system error and was retried three times)."""
    with TestClient(create_app(Settings(data_dir=tmp_path / "state"))) as c:
        store = c.app.state.store
        spec = quick_spec()
        spec["device"] = "cuda:7"
        assert submit(c, small_checkpoint, spec).status_code == 202  # no worker yet: it waits
        store.workers.seen("cpu-host:1", "cpu")
        r = submit(c, small_checkpoint, spec)
        assert r.status_code == 422 and "no worker has a GPU" in r.json()["error"]["message"]
        store.workers.seen("gpu-host:1", "cuda:2")
        r = submit(c, small_checkpoint, spec)
        assert r.status_code == 422, r.text
        assert "workers see at most 2 GPU(s); use auto, cpu or cuda:0 to cuda:1" in r.json()[
            "error"]["message"]
        spec["device"] = "cuda:1"
        assert submit(c, small_checkpoint, spec).status_code == 202


def _png_archive(n: int) -> bytes:
    from .test_api import _archive, _png

    return _archive({f"{k}/{i}.png": _png() for k in range(2) for i in range(n)})


def test_dataset_uploads_share_the_submission_limit(tmp_path):
    """40 uploads in 3 s all got 201 (issue 34 item 8); now they draw on the submission
    bucket: past the burst, 429 with Retry-After, and nothing of the refused ones kept."""
    settings = Settings(data_dir=tmp_path / "state", submit_rate_per_min=1, submit_burst=3)
    with TestClient(create_app(settings)) as c:
        codes = [c.post("/v1/datasets", files={"archive": ("d.tar.gz", _png_archive(1))})
                 for _ in range(5)]
        assert [r.status_code for r in codes] == [201, 201, 201, 429, 429]
        assert "Retry-After" in codes[-1].headers
        assert "too many submissions" in codes[-1].json()["error"]["message"]
        assert len(c.get("/v1/datasets").json()) == 3


def test_a_principal_storage_quota_bounds_its_datasets(tmp_path, small_checkpoint):
    """Each principal's datasets fit a quota; the upload past it is a 413 naming the quota,
    keeps nothing, and deleting a dataset makes room (not while a queued job names it)."""
    one = _png_archive(2)
    settings = Settings(data_dir=tmp_path / "state", submit_rate_per_min=0,
                        storage_quota_bytes=int(len(one) * 2.5))
    with TestClient(create_app(settings)) as c:
        first = c.post("/v1/datasets", files={"archive": ("a.tar.gz", one)}).json()
        assert c.post("/v1/datasets", files={"archive": ("b.tar.gz", one)}).status_code == 201
        before = files_under(tmp_path / "state" / "artifacts")
        r = c.post("/v1/datasets", files={"archive": ("c.tar.gz", one)})
        assert r.status_code == 413, r.text
        assert "storage quota" in r.json()["error"]["message"]
        assert files_under(tmp_path / "state" / "artifacts") == before
        spec = quick_spec()
        spec["data"]["test"] = first["ref"]
        r = submit(c, small_checkpoint, spec)
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        r = c.delete(f"/v1/datasets/{first['id']}")
        assert r.status_code == 409 and "queued or running job" in r.json()["error"]["message"]
        assert c.delete(f"/v1/jobs/{job}").status_code in (200, 202)
        assert c.delete(f"/v1/datasets/{first['id']}").status_code == 204
        assert c.get(f"/v1/datasets/{first['id']}").status_code == 404
        assert c.post("/v1/datasets", files={"archive": ("c.tar.gz", one)}).status_code == 201


def test_each_jobs_estimate_is_served_and_a_principals_active_work_is_capped(
        tmp_path, small_checkpoint):
    """/v1/jobs/{id} carries the job's estimate, the sum of its plan's stage costs on the
    sizes the gateway knows; a principal whose queued and running jobs would pass
    max_active_work waits (429), whatever each job's own size (issue 34 items 2-3)."""
    from ppr_engine.audit.plan import plan_for
    from ppr_engine.cost import Sizes
    from ppr_engine.spec import validate_spec

    spec = quick_spec()
    settings = Settings(data_dir=tmp_path / "state", submit_rate_per_min=0)
    with TestClient(create_app(settings)) as c:
        job = c.get(submit(c, small_checkpoint, spec).json()["url"]).json()
        # synthetic n=300: the attacker's 100 images come out of data.clean
        expected = plan_for(validate_spec(spec), Sizes(200, 300, 100, 10)).total_cost
        assert job["estimated_work"] == pytest.approx(expected)
        # and the time that work takes, to plan by, per device kind
        assert job["estimated_seconds"]["cuda"] == pytest.approx(expected / 8000, abs=0.1)
        assert job["estimated_seconds"]["cpu_core"] == pytest.approx(expected / 15, abs=0.1)
    cap = Settings(data_dir=tmp_path / "capped", submit_rate_per_min=0,
                   max_active_work=2.5 * expected)
    with TestClient(create_app(cap)) as c:
        assert [submit(c, small_checkpoint, spec).status_code for _ in range(3)] == [
            202, 202, 429]
        r = submit(c, small_checkpoint, spec)
        assert "PPR_MAX_ACTIVE_WORK" in r.json()["error"]["message"]
        assert "Retry-After" in r.headers


def test_source_pixels_are_bounded_at_upload(tmp_path, monkeypatch):
    """Decoding costs the source's pixels, whatever ?size= asks: an archive whose images
    claim more source pixels in all than a reference may decode is refused at upload (it
    was accepted, then cost the worker seconds per image; issue 34 item 4)."""
    from ppr_engine.data import sources

    monkeypatch.setattr(sources, "MAX_SOURCE_PIXELS", 3 * 32 * 32)
    with TestClient(create_app(Settings(data_dir=tmp_path / "state",
                                        submit_rate_per_min=0))) as c:
        ok = c.post("/v1/datasets", files={"archive": ("a.tar.gz", _png_archive(1))})
        assert ok.status_code == 201, ok.text  # 2 images of 32 x 32
        r = c.post("/v1/datasets", files={"archive": ("b.tar.gz", _png_archive(2))})
        assert r.status_code == 422, r.text
        assert "source pixels" in r.json()["error"]["message"]
        assert len(c.get("/v1/datasets").json()) == 1
