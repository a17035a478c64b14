"""The body of the `ttm.make_export` task: take, make, record — an export of a succeeded job's best student that
its owner asked for after the job (service/queries/exports.py records the request).

    take     one conditional UPDATE of the export_requests row (requested, or running with an expired lease) to
             running under this worker's lease: of two deliveries, or two workers, one makes the export
    make     the export child (worker/export_child.py), without credentials, under the same limits as the trainer
             child; the lease is renewed while it runs, and it is stopped after TTM_EXPORT_TIMEOUT_SECONDS
    record   the checkpoint rows from best.json, as the end of a job records them (worker/record.py
             sync_checkpoints), and the request made, or failed with the reason (a refusal's is the check's own)
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import and_, or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.db import session_scope
from service.models import ExportRequest, Job, utcnow
from service.queries.exports import FAILED, MADE, REQUESTED, RUNNING
from service.settings import Settings
from service.states import SUCCEEDED
from worker.proc import child_environment, signal_name, stop_process_group
from worker.record import sync_checkpoints
from worker.runner import LOG_TAIL_LINES, POLL_S, PROJECT_ROOT, STOP_GRACE_S, job_run_dir, log_tail

log = logging.getLogger("ttm.worker")
MAX_REASON = 2000
REQUEUE, LOST = "requeue", "lost"  # not failures: the worker is shutting down; the lease went to another worker


def execute_export(job_id: str, which: str, fmt: str, worker_name: str, settings: Settings, *,
                   should_stop: Callable[[], bool] = lambda: False) -> str:
    """Take, make, record; returns a word for the worker's log: "skipped" (not ours to make), "made", "failed",
    "requeue" (the worker is shutting down: the request waits for another) or "lost" (the lease went elsewhere)."""
    key = (job_id, which, fmt)
    with session_scope(settings) as session:
        if not take_export(session, key, worker_name, settings.lease_seconds):
            log.info("export %s %s of %s: nothing to make (made, failed, or being made elsewhere)", which, fmt,
                     job_id)
            return "skipped"
        job = session.get(Job, job_id)
        run_dir = Path(job.out_dir) if job is not None and job.out_dir else job_run_dir(settings, job_id)
        state = job.state if job is not None else None
    if state != SUCCEEDED or not (run_dir / "best.pt").is_file():
        return _record(key, worker_name, settings, run_dir,
                       f"job {job_id} has no best student to export (state: {state})")
    log.info("job %s: making its %s %s export (requested after the job)", job_id, which, fmt)
    outcome = _make(key, worker_name, settings, run_dir, should_stop)
    if outcome in (REQUEUE, LOST):
        return outcome
    return _record(key, worker_name, settings, run_dir, outcome)


def take_export(session: Session, key: tuple[str, str, str], worker_name: str, lease_seconds: float) -> bool:
    """Lease the request (requested, or running under a lease that expired) with one conditional UPDATE: of two
    deliveries of its message, or two workers, exactly one gets True."""
    now = utcnow()
    job_id, which, fmt = key
    taken = session.execute(
        update(ExportRequest)
        .where(ExportRequest.job_id == job_id, ExportRequest.which == which, ExportRequest.format == fmt,
               or_(ExportRequest.state == REQUESTED,
                   and_(ExportRequest.state == RUNNING,
                        or_(ExportRequest.lease_expires_at.is_(None), ExportRequest.lease_expires_at < now))))
        .values(state=RUNNING, worker=worker_name, lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=ExportRequest.attempts + 1)
        .execution_options(synchronize_session=False))
    return taken.rowcount == 1  # type: ignore[attr-defined]  # an UPDATE's result has one


def _renew(key: tuple[str, str, str], worker_name: str, settings: Settings) -> bool:
    job_id, which, fmt = key
    with session_scope(settings) as session:
        renewed = session.execute(
            update(ExportRequest)
            .where(ExportRequest.job_id == job_id, ExportRequest.which == which, ExportRequest.format == fmt,
                   ExportRequest.worker == worker_name, ExportRequest.state == RUNNING)
            .values(lease_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds))
            .execution_options(synchronize_session=False))
        return renewed.rowcount == 1  # type: ignore[attr-defined]


def _make(key: tuple[str, str, str], worker_name: str, settings: Settings, run_dir: Path,
          should_stop: Callable[[], bool]) -> str | None:
    """Run the export child to its end; None when it ended well (best.json says whether the export was offered),
    else why it failed, or REQUEUE / LOST."""
    from worker.export_child import outcome_path

    fmt = key[2]
    outcome_path(run_dir, fmt).unlink(missing_ok=True)
    (run_dir / "tmp").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "worker.export_child", str(run_dir), str(os.getpid()), fmt]
    # no credentials in the child, as for the trainer: the worker records what it writes
    env = child_environment(dict(os.environ), run_dir, PROJECT_ROOT)
    log_path = run_dir / f"export-{fmt}.log"
    with open(log_path, "ab") as log_file:
        log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=run_dir)
    renew_every = max(POLL_S, settings.lease_seconds / 3)
    next_renewal = time.monotonic() + renew_every
    deadline = time.monotonic() + settings.export_timeout_seconds
    try:
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if should_stop():
                stop_process_group(proc, STOP_GRACE_S)
                _hand_back(key, worker_name, settings)
                return REQUEUE
            if time.monotonic() >= deadline:
                stop_process_group(proc, STOP_GRACE_S)
                return (f"the export took longer than TTM_EXPORT_TIMEOUT_SECONDS="
                        f"{settings.export_timeout_seconds:g} and was stopped")
            if time.monotonic() >= next_renewal:
                try:
                    held = _renew(key, worker_name, settings)
                except SQLAlchemyError as err:  # the database is away: keep going, try again next tick
                    log.warning("export %s: could not renew its lease: %s", key, err)
                    continue
                if not held:
                    stop_process_group(proc, STOP_GRACE_S)
                    return LOST
                next_renewal = time.monotonic() + renew_every
    except BaseException:  # the worker itself is going down: take the child with it
        stop_process_group(proc, STOP_GRACE_S)
        raise
    try:
        outcome = json.loads(outcome_path(run_dir, fmt).read_text())
    except (OSError, ValueError):
        outcome = None
    if code == 0 and isinstance(outcome, dict) and outcome.get("ok"):
        return None
    if isinstance(outcome, dict) and not outcome.get("ok") and outcome.get("reason"):
        return str(outcome["reason"])
    if code < 0:
        return f"the export process was killed by {signal_name(-code)}"
    tail = log_tail(log_path, LOG_TAIL_LINES)
    return f"the export process exited with code {code}" + (f": {tail}" if tail else "")


def _hand_back(key: tuple[str, str, str], worker_name: str, settings: Settings) -> None:
    """The worker is shutting down: the request is requested again, for the reconciler to re-send."""
    job_id, which, fmt = key
    try:
        with session_scope(settings) as session:
            session.execute(
                update(ExportRequest)
                .where(ExportRequest.job_id == job_id, ExportRequest.which == which, ExportRequest.format == fmt,
                       ExportRequest.worker == worker_name, ExportRequest.state == RUNNING)
                .values(state=REQUESTED, worker=None, lease_expires_at=None, attempts=ExportRequest.attempts - 1,
                        sent_at=utcnow() - timedelta(days=1))  # due for a re-send at the reconciler's next pass
                .execution_options(synchronize_session=False))
    except SQLAlchemyError as err:  # its lease expires; the reconciler hands it on then
        log.warning("export %s: could not hand it back: %s", key, err)


def _record(key: tuple[str, str, str], worker_name: str, settings: Settings, run_dir: Path,
            failure: str | None) -> str:
    """The export's end, if this worker still holds the request: the checkpoint rows from best.json (the new file
    among them when it was offered, and the manifest's "exports" either way), and the request made or failed."""
    job_id, which, fmt = key
    with session_scope(settings) as session:
        row = session.get(ExportRequest, key, with_for_update=True, populate_existing=True)
        if row is None or row.worker != worker_name or row.state != RUNNING:
            log.warning("export %s %s of %s: lease lost before its end could be recorded", which, fmt, job_id)
            return LOST
        if failure is None:
            best = sync_checkpoints(session, job_id, run_dir)
            made = ((best or {}).get("exports") or {}).get(fmt) or {}
            if not made.get("offered"):
                failure = f"refused: {made.get('reason') or 'best.json does not record the export'}"
        state = FAILED if failure else MADE
        row.state, row.reason = state, failure[:MAX_REASON] if failure else None
        row.lease_expires_at, row.finished_at = None, utcnow()
    log.info("job %s: its %s %s export %s%s", job_id, which, fmt, state, f" ({failure})" if failure else "")
    return state
