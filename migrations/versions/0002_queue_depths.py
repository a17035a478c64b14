"""queue_depths: the number of queued jobs per queue, kept by triggers on jobs.

A new job's queue position was a count of the queued jobs ahead of it: 10 ms with 40,000 queued, on every submit.
With the depth at hand, a new job's position is the depth minus the few queued jobs newer than it. Triggers rather
than application code keep the count, because every path that moves a job in or out of `queued` must (the API, the
lease's own UPDATE, the reconciler, a user's jobs deleted with the user, an operator's SQL); only TRUNCATE of jobs
bypasses them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ADD = ("INSERT INTO queue_depths (queue, depth) VALUES ({row}.queue, 1) "
        "ON CONFLICT (queue) DO UPDATE SET depth = queue_depths.depth + 1")
_REMOVE = "UPDATE queue_depths SET depth = depth - 1 WHERE queue = {row}.queue"

POSTGRES = [f"""
CREATE FUNCTION ttm_queue_depths() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.state = 'queued' THEN
        {_REMOVE.format(row="OLD")};
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.state = 'queued' THEN
        {_ADD.format(row="NEW")};
    END IF;
    RETURN NULL;
END $$""", """
CREATE TRIGGER ttm_queue_depths AFTER INSERT OR DELETE OR UPDATE OF state, queue ON jobs
FOR EACH ROW EXECUTE FUNCTION ttm_queue_depths()"""]

SQLITE = [f"""
CREATE TRIGGER ttm_queue_depths_insert AFTER INSERT ON jobs WHEN NEW.state = 'queued'
BEGIN {_ADD.format(row="NEW")}; END""", f"""
CREATE TRIGGER ttm_queue_depths_delete AFTER DELETE ON jobs WHEN OLD.state = 'queued'
BEGIN {_REMOVE.format(row="OLD")}; END""", f"""
CREATE TRIGGER ttm_queue_depths_update AFTER UPDATE OF state, queue ON jobs
WHEN OLD.state = 'queued' OR NEW.state = 'queued'
BEGIN
    {_REMOVE.format(row="OLD")} AND OLD.state = 'queued';
    INSERT INTO queue_depths (queue, depth) SELECT NEW.queue, 1 WHERE NEW.state = 'queued'
        ON CONFLICT (queue) DO UPDATE SET depth = queue_depths.depth + 1;
END"""]


def upgrade() -> None:
    op.create_table(
        "queue_depths",
        sa.Column("queue", sa.String(16), nullable=False),
        sa.Column("depth", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("queue", name=op.f("pk_queue_depths")),
    )
    op.execute("INSERT INTO queue_depths (queue, depth) "
               "SELECT queue, count(*) FROM jobs WHERE state = 'queued' GROUP BY queue")
    for statement in POSTGRES if op.get_bind().dialect.name == "postgresql" else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ttm_queue_depths ON jobs")
        op.execute("DROP FUNCTION ttm_queue_depths()")
    else:
        for event in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER ttm_queue_depths_{event}")
    op.drop_table("queue_depths")
