"""Sweeps (POST /v1/sweeps): a search over a job spec's fields whose trials are jobs (`jobs.sweep_id`, `jobs.trial`).
Optuna keeps its study in tables of its own, created by Optuna itself (service/sweeps.py): on PostgreSQL in the
schema `optuna` of this database, on SQLite in a file beside this one, since its table names (`studies`, `trials`,
its own `alembic_version`) would collide with ours.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("best_job_id", sa.String(40), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("driving_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("owner_id", "idempotency_key"),
    )
    op.create_index("ix_sweeps_owner_id", "sweeps", ["owner_id", "id"])
    op.create_index("ix_sweeps_state", "sweeps", ["state"])
    op.add_column("jobs", sa.Column("sweep_id", sa.String(40), nullable=True))
    op.add_column("jobs", sa.Column("trial", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_sweep_id", "jobs", ["sweep_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_sweep_id", "jobs")
    op.drop_column("jobs", "trial")  # plain DROP COLUMN: see 0005 on why not batch mode
    op.drop_column("jobs", "sweep_id")
    op.drop_table("sweeps")
