"""Exports made on request: a succeeded job's best student in a format its spec did not make, asked for by
downloading it (GET /v1/jobs/{id}/checkpoints/best?format=onnx). The API records the request (an export_requests
row) and sends it to a worker of the job's queue; that worker (worker/exports.py) makes and checks the export as
the end of a job does and records its checkpoint row, which every later download gets at once."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.models import ExportRequest, Job, utcnow
from service.queries.checkpoints import get_checkpoint
from service.states import SUCCEEDED
from ttm.registry import EXPORT_FORMATS

REQUESTED, RUNNING, MADE, FAILED = "requested", "running", "made", "failed"
PENDING = (REQUESTED, RUNNING)
RETRY_AFTER_S = 2  # what a 202 asks the caller to wait before asking again: a small student exports in seconds


def makeable(session: Session, job: Job, which: str, fmt: str) -> bool:
    """A download of `fmt` may make the export: an export format, of the best student of a succeeded job."""
    return (fmt in EXPORT_FORMATS and which == "best" and job.state == SUCCEEDED
            and get_checkpoint(session, job.id, "best", "pt") is not None)


def get_request(session: Session, job_id: str, which: str, fmt: str) -> ExportRequest | None:
    return session.get(ExportRequest, (job_id, which, fmt), populate_existing=True)


def request_export(session: Session, job: Job, which: str, fmt: str) -> tuple[ExportRequest, bool]:
    """The request for this export, inserted (and committed) when there is none; True when this call inserted it,
    and so sends its message. Of two requests at once one inserts; the other reads that row: one export is made."""
    row = get_request(session, job.id, which, fmt)
    if row is not None and row.state != MADE:
        return row, False
    now = utcnow()
    if row is not None:  # recorded as made, yet its checkpoint row is gone (the caller found none): make it again
        row.state, row.reason, row.worker, row.finished_at = REQUESTED, None, None, None
        row.sends, row.sent_at, row.requested_at = row.sends + 1, now, now
    else:
        row = ExportRequest(job_id=job.id, which=which, format=fmt, state=REQUESTED, attempts=0, sends=1,
                            sent_at=now, requested_at=now)
        session.add(row)
    try:
        session.commit()
    except IntegrityError:  # another request inserted it first: answer with that one
        session.rollback()
        found = get_request(session, job.id, which, fmt)
        if found is None:
            raise
        return found, False
    return row, True


def pending_body(row: ExportRequest, queue: str) -> dict[str, Any]:
    """The 202's body: what is being made, how far it is, and where to ask again."""
    poll = f"/v1/jobs/{row.job_id}/checkpoints/{row.which}?format={row.format}"
    doing = (f"waits for a worker of queue {queue}" if row.state == REQUESTED else
             f"is being made and checked by {row.worker}")
    return {"export": {"job_id": row.job_id, "which": row.which, "format": row.format, "state": row.state,
                       "attempts": row.attempts, "requested_at": _iso(row.requested_at)},
            "poll": poll, "retry_after": RETRY_AFTER_S,
            "message": f"job {row.job_id}'s {row.which} {row.format} export {doing}: ask again in {RETRY_AFTER_S} s "
                       f"at {poll}; it is offered once its check against PyTorch has passed"}


def _iso(t: datetime) -> str:
    return t.isoformat()


def pending_by_queue(session: Session) -> dict[str, int]:
    """Export requests not yet made, per queue of their jobs: messages a queue's broker may hold besides its jobs'."""
    return {queue: int(n) for queue, n in session.execute(
        select(Job.queue, func.count()).join(ExportRequest, ExportRequest.job_id == Job.id)
        .where(ExportRequest.state.in_(PENDING)).group_by(Job.queue))}
