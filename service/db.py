"""Engine and sessions. One engine per database URL per process; routes get sessions through `deps.SessionDep`,
everything else (CLI, worker, reconciler) through `session_scope()`."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings, get_settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 here (SQLAlchemy would otherwise pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def make_engine(url: str, *, autocommit: bool = False) -> Engine:
    """`autocommit`: for sessions that only read; no BEGIN/ROLLBACK round trips. A separate engine rather than
    `execution_options(isolation_level=...)`, whose option engine makes every connection checkout slower."""
    url = normalize_url(url)
    options: dict[str, object] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # WAL: readers (SSE polls, GETs) never block the writer; busy_timeout: writers queue instead of failing.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # 32 concurrent API clients (reads and writes), SSE pollers and /metrics scrapes share these two pools; together
    # they stay under PostgreSQL's default of 100 connections.
    return create_engine(url, pool_size=24 if autocommit else 16, max_overflow=8, pool_timeout=30,
                         pool_recycle=1800, pool_use_lifo=True, **options)


def get_engine(settings: Settings | None = None, *, autocommit: bool = False) -> Engine:
    url = normalize_url((settings or get_settings()).database_url)
    key = ("ro:" if autocommit else "") + url
    with _lock:
        if key not in _engines:
            _engines[key] = make_engine(url, autocommit=autocommit)
        return _engines[key]


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back when it raises."""
    session = Session(get_engine(settings), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
