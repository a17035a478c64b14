"""The lease on a job row: the one thing that decides which worker runs a job.

A worker may train a job only while it holds the lease: `worker` names it and `lease_expires_at` lies in the future.
Taking the lease is one conditional UPDATE, so of two deliveries of the same message (or two workers) exactly one
wins; the other sees no row and does nothing. A lease that is not renewed expires, and the reconciler hands the job
to someone else.
"""
from __future__ import annotations

from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import and_, case, literal, or_, select, update
from sqlalchemy.orm import Session

from service.models import Job, JobEvent, Sweep, UTCDateTime, utcnow
from service.scheduling import pick_next
from service.settings import Settings
from service.states import HELD_STATES, QUEUED, RUNNING


def lease_job(session: Session, job_id: str, worker_name: str, lease_seconds: float) -> Job | None:
    """Take the lease on a queued job, or on a running job whose lease expired; None when the job is not ours to run
    (already running elsewhere, cancelled, finished, unknown).

    The state change and the lease are one atomic UPDATE; the JobEvent that `states.transition` would record is
    written right after, in the same transaction, so the history still has one event per state change.
    """
    now = utcnow()
    stmt = (
        update(Job)
        .where(Job.id == job_id,
               or_(Job.state == QUEUED,
                   and_(Job.state == RUNNING, or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))))
        .values(state=RUNNING, worker=worker_name, lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1,
                started_at=case((Job.started_at.is_(None), literal(now, UTCDateTime())), else_=Job.started_at))
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    job = session.scalars(stmt).one_or_none()
    if job is None:
        return None
    session.add(JobEvent(job_id=job.id, at=now, kind="state", state=RUNNING,
                         reason=f"attempt {job.attempts} on worker {worker_name}"))
    session.flush()
    return job


def take_job(session: Session, message_job_id: str, worker_name: str, settings: Settings) -> Job | None:
    """The job this worker runs for a message: the message's own job if it is running with an expired lease (its
    worker was lost: resume it), else the best queued job of the message's queue by the lab's policy
    (service/scheduling.py), whichever job the message named. None: nothing to run (the queue is empty, or every
    owner with queued jobs is at their max_running).

    Two workers never take the same job: the lease is a conditional UPDATE; on PostgreSQL the chosen row is also
    locked with SKIP LOCKED, so a worker racing another moves on to the next best job instead of waiting.
    """
    row = session.execute(select(Job.state, Job.queue, Job.lease_expires_at).where(Job.id == message_job_id)).first()
    if row is None:
        return None
    expired = row.lease_expires_at is None or row.lease_expires_at < utcnow()
    if row.state == RUNNING and expired:
        resumed = lease_job(session, message_job_id, worker_name, settings.lease_seconds)
        if resumed is not None:
            return resumed
    # otherwise the message stands for one start in its queue, whichever job it named (that one may have been
    # started already for another message, or cancelled)
    tried: list[str] = []
    for _ in range(TAKE_TRIES):
        job_id = pick_next(session, row.queue, settings, skip=tried)
        if job_id is None:
            return None
        locked = session.scalar(select(Job.id).where(Job.id == job_id, Job.state == QUEUED)
                                .with_for_update(skip_locked=True))
        job = lease_job(session, job_id, worker_name, settings.lease_seconds) if locked else None
        if job is not None:
            return job
        tried.append(job_id)  # another worker took it first
    return None


TAKE_TRIES = 20


def take_companions(session: Session, leader: Job, worker_name: str, settings: Settings) -> list[Job]:
    """The other trials of the leader's sweep that train with it as one student group (ttm.group), leased by this
    worker now: queued, or running with an expired lease (a group whose worker died resumes together), of the
    same queue, and sharing the data, teacher, seed and batch plan (ttm.group.group_difference); at most the
    sweep's `group` − 1 of them, the oldest first. Every member's `group_id` becomes the leader's id; a leader
    with no companion trains alone (group_id null). The companions skip the queue's order: they are the same
    owner's, and the group takes one slot."""
    from ttm.sweeps import SweepSpec, group_difference  # (no torch: this runs inside the lease's transaction)

    leader.group_id = None
    if leader.sweep_id is None or _gpus(leader.spec) > 1:
        return []
    sweep = session.get(Sweep, leader.sweep_id)
    size = SweepSpec.model_validate(sweep.spec).group if sweep is not None else 1
    if size <= 1:
        return []
    now = utcnow()
    candidates = session.execute(
        select(Job.id, Job.spec).where(
            Job.sweep_id == leader.sweep_id, Job.id != leader.id, Job.queue == leader.queue,
            or_(Job.state == QUEUED,
                and_(Job.state == RUNNING, or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))))
        .order_by(Job.id)).all()
    taken: list[Job] = []
    for job_id, spec in candidates:
        if len(taken) >= size - 1:
            break
        if _gpus(spec) > 1 or group_difference(leader.spec, spec) is not None:
            continue
        locked = session.scalar(select(Job.id).where(Job.id == job_id).with_for_update(skip_locked=True))
        job = lease_job(session, job_id, worker_name, settings.lease_seconds) if locked else None
        if job is not None:
            taken.append(job)
    if taken:
        for job in (leader, *taken):
            job.group_id = leader.id
        session.flush()
    return taken


def _gpus(spec: dict) -> int:
    resources = spec.get("resources") if isinstance(spec, dict) else None
    gpus = resources.get("gpus", 1) if isinstance(resources, dict) else 1
    return gpus if isinstance(gpus, int) else 1


class Held(NamedTuple):
    """A held job as its worker sees it between ticks: running or cancelling, and the high job preempting it."""

    state: str
    preempted_by: str | None


def renew_lease(session: Session, job_id: str, worker_name: str, lease_seconds: float) -> Held | None:
    """Push the expiry forward; returns the job's state (running or cancelling) and preemption, or None when the
    lease is lost."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.worker == worker_name, Job.state.in_(HELD_STATES))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .returning(Job.state, Job.preempted_by)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).one_or_none()
    return None if row is None else Held(row.state, row.preempted_by)


def held_state(session: Session, job_id: str, worker_name: str) -> Held | None:
    """The job's state if this worker still holds its lease, else None. A read: the cheap check between renewals."""
    row = session.execute(select(Job.state, Job.worker, Job.preempted_by).where(Job.id == job_id)).one_or_none()
    if row is None or row.worker != worker_name or row.state not in HELD_STATES:
        return None
    return Held(row.state, row.preempted_by)
