from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import psycopg
from sqlalchemy import Connection, bindparam, case, func, insert, literal, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased

from service.deps import Principal
from service.ids import new_job_id
from service.models import Job, JobEvent, QueueDepth, User, utcnow
from service.states import QUEUED


def get_job(session: Session, who: Principal, job_id: str) -> tuple[Job, str] | None:
    """(job, owner name) if `who` may see the job: its owner, or an admin. Others get None, as for a missing job."""
    query = select(Job, User.name).join(User, User.id == Job.owner_id).where(Job.id == job_id)
    if not who.is_admin:
        query = query.where(Job.owner_id == who.id)
    row = session.execute(query).first()
    return (row[0], row[1]) if row else None


_ahead, _behind = aliased(Job), aliased(Job)
POSITION_CAP = 1000  # jobs counted on either side before a position falls back to counting the whole queue ahead


def _capped_count(other: Any, newer: bool) -> Any:
    """The queued jobs of Job's queue older (newer) than Job, counted up to :cap."""
    side = other.id > Job.id if newer else other.id < Job.id
    inner = (select(literal(1)).select_from(other).where(other.state == QUEUED, other.queue == Job.queue, side)
             .correlate(Job).limit(bindparam("cap")).subquery())
    return select(func.count()).select_from(inner).scalar_subquery()


_COUNT_AHEAD = select(func.count()).select_from(_ahead).where(
    _ahead.state == QUEUED, _ahead.queue == Job.queue, _ahead.id < Job.id).correlate(Job).scalar_subquery()
_DEPTH_OF_JOB = select(QueueDepth.depth).where(QueueDepth.queue == Job.queue).correlate(Job).scalar_subquery()
# A queued job's position, counting the shorter side: the jobs ahead when there are few (the next to run), or the
# queue's depth minus the jobs behind (one just submitted to a long queue, which its submitter polls); in the
# middle of a long queue, all the jobs ahead. (A count of all the jobs ahead cost 5-10 ms at 90,000 queued.)
_POSITION_OF_JOB = case(
    (Job.state != QUEUED, None),
    (_capped_count(_ahead, newer=False) < bindparam("cap"), _capped_count(_ahead, newer=False) + 1),
    (_capped_count(_behind, newer=True) < bindparam("cap"),
     func.coalesce(_DEPTH_OF_JOB, 0) - _capped_count(_behind, newer=True)),
    else_=_COUNT_AHEAD + 1)
_JOB_WITH_POSITION = (select(Job, User.name, _POSITION_OF_JOB).join(User, User.id == Job.owner_id)
                      .where(Job.id == bindparam("job_id")))
_OWN_JOB_WITH_POSITION = _JOB_WITH_POSITION.where(Job.owner_id == bindparam("owner_id"))


def get_job_with_position(session: Session, who: Principal, job_id: str) -> tuple[Job, str, int | None] | None:
    """get_job and queue_position in one round trip, from a statement built once (GET /v1/jobs/{id} is the hot
    read)."""
    if who.is_admin:
        row = session.execute(_JOB_WITH_POSITION, {"job_id": job_id, "cap": POSITION_CAP}).first()
    else:
        row = session.execute(_OWN_JOB_WITH_POSITION, {"job_id": job_id, "owner_id": who.id,
                                                       "cap": POSITION_CAP}).first()
    return (row[0], row[1], None if row[2] is None else int(row[2])) if row else None


def list_jobs(session: Session, who: Principal, *, states: list[str] | None, before: str | None,
              limit: int) -> list[tuple[Job, str]]:
    """Newest first (job ids sort by creation time); `before` is the last id of the previous page."""
    query = select(Job, User.name).join(User, User.id == Job.owner_id)
    if not who.is_admin:
        query = query.where(Job.owner_id == who.id)
    if states:
        query = query.where(Job.state.in_(states))
    if before:
        query = query.where(Job.id < before)
    rows = session.execute(query.order_by(Job.id.desc()).limit(limit)).all()
    return [(job, owner) for job, owner in rows]


_POSITION = select(func.count()).select_from(Job).where(
    Job.state == QUEUED, Job.queue == bindparam("queue"), Job.id < bindparam("job_id"))


_DEPTH_OF_QUEUE = select(QueueDepth.depth).where(QueueDepth.queue == bindparam("queue")).scalar_subquery()
# A queue's depth and its queued jobs from `first` on, in one statement (one snapshot): a job's position is the
# depth minus the queued jobs behind it, which costs the jobs newer than `first`, not the whole queue ahead.
_DEPTH_AND_TAIL = (select(_DEPTH_OF_QUEUE, Job.id)
                   .where(Job.state == QUEUED, Job.queue == bindparam("queue"), Job.id >= bindparam("first"))
                   .order_by(Job.id))
