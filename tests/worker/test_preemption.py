"""Preemption with real processes: `ttm serve --workers 0` (the API and the reconciler) and one `ttm worker`. Alice's
low job runs; Bob's high job arrives; the low job stops at its next epoch boundary, the high job runs, then the low
job resumes and ends with one metric row per (epoch, name), its attempt unspent, and the same weights as the same
spec run without interruption. On PostgreSQL + Redis."""
from __future__ import annotations

from datetime import datetime

import httpx
import pytest
import torch
from sqlalchemy import select

from service.db import session_scope
from service.migrate import upgrade_to_head
from service.models import Job, JobEvent, User
from service.queries.users import create_user
from service.settings import Settings

from worker_helpers import Processes, env_for, free_port, spec_data, wait_for

GRACE_S = 60.0


# on a lab's setup only: the policy and the reconciler are the same SQL on SQLite (tests/service/test_scheduling.py
# runs the choice of victim on both), and the suite's time is bounded
@pytest.mark.parametrize("lab_settings", ["postgresql+redis"], indirect=True)
def test_a_high_job_preempts_a_low_one_which_resumes_to_the_same_weights(lab_settings: Settings):
    settings = lab_settings.model_copy(update={"lease_seconds": 6, "preempt_grace_seconds": GRACE_S})
    upgrade_to_head(settings)
    with session_scope(settings) as session:
        tokens = {name: create_user(session, name)[1] for name in ("alice", "bob")}
        session.scalar(select(User).where(User.name == "bob")).priorities = "low,normal,high"
    procs = Processes(settings.home)
    env = env_for(settings)
    port = free_port()
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def submit(user: str, spec: dict) -> str:
        r = http.post("/v1/jobs", json=spec, headers={"Authorization": f"Bearer {tokens[user]}"})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(job_id: str) -> Job:
        with session_scope(settings) as session:
            found = session.get(Job, job_id)
            assert found is not None
            session.expunge(found)
            return found

    def done(*ids: str) -> bool:
        states = {job(i).state for i in ids}
        assert "failed" not in states, procs.log("w1")[-3000:]
        return states == {"succeeded"}

    # long enough that the preemption (a reconciler pass every 2 s, then the next epoch's end) comes before its end
    low_spec = spec_data(epochs=14, name="alice-low", resources={"priority": "low"}, train={"seed": 11})
    try:
        procs.start("api", ["serve", "--host=127.0.0.1", f"--port={port}", "--workers=0"], env)
        wait_for(lambda: "Application startup complete" in procs.log("api"), 90, "the API", interval=0.3)
        procs.worker("w1", env)
        low = submit("alice", low_spec)
        wait_for(lambda: (settings.artifact_dir / "jobs" / low / "state.pt").exists(), 120,
                 "the low job's first epoch checkpoint", interval=0.2)
        high = submit("bob", spec_data(epochs=1, name="bob-high", resources={"priority": "high"}))
        wait_for(lambda: done(low, high), 300, "both jobs to succeed", interval=0.5)

        low_job, high_job = job(low), job(high)
        with session_scope(settings) as session:
            events = [(e.kind, e.state, e.reason or "", e.at) for e in session.scalars(
                select(JobEvent).where(JobEvent.job_id == low).order_by(JobEvent.id))]
        asked = next(at for kind, _, reason, at in events if kind == "log" and reason.startswith("preempted:"))
        back = next(((at, reason) for kind, state, reason, at in events if state == "queued" and at > asked), None)
        assert back is not None, events
        assert back[1] == f"preempted by high job {high}; resumes from its last epoch checkpoint"
        assert _secs(asked, back[0]) < GRACE_S  # stopped at its epoch boundary, well within the grace
        states = [state for kind, state, _, _ in events if kind == "state"]
        assert states == ["queued", "running", "queued", "running", "succeeded"], events
        assert high_job.started_at is not None and low_job.finished_at is not None
        assert _secs(back[0], high_job.started_at) >= 0 and high_job.finished_at <= low_job.finished_at
        assert low_job.attempts == 1  # the preempted attempt is not spent
        assert low_job.preempted_by is None

        metrics = http.get(f"/v1/jobs/{low}/metrics", params={"limit": 10000},
                           headers={"Authorization": f"Bearer {tokens['alice']}"}).json()["items"]
        keys = [(m["epoch"], m["name"]) for m in metrics]
        assert len(keys) == len(set(keys)) and {e for e, _ in keys} == set(range(1, 15))

        again = submit("alice", {**low_spec, "name": "alice-low-uninterrupted"})
        wait_for(lambda: done(again), 300, "the uninterrupted run", interval=0.5)
        assert job(again).attempts == 1
        preempted = torch.load(settings.artifact_dir / "jobs" / low / "last.pt", weights_only=True)
        whole = torch.load(settings.artifact_dir / "jobs" / again / "last.pt", weights_only=True)
        assert preempted.keys() == whole.keys()
        for name, value in whole.items():
            assert torch.equal(preempted[name], value), name
    finally:
        procs.stop_all()


def _secs(a: datetime, b: datetime) -> float:
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return (b - a).total_seconds()

