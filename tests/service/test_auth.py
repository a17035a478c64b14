"""Auth: bearer tokens; a user sees their own jobs and artifacts only (others' are 404); an admin sees all;
no token or a bad one is 401, on every route. The CLI prints a token alone on stdout and stores only its hash."""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.app import AUTH_OFF_WARNING, AuthOffRefused, create_app
from service.db import session_scope
from service.models import Token, User

from svc_helpers import bearer, make_settings, run_job, spec_ce, submit

REPO = Path(__file__).resolve().parents[2]
CALLERS = ("nobody", "bad", "bob", "alice", "admin")  # the owner's calls come after the refusals


@pytest.fixture
def world(client, users, settings, teacher_file):
    """Alice's artifact, a finished job with checkpoints/metrics/log, and a running job (for cancel)."""
    art = client.post("/v1/artifacts", content=teacher_file.read_bytes(), headers=bearer(users.alice)).json()["id"]
    done = submit(client, users.alice, spec_ce("done"))["id"]
    run_job(settings, done, to="succeeded", epochs=2, checkpoint=True, log="hello\n")
    running = submit(client, users.alice, spec_ce("running"))["id"]
    run_job(settings, running)
    return {"art": art, "done": done, "running": running}


def _token(users, caller: str) -> str | None:
    return {"nobody": None, "bad": "ttm_not-a-real-token", "bob": users.bob, "alice": users.alice,
            "admin": users.admin}[caller]


# (method, path, owner's status); {art}/{done}/{running} are alice's
OWNED_ROUTES = [
    ("GET", "/v1/artifacts/{art}", 200),
    ("GET", "/v1/jobs/{done}", 200),
    ("POST", "/v1/jobs/{running}/cancel", 200),
    ("GET", "/v1/jobs/{done}/metrics", 200),
    ("GET", "/v1/jobs/{done}/events", 200),
    ("GET", "/v1/jobs/{done}/checkpoints", 200),
    ("GET", "/v1/jobs/{done}/checkpoints/best", 200),
    ("GET", "/v1/jobs/{done}/checkpoints/last?format=pt", 200),
    ("GET", "/v1/jobs/{done}/checkpoints/best/manifest", 200),
    ("GET", "/v1/jobs/{done}/log", 200),
]


def test_matrix_owned(client, users, world):
    """Every owned route, every caller, on one world (the suite's time); every wrong answer is reported."""
    wrong = []
    for method, path, ok in OWNED_ROUTES:
        url = path.format(**world)
        for caller in CALLERS:
            r = client.request(method, url, headers=bearer(_token(users, caller)))
            expected = {"nobody": 401, "bad": 401, "bob": 404, "alice": ok, "admin": ok}[caller]
            if r.status_code != expected:
                wrong.append(f"{method} {path} as {caller}: {r.status_code}, expected {expected}: {r.text[:200]}")
            elif expected >= 400 and r.json()["error"]["code"] not in ("unauthorized", "not_found"):
                wrong.append(f"{method} {path} as {caller}: error code {r.json()['error']['code']}")
            elif expected == 401 and r.headers.get("www-authenticate") != "Bearer":
                wrong.append(f"{method} {path} as {caller}: no WWW-Authenticate: Bearer")
    assert not wrong, "\n".join(wrong)


def test_matrix_collections(client, users, world, teacher_file):
    for caller in CALLERS:
        h = bearer(_token(users, caller))
        authed = caller in ("bob", "alice", "admin")
        r = client.get("/v1/artifacts", headers=h)
        assert r.status_code == (200 if authed else 401)
        if authed:
            assert [a["id"] for a in r.json()] == {"bob": [], "alice": [world["art"]], "admin": []}[caller]
        r = client.get("/v1/jobs", headers=h)
        assert r.status_code == (200 if authed else 401)
        if authed:
            owners = {j["owner"] for j in r.json()["items"]}
            assert owners == {"bob": set(), "alice": {"alice"}, "admin": {"alice", "bob"}}[caller]
        r = client.post("/v1/jobs", json=spec_ce(), headers=h)
        assert r.status_code == (201 if authed else 401)
        r = client.post("/v1/artifacts", content=teacher_file.read_bytes(), headers=h)
        assert r.status_code in ((200, 201) if authed else (401,))
        # using alice's artifact as a teacher: alice and the admin may, bob may not
        distill = {**spec_ce(), "teacher": {"arch": "resnet8", "weights": world["art"]},
                   "loss": {"kind": "kd"}}
        r = client.post("/v1/jobs", json=distill, headers=h)
        assert r.status_code == {"nobody": 401, "bad": 401, "bob": 422, "alice": 201, "admin": 201}[caller], r.text


def test_public_routes(client):
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_cli_prints_the_token_alone_and_stores_its_hash(settings):
    env = {**os.environ, "TTM_HOME": str(settings.home), "TTM_DATABASE_URL": settings.database_url}
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", "admin", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    made = run("user", "create", "carol", "--admin")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and token.startswith("ttm_") and len(token) > 40
    second = run("token", "create", "carol")
    assert second.returncode == 0 and second.stdout.strip() != token
    assert run("user", "create", "carol").returncode == 1
    missing = run("token", "create", "nobody")
    assert missing.returncode == 1 and missing.stdout == "" and "no user 'nobody'" in missing.stderr
    with session_scope(settings) as session:
        carol = session.scalar(select(User).where(User.name == "carol"))
        assert carol.is_admin
        hashes = set(session.scalars(select(Token.token_hash).where(Token.user_id == carol.id)))
    assert hashlib.sha256(token.encode()).hexdigest() in hashes and token not in hashes
    with TestClient(create_app(settings, host="127.0.0.1")) as client:
        assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
        assert client.get("/v1/jobs", headers=bearer(second.stdout.strip())).status_code == 200


def test_auth_off_only_on_loopback(db_url, tmp_path, caplog):
    settings = make_settings(tmp_path, db_url, auth="off")
    for host in ("0.0.0.0", "192.168.1.5", "::", None):
        with pytest.raises(AuthOffRefused, match="loopback"):
            create_app(settings, host=host)
    with caplog.at_level(logging.WARNING, logger="ttm.service"):
        app = create_app(settings, host="127.0.0.1")
        with TestClient(app, base_url="http://127.0.0.1") as client:
            job = client.post("/v1/jobs", json=spec_ce()).json()
            assert job["owner"] == "local"
            assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
            assert client.get("/v1/jobs").json()["items"][0]["id"] == job["id"]
        # a request that reached the server on a non-loopback address is refused, whatever the server was told
        with TestClient(app, base_url="http://10.1.2.3") as client:
            r = client.get("/v1/jobs")
            assert r.status_code == 403 and "loopback" in r.json()["error"]["message"]
    assert AUTH_OFF_WARNING in caplog.text
    create_app(settings, host="::1")
    create_app(settings, host="localhost")
