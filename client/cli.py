"""`ppr gate`: submit to a running service, wait, and exit on the verdict.

Exit codes: 0 the gate passed, 1 the gate failed, 2 bad input (the request or the model
was refused), 3 service error or timeout. One line on stderr says why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from .client import ClientError, PPRClient, ServiceError

app = typer.Typer(add_completion=False, help=__doc__)


def _exit(code: int, message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


@app.command()
def main(
    checkpoint: Path,
    server: Annotated[str, typer.Option(envvar="PPR_SERVER", help="service URL")],
    spec: Annotated[Path, typer.Option(help="audit spec (YAML or JSON)")],
    require: Annotated[list[str] | None, typer.Option(
        help="gate clause, e.g. 'pam.p_asr <= 0.2' (repeatable; added to the spec's gate)")]
    = None,
    method: Annotated[str | None, typer.Option(help="run POST /purify with this method")]
    = None,
    token: Annotated[str | None, typer.Option(envvar="PPR_TOKEN", help="bearer token")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the job")] = 3600.0,
    poll: Annotated[float, typer.Option(help="seconds between status checks")] = 2.0,
    markdown: Annotated[Path | None, typer.Option(help="write the Markdown report here "
                                                  "(for a pull-request comment)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
) -> None:
    """Audit CHECKPOINT on the service and exit 0 (pass), 1 (fail), 2 (bad input) or 3."""
    if not checkpoint.is_file():
        _exit(2, f"error: checkpoint {checkpoint} does not exist")
    try:
        raw = yaml.safe_load(spec.read_text())
    except (OSError, yaml.YAMLError) as exc:
        _exit(2, f"error: cannot read spec {spec}: {exc}")
    if not isinstance(raw, dict):
        _exit(2, f"error: spec {spec} must be a mapping")
    raw["gate"] = list(raw.get("gate") or []) + list(require or [])
    client = PPRClient(server, token)
    try:
        accepted = client.submit(checkpoint, json.dumps(raw), method)
        job_id = accepted["id"]
        if not as_json:
            typer.echo(f"submitted job {job_id}", err=True)
        tty = sys.stderr.isatty() and not as_json
        job = client.wait(job_id, timeout, poll, on_update=(lambda j: typer.echo(
            f"\r{j['state']:<10} {j['progress'] * 100:5.1f}%  {j['stage'][:50]:<50}",
            err=True, nl=False)) if tty else None)
        if tty:
            typer.echo("", err=True)
        if job["state"] != "succeeded":
            code = 2 if job.get("error_kind") == "input" else 3
            _exit(code, f"error: job {job_id} {job['state']}: {job.get('error') or ''}")
        report = client.report(job_id)
        if markdown:
            markdown.write_text(client.report(job_id, "md"))
    except ClientError as exc:
        _exit(2, f"error: refused: {exc}")
    except ServiceError as exc:
        _exit(3, f"error: {exc}")
    gate = report.get("gate", {})
    if as_json:
        typer.echo(json.dumps({"job": job_id, "passed": gate.get("passed"),
                               "clauses": gate.get("clauses", [])}, indent=2))
    else:
        for c in gate.get("clauses", []):
            typer.echo(f"{'pass' if c['passed'] else 'FAIL'}  {c['expr']}  (value: "
                       f"{c.get('value')}) {c.get('detail') or ''}")
    if gate.get("passed") is False:
        _exit(1, "gate FAILED")
    if gate.get("passed") is None:
        typer.echo("no gate clauses were given; nothing to fail", err=True)
    elif not as_json:
        typer.echo("gate passed", err=True)
