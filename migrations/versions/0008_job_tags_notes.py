"""Tags and a note on a job: what its owner calls it after the fact (a baseline, the run for the paper, why it was
stopped). job_tags (job, tag) holds the tags, so that a search by tag is an indexed lookup on every backend;
jobs.note holds free text. Neither is part of the spec: they can change while the job's record of what ran cannot.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_tags",
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_job_tags_tag", "job_tags", ["tag", "job_id"])
    op.add_column("jobs", sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "note")  # plain DROP COLUMN: see 0005 on why not batch mode
    op.drop_index("ix_job_tags_tag", table_name="job_tags")
    op.drop_table("job_tags")
