"""The transition function: the only way a job changes state."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from service.db import session_scope
from service.models import Job, JobEvent
from service.queries.jobs import insert_job
from service.queries.users import create_user
from service.states import ALL_STATES, FINAL_STATES, TRANSITIONS, IllegalTransition, transition

LEGAL = {("waiting", "queued"), ("waiting", "cancelled"), ("waiting", "failed"),
         ("queued", "running"), ("queued", "cancelled"), ("queued", "failed"), ("running", "succeeded"),
         ("running", "failed"), ("running", "cancelling"), ("running", "queued"), ("running", "cancelled"),
         ("cancelling", "cancelled"), ("cancelling", "failed"), ("cancelling", "succeeded")}


def test_table_is_the_documented_one():
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL
    assert FINAL_STATES == {"succeeded", "failed", "cancelled"}
    assert all(not TRANSITIONS[s] for s in FINAL_STATES)


def _new_job(session, owner_id: int) -> Job:
    return insert_job(session, owner_id, name="t", spec={}, queue="cpu", idempotency_key=None, request_hash=None)


@pytest.mark.parametrize("src", ALL_STATES)
def test_every_pair(settings, src):
    with session_scope(settings) as session:
        user, _ = create_user(session, "u")
        for dst in ALL_STATES:
            job = _new_job(session, user.id)
            job.state = src
            session.flush()
            if (src, dst) in LEGAL:
                transition(session, job, dst, reason="why")
                assert job.state == dst
            else:
                with pytest.raises(IllegalTransition):
                    transition(session, job, dst)
                assert job.state == src


def test_times_and_events(settings):
    with session_scope(settings) as session:
        user, _ = create_user(session, "u")
        job = _new_job(session, user.id)
        transition(session, job, "running", reason="leased")
        assert job.started_at is not None and job.finished_at is None
        transition(session, job, "queued", reason="lease lost")
        transition(session, job, "running", reason="leased again")
        transition(session, job, "failed", reason="boom")
        job_id = job.id
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job.state == "failed" and job.reason == "boom"
        assert job.finished_at is not None and job.finished_at >= job.started_at
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
        assert [(e.kind, e.state, e.reason) for e in events] == [
            ("state", "queued", "submitted"), ("state", "running", "leased"), ("state", "queued", "lease lost"),
            ("state", "running", "leased again"), ("state", "failed", "boom")]
        assert all(e.at is not None and e.at.tzinfo is not None for e in events)


def test_a_stale_writer_loses(settings):
    """Two sessions see the job running; one cancels, the other's finish must not overwrite the cancel."""
    with session_scope(settings) as session:
        user, _ = create_user(session, "u")
        job = _new_job(session, user.id)
        transition(session, job, "running")
        job_id = job.id
    with session_scope(settings) as api, session_scope(settings) as worker:
        seen_by_worker = worker.get(Job, job_id)
        assert seen_by_worker.state == "running"
        worker.commit()
        transition(api, api.get(Job, job_id), "cancelling", reason="user")
        api.commit()
        # the worker still believes "running"; cancelling → queued is illegal, so it must lose
        with pytest.raises(IllegalTransition) as err:
            transition(worker, seen_by_worker, "queued")
        assert err.value.from_state == "cancelling"
    with session_scope(settings) as session:
        assert session.get(Job, job_id).state == "cancelling"
