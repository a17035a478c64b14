"""Queries on jobs. A queued job's position is one index-backed count of the queued jobs ahead of it in its queue
(ix_jobs_state_queue), stopped at POSITION_CAP: past it the position reads "1000+"."""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.principal import Principal
from service.ids import new_job_id
from service.models import Job, JobEvent, User, utcnow
from service.states import QUEUED

POSITION_CAP = 1000
Position = int | str | None  # 1 = next to run; f"{POSITION_CAP}+" past the cap; None unless queued


def get_job(session: Session, who: Principal, job_id: str) -> tuple[Job, str] | None:
    """(job, owner name) if `who` may see the job: its owner, or an admin. Others get None, as for a missing job."""
    query = select(Job, User.name).join(User, User.id == Job.owner_id).where(Job.id == job_id)
    if not who.is_admin:
        query = query.where(Job.owner_id == who.id)
    row = session.execute(query).first()
    return (row[0], row[1]) if row else None


def _capped_ahead(session: Session, queue: str, job_id: str) -> int:
    """Queued jobs of `queue` older than `job_id`, counted up to POSITION_CAP (an index range scan)."""
    inner = (select(Job.id).where(Job.state == QUEUED, Job.queue == queue, Job.id < job_id)
             .limit(POSITION_CAP).subquery())
    return int(session.scalar(select(func.count()).select_from(inner)) or 0)


def _shown(ahead: int) -> int | str:
    return ahead + 1 if ahead < POSITION_CAP else f"{POSITION_CAP}+"


def queue_position(session: Session, job: Job) -> Position:
    """1 for the next job its queue will run; "1000+" past the cap; None when the job is not queued."""
    if job.state != QUEUED:
        return None
    return _shown(_capped_ahead(session, job.queue, job.id))


def queue_positions(session: Session, jobs: list[Job]) -> dict[str, int | str]:
    """Positions for a page of jobs: per queue, the capped count ahead of the page's oldest queued job, plus each
    job's rank among the queued jobs between the page's oldest and newest."""
    by_queue: dict[str, list[str]] = {}
    for job in jobs:
        if job.state == QUEUED:
            by_queue.setdefault(job.queue, []).append(job.id)
    positions: dict[str, int | str] = {}
    for queue, ids in by_queue.items():
        first, last = min(ids), max(ids)
        ahead = _capped_ahead(session, queue, first)
        between = session.scalars(select(Job.id).where(Job.state == QUEUED, Job.queue == queue, Job.id >= first,
                                                       Job.id <= last).order_by(Job.id)
                                  .limit(POSITION_CAP)).all()
        rank = {job_id: i for i, job_id in enumerate(between)}
        for job_id in ids:
            positions[job_id] = _shown(min(ahead + rank.get(job_id, POSITION_CAP), POSITION_CAP))
    return positions


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


def find_idempotent(session: Session, owner_id: int, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))


SUBMITTED = "submitted"  # the reason of a job's first event


def insert_job(session: Session, owner_id: int, *, name: str, spec: dict[str, Any], queue: str,
               idempotency_key: str | None, request_hash: str | None) -> Job:
    """A new queued job (its id sorts by creation time) and its first event; the caller commits."""
    job = Job(id=new_job_id(), owner_id=owner_id, name=name, spec=spec, state=QUEUED, queue=queue, attempts=0,
              idempotency_key=idempotency_key, request_hash=request_hash, created_at=utcnow())
    # one flush for both rows: the unit of work inserts jobs before job_events (the foreign key orders them)
    session.add_all([job, JobEvent(job_id=job.id, at=job.created_at, kind="state", state=QUEUED,
                                   reason=SUBMITTED)])
    return job


def counts_by_state(session: Session) -> dict[str, int]:
    return {state: int(n) for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state))}


def queue_depths(session: Session) -> dict[str, int]:
    return {queue: int(n) for queue, n in session.execute(
        select(Job.queue, func.count()).where(Job.state == QUEUED).group_by(Job.queue))}
