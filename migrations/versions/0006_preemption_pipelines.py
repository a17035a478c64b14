"""Preemption and pipelines.

jobs.preempted_by: the id of the high job that asked a running job to give up its worker (null: not preempted).
The worker stops the job at its next epoch boundary, within TTM_PREEMPT_GRACE_SECONDS, and puts it back in the
queue; the column is cleared when the job stops running.

jobs.waits_for (indexed): a `waiting` student's teacher job; it becomes queued when that job succeeds.

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
    op.add_column("jobs", sa.Column("waits_for", sa.String(40), nullable=True))
    op.create_index("ix_jobs_waits_for", "jobs", ["waits_for"])


def downgrade() -> None:
    # plain DROP COLUMN: see 0005 on why not batch mode. A waiting job would wait forever: it fails, saying why.
    op.execute("UPDATE jobs SET state = 'failed', reason = 'its teacher job had not finished when the server was "
               "downgraded (no pipelines before 0006): submit it again' WHERE state = 'waiting'")
    op.drop_index("ix_jobs_waits_for", table_name="jobs")
    op.drop_column("jobs", "waits_for")
    op.drop_column("jobs", "preempted_by")
