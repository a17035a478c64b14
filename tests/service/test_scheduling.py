"""The lab queue's policy on the real database (service/scheduling.py): priority classes, fair share by decayed
usage over share, max-running held back at dispatch, submit order; the order shown is the order dispatched; a
user's limits at submit; GET /v1/queue and /v1/users/me. Real worker processes run it in
tests/worker/test_lab_queue.py."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from service.db import session_scope
from service.models import Job, User, utcnow
from service.queries.jobs import insert_job
from service.scheduling import MIN_CHARGE_S, dispatch_order, pick_next
from service.states import QUEUED, RUNNING, SUCCEEDED

from svc_helpers import bearer, spec_ce, submit


def _ids(session, owner: str) -> int:
    return session.scalar(select(User.id).where(User.name == owner))


def queue_jobs(settings, *owners_and_priorities: tuple[str, str], queue: str = "gpu") -> list[str]:
    ids = []
    with session_scope(settings) as session:
        for owner, priority in owners_and_priorities:
            job = insert_job(session, _ids(session, owner), name=f"{owner}-{priority}", spec={}, queue=queue,
                             idempotency_key=None, request_hash=None, priority=priority)
            session.flush()
            ids.append(job.id)
    return ids


def history(settings, owner: str, *, hours: float, ended_hours_ago: float = 0.0, slots: int = 1,
            running: bool = False) -> None:
    """A job of `owner` that ran for `hours` (still running, or ended `ended_hours_ago`)."""
    now = utcnow()
    end = now - timedelta(hours=ended_hours_ago)
    with session_scope(settings) as session:
        job = insert_job(session, _ids(session, owner), name="past", spec={}, queue="gpu", idempotency_key=None,
                         request_hash=None, slots=slots)
        job.state = RUNNING if running else SUCCEEDED
        job.started_at = end - timedelta(hours=hours)
        job.finished_at = None if running else end


def order(settings, queue: str = "gpu") -> list[str]:
    with session_scope(settings) as session:
        full = [p.job.id for p in dispatch_order(session, queue, settings)]
        assert [p.job.id for p in dispatch_order(session, queue, settings, limit=100)] == full
        return full


def set_user(settings, name: str, **values) -> None:
    with session_scope(settings) as session:
        user = session.scalar(select(User).where(User.name == name))
        for key, value in values.items():
            setattr(user, key, value)


def test_a_light_user_is_not_stuck_behind_a_heavy_one(settings, users):
    a = queue_jobs(settings, *[("alice", "normal")] * 6)
    b = queue_jobs(settings, *[("bob", "normal")] * 2)
    # each job started charges its owner: the users alternate, ties going to the older job
    assert order(settings) == [a[0], b[0], a[1], b[1], a[2], a[3], a[4], a[5]]
    with session_scope(settings) as session:
        assert pick_next(session, "gpu", settings) == a[0]


def test_priority_classes_come_first(settings, users):
    normal = queue_jobs(settings, ("alice", "normal"), ("alice", "low"))
    high = queue_jobs(settings, ("bob", "high"))
    assert order(settings) == [high[0], normal[0], normal[1]]


def test_usage_decays_and_is_divided_by_the_share(settings, users):
    history(settings, "alice", hours=5)  # alice used 5 GPU-hours just now
    history(settings, "bob", hours=8, ended_hours_ago=24 * 14)  # bob 8 hours two weeks ago: a quarter left
    a, b = queue_jobs(settings, ("alice", "normal"), ("bob", "normal"))
    assert order(settings) == [b, a]  # bob's 2 decayed hours < alice's 5
    set_user(settings, "alice", weight=4.0)  # alice's share is four times bob's: 5/4 < 2
    assert order(settings) == [a, b]
    with session_scope(settings) as session:
        placed = dispatch_order(session, "gpu", settings)
    assert placed[0].owner_usage_hours == pytest.approx(5.0, rel=1e-3) and placed[0].owner_weight == 4.0
    assert placed[1].owner_usage_hours == pytest.approx(2.0, rel=1e-2)


def test_a_running_job_counts_from_its_start_and_at_least_a_minute(settings, users):
    history(settings, "alice", hours=0.0, running=True, slots=2)  # just started, 2 GPUs: 2 slot-minutes
    with session_scope(settings) as session:
        from service.scheduling import queue_state

        state = queue_state(session, "gpu", settings, utcnow())
    alice = state.loads[_ids_in(settings, "alice")]
    assert alice.running == 2 and alice.usage == pytest.approx(2 * MIN_CHARGE_S, rel=1e-3)


def _ids_in(settings, name: str) -> int:
    with session_scope(settings) as session:
        return _ids(session, name)


def test_max_running_holds_jobs_back_at_dispatch(settings, users):
    set_user(settings, "alice", max_running=1)
    history(settings, "alice", hours=0.1, running=True)
    a = queue_jobs(settings, ("alice", "high"), ("alice", "normal"))
    b = queue_jobs(settings, ("bob", "low"))
    with session_scope(settings) as session:
        assert pick_next(session, "gpu", settings) == b[0]  # alice's high job waits for her running one
        placed = dispatch_order(session, "gpu", settings)
    assert [p.job.id for p in placed] == [b[0], a[0], a[1]]
    assert [p.held_back for p in placed] == [False, True, True]
    with session_scope(settings) as session:
        session.execute(Job.__table__.update().where(Job.state == "queued", Job.owner_id == _ids(session, "bob"))
                        .values(state="cancelled"))
        assert pick_next(session, "gpu", settings) is None  # only alice's held-back jobs: nothing to start


def test_the_order_shown_is_the_order_dispatched(settings, users):
    """Take jobs one at a time as a worker does (lease, run a minute, end): they start in the order shown."""
    from worker.lease import take_job

    queue_jobs(settings, *[("alice", "normal")] * 3, ("bob", "low"), ("bob", "normal"), ("root", "high"),
               ("alice", "normal"))
    shown = order(settings)
    started = []
    for _ in shown:
        with session_scope(settings) as session:
            any_queued = session.scalar(select(Job.id).where(Job.state == QUEUED).limit(1))
            job = take_job(session, any_queued, "test-worker", settings)
            assert job is not None
            started.append(job.id)
            job.state, job.finished_at = SUCCEEDED, utcnow()  # a job shorter than a minute: charged a minute
    assert started == shown


@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_hundred_dispatches_at_once_never_share_a_job(settings, users):
    from worker.lease import take_job

    jobs = queue_jobs(settings, *[("alice", "normal"), ("bob", "normal")] * 50)
    taken: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def worker(n: int) -> None:
        try:
            start.wait()
            for _ in range(10):
                with session_scope(settings) as session:
                    job = take_job(session, jobs[0], f"w{n}", settings)
                    if job is not None:
                        taken.append(job.id)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(taken) == len(set(taken)) == 100  # every job once, none twice
    with session_scope(settings) as session:
        assert session.scalar(select(Job.id).where(Job.state == QUEUED)) is None


# ------------------------------------------------------------------------------------------ through the API
def test_a_users_limits_at_submit(client, users, settings):
    high = {**spec_ce(), "resources": {"gpus": 0, "priority": "high"}}
    r = client.post("/v1/jobs", json=high, headers=bearer(users.alice))
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "priority_not_allowed" and err["field"] == "resources.priority"
    assert "low, normal" in err["message"] and "ttm admin user set alice --priorities" in err["message"]
    set_user(settings, "alice", priorities="low,normal,high", max_queued=2)
    assert submit(client, users.alice, high)["state"] == "queued"
    submit(client, users.alice)
    r = client.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice))
    assert r.status_code == 429 and "the limit is 2 (your max-queued" in r.json()["error"]["message"]
    set_user(settings, "bob", gpu_hours_per_week=1.0)
    history(settings, "bob", hours=1.5, ended_hours_ago=24)
    r = client.post("/v1/jobs", json=spec_ce(), headers=bearer(users.bob))
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_spent"
    assert "1.5 GPU-hours in the last 7 days, your quota is 1" in r.json()["error"]["message"]
    me = client.get("/v1/users/me", headers=bearer(users.bob)).json()
    assert me["gpu_hours_per_week"] == 1.0 and me["used_gpu_hours_7d"] == pytest.approx(1.5, rel=1e-3)
    assert me["priorities"] == ["normal", "low"] and me["max_queued"] == settings.limits_max_queued_per_user
    assert client.get("/v1/users/me", headers=bearer(users.alice)).json()["queued"] == 2


def test_the_queue_as_users_see_it(client, users, settings):
    mine = submit(client, users.alice)
    theirs = submit(client, users.bob)
    second = submit(client, users.alice, {**spec_ce("second")})
    seen = client.get("/v1/queue?queue=cpu", headers=bearer(users.alice)).json()
    assert seen["queued"] == 3 and [e["position"] for e in seen["items"]] == [1, 2, 3]
    assert [e["id"] for e in seen["items"]] == [mine["id"], None, second["id"]]  # bob's job: its place only
    assert seen["items"][1]["owner"] is None and seen["items"][1]["priority"] == "normal"
    assert seen["workers"] == 0 and all(e["eta_seconds"] is None for e in seen["items"])
    # every job's queue_position agrees with that order
    for entry, job in zip(seen["items"], (mine, theirs, second), strict=True):
        got = client.get(f"/v1/jobs/{job['id']}", headers=bearer(users.admin)).json()
        assert got["queue_position"] == entry["position"]
    admin = client.get("/v1/queue?queue=cpu", headers=bearer(users.admin)).json()
    assert [e["owner"] for e in admin["items"]] == ["alice", "bob", "alice"]
    r = client.get("/v1/queue?queue=tpu", headers=bearer(users.alice))
    assert r.status_code == 422


def test_admin_user_set_stores_limits_and_refuses_bad_values(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TTM_")}, "TTM_HOME": str(tmp_path),
           "TTM_DATABASE_URL": f"sqlite:///{tmp_path / 'ttm.db'}"}

    def admin(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service.cli", "admin", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)

    assert admin("migrate").returncode == 0
    assert admin("user", "create", "carol").returncode == 0
    done = admin("user", "set", "carol", "--weight", "2", "--max-running", "3", "--priorities", "low,normal,high")
    assert done.returncode == 0, done.stderr
    assert "weight 2; max-running 3" in done.stdout and "priorities high,normal,low" in done.stdout
    for bad in (["--weight", "nan"], ["--weight", "-1"], ["--gpu-hours-per-week", "inf"], ["--max-running", "0"],
                ["--priorities", "root"]):
        refused = admin("user", "set", "carol", *bad)
        assert refused.returncode == 2 and "Invalid value" in refused.stderr, (bad, refused.stderr)
    assert "max-running none" in admin("user", "set", "carol", "--max-running", "none").stdout
    assert admin("user", "set", "nobody", "--weight", "1").returncode == 1


# ---------------------------------------------------------------------------------------------- preemption
def running_job(settings, owner: str, priority: str, started_minutes_ago: float, queue: str = "gpu") -> str:
    now = utcnow()
    with session_scope(settings) as session:
        job = insert_job(session, _ids(session, owner), name=f"run-{priority}", spec={}, queue=queue,
                         idempotency_key=None, request_hash=None, priority=priority)
        job.state, job.worker = RUNNING, f"w-{priority}-{started_minutes_ago}"
        job.started_at = now - timedelta(minutes=started_minutes_ago)
        job.lease_expires_at = now + timedelta(minutes=5)
        session.flush()
        return job.id


def workers(settings, n: int, queue: str = "gpu") -> None:
    from service.models import Worker

    with session_scope(settings) as session:
        for i in range(n):
            session.add(Worker(name=f"worker-{queue}-{i}", queue=queue, last_seen=utcnow()))


def victim(settings, queue: str = "gpu"):
    from service.scheduling import preemption_victim

    with session_scope(settings) as session:
        return preemption_victim(session, queue, settings)


def test_a_waiting_high_job_preempts_the_lowest_class_newest_started(settings, users):
    workers(settings, 3)
    running_job(settings, "alice", "normal", started_minutes_ago=1)
    old_low = running_job(settings, "alice", "low", started_minutes_ago=30)
    new_low = running_job(settings, "bob", "low", started_minutes_ago=5)
    (high,) = queue_jobs(settings, ("bob", "high"))
    assert victim(settings) == (new_low, high)  # low before normal; among the lows the newest-started
    with session_scope(settings) as session:
        session.get(Job, new_low).preempted_by = high
    assert victim(settings) is None  # one preemption at a time per queue: the next pass looks again
    with session_scope(settings) as session:
        session.get(Job, new_low).state = SUCCEEDED
        session.get(Job, new_low).preempted_by = None
    assert victim(settings) is None  # a worker is free now: the high job just starts
    running_job(settings, "bob", "normal", started_minutes_ago=0)
    assert victim(settings) == (old_low, high)


def test_no_preemption_without_need_or_when_turned_off(settings, users):
    workers(settings, 1)
    running_job(settings, "alice", "low", started_minutes_ago=3)
    queue_jobs(settings, ("bob", "normal"))
    assert victim(settings) is None  # the next job to start is not high
    (high,) = queue_jobs(settings, ("bob", "high"))
    assert victim(settings) is not None
    assert victim(settings, queue="cpu") is None  # another queue's workers and jobs
    off = settings.model_copy(update={"preemption": False})
    from service.scheduling import preemption_victim

    with session_scope(off) as session:
        assert preemption_victim(session, "gpu", off) is None
    set_user(settings, "bob", max_running=0)
    assert victim(settings) is None  # a high job held back by its owner's max-running takes no one's worker


def test_high_work_is_not_preempted_by_high_work(settings, users):
    workers(settings, 1)
    running_job(settings, "alice", "high", started_minutes_ago=3)
    queue_jobs(settings, ("bob", "high"))
    assert victim(settings) is None


def test_a_student_group_takes_one_slot_and_its_members_share_its_time(settings, users):
    """Four trials training as one student group (one process, one GPU) count as one running job for max_running
    and preemption, and each is charged a quarter of the group's time (fair share and gpu_hours_per_week)."""
    from service.scheduling import queue_state, week_usage_hours

    members = [running_job(settings, "alice", "low", started_minutes_ago=120) for _ in range(4)]
    with session_scope(settings) as session:
        for job_id in members:
            session.get(Job, job_id).group_id = members[0]
    running_job(settings, "bob", "normal", started_minutes_ago=120)  # one job alone, as long
    with session_scope(settings) as session:
        loads = queue_state(session, "gpu", settings, utcnow()).loads
        alice, bob = loads[_ids(session, "alice")], loads[_ids(session, "bob")]
        assert alice.running == pytest.approx(1.0) and bob.running == 1
        assert alice.usage == pytest.approx(bob.usage, rel=1e-3)  # 4 × a quarter of 2 h = one job's 2 h
        assert week_usage_hours(session, _ids(session, "alice")) == pytest.approx(2.0, rel=1e-3)

    set_user(settings, "alice", max_running=2)
    (nxt,) = queue_jobs(settings, ("alice", "normal"))
    with session_scope(settings) as session:
        assert pick_next(session, "gpu", settings) == nxt  # the group is one of her two

    workers(settings, 2)  # two workers: alice's group holds one, bob's job the other
    (high,) = queue_jobs(settings, ("bob", "high"))
    assert victim(settings) is not None and victim(settings)[1] == high
    with session_scope(settings) as session:  # a third worker, free: nothing needs preempting
        from service.models import Worker

        session.add(Worker(name="worker-gpu-third", queue="gpu", last_seen=utcnow()))
    assert victim(settings) is None

    with session_scope(settings) as session:  # one member pruned: the three left share the slot, and the time
        pruned = session.get(Job, members[3])
        pruned.state, pruned.finished_at = "cancelled", utcnow()
        alice = queue_state(session, "gpu", settings, utcnow()).loads[_ids(session, "alice")]
        assert alice.running == pytest.approx(1.0)