# The same for the writer's psycopg pipeline: compiled once, with its constants ({"queue": None, "first": None,
# the state: "queued"}) to be completed per call.
_PG_DEPTH_AND_TAIL = _DEPTH_AND_TAIL.compile(dialect=postgresql_psycopg.dialect())
_PG_DEPTH_AND_TAIL_SQL, _PG_DEPTH_AND_TAIL_PARAMS = str(_PG_DEPTH_AND_TAIL), dict(_PG_DEPTH_AND_TAIL.params)


def _depth_and_ids(found: Sequence[Sequence[Any]]) -> tuple[int, list[str]]:
    """(the depth, the job ids) of _DEPTH_AND_TAIL's rows: the depth on every row, the id last."""
    return (found[0][0] or 0) if found else 0, [row[-1] for row in found]


def _depth_and_tail(conn: Connection | Session, queue: str, first: str) -> tuple[int, list[str]]:
    return _depth_and_ids(conn.execute(_DEPTH_AND_TAIL, {"queue": queue, "first": first}).all())


def queue_position(session: Session, job: Job) -> int | None:
    """1 for the next job its queue will run; None when the job is not queued."""
    if job.state != QUEUED:
        return None
    return int(session.scalar(_POSITION, {"queue": job.queue, "job_id": job.id}) or 0) + 1


_DEPTH_BEHIND_AND_RANGE = (
    select(_DEPTH_OF_QUEUE,
           select(func.count()).select_from(_behind).where(
               _behind.state == QUEUED, _behind.queue == bindparam("queue"), _behind.id > bindparam("last"))
           .scalar_subquery(),
           Job.id)
    .where(Job.state == QUEUED, Job.queue == bindparam("queue"), Job.id >= bindparam("first"),
           Job.id <= bindparam("last"))
    .order_by(Job.id))


def queue_positions(session: Session, jobs: list[Job]) -> dict[str, int]:
    """Positions for many queued jobs in one query per queue (a page of the job list): the queue's depth, minus the
    queued jobs newer than the page (an index count), minus those within the page's range behind each. The newest
    pages, which are the ones read, cost a few rows however long the queue (benchmarks/job_list.py: 0.3 ms for the
    newest page with 90,000 queued, 36 ms when the positions were ranked from the front)."""
    by_queue: dict[str, list[str]] = {}
    for job in jobs:
        if job.state == QUEUED:
            by_queue.setdefault(job.queue, []).append(job.id)
    positions: dict[str, int] = {}
    for queue, ids in by_queue.items():
        found = session.execute(_DEPTH_BEHIND_AND_RANGE, {"queue": queue, "first": min(ids), "last": max(ids)}).all()
        if found:
            depth, tail = _depth_and_ids(found)
            positions.update(_positions(set(ids), {queue: (depth - (found[0][1] or 0), tail)}))
    return positions


def find_idempotent(session: Session, owner_id: int, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))


SUBMITTED = "submitted"  # the reason of a job's first event


def new_job_row(owner_id: int, *, name: str, spec: dict[str, Any], queue: str, idempotency_key: str | None,
                request_hash: str | None) -> dict[str, Any]:
    """The columns of a new queued job (its id sorts by creation time)."""
    return {"id": new_job_id(), "owner_id": owner_id, "name": name, "spec": spec, "state": QUEUED, "queue": queue,
            "attempts": 0, "idempotency_key": idempotency_key, "request_hash": request_hash, "created_at": utcnow()}


def insert_job(session: Session, owner_id: int, *, name: str, spec: dict[str, Any], queue: str,
               idempotency_key: str | None, request_hash: str | None) -> Job:
    """A new queued job and its first event through the ORM; the caller commits (POST /v1/jobs uses
    `insert_jobs` instead, through the job writer)."""
    row = new_job_row(owner_id, name=name, spec=spec, queue=queue, idempotency_key=idempotency_key,
                      request_hash=request_hash)
    job = Job(**row)
    # one flush for both rows: the unit of work inserts jobs before job_events (the foreign key orders them)
    session.add_all([job, JobEvent(job_id=job.id, at=row["created_at"], kind="state", state=QUEUED,
                                   reason=SUBMITTED)])
    return job


_INSERT_NEW_KEYS = sqlite.insert(Job).on_conflict_do_nothing(
    index_elements=[Job.owner_id, Job.idempotency_key]).returning(Job.id)

