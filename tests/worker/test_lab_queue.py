"""The lab queue with real processes: `ttm serve --workers 0` takes the submits, `ttm worker`s run them. Alice
submits 3 jobs, then Bob 2, then a `high` job arrives: it runs first, Bob's first job runs third, not fifth, and the
jobs start in exactly the order GET /v1/queue showed while they were all queued. With two workers, a user at
max-running 1 never holds two while the other worker serves someone else. The first on PostgreSQL + Redis, the
second on the embedded defaults (both passed on both when written; the suite runs one each for its time)."""
from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from service.db import session_scope
from service.migrate import upgrade_to_head
from service.models import Job, User
from service.queries.users import create_user
from service.settings import Settings

from worker_helpers import Processes, env_for, free_port, spec_data, wait_for


@pytest.mark.parametrize("lab_settings", ["postgresql+redis"], indirect=True)  # a lab's setup (the suite's time)
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

        def submit(user: str, n: int, priority: str = "normal") -> str:
            r = http.post("/v1/jobs", json=spec_data(epochs=1, name=f"{user}-{n}", resources={"priority": priority}),
                          headers={"Authorization": f"Bearer {tokens[user]}"})
            assert r.status_code == 201, r.text
            return r.json()["id"]

        alice = [submit("alice", n) for n in range(3)]
        bob = [submit("bob", n) for n in range(2)]
        deadline = submit("root", 0, priority="high")  # submitted last, a high job goes before every normal one
        shown = http.get("/v1/queue?queue=cpu", headers={"Authorization": f"Bearer {tokens['root']}"}).json()
        order = [entry["id"] for entry in shown["items"]]
        names = {job: f"alice-{i}" for i, job in enumerate(alice)} | {job: f"bob-{i}" for i, job in enumerate(bob)}
        assert order == [deadline, alice[0], bob[0], alice[1], bob[1], *alice[2:]], [names.get(j) for j in order]
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
        assert started.index(bob[0]) == 2  # after the high job and alice's first, not fifth
    finally:
        procs.stop_all()


@pytest.mark.parametrize("lab_settings", ["embedded"], indirect=True)  # the suite's time: one backend here
def test_max_running_holds_a_user_back_while_another_worker_serves_others(lab_settings: Settings):
    settings = lab_settings
    upgrade_to_head(settings)
    with session_scope(settings) as session:
        tokens = {name: create_user(session, name)[1] for name in ("alice", "bob")}
        session.scalar(select(User).where(User.name == "alice")).max_running = 1
    procs = Processes(settings.home)
    env = env_for(settings)
    port = free_port()
    try:
        procs.start("api", ["serve", "--host=127.0.0.1", f"--port={port}", "--workers=0"], env)
        wait_for(lambda: "Application startup complete" in procs.log("api"), 90, "the API", interval=0.3)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        ids = {}
        for user, n in [("alice", 4), ("bob", 2)]:
            for i in range(n):
                r = http.post("/v1/jobs", json=spec_data(epochs=1, name=f"{user}-{i}"),
                              headers={"Authorization": f"Bearer {tokens[user]}"})
                assert r.status_code == 201, r.text
                ids[r.json()["id"]] = user
        procs.worker("w1", env)
        procs.worker("w2", env)
        most = {"alice": 0, "bob": 0}

        def sample() -> bool:  # how many of each user's jobs run at this moment
            with session_scope(settings) as session:
                rows = session.execute(select(Job.id, Job.state).where(Job.id.in_(ids))).all()
            assert "failed" not in {state for _, state in rows}, procs.log("w1")[-3000:]
            for user in most:
                most[user] = max(most[user], sum(1 for i, st in rows if ids[i] == user and st == "running"))
            return all(st == "succeeded" for _, st in rows)

        wait_for(sample, 300, "the 6 jobs to succeed", interval=0.1)
        assert most["alice"] == 1  # never two at once, though a worker was free while bob's jobs lasted
        assert most["bob"] >= 1
        with session_scope(settings) as session:
            workers = set(session.scalars(select(Job.worker).where(Job.id.in_(ids))))
        assert len(workers) == 2  # both workers took jobs
    finally:
        procs.stop_all()
