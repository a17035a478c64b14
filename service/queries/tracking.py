"""Queries on tracking exports (one row per job that ended after running). As with webhook deliveries, an attempt is
claimed by a conditional UPDATE on its attempt count and committed before the tracking server is called: two
reconcilers never export the same attempt, no transaction waits on the network, and an exporter that dies
mid-attempt leaves the row due again later."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.models import Artifact, Job, Metric, TrackingExport, User


def add_export(session: Session, job: Job, now: datetime) -> None:
    """An export due now; written in the caller's transaction (the one recording the job's final state)."""
    session.add(TrackingExport(job_id=job.id, attempts=0, next_attempt_at=now, created_at=now))


def get_export(session: Session, job_id: str) -> TrackingExport | None:
    return session.get(TrackingExport, job_id)


def due(session: Session, now: datetime, limit: int) -> list[tuple[str, int]]:
    """(job id, attempts) of exports due by `now`, oldest due first."""
    rows = session.execute(select(TrackingExport.job_id, TrackingExport.attempts)
                           .where(TrackingExport.next_attempt_at <= now)
                           .order_by(TrackingExport.next_attempt_at, TrackingExport.job_id).limit(limit)).all()
    return [(row.job_id, row.attempts) for row in rows]


def _where_attempt(job_id: str, attempt: int):  # noqa: ANN202 - a SQL condition
    return (TrackingExport.job_id == job_id) & (TrackingExport.attempts == attempt)


def claim(session: Session, job_id: str, attempts_seen: int, now: datetime, retry_at: datetime) -> bool:
    """Take attempt `attempts_seen + 1` of a due export; `retry_at` is when it is due again should this attempt
    never report. False: another exporter took it, or it is no longer due."""
    result = session.execute(
        update(TrackingExport)
        .where(_where_attempt(job_id, attempts_seen), TrackingExport.next_attempt_at <= now)
        .values(attempts=attempts_seen + 1, next_attempt_at=retry_at),
        execution_options={"synchronize_session": False})
    return result.rowcount == 1  # type: ignore[attr-defined]  # an UPDATE's Result is a CursorResult


def record_run(session: Session, job_id: str, attempt: int, run_id: str, experiment_id: str) -> None:
    """The MLflow run attempt `attempt` created (the next attempt deletes it, should this one not finish)."""
    session.execute(update(TrackingExport).where(_where_attempt(job_id, attempt))
                    .values(run_id=run_id, experiment_id=experiment_id),
                    execution_options={"synchronize_session": False})


def record_attempt(session: Session, job_id: str, attempt: int, *, error: str | None,
                   exported_at: datetime | None, next_attempt_at: datetime | None) -> None:
    """What attempt `attempt` got; ignored if a later attempt has been claimed since."""
    session.execute(update(TrackingExport).where(_where_attempt(job_id, attempt))
                    .values(last_error=error, exported_at=exported_at, next_attempt_at=next_attempt_at),
                    execution_options={"synchronize_session": False})


def job_for_export(session: Session, job_id: str) -> tuple[Job, User, TrackingExport] | None:
    row = session.execute(select(Job, User, TrackingExport).join(User, User.id == Job.owner_id)
                          .join(TrackingExport, TrackingExport.job_id == Job.id).where(Job.id == job_id)).first()
    return (row[0], row[1], row[2]) if row else None


def metric_history(session: Session, job_id: str) -> list[tuple[str, int, float, datetime]]:
    """(name, epoch, value, at) of every metric row of the job, by name then epoch."""
    rows = session.execute(select(Metric.name, Metric.epoch, Metric.value, Metric.at).where(Metric.job_id == job_id)
                           .order_by(Metric.name, Metric.epoch)).all()
    return [(row.name, row.epoch, row.value, row.at) for row in rows]


def artifact_sha256(session: Session, artifact_id: str) -> str | None:
    return session.scalar(select(Artifact.sha256).where(Artifact.id == artifact_id))
