"""A job may train in a student group (issue 17): `group_id` names the group's first job (its leader), the same on
every member while they train together; null for a job that trains alone. The lab queue counts a group's members as
one slot, and splits the group's usage among them (service/scheduling.py).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("group_id", sa.String(40), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "group_id")  # plain DROP COLUMN: see 0005 on why not batch mode
