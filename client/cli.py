"""`ppr gate`: audit a checkpoint (on a service, or in-process with --local) and exit on the
verdict, writing the files CI systems read.

Exit codes: 0 the gate passed, 1 the gate failed, 2 bad input (the request or the model
was refused), 3 service error, unreachable service or timeout. One line on stderr says why.
The report files (--junit, --sarif, --json, --markdown) are written in every case, also
when the audit could not run, so the pipeline shows why.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from ppr_engine.util import atomic_write_text

from .ci_formats import GateOutcome, clause_message, write_outputs
from .client import (
    ClientError,
    PPRClient,
    ServiceError,
    WaitTimeout,
    idempotency_key,
    run_id,
    sha256_file,
)
from .local import LocalInputError, LocalRunError, run_local

app = typer.Typer(add_completion=False, help=__doc__)
PASS, FAIL, BAD_INPUT, SERVICE = 0, 1, 2, 3


class Stop(Exception):
    """The gate ends without a report: (exit code, message)."""

    def __init__(self, code: int, message: str, job: str | None = None) -> None:
        super().__init__(message)
        self.code, self.job = code, job


def _version() -> str:
    try:
        return version("ppr-audit")
    except PackageNotFoundError:
        return "0+unknown"


def _read_spec(spec: Path, require: list[str], allow_no_backdoor: bool = False
               ) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(spec.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise Stop(BAD_INPUT, f"cannot read spec {spec}: {exc}") from None
    if not isinstance(raw, dict):
        raise Stop(BAD_INPUT, f"spec {spec} must be a mapping")
    gate = raw.get("gate") or []
    if isinstance(gate, dict):  # {require: [...], allow_no_backdoor: ...}
        raw["gate"] = {**gate, "require": list(gate.get("require") or []) + list(require)}
    else:
        raw["gate"] = list(gate) + list(require)
    if allow_no_backdoor:
        raw["gate_options"] = {**(raw.get("gate_options") or {}), "allow_no_backdoor": True}
    return raw


def _remote(client: PPRClient, checkpoint: Path, raw: dict[str, Any], method: str | None,
            key: str, timeout: float, poll: float, show: bool) -> tuple[dict, str, str]:
    """Submit (idempotently), wait, fetch the reports: (report, markdown, job id)."""
    try:
        job_id = client.submit(checkpoint, json.dumps(raw), method, key=key)["id"]
    except ClientError as exc:
        raise Stop(BAD_INPUT, f"refused: {exc}") from None
    except ServiceError as exc:
        raise Stop(SERVICE, str(exc)) from None
    typer.echo(f"job {job_id}", err=True)
    try:
        job = client.wait(job_id, timeout, poll, on_update=(lambda j: typer.echo(
            f"\r{j['state']:<10} {j['progress'] * 100:5.1f}%  {j['stage'][:50]:<50}",
            err=True, nl=False)) if show else None)
        if show:
            typer.echo("", err=True)
        if job["state"] != "succeeded":
            code = BAD_INPUT if job.get("error_kind") == "input" else SERVICE
            raise Stop(code, f"job {job_id} {job['state']}: {job.get('error') or ''}".strip(),
                       job_id)
        return client.report(job_id), client.report(job_id, "md"), job_id
    except WaitTimeout as exc:  # do not leave the audit running for nobody
        client.cancel(job_id)
        raise Stop(SERVICE, f"{exc}; the job was cancelled", job_id) from None
    except ServiceError as exc:
        raise Stop(SERVICE, str(exc), job_id) from None
    except ClientError as exc:
        raise Stop(BAD_INPUT, f"refused: {exc}", job_id) from None


@app.command()
def main(
    checkpoint: Path,
    spec: Annotated[Path, typer.Option(help="audit spec (YAML or JSON)")],
    server: Annotated[str | None, typer.Option(envvar="PPR_SERVER", help="service URL")]
    = None,
    local: Annotated[bool, typer.Option("--local", help="run the audit in this process "
                                        "(needs torch; no service)")] = False,
    require: Annotated[list[str] | None, typer.Option(
        help="gate clause, e.g. 'pam.p_asr <= 0.2' (repeatable; added to the spec's gate)")]
    = None,
    method: Annotated[str | None, typer.Option(help="purify with this method "
                                               "(POST /purify) instead of a full audit")]
    = None,
    allow_no_backdoor: Annotated[bool, typer.Option(
        "--allow-no-backdoor", help="evaluate method clauses even when a trigger activates no "
        "backdoor in the model (default: they fail closed)")] = False,
    token: Annotated[str | None, typer.Option(envvar="PPR_TOKEN", help="bearer token")] = None,
    token_file: Annotated[Path | None, typer.Option(envvar="PPR_TOKEN_FILE",
                                                    help="read the bearer token from a file")]
    = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the audit")] = 3600.0,
    poll: Annotated[float, typer.Option(help="seconds between status checks")] = 2.0,
    retries: Annotated[int, typer.Option(envvar="PPR_RETRIES", help="retries on connection "
                                         "errors, 5xx and 429, with backoff")] = 4,
    idem_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="key of this submission (default: derived from the "
        "checkpoint hash, the spec and the CI run id)")] = None,
    run: Annotated[str | None, typer.Option(
        "--run-id", envvar="PPR_RUN_ID", help="CI run id for the derived key (default: the "
        "CI system's run variables, else a fresh id)")] = None,
    junit: Annotated[Path | None, typer.Option(help="write a JUnit XML report "
                                               "(one test case per gate clause)")] = None,
    sarif: Annotated[Path | None, typer.Option(help="write a SARIF 2.1.0 log "
                                               "(for code-scanning views)")] = None,
    markdown: Annotated[Path | None, typer.Option(help="write the Markdown report "
                                                  "(for a pull-request comment)")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="write the verdict as JSON to this file ('-': stdout)")] = None,
) -> None:
    """Audit CHECKPOINT and exit 0 (pass), 1 (fail), 2 (bad input) or 3 (service/timeout)."""
    outcome = GateOutcome(checkpoint=checkpoint, exit_code=PASS)
    md_text = None
    quiet = str(json_out) == "-"
    try:
        if local == bool(server):
            raise Stop(BAD_INPUT, "give exactly one of --server URL (or PPR_SERVER) and "
                       "--local")
        if not checkpoint.is_file():
            raise Stop(BAD_INPUT, f"checkpoint {checkpoint} does not exist")
        raw = _read_spec(spec, require or [], allow_no_backdoor)
        outcome.checkpoint_sha256 = sha256_file(checkpoint)
        show = sys.stderr.isatty() and not quiet
        if local:
            try:
                report, md_text = run_local(checkpoint, raw, method, timeout)
            except LocalInputError as exc:
                raise Stop(BAD_INPUT, f"refused: {exc}") from None
            except LocalRunError as exc:
                raise Stop(SERVICE, str(exc)) from None
        else:
            if token_file and not token:
                try:
                    token = token_file.read_text().strip()
                except OSError as exc:
                    raise Stop(BAD_INPUT, f"cannot read token file {token_file}: "
                               f"{exc.strerror}") from None
            key = idem_key or idempotency_key(outcome.checkpoint_sha256, json.dumps(raw),
                                              method, run or run_id())
            client = PPRClient(server, token, retries=retries)
            report, md_text, outcome.job = _remote(client, checkpoint, raw, method, key,
                                                   timeout, poll, show)
        outcome.report = report
        passed = (report.get("gate") or {}).get("passed")
        outcome.exit_code = FAIL if passed is False else PASS
    except Stop as stop:
        outcome.exit_code, outcome.error, outcome.job = stop.code, str(stop), stop.job or \
            outcome.job
    _finish(outcome, md_text, junit=junit, sarif=sarif, markdown=markdown, json_out=json_out)


def _finish(o: GateOutcome, md_text: str | None, *, junit: Path | None, sarif: Path | None,
            markdown: Path | None, json_out: Path | None) -> None:
    """Write the files, print the verdict, exit with its code."""
    quiet = str(json_out) == "-"
    try:
        write_outputs(o, junit=junit, sarif=sarif, json_path=json_out, version=_version())
        if markdown:
            atomic_write_text(markdown, md_text if md_text is not None else
                         f"## ppr-audit gate\n\nThe audit did not finish: {o.error}\n")
    except OSError as exc:
        typer.echo(f"error: cannot write a report file: {exc}", err=True)
        raise typer.Exit(SERVICE) from None
    if o.error:
        typer.echo(f"error: {o.error}", err=True)
        raise typer.Exit(o.exit_code)
    if not quiet:
        if o.report and o.report.get("headline"):
            typer.echo(o.report["headline"])
        for c in o.clauses:
            typer.echo(f"{'pass' if c['passed'] else 'FAIL'}  {clause_message(c)}")
    if o.exit_code == FAIL:
        typer.echo("gate FAILED", err=True)
    elif o.gate.get("passed") is None:
        typer.echo("no gate clauses were given; nothing to fail", err=True)
    elif not quiet:
        typer.echo("gate passed", err=True)
    raise typer.Exit(o.exit_code)
