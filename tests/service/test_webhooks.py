"""Webhooks against a real receiver on loopback: a job's final state is recorded with its call, the reconciler's
delivery pass (called directly) signs and sends it, retries a 500, never sends a delivered call again, and refuses
addresses the server must not reach; GET /v1/jobs/{id}/deliveries shows them to their owner (and an admin) alone."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.db import session_scope
from service.models import utcnow
from service.queries import webhooks as wq
from service.settings import Settings
from worker.webhooks import deliver_due

from svc_helpers import bearer, make_settings, run_job, spec_ce, submit


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 that records every request; `answers[path]` lists the statuses to give
    first (then 200), `locations[path]` the Location header it sends."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.answers: dict[str, list[int]] = {}
        self.locations: dict[str, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, dict(self.headers.items()), body))
                queued = receiver.answers.get(self.path) or []
                self.send_response(queued.pop(0) if queued else 200)
                if self.path in receiver.locations:
                    self.send_header("Location", receiver.locations[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def to(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[0] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """The tests' receiver is on loopback: the admin's allow-list lets the server call it."""
    (tmp_path / "data").mkdir()
    return make_settings(tmp_path, db_url, webhook_allow="127.0.0.1")


def notified(url: str, name: str = "job") -> dict:
    return {**spec_ce(name), "notify": {"url": url}}


def deliveries(client: TestClient, token: str, job_id: str) -> list[dict]:
    r = client.get(f"/v1/jobs/{job_id}/deliveries", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()["items"]


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """What docs/API.md tells a receiver to do."""
    parts = dict(item.split("=", 1) for item in headers["X-TTM-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(parts["t"])) <= tolerance and hmac.compare_digest(expected, parts["v1"])


def test_signed_retried_delivered_once_and_listed(client, users, settings, receiver):
    receiver.answers["/hook?team=vision"] = [500]
    done = submit(client, users.alice, notified(f"{receiver.url}/hook?team=vision", "done"))
    run_job(settings, done["id"], to="succeeded", epochs=1)
    gone = submit(client, users.alice, notified(f"{receiver.url}/down", "gone"))
    receiver.answers["/down"] = [500] * 10
    assert client.post(f"/v1/jobs/{gone['id']}/cancel", headers=bearer(users.alice)).status_code == 200
    (pending,) = deliveries(client, users.alice, done["id"])
    assert pending["state"] == "pending" and pending["attempts"] == 0 and pending["url"].endswith("?team=vision")

    now = utcnow()
    first = deliver_due(settings, now=now)  # a 500 from each
    assert sorted(first.failed) == sorted([pending["id"], deliveries(client, users.alice, gone["id"])[0]["id"]])
    assert deliver_due(settings, now=now + timedelta(seconds=5)).failed == []  # backoff: not due yet
    assert deliver_due(settings, now=now + timedelta(seconds=11)).delivered == [pending["id"]]
    for later in (timedelta(minutes=5), timedelta(hours=2), timedelta(hours=30)):  # /down gives up past a day
        deliver_due(settings, now=now + later)
    assert [r[0] for r in receiver.to("/hook?team=vision")] == ["/hook?team=vision"] * 2  # once after its 200

    secret = client.get("/v1/users/me/webhook-secret", headers=bearer(users.alice)).json()["secret"]
    for _, headers, body in receiver.to("/hook?team=vision"):
        assert verify(secret, headers, body)
        assert not verify(secret + "x", headers, body)
        assert headers["X-TTM-Delivery"] == pending["id"] and headers["Content-Type"] == "application/json"
        sent = json.loads(body)
        assert sent["event"] == "job.finished" and sent["delivery"] == pending["id"]
        assert {k: sent["job"][k] for k in ("id", "name", "state", "best_top1", "owner")} == {
            "id": done["id"], "name": "done", "state": "succeeded", "best_top1": 51.0, "owner": "alice"}
        assert sent["job"]["finished_at"] and sent["job"]["created_at"] and sent["sent_at"]
    (_, headers, body), = receiver.to("/down")[:1]
    assert json.loads(body)["job"]["state"] == "cancelled" and verify(secret, headers, body)

    (delivered,) = deliveries(client, users.alice, done["id"])
    assert delivered["state"] == "delivered" and delivered["attempts"] == 2 and delivered["last_status"] == 200
    assert delivered["next_attempt_at"] is None and delivered["delivered_at"]
    (failed,) = deliveries(client, users.alice, gone["id"])
    assert failed["state"] == "failed" and failed["last_status"] == 500 and "gave up" in failed["last_error"]
    assert len(receiver.to("/down")) == failed["attempts"] < 10
    # another user's job is not there for them; an admin sees it
    r = client.get(f"/v1/jobs/{done['id']}/deliveries", headers=bearer(users.bob))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert deliveries(client, users.admin, done["id"])[0]["id"] == pending["id"]
    # a rotated secret signs from then on; the old one no longer verifies
    rotated = client.post("/v1/users/me/webhook-secret/rotate", headers=bearer(users.alice)).json()["secret"]
    assert rotated != secret
    assert client.get("/v1/users/me/webhook-secret", headers=bearer(users.alice)).json()["secret"] == rotated


def test_redirect_not_followed(client, users, settings, receiver):
    receiver.answers["/moved"] = [302]
    receiver.locations["/moved"] = f"{receiver.url}/elsewhere"
    job = submit(client, users.alice, notified(f"{receiver.url}/moved"))
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(users.alice))
    assert len(deliver_due(settings).failed) == 1
    (moved,) = deliveries(client, users.alice, job["id"])
    assert moved["state"] == "pending" and moved["last_status"] == 302 and "not followed" in moved["last_error"]
    assert [r[0] for r in receiver.requests] == ["/moved"]


def test_one_sender_per_attempt(client, users, settings, receiver):
    """Two reconcilers that saw the same due row: only the first claim of an attempt wins."""
    job = submit(client, users.alice, notified(f"{receiver.url}/hook"))
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(users.alice))
    now = utcnow()
    with session_scope(settings) as session:
        (row,) = wq.due(session, now, 10)
    with session_scope(settings) as session:
        assert wq.claim(session, row[0], row[1], now, now + timedelta(seconds=10))
    with session_scope(settings) as session:
        assert not wq.claim(session, row[0], row[1], now, now + timedelta(seconds=10))
        assert wq.due(session, now, 10) == []
    assert receiver.requests == []


def test_forbidden_addresses_refused_and_never_called(db_url, users, tmp_path, receiver):
    settings = make_settings(tmp_path, db_url)  # no allow-list: loopback, private and metadata are forbidden
    port = receiver.server.server_address[1]
    with TestClient(create_app(settings, host="127.0.0.1")) as client:
        for url in (f"{receiver.url}/hook", "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/",
                    f"http://[::ffff:127.0.0.1]:{port}/", "http://[::1]/", "https://[fd00::1]/", "http://0.0.0.0/"):
            r = client.post("/v1/jobs", json=notified(url), headers=bearer(users.alice))
            assert r.status_code == 422, (url, r.text)
            error = r.json()["error"]
            assert error["field"] == "notify.url" and "TTM_WEBHOOK_ALLOW" in error["message"], error
        r = client.post("/v1/jobs", json=notified("ftp://example.com/"), headers=bearer(users.alice))
        assert r.status_code == 422 and r.json()["error"]["field"] == "notify.url"
        # a hostname is judged when it is called, by every address it resolves to
        job = submit(client, users.alice, notified(f"http://localhost:{port}/hook"))
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(users.alice))
        summary = deliver_due(settings)
        (refused,) = deliveries(client, users.alice, job["id"])
    assert summary.gave_up == [refused["id"]] and refused["state"] == "failed"
    assert "refused: localhost resolves to" in refused["last_error"] and refused["last_status"] is None
    assert deliver_due(settings, now=utcnow() + timedelta(hours=1)).gave_up == []
    assert receiver.requests == []


def test_a_sweep_calls_its_url_once_when_it_ends_signed(client, users, settings, receiver):
    """A sweep's notify.url gets sweep.finished when it ends (here: cancelled), signed like a job's, once; its
    deliveries are its owner's to see; a loopback URL is refused where the admin has not allowed it."""
    from service.sweeps import drive_all

    sweep = {"name": "beta", "job": {**spec_ce("trial"), "dataset": {"name": "digits"}},
             "space": {"train.lr": [0.05, 0.1]}, "strategy": "grid", "notify": {"url": f"{receiver.url}/sweep"}}
    r = client.post("/v1/sweeps", json=sweep, headers=bearer(users.alice))
    assert r.status_code == 201, r.text
    sweep_id = r.json()["id"]
    drive_all(settings, lambda job_id, queue: None)  # a reconciler's pass: nothing has ended, nothing is called
    assert deliver_due(settings).delivered == [] and receiver.to("/sweep") == []
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=bearer(users.alice)).json()["state"] == "cancelled"
    (pending,) = client.get(f"/v1/sweeps/{sweep_id}/deliveries", headers=bearer(users.alice)).json()["items"]
    assert pending["event"] == "sweep.finished" and pending["state"] == "pending"
    assert deliver_due(settings).delivered == [pending["id"]]
    assert deliver_due(settings, now=utcnow() + timedelta(hours=1)).delivered == []  # never twice
    ((_, headers, body),) = receiver.to("/sweep")
    secret = client.get("/v1/users/me/webhook-secret", headers=bearer(users.alice)).json()["secret"]
    assert verify(secret, headers, body) and headers["X-TTM-Event"] == "sweep.finished"
    sent = json.loads(body)
    assert sent["sweep"]["id"] == sweep_id and sent["sweep"]["state"] == "cancelled" and sent["sweep"]["owner"] == \
        "alice" and sent["sweep"]["reason"] == "cancelled by alice"
    assert client.get(f"/v1/sweeps/{sweep_id}/deliveries", headers=bearer(users.bob)).status_code == 404

    strict = make_settings(settings.home / "strict", settings.database_url)  # no TTM_WEBHOOK_ALLOW
    with TestClient(create_app(strict, host="127.0.0.1")) as other:
        r = other.post("/v1/sweeps", json=sweep, headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "notify.url", r.text
