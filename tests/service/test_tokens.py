"""Tokens expire and can be revoked, effective on the next request (there is no cache to outlive them); the CLI
shows a token's public id on stderr while the token stays alone on stdout; migration 0004 goes up and down."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, update

from service.db import get_engine, session_scope
from service.migrate import downgrade_to, upgrade_to_head
from service.models import Token, utcnow
from service.queries import users as uq

from svc_helpers import bearer, make_settings

REPO = Path(__file__).resolve().parents[2]


def _cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TTM_HOME": str(settings.home), "TTM_DATABASE_URL": settings.database_url}
    return subprocess.run([sys.executable, "-m", "service.cli", "admin", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_revoked_token_is_refused_at_once(client, users, settings):
    assert client.get("/v1/jobs", headers=bearer(users.alice)).status_code == 200  # a cache would now hold it
    with session_scope(settings) as session:
        token, now = uq.revoke_token(session, users.alice)
        assert now
    r = client.get("/v1/jobs", headers=bearer(users.alice))
    assert r.status_code == 401 and r.json()["error"]["message"] == "token revoked"
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/jobs", json={}, headers=bearer(users.alice))  # the route that authenticates itself
    assert r.status_code == 401 and r.json()["error"]["message"] == "token revoked"
    assert client.get("/v1/jobs", headers=bearer(users.bob)).status_code == 200


def test_expired_token_is_refused(client, settings):
    with session_scope(settings) as session:
        user, token = uq.create_user(session, "dave", expires_in=timedelta(hours=1))
    assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
    with session_scope(settings) as session:
        session.execute(update(Token).where(Token.user_id == user.id).values(expires_at=utcnow()
                                                                            - timedelta(seconds=1)))
    r = client.get("/v1/jobs", headers=bearer(token))
    assert r.status_code == 401 and r.json()["error"]["message"] == "token expired"


def test_cli_expiry_list_and_revoke(settings, client):
    made = _cli(settings, "user", "create", "erin", "--expires-in", "30d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and token.startswith("ttm_")
    assert "tok_" in made.stderr and "expires" in made.stderr and token not in made.stderr
    public_id = next(w for w in made.stderr.split() if w.startswith("tok_"))
    with session_scope(settings) as session:
        row = session.scalar(select(Token).where(Token.token_hash == uq.hash_token(token)))
        assert row.public_id == public_id
        assert timedelta(days=29, hours=23) < row.expires_at - utcnow() <= timedelta(days=30)
    second = _cli(settings, "token", "create", "erin", "--expires-in", "90d")
    assert second.returncode == 0 and second.stdout.count("\n") == 1 and "tok_" in second.stderr
    assert _cli(settings, "token", "create", "erin", "--expires-in", "soon").returncode != 0
    listed = _cli(settings, "token", "list", "erin")
    assert listed.returncode == 0 and listed.stdout.count(public_id) == 1 and "active" in listed.stdout
    assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
    assert _cli(settings, "token", "revoke", "tok_12").returncode == 1  # too short to name one token
    revoked = _cli(settings, "token", "revoke", public_id[:10])  # a prefix of 6 hex digits names it
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked {public_id}" in revoked.stderr
    r = client.get("/v1/jobs", headers=bearer(token))
    assert r.status_code == 401 and r.json()["error"]["message"] == "token revoked"
    assert client.get("/v1/jobs", headers=bearer(second.stdout.strip())).status_code == 200
    assert "revoked" in _cli(settings, "token", "list", "erin").stdout
    missing = _cli(settings, "token", "revoke", "tok_ffffffffffff")
    assert missing.returncode == 1 and "no token" in missing.stderr


def test_duration_parsing():
    assert uq.parse_duration("90d") == timedelta(days=90)
    assert uq.parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "d", "0d", "-1d", "1y", "1.5h"):
        with pytest.raises(ValueError):
            uq.parse_duration(bad)


def test_migration_0004_up_and_down(db_url, tmp_path):
    settings = make_settings(tmp_path, db_url)
    with session_scope(settings) as session:
        _, token = uq.create_user(session, "frank")
    downgrade_to(settings, "0003")  # the revision before 0004
    engine = get_engine(settings)
    columns = {c["name"] for c in inspect(engine).get_columns("tokens")}
    assert "expires_at" not in columns and "revoked_at" not in columns and "token_hash" in columns
    upgrade_to_head(settings)
    columns = {c["name"] for c in inspect(engine).get_columns("tokens")}
    assert {"expires_at", "revoked_at"} <= columns
    with session_scope(settings) as session:  # the token issued before keeps working, never expiring
        row = session.scalar(select(Token).where(Token.token_hash == uq.hash_token(token)))
        assert row.expires_at is None and row.revoked_at is None
