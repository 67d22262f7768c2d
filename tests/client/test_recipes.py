"""The CI recipes in examples/ci/: each parses (and validates against its CI system's schema
where one is published), every `ppr gate` it runs exists with those flags, and the files
it hands to the CI system are the files the gate writes. The shell recipe is run for real."""

from __future__ import annotations

import importlib.resources
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import typer
import yaml

from client.cli import app

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "examples" / "ci"


def ci_schema(name: str) -> dict:
    """A CI system's config schema, as check-jsonschema vendors it from SchemaStore."""
    files = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((files / name).read_text())


def gate_invocations(script: str) -> list[dict]:
    """Every `ppr gate ...` in a shell script: its options parsed by the real command."""
    command = typer.main.get_command(app)
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for i in range(len(words) - 1):
            if words[i] == "ppr" and words[i + 1] == "gate":
                ctx = command.make_context("ppr gate", words[i + 2:])  # unknown flag: error
                found.append(ctx.params)
    return found


def load_workflow() -> dict:
    """The workflow as GitHub reads it (PyYAML's YAML 1.1 turns the key `on` into True)."""
    wf = yaml.safe_load((RECIPES / "github-actions.yml").read_text())
    wf["on"] = wf.pop(True)
    return wf


def test_github_actions_workflow():
    wf = load_workflow()
    jsonschema.validate(wf, ci_schema("github-workflows.json"))
    steps = wf["jobs"]["ppr-audit"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    (params,) = [p for r in runs for p in gate_invocations(r)]
    assert params["require"] and params["spec"] and not params["local"]
    sarif_step = next(s for s in steps if s.get("uses", "").startswith(
        "github/codeql-action/upload-sarif"))
    assert sarif_step["with"]["sarif_file"] == str(params["sarif"])
    assert sarif_step["if"].startswith("always()")  # the log is uploaded when the gate fails
    comment = next(r for r in runs if r.startswith("gh pr comment"))
    assert f"--body-file {params['markdown']}" in comment
    env = wf["jobs"]["ppr-audit"]["env"]
    assert "secrets.PPR_SERVER" in env["PPR_SERVER"] and "secrets.PPR_TOKEN" in env["PPR_TOKEN"]
    assert wf["permissions"]["security-events"] == "write"


def test_gitlab_ci_job():
    ci = yaml.safe_load((RECIPES / "gitlab-ci.yml").read_text())
    jsonschema.validate(ci, ci_schema("gitlab-ci.json"))
    job = ci["ppr-audit-gate"]
    (params,) = [p for line in job["script"] for p in gate_invocations(line)]
    assert job["artifacts"]["reports"]["junit"] == str(params["junit"])
    assert job["artifacts"]["when"] == "always"
    assert str(params["markdown"]) in job["artifacts"]["paths"]
    assert params["token_file"] is not None


def test_the_schemas_catch_a_broken_recipe():
    wf = load_workflow()
    wf["jobs"]["ppr-audit"]["steps"][0]["uses"] = 7
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wf, ci_schema("github-workflows.json"))
    with pytest.raises(Exception, match="No such option: --junitt"):
        gate_invocations("ppr gate m.safetensors --spec s.yaml --junitt out.xml")


def test_the_shell_recipe_runs_and_keeps_the_exit_code(tmp_path, small_checkpoint):
    from tests.e2e.test_serve_and_gate import free_port

    script = (RECIPES / "gate.sh").read_text()
    # the script picks --server or --local through a bash array; both must parse
    for where in ("--local", "--server http://ppr:8000"):
        (params,) = gate_invocations(script.replace('"${where[@]}"', where))
        assert params["junit"] and params["sarif"] and params["markdown"] and params["json_out"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"model": {"arch": "small_cnn"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPR_")}
    env.update(PPR_SERVER=f"http://127.0.0.1:{free_port()}", PPR_OUT=str(tmp_path / "out"),
               PPR_RETRIES="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    r = subprocess.run(["bash", str(RECIPES / "gate.sh"), str(small_checkpoint), str(spec)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr  # nothing listens there: a service error
    assert "cannot reach the service" in r.stderr and "could not run" in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "gate.json", "junit.xml", "ppr-audit.sarif", "report.md"]
