"""jobs.progress: where a running job is within its epoch ({"epoch", "step", "steps"}), as its trainer last said
(every few seconds; the worker copies it from the run directory). Not history: it is overwritten, and read only
while the job runs.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("progress", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                                    nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "progress")  # plain DROP COLUMN: see 0005 on why not batch mode
