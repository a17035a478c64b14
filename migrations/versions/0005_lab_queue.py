"""The lab queue: a job's priority class and slots (GPUs, or 1 on the cpu queue), and per-user scheduling settings.

jobs.priority (low | normal | high, default normal) and jobs.slots (what the job holds while it runs: the unit of
fair-share usage); an index in dispatch order within a queue. users.weight (the share, default 1), max_running,
max_queued, gpu_hours_per_week (null: no limit of the user's own) and priorities (the classes the user may submit
in; null: the server's default, low and normal).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("priority", sa.String(8), nullable=False, server_default="normal"))
    op.add_column("jobs", sa.Column("slots", sa.Integer(), nullable=False, server_default="1"))
    op.create_index("ix_jobs_dispatch", "jobs", ["state", "queue", "priority", "owner_id", "id"])
    op.add_column("users", sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
    op.add_column("users", sa.Column("max_running", sa.Integer(), nullable=True))
    op.add_column("users", sa.Column("max_queued", sa.Integer(), nullable=True))
    op.add_column("users", sa.Column("gpu_hours_per_week", sa.Float(), nullable=True))
    op.add_column("users", sa.Column("priorities", sa.String(32), nullable=True))


def downgrade() -> None:
    # plain DROP COLUMN (SQLite >= 3.35 has it): batch mode would rebuild `users`, and dropping the old table with
    # foreign keys on deletes every user's jobs through ON DELETE CASCADE
    op.drop_index("ix_jobs_dispatch", table_name="jobs")
    for column in ("priorities", "gpu_hours_per_week", "max_queued", "max_running", "weight"):
        op.drop_column("users", column)
    op.drop_column("jobs", "slots")
    op.drop_column("jobs", "priority")
