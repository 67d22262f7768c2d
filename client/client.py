"""A small httpx client for the ppr-audit API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "cancelled")


class ClientError(Exception):
    """The service refused the request (4xx): the input is wrong."""


class ServiceError(Exception):
    """The service failed, was unreachable, or the wait timed out."""


class PPRClient:
    """Submit jobs, wait for them, fetch reports."""

    def __init__(self, server: str, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the service: {exc}") from None
        if 400 <= r.status_code < 500:
            raise ClientError(f"{r.status_code}: {_message(r)}")
        if r.status_code >= 500:
            raise ServiceError(f"{r.status_code}: {_message(r)}")
        return r

    def submit(self, checkpoint: Path, spec_json: str, method: str | None = None) -> dict:
        """Upload a checkpoint and spec; returns the accepted job (id, url)."""
        url = "/v1/purify" if method else "/v1/audits"
        with open(checkpoint, "rb") as fh:
            r = self._call("POST", url, params={"method": method} if method else None,
                           files={"checkpoint": (checkpoint.name, fh)},
                           data={"spec": spec_json})
        return r.json()

    def job(self, job_id: str) -> dict:
        """A job's status."""
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, timeout: float, poll: float = 2.0,
             on_update=None) -> dict:
        """Poll until the job is final; ServiceError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["state"] in FINAL:
                return job
            if time.monotonic() > deadline:
                raise ServiceError(f"job {job_id} still {job['state']} after {timeout:.0f} s")
            time.sleep(poll)

    def report(self, job_id: str, fmt: str = "json") -> Any:
        """The report of a finished job (dict for JSON, text otherwise)."""
        r = self._call("GET", f"/v1/jobs/{job_id}/report", params={"format": fmt})
        return r.json() if fmt == "json" else r.text


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except Exception:  # noqa: BLE001 - any non-JSON body is shown as text
        return r.text[:300]
