"""Fixtures for the job server: every test runs against SQLite and against this machine's PostgreSQL.

PostgreSQL gets a fresh database `ttm_test_<random>` for the session, dropped at the end. If PostgreSQL is down
the PostgreSQL tests fail (they do not skip): CI starts it (./dev test).
"""
from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from service.db import dispose_engines, get_engine, session_scope
from service.models import Base, Checkpoint, Job, Metric, utcnow
from service.queries.users import create_user
from service.settings import Settings
from service.states import transition

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "postgresql":
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    import psycopg

    name = f"ttm_test_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({err}); start it (./dev test does)",
                    pytrace=False)
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    yield url
    dispose_engines()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'ttm.db'}"


_migrated: set[str] = set()


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


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A database at head with no rows in it."""
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    if url not in _migrated:
        from service.migrate import upgrade_to_head

        upgrade_to_head(make_settings(Path("/nonexistent"), url))
        _migrated.add(url)
    wipe(url)
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    (tmp_path / "data").mkdir()
    return make_settings(tmp_path, db_url)


@dataclass
class Users:
    alice: str
    bob: str
    admin: str


@pytest.fixture
def users(settings: Settings) -> Users:
    with session_scope(settings) as session:
        tokens = [create_user(session, name, is_admin=name == "root")[1] for name in ("alice", "bob", "root")]
    return Users(*tokens)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture
def client(settings: Settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings, host="127.0.0.1")) as c:
        yield c


# ---------------------------------------------------------------------------------------------- files
@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet8 for Fashion-MNIST (10 classes, 1 channel), as torch.save writes it."""
    import torch

    from ttm.models import build_model

    path = tmp_path_factory.mktemp("weights") / "resnet8_fmnist.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 10, 1).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def teacher100_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet8 with 100 classes: loads into nothing that Fashion-MNIST needs."""
    import torch

    from ttm.models import build_model

    path = tmp_path_factory.mktemp("weights") / "resnet8_c100.pt"
    torch.save(build_model("resnet8", 100, 1).state_dict(), path)
    return path


class Exploit:
    """A pickle that would create a marker file if anything unpickled it with code allowed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil_file(tmp_path: Path) -> tuple[Path, Path]:
    import torch

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Exploit(marker)}, path)
    assert not marker.exists()
    return path, marker


# ---------------------------------------------------------------------------------------------- worker stand-in
def spec_ce(name: str = "job") -> dict[str, Any]:
    return {"name": name, "student": {"arch": "resnet8"}, "dataset": {"name": "fashion_mnist"},
            "loss": {"kind": "ce"}, "train": {"epochs": 2, "schedule": {"kind": "cosine"}},
            "resources": {"gpus": 0}}


def submit(client: Any, token: str, spec: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=spec or spec_ce(), headers={**bearer(token), **headers})
    assert r.status_code == 201, r.text
    return r.json()


def run_job(settings: Settings, job_id: str, *, to: str = "running", epochs: int = 0,
            checkpoint: bool = False, log: str | None = None) -> None:
    """Do what a worker does to a job's rows: start it, write metrics, checkpoints, a log, finish it."""
    out_dir = settings.home / "runs" / job_id
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        if job.state == "queued":
            transition(session, job, "running", reason="leased by test-worker")
            job.worker, job.attempts, job.out_dir = "test-worker", 1, str(out_dir)
        for epoch in range(1, epochs + 1):
            session.add(Metric(job_id=job_id, epoch=epoch, name="train_loss", value=1.0 / epoch, at=utcnow()))
            session.add(Metric(job_id=job_id, epoch=epoch, name="test_top1", value=50.0 + epoch, at=utcnow()))
            session.flush()
        if checkpoint:
            out_dir.mkdir(parents=True, exist_ok=True)
            for which in ("best", "last"):
                data = f"{which} weights of {job_id}".encode()
                path = out_dir / f"{which}.pt"
                path.write_bytes(data)
                import hashlib

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


# ---------------------------------------------------------------------------------------------- a real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """uvicorn in a thread on a free port: SSE needs a real streaming server."""
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
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
