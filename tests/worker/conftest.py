"""Fixtures for the worker tests: a migrated database (SQLite, or a fresh PostgreSQL database per session)."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings

from worker_helpers import fresh_pg_database, make_settings

REDIS_DB = 10  # the lab tests' Redis database, flushed around each


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


def wipe(url: str) -> None:
    from service.db import get_engine
    from service.models import Base

    engine = get_engine(make_settings(Path("/nonexistent"), url))
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path):
    """Settings on a migrated, empty database of either kind; artifacts and data under tmp_path."""
    if request.param == "postgresql":
        request.applymarker(pytest.mark.postgres)
        url = request.getfixturevalue("pg_url")
        wipe(url)
    else:
        from service.migrate import upgrade_to_head

        url = f"sqlite:///{tmp_path / 'ttm.db'}"
        upgrade_to_head(make_settings(tmp_path, url))
    (tmp_path / "data").mkdir(exist_ok=True)
    return make_settings(tmp_path, url)


@pytest.fixture
def sqlite_settings(tmp_path: Path):
    """For tests of one process whose database kind does not matter."""
    from service.migrate import upgrade_to_head

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'ttm.db'}")
    upgrade_to_head(settings)
    (tmp_path / "data").mkdir(exist_ok=True)
    return settings


@pytest.fixture(params=["embedded", "postgresql+redis"])
def lab_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Token-auth settings for `ttm serve` and real workers: the embedded defaults, or a fresh PostgreSQL database
    and Redis. A test that runs on one of them only names it: @pytest.mark.parametrize("lab_settings", [...],
    indirect=True)."""
    if request.param == "embedded":
        yield make_settings(tmp_path, f"sqlite:///{tmp_path / 'ttm.db'}", auth="token")
        return
    request.applymarker(pytest.mark.postgres)
    subprocess.run(["redis-cli", "-n", str(REDIS_DB), "flushdb"], capture_output=True, timeout=10)
    with fresh_pg_database() as url:
        yield make_settings(tmp_path, url, broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}", auth="token")
    subprocess.run(["redis-cli", "-n", str(REDIS_DB), "flushdb"], capture_output=True, timeout=10)
