"""Helpers for the job server's tests (fixtures are in conftest.py)."""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from service.db import get_engine, session_scope
from service.models import Base, Checkpoint, Job, Metric, utcnow
from service.settings import Settings
from service.states import transition


def make_settings(home: Path, url: str, **overrides: Any) -> Settings:
    """Every field given, so TTM_* variables of the environment cannot leak into a test."""
    values: dict[str, Any] = dict(home=home, database_url=url, broker_url=None, artifact_dir=home / "artifacts",
                                  data_root=home / "data", max_upload_bytes=50 * 1024 * 1024, auth="token",
                                  sse_ping_seconds=15)
    values.update(overrides)
    return Settings(**values)


def wipe(url: str) -> None:
    engine = get_engine(make_settings(Path("/nonexistent"), url))
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))


@dataclass
class Users:
    alice: str
    bob: str
    admin: str


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class Exploit:
    """A pickle that would create a marker file if anything unpickled it with code allowed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def spec_ce(name: str = "job") -> dict[str, Any]:
    return {"name": name, "student": {"arch": "resnet8"}, "dataset": {"name": "fashion_mnist"},
            "loss": {"kind": "ce"}, "train": {"epochs": 2, "schedule": {"kind": "cosine"}},
            "resources": {"gpus": 0}}


def submit(client: Any, token: str, spec: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=spec or spec_ce(), headers={**bearer(token), **headers})
    assert r.status_code == 201, r.text
    return r.json()


def run_job(settings: Settings, job_id: str, *, to: str = "running", epochs: int = 0, from_epoch: int = 1,
            checkpoint: bool = False, log: str | None = None) -> None:
    """Do what a worker does to a job's rows: start it, write metrics, checkpoints, a log, finish it."""
    out_dir = settings.home / "runs" / job_id
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        if job.state == "queued":
            transition(session, job, "running", reason="leased by test-worker")
            job.worker, job.attempts, job.out_dir = "test-worker", 1, str(out_dir)
        for epoch in range(from_epoch, epochs + 1):
            session.add(Metric(job_id=job_id, epoch=epoch, name="train_loss", value=1.0 / epoch, at=utcnow()))
            session.add(Metric(job_id=job_id, epoch=epoch, name="test_top1", value=50.0 + epoch, at=utcnow()))
            session.flush()
        if checkpoint:
            out_dir.mkdir(parents=True, exist_ok=True)
            for which in ("best", "last"):
                data = f"{which} weights of {job_id}".encode()
                path = out_dir / f"{which}.pt"
                path.write_bytes(data)
                session.add(Checkpoint(job_id=job_id, which=which, format="pt", path=str(path),
                                       sha256=hashlib.sha256(data).hexdigest(), size=len(data), epoch=epochs,
                                       manifest={"arch": "resnet8", "num_classes": 10, "top1": 51.0}))
        if log is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "train.log").write_text(log)
        if to != "running":
            transition(session, job, to, reason=f"test worker: {to}")
            if to == "succeeded":
                job.best_top1 = 50.0 + epochs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """uvicorn in a thread on a free port (SSE and streaming uploads need a real server); yields its URL."""
    import uvicorn

    from service.app import create_app

    port = free_port()
    app = create_app(settings, host="127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
