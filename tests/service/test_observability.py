"""/healthz, /readyz, /metrics and /docs."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.db import session_scope
from service.models import Worker, utcnow

from svc_helpers import bearer, make_settings, run_job, spec_ce, submit


def _sample(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not in /metrics")


def test_prometheus(client, users, settings):
    a = submit(client, users.alice)
    submit(client, users.alice)
    submit(client, users.bob, {**spec_ce(), "resources": {"gpus": 2}})
    run_job(settings, a["id"])
    client.get(f"/v1/jobs/{a['id']}", headers=bearer(users.alice))
    with session_scope(settings) as session:
        session.add(Worker(name="gpu-0@host", queue="gpu", last_seen=utcnow()))
        session.add(Worker(name="cpu-0@host", queue="cpu", last_seen=utcnow()))
        session.add(Worker(name="old@host", queue="gpu", last_seen=utcnow() - timedelta(minutes=5)))
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _sample(text, 'ttm_jobs{state="queued"}') == 2
    assert _sample(text, 'ttm_jobs{state="running"}') == 1
    assert _sample(text, 'ttm_jobs{state="succeeded"}') == 0
    assert _sample(text, 'ttm_queue_depth{queue="cpu"}') == 1
    assert _sample(text, 'ttm_queue_depth{queue="gpu"}') == 1
    assert _sample(text, 'ttm_workers_seen{queue="gpu"}') == 1
    assert _sample(text, "ttm_workers_seen_total") == 2
    # latency by route template, not by concrete URL
    assert _sample(text, 'ttm_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}",'
                         'status="200"}') == 1
    assert _sample(text, 'ttm_http_request_duration_seconds_count{method="POST",route="/v1/jobs",'
                         'status="201"}') == 3
    assert a["id"] not in text


def test_health_and_readiness(client, db_url, tmp_path):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}
    broken = make_settings(tmp_path, db_url, broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(broken, host="127.0.0.1")) as other:
        r = other.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["broker"] != "ok"


@pytest.mark.redis
def test_readiness_with_redis(client, db_url, tmp_path):
    """The lab setup: Redis on this machine (CI starts it)."""
    settings = make_settings(tmp_path, db_url, broker_url="redis://127.0.0.1:6379/15")
    with TestClient(create_app(settings, host="127.0.0.1")) as other:
        r = other.get("/readyz")
        if r.status_code != 200:
            pytest.fail(f"Redis at 127.0.0.1:6379 is not reachable: {r.json()}")


def test_openapi_has_an_example_for_every_body(client):
    schema = client.get("/openapi.json").json()
    bodies = [(path, method, op["requestBody"]) for path, ops in schema["paths"].items()
              for method, op in ops.items() if "requestBody" in op]
    assert {(p, m) for p, m, _ in bodies} == {("/v1/jobs", "post"), ("/v1/artifacts", "post"),
                                              ("/v1/pipelines", "post"), ("/v1/jobs/{job_id}", "patch"),
                                              ("/v1/datasets", "post"), ("/v1/sweeps", "post")}
    for path, _, body in bodies:
        for media, content in body["content"].items():
            assert content.get("example") is not None or content.get("examples"), (path, media)
    job_body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert job_body["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    assert "JobSpec" in schema["components"]["schemas"] and "TeacherSpec" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, ops in schema["paths"].items():  # every /v1 route says it takes the token, the hand-made one too
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert op.get("security") == [{"HTTPBearer": []}], (method, path)
    submit_params = schema["paths"]["/v1/jobs"]["post"]["parameters"]
    assert sorted((p["name"], p["in"]) for p in submit_params) == [("Idempotency-Key", "header"), ("note", "query"),
                                                                    ("tag", "query")]
    key = next(p for p in submit_params if p["name"] == "Idempotency-Key")
    assert '"maxLength": 200' in json.dumps(key["schema"])
    assert "swagger" in client.get("/docs").text.lower()
