"""Job states and the one function that moves a job between them.

queued → running → succeeded | failed | cancelled, plus cancelling (a cancel asked of a running job, until its
worker has stopped the trainer). running → queued is a lost lease that the reconciler re-enqueues, a worker shutting
down, or a preemption (a high job took the worker; the job resumes from its last epoch checkpoint).

waiting → queued | failed | cancelled: a student whose teacher is a job that has not succeeded yet waits for it
(`jobs.waits_for`). When that job succeeds its waiting students become queued; when it fails or is cancelled they
fail with its reason, and theirs after them. `transition` does this in the same transaction, so no job is ever left
waiting on a job that has ended. It also records there the webhook call of a job that names `notify.url`
(service/webhooks.py): reaching a final state and owing its call are one commit; so is, for a job that ran,
owing its export to the MLflow tracking server (worker/tracking.py).
"""
from __future__ import annotations

from typing import Literal, get_args

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.models import Job, JobEvent, utcnow
from service.queries.tracking import add_export
from service.queries.webhooks import add_delivery
from service.webhooks import EVENT, notify_url

WAITING, QUEUED, RUNNING, CANCELLING = "waiting", "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
HELD_STATES = (RUNNING, CANCELLING)  # a worker holds the job: its lease, its slot, its progress
JobState = Literal["waiting", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"]  # the API's
ALL_STATES: tuple[str, ...] = get_args(JobState)

TRANSITIONS: dict[str, frozenset[str]] = {
    WAITING: frozenset({QUEUED, CANCELLED, FAILED}),
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLING, CANCELLED, QUEUED}),
    CANCELLING: frozenset({CANCELLED, FAILED, SUCCEEDED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, job_id: str, from_state: str, to_state: str):
        self.job_id, self.from_state, self.to_state = job_id, from_state, to_state
        super().__init__(f"job {job_id} is {from_state}; it cannot become {to_state}")


def transition(session: Session, job: Job, to_state: str, reason: str | None = None) -> list[tuple[str, str]]:
    """Move `job` to `to_state` and record the change as a JobEvent; raises IllegalTransition. Returns the jobs
    (id, queue) that became queued because of it (students that waited for `job`): the caller sends their messages
    once it has committed.

    The UPDATE is conditional on the state this session saw, so two writers (the API cancelling, a worker finishing)
    cannot both win: the loser gets IllegalTransition with the state that is now stored. On PostgreSQL it also locks
    the job row before the event takes its sequence number, so one job's events commit in sequence order.
    """
    from_state = job.state
    if to_state not in TRANSITIONS.get(from_state, frozenset()):
        raise IllegalTransition(job.id, from_state, to_state)
    now = utcnow()
    values: dict[str, object] = {"state": to_state}
    if to_state == RUNNING and job.started_at is None:
        values["started_at"] = now
    if to_state in FINAL_STATES:
        values["finished_at"] = now
    if from_state in (RUNNING, CANCELLING) and to_state not in (RUNNING, CANCELLING):
        values["preempted_by"] = None  # a preemption ends with the run it stopped
    if reason is not None:
        values["reason"] = reason
    result = session.execute(
        update(Job).where(Job.id == job.id, Job.state == from_state).values(**values),
        execution_options={"synchronize_session": False},
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE's Result is a CursorResult, which has it
        session.refresh(job, ["state"])
        raise IllegalTransition(job.id, job.state, to_state)
    for key, value in values.items():  # what the UPDATE wrote, without marking the object dirty
        set_committed_value(job, key, value)
    session.add(JobEvent(job_id=job.id, at=now, kind="state", state=to_state, reason=reason))
    if to_state in FINAL_STATES and (url := notify_url(job)) is not None:
        # in this transaction: the call is never lost, and the state change never waits on the network
        add_delivery(session, job, url, EVENT, now)
    if to_state in FINAL_STATES and job.started_at is not None:  # it ran: the tracking server is owed its run
        add_export(session, job, now)
    session.flush()
    return settle_waiting(session, job, to_state, reason) if to_state in FINAL_STATES else []


def settle_waiting(session: Session, teacher: Job, state: str, reason: str | None) -> list[tuple[str, str]]:
    """The students waiting for `teacher`, which has ended in `state`: queued if it succeeded, else failed (and
    theirs after them). Returns the (id, queue) of those now queued."""
    released: list[tuple[str, str]] = []
    waiting = session.scalars(select(Job).where(Job.waits_for == teacher.id, Job.state == WAITING)
                              .order_by(Job.id)).all()
    for student in waiting:
        try:
            if state == SUCCEEDED:
                transition(session, student, QUEUED, f"teacher job {teacher.id} succeeded")
                released.append((student.id, student.queue))
            else:
                why = f"teacher job {teacher.id} {state}" + (f": {reason}" if reason else "")
                released += transition(session, student, FAILED, why)
        except IllegalTransition:  # cancelled meanwhile by its owner
            continue
    return released