# PostgreSQL: the jobs and their first events in one statement whose text does not change with the batch's size
# (the rows travel as one JSON array), so psycopg prepares it once, neither side parses a VALUES list per batch, and
# the client encodes the batch with one json.dumps. A CTE's rows are inserted before the statement's foreign-key
# checks run, so the events may point at jobs of the same statement.
_PG_INSERT_JOBS = """
WITH new AS (
  INSERT INTO jobs (id, owner_id, name, spec, state, queue, attempts, idempotency_key, request_hash, created_at)
  SELECT r->>'id', (r->>'owner_id')::int, r->>'name', r->'spec', %(state)s, r->>'queue', 0, r->>'idempotency_key',
         r->>'request_hash', (r->>'created_at')::timestamptz
  FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS t(r, n)
  ORDER BY n
  ON CONFLICT (owner_id, idempotency_key) DO NOTHING
  RETURNING id, created_at)
INSERT INTO job_events (job_id, at, kind, state, reason)
SELECT id, created_at, 'state', %(state)s, %(reason)s FROM new ORDER BY id
RETURNING job_id"""
_PG_COLUMNS = ("id", "owner_id", "name", "spec", "queue", "idempotency_key", "request_hash")


def insert_jobs(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert new jobs (`new_job_row`) and their first events, and commit. A row whose (owner, Idempotency-Key) is
    taken already is skipped, not an error: the caller replays the job that holds the key. Returns {inserted job id:
    its queue position}. `conn` must have no transaction of its own open."""
    # sorted by queue: the triggers lock each queue's depth row in the same order in every batch (no deadlock)
    rows = sorted(rows, key=lambda row: (row["queue"], row["id"]))
    if any(row["state"] != QUEUED for row in rows):
        raise ValueError("insert_jobs inserts new (queued) jobs only")
    if conn.dialect.name == "postgresql":
        return _insert_jobs_postgres(conn.connection.driver_connection, rows)
    with conn.begin():
        inserted = set(conn.execute(_INSERT_NEW_KEYS, rows).scalars())
        new = [row for row in rows if row["id"] in inserted]
        if not new:
            return {}
        conn.execute(insert(JobEvent), [{"job_id": row["id"], "at": row["created_at"], "kind": "state",
                                         "state": QUEUED, "reason": SUBMITTED} for row in new])
        tails = {queue: _depth_and_tail(conn, queue, first) for queue, first in _first_of_each_queue(new).items()}
    return _positions(inserted, tails)


def _insert_jobs_postgres(pg: psycopg.Connection[Any], rows: list[dict[str, Any]]) -> dict[str, int]:
    """On a psycopg connection, in one round trip: BEGIN, the insert, each queue's depth and tail, and COMMIT go out
    together in pipeline mode (four round trips otherwise, each a wake-up of the server's backend and of this
    thread)."""
    batch = json.dumps([{**{name: row[name] for name in _PG_COLUMNS},
                         "created_at": row["created_at"].astimezone(UTC).isoformat()} for row in rows])
    try:
        with pg.pipeline():
            insert_cursor = pg.execute(_PG_INSERT_JOBS, {"rows": batch, "state": QUEUED, "reason": SUBMITTED})
            # from the first id of all the rows: those whose key was taken are not in the table
            tail_cursors = {queue: pg.execute(_PG_DEPTH_AND_TAIL_SQL,
                                              {**_PG_DEPTH_AND_TAIL_PARAMS, "queue": queue, "first": first})
                            for queue, first in _first_of_each_queue(rows).items()}
            pg.commit()
    except BaseException as err:
        pg.rollback()
        if isinstance(err, psycopg.Error):  # as SQLAlchemy would have raised it (IntegrityError, ...)
            raise DBAPIError.instance(_PG_INSERT_JOBS, None, err, psycopg.Error) from err
        raise
    inserted = {job_id for (job_id,) in insert_cursor.fetchall()}
    return _positions(inserted, {queue: _depth_and_ids(cursor.fetchall()) for queue, cursor in tail_cursors.items()})


def _first_of_each_queue(rows: list[dict[str, Any]]) -> dict[str, str]:
    firsts: dict[str, str] = {}
    for row in rows:
        if row["id"] < firsts.get(row["queue"], "\uffff"):
            firsts[row["queue"]] = row["id"]
    return firsts


def _positions(wanted: set[str], tails: dict[str, tuple[int, list[str]]]) -> dict[str, int]:
    """Each wanted job's position from its queue's depth minus the queued jobs behind it: a tail holds the queue's
    jobs from the first wanted one on. (For a batch being inserted, the depth counts the batch's own rows: the
    trigger holds the depth row until the commit, so no other submit changes it meanwhile.)"""
    positions: dict[str, int] = {}
    for depth, tail in tails.values():
        positions.update({job_id: depth - (len(tail) - 1 - rank) for rank, job_id in enumerate(tail)
                          if job_id in wanted})
    return positions


def counts_by_state(session: Session) -> dict[str, int]:
    return {state: int(n) for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state))}


def queue_depths(session: Session) -> dict[str, int]:
    return {queue: int(n) for queue, n in session.execute(
        select(Job.queue, func.count()).where(Job.state == QUEUED).group_by(Job.queue))}
