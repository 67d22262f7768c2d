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
    assert body["schema"]["properties"]["spec"]["example"]["plan"]["methods"]
    assert "AuditSpec" in doc["components"]["schemas"]
    assert "/audit" in doc["paths"] and "/purify" in doc["paths"]
