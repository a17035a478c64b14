"""Helpers for the worker tests: settings that ignore the environment, jobs inserted the way the API inserts them,
real worker processes, and waiting."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.db import session_scope
from service.models import Job, JobEvent, Metric, User
from service.settings import Settings

import realdb

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_settings(home: Path, url: str, **overrides: Any) -> Settings:
    """Every field given, so TTM_* variables of the environment cannot leak into a test."""
    values: dict[str, Any] = dict(home=home, database_url=url, broker_url=None, artifact_dir=home / "artifacts",
                                  data_root=home / "data", auth="off", lease_seconds=3, max_attempts=3)
    values.update(overrides)
    return Settings(**values)


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new PostgreSQL database at the schema head, dropped afterwards."""
    from service.migrate import upgrade_to_head

    with realdb.fresh_pg_database("ttm_worker_test") as url:
        upgrade_to_head(make_settings(Path("/nonexistent"), url))
        yield url


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker/server process with these settings (the machine's TTM_* dropped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTM_")}
    env.update(TTM_HOME=str(settings.home), TTM_DATABASE_URL=settings.database_url,
               TTM_ARTIFACT_DIR=str(settings.artifact_dir), TTM_DATA_ROOT=str(settings.data_root),
               TTM_AUTH=settings.auth, TTM_LEASE_SECONDS=str(settings.lease_seconds),
               TTM_MAX_ATTEMPTS=str(settings.max_attempts), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if settings.broker_url:
        env["TTM_BROKER_URL"] = settings.broker_url
    if settings.mlflow_uri:
        env.update(TTM_MLFLOW_URI=settings.mlflow_uri, TTM_MLFLOW_EXPERIMENT=settings.mlflow_experiment,
                   TTM_MLFLOW_TIMEOUT_SECONDS=str(settings.mlflow_timeout_seconds))
    env.update(extra)
    return env


def spec_data(epochs: int = 2, **over: Any) -> dict[str, Any]:
    """resnet8 on sklearn's digits: an epoch in well under a second on one core."""
    from ttm.spec import parse_spec

    data: dict[str, Any] = {"name": over.pop("name", "digits-resnet8"), "student": {"arch": "resnet8"},
                            "dataset": {"name": "digits"},
                            "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "schedule": {"kind": "constant"},
                                      "num_workers": 0, "device": "cpu"},
                            "resources": {"gpus": 0, "queue": "cpu"}}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_spec(data).model_dump(mode="json")


def owner(settings: Settings) -> int:
    from sqlalchemy import select

    with session_scope(settings) as session:
        user_id = session.scalar(select(User.id).where(User.name == "tester"))
        if user_id is None:
            user = User(name="tester", is_admin=True)
            session.add(user)
            session.flush()
            user_id = user.id
    return user_id


def insert_job(settings: Settings, spec: dict[str, Any], queue: str = "cpu") -> str:
    """A queued job, inserted as POST /v1/jobs inserts it (no message sent)."""
    from service.queries.jobs import insert_job as insert

    user_id = owner(settings)
    with session_scope(settings) as session:
        job = insert(session, user_id, name=spec["name"], spec=spec, queue=queue, idempotency_key=None,
                     request_hash=None)
        return job.id


def get_job(settings: Settings, job_id: str) -> Job:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def metric_rows(settings: Settings, job_id: str) -> list[tuple[int, str, float]]:
    from sqlalchemy import select

    with session_scope(settings) as session:
        return [tuple(r) for r in session.execute(
            select(Metric.epoch, Metric.name, Metric.value).where(Metric.job_id == job_id).order_by(Metric.id))]


def events(settings: Settings, job_id: str) -> list[tuple[str, str | None, str | None]]:
    from sqlalchemy import select

    with session_scope(settings) as session:
        return [tuple(r) for r in session.execute(
            select(JobEvent.kind, JobEvent.state, JobEvent.reason).where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id))]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_state(settings: Settings, job_id: str, states: set[str] | str, timeout: float) -> Job:
    states = {states} if isinstance(states, str) else states

    def reached() -> Job | None:
        job = get_job(settings, job_id)
        return job if job.state in states else None

    try:
        return wait_for(reached, timeout, f"job {job_id} to become {'/'.join(sorted(states))}")
    except AssertionError:
        job = get_job(settings, job_id)
        raise AssertionError(f"job {job_id} is {job.state} ({job.reason}) after {timeout:.0f} s, expected "
                             f"{'/'.join(sorted(states))}; events: {events(settings, job_id)}") from None


def child_pids(job_id: str) -> list[int]:
    """Trainer processes of a job (the child, torchrun and its ranks), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"worker.child" in cmd and job_id.encode() in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


class Processes:
    """Real worker / reconciler / server processes, each logging to a file; stopped (and reaped) at the end."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", *args], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.procs[name] = proc
        return proc

    def worker(self, name: str, env: dict[str, str], queues: str = "cpu") -> subprocess.Popen:
        return self.start(name, ["worker", f"--queues={queues}", f"--name={name}@%h", "--loglevel=info"], env)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def by_pid(self, pid: int) -> str:
        return next(name for name, proc in self.procs.items() if proc.pid == pid)

    def stop(self, name: str, timeout: float = 20) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self, timeout: float = 30) -> None:
        """SIGTERM (Celery's warm shutdown) to all at once, then wait; SIGKILL what is left."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def wait_worker_ready(procs: Processes, name: str, timeout: float = 60) -> None:
    wait_for(lambda: " ready" in procs.log(name), timeout, f"worker {name} to start", interval=0.2)
