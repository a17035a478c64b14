"""A sweep may name a `notify.url` too: its webhook call (event `sweep.finished`) is a webhook_deliveries row with
`sweep_id` set and `job_id` null (exactly one of the two is set).

SQLite cannot make a column nullable in place: batch mode rebuilds webhook_deliveries, a table no other table
refers to, so the rebuild deletes nothing through ON DELETE CASCADE.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("job_id", existing_type=sa.String(40), nullable=True)
        batch.add_column(sa.Column("sweep_id", sa.String(40), nullable=True))
        batch.create_foreign_key("fk_webhook_deliveries_sweep_id_sweeps", "sweeps", ["sweep_id"], ["id"],
                                 ondelete="CASCADE")
        batch.create_index("ix_webhook_deliveries_sweep", ["sweep_id", "created_at"])


def downgrade() -> None:
    op.execute("DELETE FROM webhook_deliveries WHERE job_id IS NULL")  # a sweep's calls have no job to belong to
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_index("ix_webhook_deliveries_sweep")
        batch.drop_constraint("fk_webhook_deliveries_sweep_id_sweeps", type_="foreignkey")
        batch.drop_column("sweep_id")
        batch.alter_column("job_id", existing_type=sa.String(40), nullable=False)
