"""The body of the `ttm.run_job` task: lease, run, record.

    lease    take a job row (worker/lease.py): the message wakes the worker, the lab's policy picks the job
             (service/scheduling.py); when there is none to run the task ends here, doing nothing
    run      resolve the spec, start the trainer child, and supervise it every POLL_S seconds: renew the lease,
             stop the child when the job turns `cancelling`, when the lease is lost, or when the worker shuts down
    record   map the child's end to the job's final state and reason; sweep metrics and checkpoints into the database

Everything here is safe to do twice: a second delivery finds the lease taken; a re-run job resumes from its run
directory's state.pt; metric and checkpoint rows are upserts.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from service.db import session_scope
from service.models import Job
from service.settings import Settings
from service.states import CANCELLED, CANCELLING, FAILED, QUEUED, SUCCEEDED, IllegalTransition, transition
from worker.lease import HELD_STATES, held_state, renew_lease, take_job
from worker.proc import child_environment, signal_name, stop_process_group
from worker.record import RunRecorder, backfill_metrics, heartbeat, sync_checkpoints
from worker.slots import held_slot_fds

log = logging.getLogger("ttm.worker")

POLL_S = 0.5  # how often the worker looks at its child and at the job row: a cancel is seen within this
STOP_GRACE_S = 3.0  # between SIGTERM and SIGKILL when stopping a child
LOG_TAIL_LINES = 5
PROJECT_ROOT = Path(__file__).resolve().parents[1]
REQUEUE = "requeue"  # not a state: the worker is shutting down and hands the job back
PREEMPT = "preempt"  # not a state: a high job took the worker; the job goes back to the queue, its attempt unspent


@dataclass
class Outcome:
    """How a run ended: a final state (or REQUEUE, or None when the lease was lost) and the reason."""

    state: str | None
    reason: str | None = None
    best_top1: float | None = None


def job_run_dir(settings: Settings, job_id: str) -> Path:
    """Where a job's checkpoints live; on the shared artifact store, so whichever worker re-runs it resumes."""
    return settings.artifact_dir / "jobs" / job_id


def execute_job(job_id: str, worker_name: str, settings: Settings, *, queues: str = "",
                should_stop: Callable[[], bool] = lambda: False,
                enqueue: Callable[[str, str], None] | None = None) -> str:
    """Lease, run, record; returns a word for the worker's log ("skipped", or the job's final state). `job_id` is
    the message's: the job run is the best of its queue (or that job itself, when it lost its worker).

    `should_stop` says the worker is shutting down (the job goes back to the queue, to resume elsewhere);
    `enqueue(job_id, queue)` sends it there.
    """
    message_job_id = job_id
    with session_scope(settings) as session:
        job = take_job(session, message_job_id, worker_name, settings)
        if job is None:
            log.info("message for %s: no job to run (none queued, or their owners at max-running)", message_job_id)
            return "skipped"
        job_id = job.id
        run_dir = job_run_dir(settings, job_id)
        session.execute(update(Job).where(Job.id == job_id).values(out_dir=str(run_dir)))
        spec_data, attempt, queue = job.spec, job.attempts, job.queue
        heartbeat(session, worker_name, queues or queue)
    log.info("job %s: leased (attempt %d); run directory %s", job_id, attempt, run_dir)

    try:
        proc = _start(job_id, spec_data, run_dir, settings, queue)
    except Exception as err:  # a spec that does not resolve, a missing artifact, a full disk
        from ttm.spec import SpecError
        from worker.resolve import ResolveError

        reason = str(err) if isinstance(err, (ResolveError, SpecError)) else f"could not start the trainer: {err}"
        return _record(job_id, worker_name, settings, run_dir, Outcome(FAILED, reason), queue, enqueue)

    try:
        outcome = _supervise(proc, job_id, worker_name, settings, run_dir, queues or queue, should_stop)
    except BaseException:  # the worker itself is going down (cold shutdown): take the child with it, hand the job back
        stop_process_group(proc, STOP_GRACE_S)
        try:
            _record(job_id, worker_name, settings, run_dir, Outcome(REQUEUE, _shutdown_reason(worker_name)), queue,
                    enqueue)
        except Exception as err:  # the reconciler will find the lease expired
            log.warning("job %s: could not hand the job back: %s", job_id, err)
        raise
    return _record(job_id, worker_name, settings, run_dir, outcome, queue, enqueue)


