"""The lab queue with real processes: `ttm serve --workers 0` takes the submits, one `ttm worker` runs them. Alice
submits 4 jobs, then Bob 2: Bob's first job runs second, not fifth, and the jobs start in exactly the order
GET /v1/queue showed while they were all queued. On the embedded defaults and on PostgreSQL + Redis."""
from __future__ import annotations

import httpx
from sqlalchemy import select

from service.db import session_scope
from service.migrate import upgrade_to_head
from service.models import Job
from service.queries.users import create_user
from service.settings import Settings

from worker_helpers import Processes, env_for, free_port, spec_data, wait_for


def test_a_light_user_goes_second_and_jobs_start_in_the_order_shown(lab_settings: Settings):
    settings = lab_settings
    upgrade_to_head(settings)
    with session_scope(settings) as session:
        tokens = {name: create_user(session, name, is_admin=name == "root")[1] for name in ("alice", "bob", "root")}
    procs = Processes(settings.home)
    env = env_for(settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        procs.start("api", ["serve", "--host=127.0.0.1", f"--port={port}", "--workers=0"], env)
        wait_for(lambda: "Application startup complete" in procs.log("api"), 90, "the API", interval=0.3)
        http = httpx.Client(base_url=url, timeout=30)

        def submit(user: str, n: int) -> str:
            r = http.post("/v1/jobs", json=spec_data(epochs=1, name=f"{user}-{n}"),
                          headers={"Authorization": f"Bearer {tokens[user]}"})
            assert r.status_code == 201, r.text
            return r.json()["id"]

        alice = [submit("alice", n) for n in range(4)]
        bob = [submit("bob", n) for n in range(2)]
        shown = http.get("/v1/queue?queue=cpu", headers={"Authorization": f"Bearer {tokens['root']}"}).json()
        order = [entry["id"] for entry in shown["items"]]
        names = {job: f"alice-{i}" for i, job in enumerate(alice)} | {job: f"bob-{i}" for i, job in enumerate(bob)}
        assert order == [alice[0], bob[0], alice[1], bob[1], *alice[2:]], [names.get(j) for j in order]
        for job_id, position in zip(order, range(1, 7), strict=True):
            job = http.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {tokens['root']}"}).json()
            assert job["queue_position"] == position

        procs.worker("w1", env)

        def all_done() -> bool:
            with session_scope(settings) as session:
                states = set(session.scalars(select(Job.state).where(Job.id.in_(order))))
            assert "failed" not in states, procs.log("w1")[-3000:]
            return states == {"succeeded"}

        wait_for(all_done, 300, "the 6 jobs to succeed", interval=0.5)
        with session_scope(settings) as session:
            started = list(session.scalars(select(Job.id).where(Job.id.in_(order)).order_by(Job.started_at)))
        assert started == order
        assert started.index(bob[0]) == 1  # second, not fifth
    finally:
        procs.stop_all()
