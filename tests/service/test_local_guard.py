"""TTM_AUTH=off serves the machine's own user only: a Host that is not the loopback (DNS rebinding) is refused,
a write from another origin is refused, and no simple-request content type changes anything; curl still works."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from svc_helpers import make_settings, spec_ce


@pytest.fixture
def local(db_url, tmp_path):
    (tmp_path / "data").mkdir()
    app = create_app(make_settings(tmp_path, db_url, auth="off"), host="127.0.0.1")
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client


def test_rebinding_host_is_refused(local):
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil:8000"):
        r = local.get("/v1/jobs", headers={"Host": host})
        assert r.status_code == 403, host
        assert host in r.json()["error"]["message"] and r.json()["error"]["field"] == "Host"
    assert local.get("/healthz", headers={"Host": "evil.example"}).status_code == 403
    for host in ("127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000", "LOCALHOST:8000"):
        assert local.get("/v1/jobs", headers={"Host": host}).status_code == 200, host


def test_foreign_origin_writes_are_refused(local):
    for origin in ("https://evil.example", "null", "http://localhost:3000", "http://127.0.0.1:8001"):
        r = local.post("/v1/jobs", json=spec_ce(), headers={"Origin": origin})
        assert r.status_code == 403 and r.json()["error"]["field"] == "Origin", origin
    r = local.post("/v1/jobs", json=spec_ce(), headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert local.get("/v1/jobs", params={"limit": 1}).json()["items"] == []
    # the server's own origin (the dashboard) and no Origin at all (curl, the ttm client) write
    assert local.post("/v1/jobs", json=spec_ce(), headers={"Origin": "http://127.0.0.1:8000"}).status_code == 201
    job = local.post("/v1/jobs", json=spec_ce()).json()
    r = local.post(f"/v1/jobs/{job['id']}/cancel", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert local.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200


def test_simple_content_types_change_nothing(local):
    import json

    body = json.dumps(spec_ce())
    for media in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):
        r = local.post("/v1/jobs", content=body, headers={"Content-Type": media})
        assert r.status_code == 415, media
        assert r.json()["error"]["code"] == "unsupported_media_type"
    r = local.post("/v1/jobs", files={"file": ("spec.json", body)})  # multipart is for the upload route only
    assert r.status_code == 415
    assert local.get("/v1/jobs").json()["items"] == []


def test_multipart_upload_curl_yes_foreign_page_no(local, teacher_file):
    data = teacher_file.read_bytes()
    r = local.post("/v1/artifacts", files={"file": ("t.pt", data)},
                   headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = local.post("/v1/artifacts", files={"file": ("t.pt", data)})  # curl -F file=@t.pt sends no Origin
    assert r.status_code == 201, r.text
    r = local.post("/v1/artifacts", content=data, headers={"Content-Type": "application/octet-stream",
                                                           "Origin": "http://127.0.0.1:8000"})
    assert r.status_code == 200, r.text


def test_token_auth_is_unaffected(client, users):
    from svc_helpers import bearer

    r = client.get("/v1/jobs", headers={**bearer(users.alice), "Host": "jobs.lab.example"})
    assert r.status_code == 200
