"""The committed OpenAPI document matches the app; operation ids are stable."""

import json
from pathlib import Path

from service.openapi_dump import generate

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_app():
    assert COMMITTED.read_text() == generate(), (
        "openapi/openapi.json is stale: run `make openapi` and commit it")


def test_operation_ids_and_examples():
    doc = json.loads(COMMITTED.read_text())
    ops = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    assert {"submit_audit", "submit_purify", "get_job", "list_jobs", "cancel_job",
            "get_report", "get_artifact", "upload_dataset", "list_methods"} <= ops
    body = doc["paths"]["/v1/audits"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["spec"] == {"$ref": "#/components/schemas/AuditSpec"}
    assert body["encoding"]["spec"]["contentType"] == "application/json"
    assert doc["components"]["schemas"]["AuditSpec"]["examples"][0]["plan"]["methods"]
    assert "/audit" in doc["paths"] and "/purify" in doc["paths"]


def test_the_contract_is_one_a_generated_client_can_use():
    """What a generated client needs (issue 33 item 3): the bearer scheme on every protected
    operation, named request and report schemas, each response's real media type, the
    Location of a 202, enums for states and verdicts, sweep pairs, an optional string
    header."""
    doc = json.loads(COMMITTED.read_text())
    comps = doc["components"]
    assert comps["securitySchemes"]["bearer"] == {**comps["securitySchemes"]["bearer"],
                                                  "type": "http", "scheme": "bearer"}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            public = path in ("/healthz", "/readyz", "/metrics", "/v1/methods")
            assert ("security" in op) != public, (path, op["operationId"])
    paths = doc["paths"]
    report = paths["/v1/jobs/{job_id}/report"]["get"]["responses"]["200"]["content"]
    assert report["application/json"]["schema"] == {"$ref": "#/components/schemas/AuditReport"}
    assert set(report) == {"application/json", "text/markdown", "text/html"}
    artifact = paths["/v1/jobs/{job_id}/artifacts/{name}"]["get"]["responses"]["200"]
    assert list(artifact["content"]) == ["application/octet-stream"]
    events = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    for path in ("/v1/audits", "/v1/purify", "/audit", "/purify"):
        assert "Location" in paths[path]["post"]["responses"]["202"]["headers"]
        header = next(p for p in paths[path]["post"]["parameters"] if p["in"] == "header")
        assert header["schema"]["type"] == "string" and not header["required"]
    schemas = comps["schemas"]
    assert set(schemas["JobView"]["properties"]["state"]["enum"]) == {
        "queued", "running", "succeeded", "failed", "cancelled"}
    verdict = schemas["MethodResult"]["properties"]["verdict"]
    assert {"robust", "superficial", "inconclusive", "no_backdoor"} <= set(verdict["enum"])
    sweep = schemas["RetuneSpec"]["properties"]["sweep"]["items"]["anyOf"]
    assert {"type": "array"}.items() <= sweep[1].items() and sweep[1]["maxItems"] == 2
