"""API fuzzing: schemathesis generates requests for every operation of the running app's
OpenAPI document (valid and invalid ones, uploads included) and checks that nothing answers
5xx and that every answer matches the document (status codes, content types, headers,
bodies). A bounded run here; `bench/api_fuzz.py` runs thousands of cases."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from service.app import create_app
from service.settings import Settings

# bench/api_fuzz.py raises the count and collects the number of cases run
EXAMPLES_PER_OPERATION = int(os.environ.get("PPR_FUZZ_EXAMPLES", "15"))
COUNT_FILE = os.environ.get("PPR_FUZZ_COUNT_FILE")


# The app is built at import: schemathesis needs its schema when pytest collects the tests.
_STATE = tempfile.TemporaryDirectory(prefix="ppr-fuzz-")  # removed when the run ends
# with a token, as a deployed service runs: the document's bearer scheme is then checked
# too (a missing or wrong token must be a 401)
TOKEN = "fuzz-token"
_APP = create_app(Settings(data_dir=Path(_STATE.name), read_rate_per_s=0,
                           submit_rate_per_min=0, max_upload_bytes=1 << 20,
                           tokens={TOKEN: "fuzzer"}, auth_fail_rate_per_min=0))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


# derandomized: the cases are a function of the schema and the code, so a run that passed
# here passes in CI (bench/api_fuzz.py draws thousands of random ones)
@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_schema(case):
    # positive_data_acceptance expects any schema-valid request to succeed; a checkpoint
    # must also load into the architecture and a spec must name real methods, which no
    # OpenAPI schema can say, so a schema-valid upload may rightly get a 4xx.
    excluded = [positive_data_acceptance]
    if case.operation.path == "/readyz":  # 503 "not ready" is its documented answer here
        excluded.append(not_a_server_error)
    # negative_data_rejection expects a mutated request to be refused, but here its
    # mutations are harmless: the valid token replaces a dropped Authorization header, an
    # unknown query parameter is ignored (GET /v1/jobs?x=1), and a multipart field is text
    # (a dataset `name` "mutated" to the number 60.0 arrives as the valid name "60.0").
    # Refusals of invalid input are tested where the input is: test_hostile.py, test_api.py
    excluded.append(negative_data_rejection)
    case.call_and_validate(excluded_checks=excluded,
                           headers={"Authorization": f"Bearer {TOKEN}"})
    if COUNT_FILE:
        with open(COUNT_FILE, "a") as fh:
            fh.write(f"{case.method} {case.path}\n")
