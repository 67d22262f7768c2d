"""A small httpx client for the ppr-audit API.

Every call is retried on connection errors and on 5xx/429 answers, with exponential backoff
(honouring `Retry-After`). A retried submission is safe because it carries an
`Idempotency-Key`: the service answers a repeated key with the job it already created.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "cancelled")
# CI run identifiers, most specific first: a retried CI job gets a new key (a new audit),
# while retries inside one run reuse the key (one audit).
RUN_ID_ENV = (("PPR_RUN_ID",), ("GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_JOB"),
              ("CI_JOB_ID",), ("BUILD_TAG",))


class ClientError(Exception):
    """The service refused the request (4xx): the input is wrong."""


class ServiceError(Exception):
    """The service failed, was unreachable, or the wait timed out."""


class WaitTimeout(ServiceError):
    """The job was not final when the wait ran out."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_id() -> str:
    """This CI run's identity (from the CI system's variables), or a fresh one."""
    for names in RUN_ID_ENV:
        if all(os.environ.get(n) for n in names):
            return "/".join(os.environ[n] for n in names)
    return uuid.uuid4().hex


def idempotency_key(checkpoint_sha256: str, spec_json: str, method: str | None,
                    run: str) -> str:
    """The key of one submission: same checkpoint, spec, method and run -> same key."""
    canonical = json.dumps(json.loads(spec_json), sort_keys=True, separators=(",", ":"))
    text = "\n".join([checkpoint_sha256, canonical, method or "", run])
    return "ppr-" + hashlib.sha256(text.encode()).hexdigest()


class PPRClient:
    """Submit jobs, wait for them, fetch reports."""

    def __init__(self, server: str, token: str | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 1.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)
        self.retries, self.backoff = retries, backoff

    def _call(self, method: str, url: str, *, body=None, **kw: Any) -> httpx.Response:
        """One request, retried on connection errors, 5xx and 429. `body` is called for a
        fresh request body on every attempt (an upload is re-read from its start)."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                with body() if body else contextlib.nullcontext({}) as extra:
                    r = self.http.request(method, url, **kw, **extra)
            except httpx.HTTPError as exc:
                if last:
                    raise ServiceError(f"cannot reach the service: {exc}") from None
                self._sleep(attempt, None)
                continue
            if (r.status_code >= 500 or r.status_code == 429) and not last:
                self._sleep(attempt, r.headers.get("Retry-After"))
                continue
            if 400 <= r.status_code < 500:
                raise ClientError(f"{r.status_code}: {_message(r)}")
            if r.status_code >= 500:
                raise ServiceError(f"{r.status_code}: {_message(r)}")
            return r
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * 2 ** attempt
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        time.sleep(min(delay, 60.0))

    def submit(self, checkpoint: Path, spec_json: str, method: str | None = None,
               key: str | None = None) -> dict:
        """Upload a checkpoint and spec; returns the accepted job (id, url). With `key`,
        a repeated submission returns the job the first one created."""
        url = "/v1/purify" if method else "/v1/audits"
        headers = {"Idempotency-Key": key} if key else {}
        r = self._call("POST", url, params={"method": method} if method else None,
                       headers=headers, body=lambda: _upload(checkpoint, spec_json))
        return r.json()

    def job(self, job_id: str) -> dict:
        """A job's status."""
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> None:
        """Ask the service to cancel a job (best effort: errors are ignored)."""
        try:
            self.http.delete(f"/v1/jobs/{job_id}")
        except httpx.HTTPError:
            pass

    def wait(self, job_id: str, timeout: float, poll: float = 2.0,
             on_update=None) -> dict:
        """Follow the job until it is final: through its event stream when the service
        offers one, else by polling (with If-None-Match, backing off while nothing changes).
        WaitTimeout after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        job = self._follow_events(job_id, deadline, on_update)
        if job is not None and job["state"] in FINAL:
            return job
        return self._poll(job_id, deadline, timeout, poll, on_update)

    def _follow_events(self, job_id: str, deadline: float, on_update) -> dict | None:
        """The last job event before the stream ended (None if there is no stream)."""
        job = None
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(
                    10.0, read=max(0.1, min(15.0, deadline - time.monotonic())))) as r:
                if r.status_code != 200:
                    return None
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        job = json.loads(line[5:])
                        if on_update:
                            on_update(job)
                        if job["state"] in FINAL:
                            return job
                    if time.monotonic() > deadline:
                        return job
        except (httpx.HTTPError, json.JSONDecodeError):
            pass  # the stream broke, or went quiet past the deadline: polling takes over
        return job

    def _poll(self, job_id: str, deadline: float, timeout: float, poll: float,
              on_update) -> dict:
        etag, job, delay = None, None, min(poll, 1.0)
        while True:
            headers = {"If-None-Match": etag} if etag else {}
            r = self._call("GET", f"/v1/jobs/{job_id}", headers=headers)
            if r.status_code == 304 and job is not None:
                delay = min(delay * 1.5, max(poll, 1.0) * 4)  # nothing changed: back off
            else:
                job, etag, delay = r.json(), r.headers.get("ETag"), min(poll, 1.0)
                if on_update:
                    on_update(job)
            if job["state"] in FINAL:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {job_id} still {job['state']} after {timeout:g} s")
            time.sleep(min(delay, left))

    def report(self, job_id: str, fmt: str = "json") -> Any:
        """The report of a finished job (dict for JSON, text otherwise)."""
        r = self._call("GET", f"/v1/jobs/{job_id}/report", params={"format": fmt})
        return r.json() if fmt == "json" else r.text


@contextlib.contextmanager
def _upload(checkpoint: Path, spec_json: str) -> Iterator[dict[str, Any]]:
    """The multipart body of a submission, the file opened afresh."""
    with open(checkpoint, "rb") as fh:
        yield {"files": {"checkpoint": (checkpoint.name, fh)}, "data": {"spec": spec_json}}


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except Exception:  # noqa: BLE001 - any non-JSON body is shown as text
        return r.text[:300]
