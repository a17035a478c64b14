"""Projects: lab members who share teachers.

projects (a unique name) and project_members (project, user); jobs.project_id and artifacts.project_id (null: the
owner's alone). An artifact or job in a project can be named as a teacher by every member of the project.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "project_members",
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    )
    op.create_index("ix_project_members_user_id", "project_members", ["user_id"])
    # plain columns, no foreign key: SQLite could drop such a column again only by rebuilding `jobs`, whose old
    # table would take every job's events and metrics with it (ON DELETE CASCADE). Projects are never deleted.
    for table in ("jobs", "artifacts"):
        op.add_column(table, sa.Column("project_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    for table in ("artifacts", "jobs"):
        op.drop_column(table, "project_id")  # plain DROP COLUMN: see 0005 on why not batch mode
    op.drop_index("ix_project_members_user_id", table_name="project_members")
    op.drop_table("project_members")
    op.drop_table("projects")
