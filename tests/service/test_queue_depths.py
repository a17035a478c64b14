"""queue_depths follows every way a job enters or leaves `queued` (its triggers, migrations/versions/0002), on
SQLite and PostgreSQL: the submit path, the ORM insert, the worker's lease, cancel, the reconciler's requeue, a
user deleted with their jobs, plain SQL. The submit's queue positions come from it."""
from __future__ import annotations

from datetime import timedelta

import pytest

from sqlalchemy import delete, func, select, text, update

from service.db import session_scope
from service.models import Job, QueueDepth, User, utcnow
from service.queries.jobs import insert_job
from service.settings import Settings
from service.states import transition
from svc_helpers import bearer, spec_ce
from worker.lease import lease_job


def depths(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """(what queue_depths says, what counting the jobs says), without queues at 0."""
    with session_scope(settings) as session:
        kept = {q: d for q, d in session.execute(select(QueueDepth.queue, QueueDepth.depth)) if d}
        counted = dict(session.execute(select(Job.queue, func.count()).where(Job.state == "queued")
                                       .group_by(Job.queue)).all())
    return kept, counted


def assert_kept(settings: Settings, expected: dict[str, int]) -> None:
    kept, counted = depths(settings)
    assert kept == counted == expected


def test_every_path_in_and_out_of_queued(client, users, settings):
    gpu_spec = {**spec_ce("g"), "resources": {"gpus": 1}}
    ids = [client.post("/v1/jobs", json=spec_ce(f"c{i}"), headers=bearer(users.alice)).json()["id"]
           for i in range(4)]
    client.post("/v1/jobs", json=gpu_spec, headers=bearer(users.bob))
    assert_kept(settings, {"cpu": 4, "gpu": 1})

    with session_scope(settings) as session:  # a worker takes the first: its lease is one UPDATE of its own
        assert lease_job(session, ids[0], "w1@test", 60) is not None
    assert_kept(settings, {"cpu": 3, "gpu": 1})

    assert client.post(f"/v1/jobs/{ids[1]}/cancel", headers=bearer(users.alice)).json()["state"] == "cancelled"
    assert_kept(settings, {"cpu": 2, "gpu": 1})

    with session_scope(settings) as session:  # the reconciler hands a lost worker's job back
        job = session.get(Job, ids[0])
        session.execute(update(Job).where(Job.id == ids[0]).values(lease_expires_at=utcnow() - timedelta(1)))
        transition(session, job, "queued", reason="lease expired")
    assert_kept(settings, {"cpu": 3, "gpu": 1})

    with session_scope(settings) as session:  # the ORM insert (CLI, tests) and a move to another queue
        owner = session.scalar(select(User.id).where(User.name == "alice"))
        insert_job(session, owner, name="orm", spec={}, queue="cpu", idempotency_key=None, request_hash=None)
        session.execute(update(Job).where(Job.id == ids[2]).values(queue="gpu"))
    assert_kept(settings, {"cpu": 3, "gpu": 2})

    with session_scope(settings) as session:  # bob goes, and his gpu job with him (ON DELETE CASCADE)
        session.execute(delete(User).where(User.name == "bob"))
    assert_kept(settings, {"cpu": 3, "gpu": 1})

    with session_scope(settings) as session:
        session.execute(text("UPDATE jobs SET state = 'failed' WHERE state = 'queued'"))
    assert_kept(settings, {})


def test_submit_positions_come_from_the_depth(client, users):
    first = [client.post("/v1/jobs", json=spec_ce(f"a{i}"), headers=bearer(users.alice)).json() for i in range(3)]
    assert [j["queue_position"] for j in first] == [1, 2, 3]
    client.post(f"/v1/jobs/{first[0]['id']}/cancel", headers=bearer(users.alice))
    later = client.post("/v1/jobs", json=spec_ce("b"), headers=bearer(users.bob)).json()
    assert later["queue_position"] == 3  # two ahead of it: the cancelled one no longer counts
    again = client.get(f"/v1/jobs/{later['id']}", headers=bearer(users.bob)).json()
    assert again["queue_position"] == 3  # the read path counts, the submit path subtracts: the same answer


@pytest.mark.parametrize("cap", [1000, 2])
def test_list_positions_agree_with_counting_from_the_front(client, users, monkeypatch, cap):
    """The job list takes positions from the depth and the jobs newer than the page; GET /v1/jobs/{id} counts the
    shorter side (up to `cap` jobs ahead, or the depth minus up to `cap` behind, else all the jobs ahead: with a
    cap of 2, each way is taken). Two owners interleaved over two queues, some jobs cancelled, newer jobs of
    another owner after the page: every page of alice's list gives every job the same position as its own GET,
    and the GETs give each queue the positions 1..n."""
    import service.queries.jobs

    monkeypatch.setattr(service.queries.jobs, "POSITION_CAP", cap)
    def post(token: str, name: str, gpus: int) -> str:
        spec = {**spec_ce(name), "resources": {"gpus": gpus}}
        r = client.post("/v1/jobs", json=spec, headers=bearer(token))
        assert r.status_code == 201, r.text
        return r.json()["id"]

    mine = []
    for i in range(12):
        mine.append(post(users.alice, f"a{i}", i % 2))
        post(users.bob, f"b{i}", (i + 1) % 2)
    for job_id in mine[2::5]:
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(users.alice)).status_code == 200
    for i in range(4):  # newer than every job of alice's
        post(users.bob, f"late{i}", i % 2)
    seen, cursor = {}, None
    while True:
        page = client.get("/v1/jobs", params={"limit": 3, **({"cursor": cursor} if cursor else {})},
                          headers=bearer(users.alice)).json()
        seen.update({job["id"]: job["queue_position"] for job in page["items"]})
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(seen) == set(mine)
    for job_id, position in seen.items():
        alone = client.get(f"/v1/jobs/{job_id}", headers=bearer(users.alice)).json()
        assert position == alone["queue_position"], (job_id, alone["state"])
    everyone = client.get("/v1/jobs", params={"limit": 200, "state": "queued"}, headers=bearer(users.admin)).json()
    by_queue: dict[str, list[int]] = {}
    for job in everyone["items"]:
        alone = client.get(f"/v1/jobs/{job['id']}", headers=bearer(users.admin)).json()
        by_queue.setdefault(job["queue"], []).append(alone["queue_position"])
    assert {q: sorted(p) for q, p in by_queue.items()} == {q: list(range(1, len(p) + 1)) for q, p in by_queue.items()}
    assert sum(p is None for p in seen.values()) == len(mine[2::5]) == 2  # the cancelled ones
