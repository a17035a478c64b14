"""A job's history: state events and metric rows, each read in sequence order after a cursor."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import JobEvent, Metric


def events_after(session: Session, job_id: str, after: int = 0, limit: int = 500) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                                .order_by(JobEvent.id).limit(limit)))


def all_metrics(session: Session, job_id: str) -> list[Metric]:
    """Every metric row of a job (epochs × names: thousands at most), in sequence order."""
    return list(session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.id)))


def metrics_after(session: Session, job_id: str, after: int = 0, limit: int = 1000) -> list[Metric]:
    return list(session.scalars(select(Metric).where(Metric.job_id == job_id, Metric.id > after)
                                .order_by(Metric.id).limit(limit)))
