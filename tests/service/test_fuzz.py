"""The schema fuzzer: schemathesis sends generated requests to every operation of the OpenAPI schema, as alice with
a valid token, on PostgreSQL, and fails on any 5xx and on any response the schema does not document (its status
code, its content type, its body).

Each operation gets its own Hypothesis run over valid and invalid requests (schemathesis's positive and negative
modes); half of them, for the operations on one job or artifact, use the ids of an artifact and a finished job that
alice owns, so that the 200 answers are checked as well as the 404s. The runs are derandomized: the same code sends
the same requests.

Run alone: .venv/bin/python -m pytest -q tests/service/test_fuzz.py (-s prints what was sent; ~2 min on 2 cores)
"""
from __future__ import annotations

import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.states import ALL_STATES

from svc_helpers import bearer, run_job, submit

pytestmark = pytest.mark.postgres

# A 5xx, or a status code, content type or body that the schema does not document. (schemathesis's other checks
# ask more than a schema can say here: a schema-valid spec or file may still be refused with a 422.)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 35  # per operation and generation mode (the suite stays in time)
# Every upload that reaches the inspection costs a subprocess (python -m ttm.inspection, which imports torch: 1-3 s
# on this machine), so uploads get fewer; the known-size files of test_artifacts cover the rest.
EXAMPLES_FOR = {"POST /v1/artifacts": 8, "POST /v1/sweeps": 10}  # a sweep that gets far is admitted, inspection too


@pytest.fixture
def backend() -> str:
    return "postgresql"


@pytest.fixture
def known_ids(client, users, settings, teacher_file) -> dict[str, str]:
    """Ids that exist: alice's artifact, and her finished job with metrics, a log, best and last checkpoints."""
    r = client.post("/v1/artifacts", content=teacher_file.read_bytes(), headers=bearer(users.alice))
    assert r.status_code == 201, r.text
    job = submit(client, users.alice)
    run_job(settings, job["id"], to="succeeded", epochs=2, checkpoint=True, log="epoch 1/2 loss 0.9\n")
    return {"artifact_id": r.json()["id"], "job_id": job["id"]}


def _requests(operation, headers: dict[str, str], known_ids: dict[str, str]) -> st.SearchStrategy:
    """Valid and invalid requests, with these headers fixed (the token is never mutated), some at known ids."""
    known = {name: value for name, value in known_ids.items() if name in operation.path_parameters}
    strategies = [operation.as_strategy(generation_mode=mode, headers=headers) for mode in GenerationMode]
    if known:
        strategies += [operation.as_strategy(generation_mode=mode, headers=headers, path_parameters=known)
                       for mode in GenerationMode]
    return st.one_of(strategies)


def _fuzz(requests: st.SearchStrategy, examples: int, seen: Counter[int]) -> None:
    """Send `examples` of these requests and check each answer; raises the first failure (shrunk)."""

    @hypothesis_settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
    @given(case=requests)
    def fuzz(case) -> None:
        response = case.call()
        seen[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    fuzz()


def test_every_operation_as_documented(settings, users, known_ids):
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings, host="127.0.0.1"))
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: dict[str, Counter[int]] = {}
    seconds: dict[str, float] = {}
    failures: dict[str, str] = {}
    started = time.monotonic()
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        statuses[label] = Counter()
        began = time.monotonic()
        try:
            _fuzz(_requests(operation, bearer(users.alice), known_ids),
                  EXAMPLES_FOR.get(label, EXAMPLES) * len(GenerationMode), statuses[label])
        except (Exception, FailureGroup) as err:  # every operation runs; their failures are reported together
            failures[label] = f"{type(err).__name__}: {err}"
        seconds[label] = time.monotonic() - began
    print(f"\n{len(operations)} operations, {sum(sum(c.values()) for c in statuses.values())} requests, "
          f"{time.monotonic() - started:.0f} s")
    for label, seen in statuses.items():
        print(f"  {label}: {dict(sorted(seen.items()))} in {seconds[label]:.1f} s")
    assert not failures, "\n\n".join(f"== {label}\n{text}" for label, text in failures.items())
    assert all(statuses.values()), "an operation got no request"


def test_what_the_fuzzer_found(client, users, known_ids):
    """Its findings, kept as plain requests."""
    job = known_ids["job_id"]
    # a log read far past the end was a 500 (the read's OSError); it is an empty page
    r = client.get(f"/v1/jobs/{job}/log?offset={2**62}", headers=bearer(users.alice))
    assert r.status_code == 200 and r.text == "" and r.headers["x-ttm-log-next-offset"] == str(2**62)
    # the JSON errors of the text and stream routes were documented as text/plain and text/event-stream
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/jobs/{job_id}/log", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/checkpoints/{which}"):
        assert list(paths[path]["get"]["responses"]["404"]["content"]) == ["application/json"], path
    r = client.get("/v1/jobs/job_0/log", headers=bearer(users.alice))
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    # ?state= names the states it takes, repeated or comma-separated
    (state,) = [p for p in paths["/v1/jobs"]["get"]["parameters"] if p["name"] == "state"]
    assert state["schema"]["anyOf"][0]["items"]["enum"] == list(ALL_STATES)
    r = client.get("/v1/jobs?state=succeeded,queued&state=failed", headers=bearer(users.alice))
    assert [j["id"] for j in r.json()["items"]] == [job]
    r = client.get("/v1/jobs?state=succeeded,done", headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "state"
