"""The client retries connection errors, 5xx and 429 with backoff, re-sending the whole
upload with the same Idempotency-Key each time; it never retries a 4xx. The far end is a
real HTTP server that fails on purpose (the service's own idempotency is tested against
the real app in tests/service and tests/e2e)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from client.client import ClientError, PPRClient, ServiceError, idempotency_key


class Flaky(BaseHTTPRequestHandler):
    """Answers the first `fail` requests with `status`, then 202; records every request."""

    fail, status, seen = 0, 503, []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.headers.get("Idempotency-Key"), body))
        if len(type(self).seen) <= type(self).fail:
            self.send_response(type(self).status)
            self.send_header("Retry-After", "0")
            payload = b'{"error": {"message": "try again"}}'
        else:
            self.send_response(202)
            payload = b'{"id": "job-1", "state": "queued", "url": "/v1/jobs/job-1"}'
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        return None


@pytest.fixture
def flaky():
    Flaky.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("status", [503, 500, 429])
def test_retries_resend_the_whole_upload_with_the_same_key(flaky, tmp_path, status):
    Flaky.fail, Flaky.status = 2, status
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"weights" * 1000)
    client = PPRClient(f"http://127.0.0.1:{flaky.server_port}", retries=3, backoff=0.01)
    assert client.submit(ckpt, json.dumps({"a": 1}), key="k-1")["id"] == "job-1"
    assert len(Flaky.seen) == 3
    assert {k for k, _ in Flaky.seen} == {"k-1"}
    assert all(b"weights" * 1000 in body for _, body in Flaky.seen)


def test_giving_up_and_never_retrying_a_refusal(flaky, tmp_path):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"w")
    url = f"http://127.0.0.1:{flaky.server_port}"
    Flaky.fail, Flaky.status = 10, 503
    with pytest.raises(ServiceError, match="503: try again"):
        PPRClient(url, retries=2, backoff=0.01).submit(ckpt, "{}", key="k")
    assert len(Flaky.seen) == 3  # the first try and two retries
    Flaky.seen, Flaky.status = [], 422
    with pytest.raises(ClientError, match="422: try again"):
        PPRClient(url, retries=2, backoff=0.01).submit(ckpt, "{}", key="k")
    assert len(Flaky.seen) == 1


def test_the_derived_key_changes_with_each_input_and_only_then():
    base = ("a" * 64, '{"b": 1, "a": 2}', None, "run-1")
    key = idempotency_key(*base)
    assert key == idempotency_key("a" * 64, '{"a": 2, "b": 1}', None, "run-1")  # key order
    for changed in (("b" * 64, *base[1:]), (base[0], '{"b": 2}', None, "run-1"),
                    (*base[:2], "pam", "run-1"), (*base[:3], "run-2")):
        assert idempotency_key(*changed) != key


def test_unreachable_is_a_service_error_after_the_retries(tmp_path: Path):
    from tests.e2e.test_serve_and_gate import free_port

    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"w")
    client = PPRClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01)
    with pytest.raises(ServiceError, match="cannot reach the service"):
        client.submit(ckpt, "{}", key="k")


class OldService(BaseHTTPRequestHandler):
    """A service without an event stream: /events is 404, status answers honour ETags; the
    job is final on the fourth status read."""

    reads: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.endswith("/events"):
            self._send(404, b'{"error": {"message": "no such route"}}')
            return
        type(self).reads.append(self.headers.get("If-None-Match"))
        state = "succeeded" if len(type(self).reads) >= 4 else "running"
        etag = f'"{state}"'
        if self.headers.get("If-None-Match") == etag:
            self._send(304, b"", etag)
            return
        self._send(200, json.dumps({"id": "j", "state": state}).encode(), etag)

    def _send(self, status: int, payload: bytes, etag: str | None = None) -> None:
        self.send_response(status)
        if etag:
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        return None


def test_without_an_event_stream_the_client_polls_with_etags():
    OldService.reads = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), OldService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = PPRClient(f"http://127.0.0.1:{server.server_port}")
        seen = []
        job = client.wait("j", timeout=30, poll=0.05, on_update=lambda j: seen.append(
            j["state"]))
    finally:
        server.shutdown()
    assert job["state"] == "succeeded" and seen == ["running", "succeeded"]
    assert OldService.reads[0] is None and set(OldService.reads[1:3]) == {'"running"'}
