"""A lab's parts: real worker processes and a reconciler against this machine's PostgreSQL and Redis.

Leases of 3 s here (TTM_LEASE_SECONDS), so a lost worker is noticed within seconds. Jobs are inserted as the API
inserts them and their messages sent as the API sends them (service.broker.enqueue_job).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from service.db import session_scope
from service.models import Worker
from service.settings import Settings
from worker.runner import job_run_dir

from worker_helpers import (
    Processes,
    child_pids,
    env_for,
    events,
    fresh_pg_database,
    get_job,
    insert_job,
    make_settings,
    metric_rows,
    spec_data,
    wait_for,
    wait_state,
    wait_worker_ready,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

REDIS_DB = 9
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
               "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"]


def redis(*args: str) -> str:
    return subprocess.run(["redis-cli", "-n", str(REDIS_DB), *args], capture_output=True, text=True,
                          timeout=10).stdout.strip()


@dataclass
class Lab:
    settings: Settings
    procs: Processes
    env: dict[str, str]

    def submit(self, spec: dict, queue: str = "cpu", times: int = 1) -> str:
        from service.broker import enqueue_job, make_celery

        job_id = insert_job(self.settings, spec, queue)
        app = make_celery(self.settings)
        for _ in range(times):
            enqueue_job(job_id, queue, app)
        return job_id


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if redis("ping") != "PONG":
        pytest.fail("Redis at 127.0.0.1:6379 is not answering; start it (./dev test does)", pytrace=False)
    redis("flushdb")
    home = tmp_path_factory.mktemp("lab")
    with fresh_pg_database() as url:
        settings = make_settings(home, url, broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}")
        env = env_for(settings)
        procs = Processes(home)
        try:
            for name in ("w1", "w2"):
                procs.worker(name, env)
            procs.start("reconciler", ["reconcile", "--loop"], env)
            for name in ("w1", "w2"):
                wait_worker_ready(procs, name)
            yield Lab(settings, procs, env)
        finally:
            procs.stop_all()
            redis("flushdb")


@pytest.fixture(scope="module")
def finished_job(lab: Lab) -> str:
    job_id = lab.submit(spec_data(epochs=2, name="teacher"))
    wait_state(lab.settings, job_id, "succeeded", 90)
    return job_id


def test_a_job_succeeds_with_its_rows_in_postgres(lab: Lab, finished_job: str):
    job = get_job(lab.settings, finished_job)
    assert (job.state, job.attempts) == ("succeeded", 1)
    assert job.out_dir == str(job_run_dir(lab.settings, finished_job)) and job.best_top1 > 20
    rows = metric_rows(lab.settings, finished_job)
    assert {e for e, _, _ in rows} == {1, 2}
    assert [e[1] for e in events(lab.settings, finished_job) if e[0] == "state"] == ["queued", "running", "succeeded"]
    with session_scope(lab.settings) as session:  # the workers' heartbeats
        names = set(session.scalars(select(Worker.name)))
    assert {n.split("@")[0] for n in names} >= {"w1", "w2"}


def test_the_same_message_twice_trains_once(lab: Lab):
    job_id = lab.submit(spec_data(epochs=2, name="twice"), times=2)
    wait_state(lab.settings, job_id, "succeeded", 90)
    time.sleep(1)  # the second delivery, if it was behind the first, has been handled too
    job = get_job(lab.settings, job_id)
    assert job.attempts == 1
    assert [e[1] for e in events(lab.settings, job_id) if e[0] == "state"] == ["queued", "running", "succeeded"]
    train_log = (job_run_dir(lab.settings, job_id) / "train.log").read_text()
    assert train_log.count("job twice:") == 1  # the trainer started once
    skipped = [name for name in ("w1", "w2") if f"message for {job_id}: no job to run" in lab.procs.log(name)]
    assert len(skipped) == 1, "the other worker received the duplicate and did nothing"


def test_a_failing_trainer_ends_the_job_failed_with_its_reason(lab: Lab, finished_job: str):
    # the teacher is the finished job's student; an absurd loss weight overflows float32 in the first step
    spec = spec_data(epochs=3, name="nan", teacher={"job": finished_job}, loss={"kind": "kd", "kd_weight": 1e39})
    job_id = lab.submit(spec)
    job = wait_state(lab.settings, job_id, {"failed", "succeeded"}, 90)
    assert job.state == "failed"
    assert re.match(r"the training loss became (nan|inf) in epoch 1", job.reason), job.reason
    assert "lower train.lr or check the loss weights" in job.reason


def test_kill_9_of_the_worker_resumes_on_another_worker(lab: Lab):
    epochs = 12
    job_id = lab.submit(spec_data(epochs=epochs, name="survivor"))
    wait_for(lambda: any(e >= 2 for e, _, _ in metric_rows(lab.settings, job_id)), 90, "epoch 2", interval=0.05)
    job = get_job(lab.settings, job_id)
    victim_pid = int(job.worker.rsplit(":", 1)[1])
    victim = lab.procs.by_pid(victim_pid)
    old_children = child_pids(job_id)
    assert old_children
    os.kill(victim_pid, signal.SIGKILL)
    wait_for(lambda: not any(p in child_pids(job_id) for p in old_children), 3, "the orphaned trainer to die")

    job = wait_state(lab.settings, job_id, {"succeeded", "failed"}, 120)
    assert job.state == "succeeded", job.reason
    assert job.attempts == 2 and not job.worker.startswith(victim)
    assert "resumed from" in (job_run_dir(lab.settings, job_id) / "train.log").read_text()
    state_events = [e[1] for e in events(lab.settings, job_id) if e[0] == "state"]
    assert state_events == ["queued", "running", "queued", "running", "succeeded"]

    rows = metric_rows(lab.settings, job_id)
    names = {n for e, n, _ in rows if e == epochs}
    keys = [(e, n) for e, n, _ in rows]
    assert len(keys) == len(set(keys)), "no duplicate rows"
    assert set(keys) == {(e, n) for e in range(1, epochs + 1) for n in names}, "no missing rows"

    lab.procs.procs.pop(victim).wait()  # reap it, and put a fresh worker in its place
    lab.procs.worker(victim + "b", lab.env)
    wait_worker_ready(lab.procs, victim + "b")


def test_redis_restarted_while_a_job_is_queued(lab: Lab):
    # queue "gpu" has no consumer yet: the message waits in Redis, which then restarts without persistence
    job_id = lab.submit(spec_data(epochs=2, name="through-a-restart"), queue="gpu")
    assert int(redis("llen", "gpu")) == 1
    subprocess.run(["redis-cli", "shutdown", "nosave"], capture_output=True, timeout=10)
    try:
        wait_for(lambda: subprocess.run(["redis-cli", "ping"], capture_output=True, text=True).returncode != 0, 10,
                 "Redis to stop")
    finally:
        subprocess.run(REDIS_START, check=True, timeout=10)
    wait_for(lambda: redis("ping") == "PONG", 10, "Redis to start")
    assert redis("llen", "gpu") == "0"  # the message is gone

    lab.procs.worker("gpu1", lab.env, queues="gpu")
    job = wait_state(lab.settings, job_id, {"succeeded", "failed"}, 90)
    assert job.state == "succeeded", job.reason
    assert any(e[0] == "log" and "re-sent" in (e[2] or "") for e in events(lab.settings, job_id))

    # the workers that were running through the restart reconnected and still take jobs
    after = lab.submit(spec_data(epochs=1, name="after-the-restart"))
    assert wait_state(lab.settings, after, {"succeeded", "failed"}, 90).state == "succeeded"


def test_a_spec_that_no_longer_resolves_fails_without_training(lab: Lab):
    job_id = lab.submit(spec_data(epochs=1, name="orphan", teacher={"job": "job_gone"}, loss={"kind": "kd"}))
    job = wait_state(lab.settings, job_id, {"failed", "succeeded"}, 30)
    assert job.state == "failed" and job.reason.startswith("teacher.job: unknown job job_gone"), job.reason
    assert not (job_run_dir(lab.settings, job_id) / "child.log").exists()
