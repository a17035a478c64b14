"""This machine's PostgreSQL for the tests: a fresh database per use, dropped afterwards. A PostgreSQL that is down
fails the tests that need it (it never skips them): CI starts it (./dev test)."""
from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_pg_database(prefix: str = "ttm_test") -> Iterator[str]:
    """Create `<prefix>_<random>`, yield its SQLAlchemy URL, and drop it (with any connection still open)."""
    import psycopg

    from service.db import dispose_engines

    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({err}); start it (./dev test does)",
                    pytrace=False)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
