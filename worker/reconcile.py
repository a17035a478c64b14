"""The reconciler: puts back on the queue what a lost worker or a lost message left behind.

One pass (`reconcile_once`) looks at the jobs table, and at how many messages the broker holds per queue:
- a running job whose lease expired lost its worker (killed, out of host memory, its machine gone): back to queued
  and re-sent, until it has used TTM_MAX_ATTEMPTS leases; then failed, with the reason;
- a cancelling job whose lease expired has no worker left to stop it: cancelled;
- a queued job whose message may have been lost (a broker restarted without persistence, a worker killed holding a
  message of the filesystem transport) is re-sent after RESEND_LEASES leases, then at doubling intervals, while
  its queue's broker holds fewer messages than the queue has queued jobs. Sending a job twice is harmless: the
  second delivery finds the lease taken and does nothing;
- a waiting student whose teacher job has ended without settling it (a crash between the two): settled now;
- a `high` job that waits while every worker of its queue runs lower-class work: the running job the policy picks
  (service/scheduling.py `preemption_victim`) is marked preempted, and its worker stops it at its next epoch boundary.
Export requests (an export of a succeeded job asked for by downloading it, worker/exports.py) are looked after the
same way: one whose worker stopped renewing its lease is requested again and re-sent, until TTM_MAX_ATTEMPTS takes,
then failed with the reason; one that no worker has taken is re-sent after RESEND_LEASES leases, then at doubling
intervals.
Each tick of the loop then sends the webhook calls that are due (worker/webhooks.py `deliver_due`), in transactions
of their own: a receiver that is slow or away never holds up this pass; and drives every running sweep
(service/sweeps.py `drive_all`): its trials' results told to Optuna, weak trials pruned, the next trials queued.

Several reconcilers may run at once: every state change is a conditional UPDATE (`states.transition`), so only one
of them acts on a job. `ttm serve` runs the loop in a thread; a lab runs `ttm reconcile --loop` (or `ttm serve`).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.models import Job, JobEvent, utcnow
from service.queries.exports import pending_by_queue as pending_exports
from service.queries.jobs import queue_depths
from service.settings import Settings
from service.states import (
    CANCELLED,
    CANCELLING,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    WAITING,
    IllegalTransition,
    settle_waiting,
    transition,
)
from service.sweeps import drive_all
from worker.webhooks import deliver_due

log = logging.getLogger("ttm.worker.reconcile")

RESENT = "message re-sent to queue"  # the reason of the log event that records a re-send
RESEND_LEASES = 2  # a queued job waits this many lease periods before its message counts as possibly lost
MAX_RESEND_INTERVAL_S = 3600.0
# Queued jobs looked at per pass for lost messages, in id order from where the last pass stopped: a pass over a
# queue of 50,000 jobs loaded them all, with two IN-lists as long, every few seconds (a benchmark's deep queue
# spent more CPU there than on its submits). A page per pass looks at every job once per depth/page passes.
LOST_MESSAGE_PAGE = 500


@dataclass
class ReconcileSummary:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # waiting students queued here (their teacher had ended)
    to_send: list[tuple[str, str]] = field(default_factory=list)  # (job id, queue): send once committed
    resume_after: str | None = None  # the last queued job this pass looked at, when more follow it
    exports_resent: list[str] = field(default_factory=list)  # "job/which/format"
    exports_failed: list[str] = field(default_factory=list)
    exports_to_send: list[tuple[str, str, str, str]] = field(default_factory=list)  # (job, which, format, queue)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.resent or self.preempted or self.released
                    or self.exports_resent or self.exports_failed)


def reconcile_once(session: Session, settings: Settings, now: datetime | None = None, after: str | None = None,
                   page: int = LOST_MESSAGE_PAGE,
                   count_messages: Callable[[list[str]], dict[str, int] | None] | None = None) -> ReconcileSummary:
    """One pass over the jobs table; the caller commits, then sends `summary.to_send` (see `reconcile_and_send`).
    Lost messages are looked for among `page` queued jobs after `after` (the last pass's `resume_after`), in the
    queues where `count_messages` (the broker's waiting messages per queue; None: unknown) finds fewer messages
    than queued jobs."""
    now = now or utcnow()
    summary = ReconcileSummary()
    _expired_leases(session, settings, now, summary)
    _lost_messages(session, settings, now, summary, after, page, count_messages)
    _unsettled_waits(session, summary)
    _preemptions(session, settings, now, summary)
    _lost_exports(session, settings, now, summary)
    return summary


def _lost_exports(session: Session, settings: Settings, now: datetime, summary: ReconcileSummary) -> None:
    from service.models import ExportRequest
    from service.queries import exports as eq

    first_wait = RESEND_LEASES * settings.lease_seconds
    pending = session.execute(
        select(ExportRequest, Job.queue).join(Job, Job.id == ExportRequest.job_id)
        .where(ExportRequest.state.in_(eq.PENDING))
        .order_by(ExportRequest.sent_at).limit(LOST_MESSAGE_PAGE)
        .with_for_update(skip_locked=True, of=ExportRequest)).all()
    for row, queue in pending:
        name = f"{row.job_id}/{row.which}/{row.format}"
        if row.state == eq.RUNNING:
            if row.lease_expires_at is not None and _aware(row.lease_expires_at) >= now:
                continue  # its worker is making it
            if row.attempts >= settings.max_attempts:
                row.state, row.lease_expires_at, row.finished_at = eq.FAILED, None, now
                row.reason = (f"its worker stopped renewing its lease {row.attempts} times (killed, out of host "
                              f"memory, or its machine gone?); gave up after TTM_MAX_ATTEMPTS="
                              f"{settings.max_attempts}; last: {row.worker}")
                summary.exports_failed.append(name)
                continue
            row.state, row.worker, row.lease_expires_at = eq.REQUESTED, None, None
        elif _aware(row.sent_at) + timedelta(seconds=min(first_wait * 2 ** min(row.sends - 1, 16),
                                                         MAX_RESEND_INTERVAL_S)) > now:
            continue  # its message may still wait in the queue: its worker may be busy with a job
        row.sends, row.sent_at = row.sends + 1, now
        summary.exports_resent.append(name)
        summary.exports_to_send.append((row.job_id, row.which, row.format, queue))
    session.flush()


def _unsettled_waits(session: Session, summary: ReconcileSummary) -> None:
    """`states.transition` settles a teacher's waiting students when it ends; this catches any it could not."""
    from sqlalchemy.orm import aliased

    teacher = aliased(Job)
    ended = session.scalars(select(teacher).join(Job, Job.waits_for == teacher.id)
                            .where(Job.state == WAITING, teacher.state.in_(FINAL_STATES)).distinct()).all()
    for job in ended:
        released = settle_waiting(session, job, job.state, job.reason)
        summary.to_send.extend(released)
        summary.released.extend(job_id for job_id, _ in released)


def _preemptions(session: Session, settings: Settings, now: datetime, summary: ReconcileSummary) -> None:
    from service.scheduling import preemption_victim

    if not settings.preemption:
        return
    for queue in sorted(queue_depths(session)):
        found = preemption_victim(session, queue, settings, now)
        if found is None:
            continue
        victim, waiting = found
        marked = session.execute(
            update(Job).where(Job.id == victim, Job.state == RUNNING, Job.preempted_by.is_(None))
            .values(preempted_by=waiting), execution_options={"synchronize_session": False})
        if marked.rowcount != 1:  # type: ignore[attr-defined]  # ended meanwhile, or another reconciler was first
            continue
        session.add(JobEvent(job_id=victim, at=now, kind="log", reason=(
            f"preempted: high job {waiting} waits for a worker of queue {queue}; this job stops at its next epoch "
            f"boundary (within {settings.preempt_grace_seconds:g} s) and resumes later from its checkpoint")))
        summary.preempted.append(victim)
    session.flush()


def _expired_leases(session: Session, settings: Settings, now: datetime, summary: ReconcileSummary) -> None:
    stale = session.scalars(
        select(Job).where(Job.state.in_((RUNNING, CANCELLING)),
                          or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))
        .order_by(Job.id).with_for_update(skip_locked=True)
    ).all()
    for job in stale:
        lost = f"worker {job.worker} stopped renewing its lease"
        try:
            if job.state == CANCELLING:
                transition(session, job, CANCELLED, f"cancelled on request ({lost})")
                summary.cancelled.append(job.id)
            elif job.attempts >= settings.max_attempts:
                transition(session, job, FAILED,
                           f"lease expired {job.attempts} times (worker lost: killed, out of host memory, or its "
                           f"machine gone?); gave up after TTM_MAX_ATTEMPTS={settings.max_attempts}; last: {lost}")
                summary.failed.append(job.id)
            else:
                transition(session, job, QUEUED, f"{lost}; re-queued to resume from its last epoch checkpoint "
                                                 f"(attempt {job.attempts} of {settings.max_attempts} used)")
                summary.requeued.append(job.id)
                summary.to_send.append((job.id, job.queue))
        except IllegalTransition:  # another reconciler, or the job's worker, got there first
            continue
        job.lease_expires_at = None
    session.flush()


def _lost_messages(session: Session, settings: Settings, now: datetime, summary: ReconcileSummary,
                   after: str | None, page: int,
                   count_messages: Callable[[list[str]], dict[str, int] | None] | None) -> None:
    first_wait = timedelta(seconds=RESEND_LEASES * settings.lease_seconds)
    query = select(Job.id, Job.queue, Job.created_at).where(Job.state == QUEUED, Job.created_at < now - first_wait)
    if count_messages is not None:
        # A queue whose broker holds at least as many messages as it has queued jobs has lost none that matter
        # now: a long queue waiting for GPUs is not re-sent, message by message, every few minutes. (Messages of
        # cancelled jobs can hide a lost one until the workers have drained them; then the counts tell.)
        depths = queue_depths(session)
        waiting = count_messages(sorted(depths)) if depths else {}
        if waiting is not None:
            exports = pending_exports(session)  # their messages wait in the same queues
            short = [q for q, depth in depths.items() if waiting.get(q, 0) < depth + exports.get(q, 0)]
            if not short:
                return
            query = query.where(Job.queue.in_(short))
    if after is not None:
        query = query.where(Job.id > after)
    queued = session.execute(query.order_by(Job.id).limit(page)).all()
    if len(queued) == page:
        summary.resume_after = queued[-1].id
    if not queued:
        return
    ids = [row.id for row in queued]
    # when each job was last sent (it became queued, or was re-sent), and how often it was re-sent
    last_queued = dict(session.execute(
        select(JobEvent.job_id, func.max(JobEvent.at))
        .where(JobEvent.job_id.in_(ids), JobEvent.kind == "state", JobEvent.state == QUEUED)
        .group_by(JobEvent.job_id)).all())
    resends = {row.job_id: (row.n, row.last) for row in session.execute(
        select(JobEvent.job_id, func.count().label("n"), func.max(JobEvent.at).label("last"))
        .where(JobEvent.job_id.in_(ids), JobEvent.kind == "log", JobEvent.reason.like(RESENT + "%"))
        .group_by(JobEvent.job_id))}
    for row in queued:
        count, last_resend = resends.get(row.id, (0, None))
        last_sent = max(t for t in (row.created_at, last_queued.get(row.id), last_resend) if t is not None)
        wait = min(first_wait.total_seconds() * 2 ** min(count, 16), MAX_RESEND_INTERVAL_S)
        if _aware(last_sent) + timedelta(seconds=wait) > now:
            continue
        session.add(JobEvent(job_id=row.id, at=now, kind="log",
                             reason=f"{RESENT} {row.queue}: still queued after {wait:.0f} s, its message may "
                                    f"have been lost"))
        summary.resent.append(row.id)
        summary.to_send.append((row.id, row.queue))
    session.flush()


def _aware(t: datetime) -> datetime:
    """Aggregates (max over a column) come back without the column type's processing: naive on SQLite."""

    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def reconcile_and_send(settings: Settings, enqueue: Callable[[str, str], None] | None = None,
                       after: str | None = None,
                       enqueue_export: Callable[[str, str, str, str], None] | None = None) -> ReconcileSummary:
    """One pass in its own transaction, then the messages (after the commit, so a worker sees the new state)."""
    from service.db import session_scope

    if enqueue_export is None:
        from service.broker import enqueue_export
    assert enqueue_export is not None  # given, or the broker's
    count_messages = None
    if enqueue is None:  # the broker of the settings: ask it what it holds, and send to it
        from service.broker import default_celery, waiting_messages
        from service.broker import enqueue_job as enqueue

        count_messages = partial(waiting_messages, default_celery())
    assert enqueue is not None  # given, or the broker's
    with session_scope(settings) as session:
        summary = reconcile_once(session, settings, after=after, count_messages=count_messages)
    for job_id, queue in summary.to_send:
        try:
            enqueue(job_id, queue)
        except Exception as err:  # the broker is away: the job stays queued and is re-sent on a later pass
            log.warning("job %s: could not send it to queue %s: %s", job_id, queue, err)
    for job_id, which, fmt, queue in summary.exports_to_send:
        try:
            enqueue_export(job_id, which, fmt, queue)
        except Exception as err:  # the same: a later pass re-sends it
            log.warning("job %s: could not send its %s export to queue %s: %s", job_id, fmt, queue, err)
    if summary:
        log.info("reconciled: requeued %s, failed %s, cancelled %s, re-sent %s, preempted %s, exports re-sent %s, "
                 "exports failed %s", summary.requeued or "-", summary.failed or "-", summary.cancelled or "-",
                 summary.resent or "-", summary.preempted or "-", summary.exports_resent or "-",
                 summary.exports_failed or "-")
    return summary


def default_interval(settings: Settings) -> float:
    """A third of a lease, between 0.5 s and 10 s: an expired lease is acted on well within one more lease."""
    return min(10.0, max(0.5, settings.lease_seconds / 3))


def reconcile_forever(settings: Settings, stop: threading.Event, interval: float | None = None,
                      enqueue: Callable[[str, str], None] | None = None) -> None:
    interval = interval or default_interval(settings)
    if settings.mlflow_uri:  # finished jobs to MLflow, in a thread of its own: a slow server never holds this loop
        from worker.tracking import export_forever

        threading.Thread(target=export_forever, args=(settings, stop, interval), name="mlflow-export",
                         daemon=True).start()
    after = None
    while not stop.is_set():
        try:
            after = reconcile_and_send(settings, enqueue, after).resume_after
        except Exception:  # the database is away, say: log it and try again on the next tick
            log.exception("reconcile pass failed")
        try:
            deliver_due(settings)
        except Exception:  # the same, for the webhook calls (each attempt's outcome is recorded as it ends)
            log.exception("webhook delivery pass failed")
        try:
            drive_all(settings, _sender(enqueue))
        except Exception:  # the same, for the sweeps (each is driven in transactions of its own)
            log.exception("sweep pass failed")
        stop.wait(interval)


def _sender(enqueue: Callable[[str, str], None] | None) -> Callable[[str, str], None]:
    """Send a job to its queue (the broker of the settings unless `enqueue` is given); a failure leaves it queued for
    a later pass to re-send."""
    if enqueue is None:
        from service.broker import enqueue_job as enqueue
    assert enqueue is not None

    def send(job_id: str, queue: str) -> None:
        try:
            enqueue(job_id, queue)
        except Exception as err:
            log.warning("job %s: could not send it to queue %s: %s", job_id, queue, err)

    return send


def start_reconciler_thread(settings: Settings, interval: float | None = None) -> tuple[threading.Thread,
                                                                                        threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=reconcile_forever, args=(settings, stop, interval), name="reconciler",
                              daemon=True)
    thread.start()
    return thread, stop
