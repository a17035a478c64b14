"""Queries on webhook deliveries. A row is claimed for one attempt by a conditional UPDATE on its attempt count, so
two reconcilers never send the same attempt; the claim commits before the request goes out, so no transaction waits
on the network and a sender that dies mid-attempt leaves the row due again later (at least once, never lost)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.ids import new_delivery_id
from service.models import Job, Sweep, User, WebhookDelivery


def add_delivery(session: Session, job: Job, url: str, event: str, now: datetime) -> None:
    """A delivery due now; written in the caller's transaction (the one recording the job's final state)."""
    session.add(WebhookDelivery(id=new_delivery_id(), job_id=job.id, event=event, url=url, attempts=0,
                                next_attempt_at=now, created_at=now))


def add_sweep_delivery(session: Session, sweep: Sweep, url: str, event: str, now: datetime) -> None:
    """A sweep's call, due now; in the caller's transaction (the one recording the sweep's end)."""
    session.add(WebhookDelivery(id=new_delivery_id(), sweep_id=sweep.id, event=event, url=url, attempts=0,
                                next_attempt_at=now, created_at=now))


def list_deliveries(session: Session, job_id: str | None = None, sweep_id: str | None = None
                    ) -> list[WebhookDelivery]:
    """A job's calls, or a sweep's, oldest first."""
    which = WebhookDelivery.job_id == job_id if job_id is not None else WebhookDelivery.sweep_id == sweep_id
    return list(session.scalars(select(WebhookDelivery).where(which)
                                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)))


def due(session: Session, now: datetime, limit: int) -> list[tuple[str, int]]:
    """(id, attempts) of deliveries due by `now`, oldest due first."""
    rows = session.execute(select(WebhookDelivery.id, WebhookDelivery.attempts)
                           .where(WebhookDelivery.next_attempt_at <= now)
                           .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)).all()
    return [(row.id, row.attempts) for row in rows]


def claim(session: Session, delivery_id: str, attempts_seen: int, now: datetime, retry_at: datetime) -> bool:
    """Take attempt `attempts_seen + 1` of a due delivery; `retry_at` is when it is due again should this attempt
    never report. False: another sender took it, or it is no longer due."""
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == attempts_seen,
               WebhookDelivery.next_attempt_at <= now)
        .values(attempts=attempts_seen + 1, next_attempt_at=retry_at),
        execution_options={"synchronize_session": False})
    return result.rowcount == 1  # type: ignore[attr-defined]  # an UPDATE's Result is a CursorResult


def record_attempt(session: Session, delivery_id: str, attempt: int, *, status: int | None, error: str | None,
                   delivered_at: datetime | None, next_attempt_at: datetime | None) -> None:
    """What attempt `attempt` got; ignored if a later attempt has been claimed since."""
    session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == attempt)
        .values(last_status=status, last_error=error, delivered_at=delivered_at, next_attempt_at=next_attempt_at),
        execution_options={"synchronize_session": False})


def give_up(session: Session, delivery_id: str, attempts_seen: int, why: str, now: datetime) -> bool:
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == attempts_seen,
               WebhookDelivery.next_attempt_at <= now)
        .values(next_attempt_at=None, last_error=why), execution_options={"synchronize_session": False})
    return result.rowcount == 1  # type: ignore[attr-defined]


def delivery_with_subject(session: Session, delivery_id: str
                          ) -> tuple[WebhookDelivery, Job | Sweep, User] | None:
    """The delivery, the job or sweep it is about, and their owner."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        return None
    subject = (session.get(Job, delivery.job_id) if delivery.job_id is not None else
               session.get(Sweep, delivery.sweep_id) if delivery.sweep_id is not None else None)
    owner = session.get(User, subject.owner_id) if subject is not None else None
    return (delivery, subject, owner) if subject is not None and owner is not None else None
