"""Fixtures for the job server: every test runs against SQLite and against this machine's PostgreSQL.

PostgreSQL gets a fresh database `ttm_test_<random>` for the session, dropped at the end. If PostgreSQL is down
the PostgreSQL tests fail (they do not skip): CI starts it (./dev test).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.db import session_scope
from service.queries.users import create_user
from service.settings import Settings

from realdb import fresh_pg_database
from svc_helpers import Exploit, Users, make_settings, serve, wipe


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "postgresql":
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with fresh_pg_database("ttm_test") as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'ttm.db'}"


_migrated: set[str] = set()


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


@pytest.fixture
def users(settings: Settings) -> Users:
    with session_scope(settings) as session:
        tokens = [create_user(session, name, is_admin=name == "root")[1] for name in ("alice", "bob", "root")]
    return Users(*tokens)


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


@pytest.fixture
def evil_file(tmp_path: Path) -> tuple[Path, Path]:
    import torch

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Exploit(marker)}, path)
    assert not marker.exists()
    return path, marker


# ---------------------------------------------------------------------------------------------- worker stand-in
# ---------------------------------------------------------------------------------------------- a real server
@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    with serve(settings) as url:
        yield url
