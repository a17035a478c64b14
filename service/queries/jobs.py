"""Queries on jobs. A queued job's position is its place in the order its queue will start its jobs in (the lab's
policy, service/scheduling.py), played forward for the first POSITION_CAP: past it the position reads "1000+"."""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from service.ids import new_job_id
from service.models import Job, JobEvent, JobTag, User, utcnow
from service.principal import Principal
from service.scheduling import dispatch_order, place_in_group
from service.settings import Settings
from service.states import QUEUED, WAITING

POSITION_CAP = 1000
Position = int | str | None  # 1 = next to run; f"{POSITION_CAP}+" past the cap; None unless queued


def get_job(session: Session, who: Principal, job_id: str) -> tuple[Job, str] | None:
    """(job, owner name) if `who` may see the job: its owner, or an admin. Others get None, as for a missing job."""
    query = select(Job, User.name).join(User, User.id == Job.owner_id).where(Job.id == job_id)
    if not who.is_admin:
        query = query.where(Job.owner_id == who.id)
    row = session.execute(query).first()
    return (row[0], row[1]) if row else None


def queue_position(session: Session, job: Job, settings: Settings) -> Position:
    """1 for the next job its queue will run; "1000+" past the cap; None when the job is not queued."""
    if job.state != QUEUED:
        return None
    return queue_positions(session, [job], settings)[job.id]


def queue_positions(session: Session, jobs: list[Job], settings: Settings) -> dict[str, int | str]:
    """The queued jobs' places in their queue's dispatch order (service/scheduling.py), the first POSITION_CAP of
    each queue. When a queue must be played again, a job with POSITION_CAP of its owner's jobs of its class ahead of
    it is past the cap at once, without the replay."""
    capped = f"{POSITION_CAP}+"
    positions: dict[str, int | str] = {}
    current: dict[str, dict[str, int] | None] = {}  # per queue, checked once per call (a page holds many jobs)
    for job in jobs:
        if job.state != QUEUED:
            continue
        if job.queue not in current:
            current[job.queue] = _known_places(session, job.queue, settings)
        places = current[job.queue]
        if places is None:
            if place_in_group(session, job, POSITION_CAP) >= POSITION_CAP:
                positions[job.id] = capped
                continue
            places = current[job.queue] = _play(session, job.queue, settings)
        positions[job.id] = places.get(job.id, capped)  # not among the first POSITION_CAP: past the cap
    return positions


ORDER_MAX_AGE_S = 5.0
# (database, queue) -> ((newest job event, newest job), when, {job id: place}) of the queue's first POSITION_CAP
_orders: dict[tuple[str, str], tuple[tuple[int, str], float, dict[str, int]]] = {}


def _newest(session: Session) -> tuple[int, str]:
    """The newest job event and job, in one round trip: what a queue's order was played for."""
    row = session.execute(select(select(func.max(JobEvent.id)).scalar_subquery(),
                                 select(func.max(Job.id)).scalar_subquery())).one()
    return row[0] or 0, row[1] or ""


def _known_places(session: Session, queue: str, settings: Settings) -> dict[str, int] | None:
    """The queue's first places as last played, while no job or job event was written since (a submit, a start, an
    end, a cancel; the newest job's id as well, since event ids can repeat where rows were deleted) and for at most
    ORDER_MAX_AGE_S (running jobs accrue usage, old usage decays, an admin may change a share); None otherwise. A
    page of jobs, or a client polling its job, does not replay the queue per request."""
    known = _orders.get((settings.database_url, queue))
    if known is None or time.monotonic() - known[1] >= ORDER_MAX_AGE_S or known[0] != _newest(session):
        return None
    return known[2]


def _play(session: Session, queue: str, settings: Settings) -> dict[str, int]:
    newest = _newest(session)
    places = {p.job.id: p.position for p in dispatch_order(session, queue, settings, limit=POSITION_CAP)}
    _orders[(settings.database_url, queue)] = (newest, time.monotonic(), places)
    return places


def list_jobs(session: Session, who: Principal, *, states: list[str] | None, before: str | None,
              limit: int, tags: list[str] | None = None, text: str | None = None) -> list[tuple[Job, str]]:
    """Newest first (job ids sort by creation time); `before` is the last id of the previous page. `tags`: jobs
    with every one of them; `text`: in the name or the note, ignoring case."""
    query = select(Job, User.name).join(User, User.id == Job.owner_id).options(selectinload(Job.tag_rows))
    if not who.is_admin:
        query = query.where(Job.owner_id == who.id)
    if states:
        query = query.where(Job.state.in_(states))
    for tag in tags or []:
        query = query.where(select(JobTag.job_id).where(JobTag.job_id == Job.id, JobTag.tag == tag).exists())
    if text:
        needle = text.lower()
        query = query.where(func.lower(Job.name).contains(needle, autoescape=True)
                            | func.lower(Job.note).contains(needle, autoescape=True))
    if before:
        query = query.where(Job.id < before)
    rows = session.execute(query.order_by(Job.id.desc()).limit(limit)).all()
    return [(job, owner) for job, owner in rows]


def set_tags(job: Job, tags: list[str]) -> None:
    """The job's tags become `tags` (duplicates dropped); rows of tags it keeps stay as they are."""
    wanted = set(tags)
    job.tag_rows = [row for row in job.tag_rows if row.tag in wanted] + [
        JobTag(tag=tag) for tag in sorted(wanted - set(job.tags))]


def find_idempotent(session: Session, owner_id: int, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))


SUBMITTED = "submitted"  # the reason of a job's first event


def insert_job(session: Session, owner_id: int, *, name: str, spec: dict[str, Any], queue: str,
               idempotency_key: str | None, request_hash: str | None, priority: str = "normal",
               slots: int = 1, waits_for: str | None = None, project_id: int | None = None) -> Job:
    """A new job (its id sorts by creation time) and its first event; the caller commits. Queued, or waiting for
    the teacher job `waits_for`."""
    state = QUEUED if waits_for is None else WAITING
    job = Job(id=new_job_id(), owner_id=owner_id, name=name, spec=spec, state=state, queue=queue, attempts=0,
              priority=priority, slots=slots, idempotency_key=idempotency_key, request_hash=request_hash,
              created_at=utcnow(), waits_for=waits_for, project_id=project_id)
    reason = SUBMITTED if waits_for is None else f"{SUBMITTED}; waits for its teacher job {waits_for} to succeed"
    # one flush for both rows: the unit of work inserts jobs before job_events (the foreign key orders them)
    session.add_all([job, JobEvent(job_id=job.id, at=job.created_at, kind="state", state=state, reason=reason)])
    return job


def counts_by_state(session: Session) -> dict[str, int]:
    return {state: int(n) for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state))}


def queue_depths(session: Session) -> dict[str, int]:
    return {queue: int(n) for queue, n in session.execute(
        select(Job.queue, func.count()).where(Job.state == QUEUED).group_by(Job.queue))}
