"""Pipelines on the real databases: a student naming a teacher job that has not succeeded yet waits for it;
POST /v1/pipelines stores a teacher and its students in one submit (all or nothing, names resolved to ids); the
teacher's end queues its students or fails them with its reason, down a chain; the reconciler settles what a crash
left. Real workers run pipelines in tests/worker/test_worker_embedded.py."""
from __future__ import annotations

from sqlalchemy import func, select, update

from service.db import session_scope
from service.models import Job, JobEvent
from service.states import FAILED, RUNNING, SUCCEEDED, transition
from worker.reconcile import reconcile_once

from svc_helpers import bearer, run_job, spec_ce, submit


def student(name: str, teacher: str) -> dict:
    return {**spec_ce(name), "teacher": {"job": teacher}, "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}}


def pipeline(client, token, *specs, **headers):
    return client.post("/v1/pipelines", json={"jobs": list(specs)}, headers={**bearer(token), **headers})


def job_count(settings) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_a_teacher_and_two_students_in_one_submit(client, users, settings):
    r = pipeline(client, users.alice, spec_ce("teacher"), student("kd-1", "teacher"), student("kd-2", "teacher"))
    assert r.status_code == 201, r.text
    teacher, one, two = r.json()["items"]
    assert teacher["state"] == "queued" and teacher["queue_position"] == 1
    for job in (one, two):
        assert job["state"] == "waiting" and job["waits_for"] == teacher["id"] and job["queue_position"] is None
        assert job["spec"]["teacher"]["job"] == teacher["id"]  # the name became the id
    # the teacher succeeds: both students are queued, in submit order, and say why
    with session_scope(settings) as session:
        transition(session, session.get(Job, teacher["id"]), RUNNING)
        released = transition(session, session.get(Job, teacher["id"]), SUCCEEDED, "done")
    assert released == [(one["id"], "cpu"), (two["id"], "cpu")]
    got = client.get(f"/v1/jobs/{one['id']}", headers=bearer(users.alice)).json()
    assert got["state"] == "queued" and got["queue_position"] == 1
    with session_scope(settings) as session:
        reasons = session.scalars(select(JobEvent.reason).where(JobEvent.job_id == one["id"])
                                  .order_by(JobEvent.id)).all()
    assert reasons == [f"submitted; waits for its teacher job {teacher['id']} to succeed",
                       f"teacher job {teacher['id']} succeeded"]


def test_a_pipeline_is_stored_whole_or_not_at_all(client, users, settings):
    before = job_count(settings)
    bad = {**student("kd-2", "teacher"), "loss": {"kind": "wttm", "gamma": 0.3, "beta": -1}}
    r = pipeline(client, users.alice, spec_ce("teacher"), student("kd-1", "teacher"), bad)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["field"] == "jobs[2].loss.beta" and error["message"].startswith("jobs[2].loss.beta: ")
    r = pipeline(client, users.alice, student("kd", "teacher"), spec_ce("teacher"))
    assert r.status_code == 422 and r.json()["error"]["field"] == "jobs[0].teacher.job"
    assert "put the teacher before the students" in r.json()["error"]["message"]
    r = pipeline(client, users.alice, spec_ce("same"), spec_ce("same"))
    assert r.status_code == 422 and r.json()["error"]["field"] == "jobs[1].name"
    for body in ({"jobs": []}, {"jobs": "x"}, {"jobs": [spec_ce()], "more": 1}, {"jobs": [1]}):
        r = client.post("/v1/pipelines", json=body, headers=bearer(users.alice))
        assert r.status_code == 422, body
    r = pipeline(client, users.alice, *[spec_ce(f"j{i}") for i in range(21)])
    assert r.status_code == 422 and "the most one pipeline takes is 20" in r.json()["error"]["message"]
    assert job_count(settings) == before


def test_a_pipeline_replays_under_its_key(client, users):
    specs = (spec_ce("teacher"), student("kd", "teacher"))
    first = pipeline(client, users.alice, *specs, **{"Idempotency-Key": "ci-42-1"})
    again = pipeline(client, users.alice, *specs, **{"Idempotency-Key": "ci-42-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert [j["id"] for j in first.json()["items"]] == [j["id"] for j in again.json()["items"]]
    other = pipeline(client, users.alice, spec_ce("teacher"), **{"Idempotency-Key": "ci-42-1"})
    assert other.status_code == 409


def test_a_teachers_failure_or_cancel_fails_its_students_down_the_chain(client, users, settings):
    teacher = submit(client, users.alice, spec_ce("teacher"))
    child = submit(client, users.alice, student("child", teacher["id"]))
    grandchild = submit(client, users.alice, {**student("grandchild", child["id"]), "student": {"arch": "resnet8"}})
    assert child["state"] == grandchild["state"] == "waiting" and grandchild["waits_for"] == child["id"]
    r = client.post(f"/v1/jobs/{teacher['id']}/cancel", headers=bearer(users.alice))
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    for job, parent in ((child, teacher), (grandchild, child)):
        got = client.get(f"/v1/jobs/{job['id']}", headers=bearer(users.alice)).json()
        assert got["state"] == "failed" and got["reason"].startswith(f"teacher job {parent['id']} ")
    assert "cancelled by alice" in client.get(f"/v1/jobs/{child['id']}", headers=bearer(users.alice)).json()[
        "reason"]
    # a waiting student can be cancelled itself; a failed teacher cannot teach anyone new
    t2 = submit(client, users.alice, spec_ce("t2"))
    s2 = submit(client, users.alice, student("s2", t2["id"]))
    assert client.post(f"/v1/jobs/{s2['id']}/cancel", headers=bearer(users.alice)).json()["state"] == "cancelled"
    run_job(settings, t2["id"], to=FAILED)
    r = client.post("/v1/jobs", json=student("late", t2["id"]), headers=bearer(users.alice))
    assert r.status_code == 422 and "only a succeeded job can teach" in r.json()["error"]["message"]


def test_others_cannot_wait_for_my_jobs_and_waiting_counts_as_queued(client, users, settings):
    teacher = submit(client, users.alice, spec_ce("teacher"))
    r = client.post("/v1/jobs", json=student("theft", teacher["id"]), headers=bearer(users.bob))
    assert r.status_code == 422 and r.json()["error"]["field"] == "teacher.job"
    assert f"unknown job {teacher['id']}" in r.json()["error"]["message"]  # the same as for a job that is not there
    from service.models import User

    with session_scope(settings) as session:
        session.execute(update(User).where(User.name == "alice").values(max_queued=3))
    submit(client, users.alice, student("s1", teacher["id"]))
    submit(client, users.alice, student("s2", teacher["id"]))
    r = client.post("/v1/jobs", json=student("s3", teacher["id"]), headers=bearer(users.alice))
    assert r.status_code == 429 and "3 queued or waiting jobs" in r.json()["error"]["message"]


def test_the_reconciler_settles_students_a_crash_left_waiting(client, users, settings):
    teacher = submit(client, users.alice, spec_ce("teacher"))
    waiting = submit(client, users.alice, student("s", teacher["id"]))
    with session_scope(settings) as session:  # the teacher ended without `transition` (a crash in between)
        session.execute(update(Job).where(Job.id == teacher["id"]).values(state=FAILED, reason="out of memory"))
    with session_scope(settings) as session:
        summary = reconcile_once(session, settings)
    assert summary.released == []
    got = client.get(f"/v1/jobs/{waiting['id']}", headers=bearer(users.alice)).json()
    assert got["state"] == "failed" and got["reason"] == f"teacher job {teacher['id']} failed: out of memory"
