"""Exports made on request: export_requests, one row per (job, which, format) that its owner asked to download after
the job without its spec having made it; a worker of the job's queue makes it, and its file becomes a checkpoint.

Revision ID: 0013 (renumbered from 0012: the sweeps, committed first, took 0012)
Revises: 0012
Create Date: 2026-12-04
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "export_requests",
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("which", sa.String(8), primary_key=True),
        sa.Column("format", sa.String(16), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_index("ix_export_requests_state", "export_requests", ["state"])


def downgrade() -> None:
    op.drop_index("ix_export_requests_state", table_name="export_requests")
    op.drop_table("export_requests")
