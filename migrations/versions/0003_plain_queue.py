"""The plain submit path: drop the trigger-kept queue_depths (a queue's depth is an index count again), record
each artifact's tensor shapes (what the API compares with an architecture instead of loading the file), and index
a user's jobs by state (their queued count, a per-user limit, is taken at every submit).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _drop_queue_depths() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ttm_queue_depths ON jobs")
        op.execute("DROP FUNCTION ttm_queue_depths()")
    else:
        for event in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER ttm_queue_depths_{event}")
    op.drop_table("queue_depths")


def upgrade() -> None:
    _drop_queue_depths()
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("tensors", json_type, nullable=True))
    op.create_index(op.f("ix_jobs_owner_id_state"), "jobs", ["owner_id", "state"])


def downgrade() -> None:
    from importlib import import_module

    op.drop_index(op.f("ix_jobs_owner_id_state"), table_name="jobs")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("tensors")
    import_module("migrations.versions.0002_queue_depths").upgrade()  # the table, its count and its triggers
