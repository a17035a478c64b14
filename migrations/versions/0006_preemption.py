"""Preemption: jobs.preempted_by, the id of the high job that asked a running job to give up its worker (null: not
preempted). The worker stops the job at its next epoch boundary, within TTM_PREEMPT_GRACE_SECONDS, and puts it back
in the queue; the column is cleared when the job stops running.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("preempted_by", sa.String(40), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "preempted_by")  # plain DROP COLUMN: see 0005 on why not batch mode