# ------------------------------------------------------------------------------------------------ run
def _start(job_id: str, spec_data: dict, run_dir: Path, settings: Settings, queue: str) -> subprocess.Popen:
    from worker.resolve import resolve_spec

    with session_scope(settings) as session:
        spec = resolve_spec(session, spec_data, settings)
        backfill_metrics(session, job_id, run_dir)  # a re-run job: epochs its last child wrote to file only
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = spec.model_dump(mode="json", exclude_none=True)
    resolved.pop("preset", None)  # applied already: the child runs exactly these fields
    resolved["resources"]["queue"] = queue  # where `auto` sent it: the child checks a gpu job has GPUs
    (run_dir / "spec.json").write_text(json.dumps(resolved, indent=2))
    nproc = spec.resources.gpus if spec.resources.gpus > 1 else 1
    for stale in run_dir.glob("outcome-*.json"):  # a previous attempt's
        stale.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "worker.child", job_id, str(run_dir), str(os.getpid()), str(nproc)]
    (run_dir / "tmp").mkdir(exist_ok=True)
    # no credentials in the child: it may run a teacher's code (TorchScript); the worker records what it writes
    env = child_environment(dict(os.environ), run_dir, PROJECT_ROOT)
    with open(run_dir / "child.log", "ab") as log_file:
        log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log_file.flush()
        # the slot's lock goes along: the slot stays taken while any process of this job lives
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=run_dir, pass_fds=held_slot_fds())
    log.info("job %s: trainer started (pid %d, %d process%s)", job_id, proc.pid, nproc, "es" if nproc > 1 else "")
    return proc


def _supervise(proc: subprocess.Popen, job_id: str, worker_name: str, settings: Settings, run_dir: Path,
               queues: str, should_stop: Callable[[], bool]) -> Outcome:
    renew_every = max(POLL_S, settings.lease_seconds / 3)
    next_renewal = time.monotonic() + renew_every
    recorder = RunRecorder(job_id, run_dir)
    preemption: _Preemption | None = None
    while True:
        try:
            code = proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            return _outcome_of_exit(code, run_dir)
        if should_stop():
            log.info("job %s: the worker is shutting down; stopping the trainer", job_id)
            stop_process_group(proc, STOP_GRACE_S)
            return Outcome(REQUEUE, _shutdown_reason(worker_name))
        try:
            with session_scope(settings) as session:
                if time.monotonic() >= next_renewal:
                    held = renew_lease(session, job_id, worker_name, settings.lease_seconds)
                    heartbeat(session, worker_name, queues)
                    next_renewal = time.monotonic() + renew_every
                else:
                    held = held_state(session, job_id, worker_name)
                if held is not None:
                    recorder.record_new(session)  # the epochs and checkpoints the child wrote since the last tick
        except SQLAlchemyError as err:  # the database is away: keep training, try again next tick
            recorder.undo()
            log.warning("job %s: could not reach the database: %s", job_id, err)
            continue
        if held is None:
            log.warning("job %s: lease lost (the reconciler gave the job to another worker); stopping", job_id)
            stop_process_group(proc, STOP_GRACE_S)
            return Outcome(None, "lease lost")
        if held.state == CANCELLING:
            log.info("job %s: cancel requested; stopping the trainer", job_id)
            stop_process_group(proc, STOP_GRACE_S)
            return Outcome(CANCELLED, "cancelled on request")
        if held.preempted_by is not None:
            if preemption is None:
                preemption = _Preemption(held.preempted_by, run_dir, settings.preempt_grace_seconds)
                log.info("job %s: preempted by %s; stopping at the next epoch boundary (within %g s)", job_id,
                         held.preempted_by, settings.preempt_grace_seconds)
            if preemption.due():
                stop_process_group(proc, STOP_GRACE_S)
                return Outcome(PREEMPT, preemption.reason())


