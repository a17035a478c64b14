"""Bringing a database to the schema head, and telling whether it is there (the server refuses to start if not)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import migrations
from service.db import get_engine, normalize_url
from service.settings import Settings, get_settings

MIGRATIONS_DIR = Path(next(iter(migrations.__path__)))
BEHIND_HEAD = "database is behind head: run `ttm admin migrate`"


class DatabaseNotAtHead(RuntimeError):
    pass


def alembic_config(settings: Settings | None = None) -> Config:
    """A Config built in code, so the installed package needs no alembic.ini; migrations/env.py reads the URL."""
    settings = settings or get_settings()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = normalize_url(settings.database_url)
    cfg.attributes["quiet"] = True
    return cfg


def head_revisions(settings: Settings | None = None) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(settings)).get_heads())


def current_revisions(settings: Settings | None = None) -> set[str]:
    with get_engine(settings).connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def is_at_head(settings: Settings | None = None) -> bool:
    return current_revisions(settings) == head_revisions(settings)


def check_at_head(settings: Settings | None = None) -> None:
    current, heads = current_revisions(settings), head_revisions(settings)
    if current == heads:
        return
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config(settings)).walk_revisions()}
    if current - known:
        raise DatabaseNotAtHead(f"database is at revision {', '.join(sorted(current))}, which this version of ttm "
                                f"does not know (newer ttm?); head is {', '.join(sorted(heads))}")
    raise DatabaseNotAtHead(f"{BEHIND_HEAD} (database at {', '.join(sorted(current)) or 'no revision'}, "
                            f"head {', '.join(sorted(heads))})")


def upgrade_to_head(settings: Settings | None = None) -> None:
    command.upgrade(alembic_config(settings), "head")


def downgrade_to(settings: Settings | None, revision: str) -> None:
    command.downgrade(alembic_config(settings), revision)