class _Preemption:
    """A preemption under way: the job stops once the trainer has written its next epoch checkpoint (state.pt is
    replaced atomically after each epoch), or when the grace period is over, whichever comes first."""

    def __init__(self, by: str, run_dir: Path, grace_s: float):
        self.by, self.state_path = by, run_dir / "state.pt"
        self.deadline = time.monotonic() + grace_s
        self.seen = self._mark()

    def _mark(self) -> tuple[int, int] | None:
        try:
            st = self.state_path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def due(self) -> bool:
        return self._mark() != self.seen or time.monotonic() >= self.deadline

    def reason(self) -> str:
        return f"preempted by high job {self.by}; resumes from its last epoch checkpoint"


def _outcome_of_exit(code: int, run_dir: Path) -> Outcome:
    from worker.child import outcome_path

    outcomes = []
    for path in sorted(run_dir.glob("outcome-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        try:
            outcomes.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    failures = [o for o in outcomes if not o.get("ok")]
    if failures:
        return Outcome(FAILED, failures[0].get("reason") or "the trainer failed")
    main = outcomes[0] if outcomes and outcome_path(run_dir, 0).exists() else None
    if code == 0 and main is not None:
        return Outcome(SUCCEEDED, f"best test top-1 {main['best_top1']:.2f} at epoch {main['best_epoch']}",
                       best_top1=main["best_top1"])
    if code < 0:
        hint = " (the host may have run out of memory)" if -code == 9 else ""
        return Outcome(FAILED, f"the trainer was killed by {signal_name(-code)}{hint}")
    tail = log_tail(run_dir / "child.log", LOG_TAIL_LINES)
    return Outcome(FAILED, f"the trainer exited with code {code}" + (f": {tail}" if tail else ""))


def log_tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _shutdown_reason(worker_name: str) -> str:
    return f"worker {worker_name} shut down; the job resumes from its last epoch checkpoint"


# ------------------------------------------------------------------------------------------------ record
def _record(job_id: str, worker_name: str, settings: Settings, run_dir: Path, outcome: Outcome, queue: str,
            enqueue: Callable[[str, str], None] | None) -> str:
    """Write the run's end, if this worker still holds the lease; a state changed meanwhile by someone else (the API
    cancelling) is re-read and the end re-mapped, a few times at most."""
    if outcome.state is None:
        return "lost"
    released: list[tuple[str, str]] = []
    for _ in range(5):
        try:
            with session_scope(settings) as session:
                job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
                if job is None or job.worker != worker_name or job.state not in HELD_STATES:
                    log.warning("job %s: lease lost before the end could be recorded", job_id)
                    return "lost"
                if run_dir.exists():
                    backfill_metrics(session, job_id, run_dir)
                    best = sync_checkpoints(session, job_id, run_dir)
                    if best is not None:
                        job.best_top1 = best["top1"]
                final = _final_state(job.state, outcome.state)
                reason = outcome.reason
                if final == CANCELLED:  # the canceller's words ("cancelled by alice", "pruned by its sweep ...")
                    reason = job.reason if job.state == CANCELLING and job.reason else "cancelled on request"
                if final == QUEUED and outcome.state == PREEMPT:
                    job.attempts -= 1  # a preemption is not a failure: the attempt it cut short is not spent
                job.lease_expires_at = None
                released = transition(session, job, final, reason)  # students waiting for it, now queued
            break
        except IllegalTransition:
            continue
    else:
        log.error("job %s: could not record its end (%s) after 5 tries", job_id, outcome.state)
        return "error"
    log.info("job %s: %s%s", job_id, final, f" ({reason})" if reason else "")
    if final == QUEUED:
        _send(job_id, queue, enqueue)
    for student, student_queue in released:
        log.info("job %s: its student %s is queued", job_id, student)
        _send(student, student_queue, enqueue)
    return final


def _final_state(current: str, wanted: str) -> str:
    if wanted in (REQUEUE, PREEMPT):
        return CANCELLED if current == CANCELLING else QUEUED
    if current == CANCELLING and wanted == FAILED:
        return CANCELLED  # asked to stop, and stopped (the trainer's exit is the cancel's doing, or moot)
    return wanted


def _send(job_id: str, queue: str, enqueue: Callable[[str, str], None] | None) -> None:
    try:
        if enqueue is not None:
            enqueue(job_id, queue)
        else:
            from service.broker import enqueue_job

            enqueue_job(job_id, queue)
    except Exception as err:  # the reconciler re-sends queued jobs whose message did not make it
        log.warning("job %s: could not re-enqueue it (%s); the reconciler will", job_id, err)
