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
from worker.lease import HELD_STATES, Held, held_state, renew_lease, take_companions, take_job
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


@dataclass
class _Member:
    """A job this worker runs: alone, or as a member of a student group (the first one leads)."""

    job_id: str
    run_dir: Path
    spec: dict
    recorder: RunRecorder
    leaving: Outcome | None = None  # asked to leave its group (cancelled, lease lost): its end once it has left
    gpus: int = 1  # resources.gpus of its resolved spec (set by _prepare)


def execute_job(job_id: str, worker_name: str, settings: Settings, *, queues: str = "",
                should_stop: Callable[[], bool] = lambda: False,
                enqueue: Callable[[str, str], None] | None = None) -> str:
    """Lease, run, record; returns a word for the worker's log ("skipped", or the job's final state). `job_id` is
    the message's: the job run is the best of its queue (or that job itself, when it lost its worker), with the
    other trials of its sweep that train with it as one student group, if any (worker/lease.py take_companions).

    `should_stop` says the worker is shutting down (the job goes back to the queue, to resume elsewhere);
    `enqueue(job_id, queue)` sends it there.
    """
    message_job_id = job_id
    with session_scope(settings) as session:
        job = take_job(session, message_job_id, worker_name, settings)
        if job is None:
            log.info("message for %s: no job to run (none queued, or their owners at max-running)", message_job_id)
            return "skipped"
        leased = [job, *take_companions(session, job, worker_name, settings)]
        members = []
        for one in leased:
            run_dir = job_run_dir(settings, one.id)
            session.execute(update(Job).where(Job.id == one.id).values(out_dir=str(run_dir)))
            members.append(_Member(one.id, run_dir, one.spec, RunRecorder(one.id, run_dir)))
            log.info("job %s: leased (attempt %d); run directory %s", one.id, one.attempts, run_dir)
        job_id, queue = job.id, job.queue
        heartbeat(session, worker_name, queues or queue)
    if len(members) > 1:
        log.info("job %s leads a student group of %d: %s", job_id, len(members),
                 ", ".join(m.job_id for m in members[1:]))

    def record(member: _Member, outcome: Outcome) -> str:
        return _record(member.job_id, worker_name, settings, member.run_dir, outcome, queue, enqueue)

    started: list[_Member] = []
    for member in members:
        try:
            _prepare(member, settings, queue)
            started.append(member)
        except Exception as err:  # a spec that does not resolve, a missing artifact, a full disk
            from ttm.spec import SpecError
            from worker.resolve import ResolveError

            reason = str(err) if isinstance(err, (ResolveError, SpecError)) else f"could not start the trainer: {err}"
            record(member, Outcome(FAILED, reason))
    if not started:
        return FAILED
    try:
        proc = _start(started)
    except Exception as err:
        for member in started:
            record(member, Outcome(FAILED, f"could not start the trainer: {err}"))
        return FAILED

    ended: dict[str, str] = {}
    try:
        outcomes = _supervise(proc, started, worker_name, settings, queues or queue, should_stop,
                              on_left=lambda m, outcome: ended.setdefault(m.job_id, record(m, outcome)))
    except BaseException:  # the worker itself is going down (cold shutdown): take the child with it, hand jobs back
        stop_process_group(proc, STOP_GRACE_S)
        for member in started:
            if member.job_id in ended:
                continue
            try:
                record(member, Outcome(REQUEUE, _shutdown_reason(worker_name)))
            except Exception as err:  # the reconciler will find the lease expired
                log.warning("job %s: could not hand the job back: %s", member.job_id, err)
        raise
    for member in started:
        if member.job_id in outcomes:
            ended[member.job_id] = record(member, outcomes[member.job_id])
    return ended.get(job_id, next(iter(ended.values()), FAILED))


# ------------------------------------------------------------------------------------------------ run
def _prepare(member: _Member, settings: Settings, queue: str) -> None:
    """Resolve the member's spec into its run directory's spec.json; clear what an earlier attempt left."""
    from worker.child import LEAVE_FILE
    from worker.resolve import resolve_spec

    run_dir = member.run_dir
    with session_scope(settings) as session:
        spec = resolve_spec(session, member.spec, settings)
        backfill_metrics(session, member.job_id, run_dir)  # a re-run job: epochs its last child wrote to file only
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = spec.model_dump(mode="json", exclude_none=True)
    resolved.pop("preset", None)  # applied already: the child runs exactly these fields
    resolved["resources"]["queue"] = queue  # where `auto` sent it: the child checks a gpu job has GPUs
    (run_dir / "spec.json").write_text(json.dumps(resolved, indent=2))
    member.gpus = spec.resources.gpus
    for stale in [*run_dir.glob("outcome-*.json"), run_dir / LEAVE_FILE]:  # a previous attempt's
        stale.unlink(missing_ok=True)
    (run_dir / "tmp").mkdir(exist_ok=True)


def _start(members: list[_Member]) -> subprocess.Popen:
    """The trainer child of one job, or of a student group (led by the first member, in its run directory)."""
    lead = members[0]
    run_dir = lead.run_dir
    nproc = lead.gpus if lead.gpus > 1 and len(members) == 1 else 1
    cmd = [sys.executable, "-m", "worker.child", lead.job_id, str(run_dir), str(os.getpid()), str(nproc)]
    for member in members[1:]:
        cmd += ["--member", member.job_id, str(member.run_dir)]
    # no credentials in the child: it may run a teacher's code (TorchScript); the worker records what it writes
    env = child_environment(dict(os.environ), run_dir, PROJECT_ROOT)
    with open(run_dir / "child.log", "ab") as log_file:
        log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log_file.flush()
        # the slot's lock goes along: the slot stays taken while any process of this job lives
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=run_dir, pass_fds=held_slot_fds())
    log.info("job %s: trainer started (pid %d, %d process%s%s)", lead.job_id, proc.pid, nproc,
             "es" if nproc > 1 else "", f", a student group of {len(members)}" if len(members) > 1 else "")
    return proc


def _supervise(proc: subprocess.Popen, members: list[_Member], worker_name: str, settings: Settings, queues: str,
               should_stop: Callable[[], bool], on_left: Callable[[_Member, Outcome], object]) -> dict[str, Outcome]:
    """Watch the child until it ends, every POLL_S: renew each member's lease, record what it wrote, and act on
    the job rows. Returns the end of each member still in the child when it ended (or was stopped). In a group, a
    member that ends on its own (fails alone) or is asked to leave (cancelled, its lease lost: a LEAVE_FILE in its
    run directory) is handed to `on_left` once its outcome file says it has left, while the rest train on."""
    from worker.child import LEAVE_FILE, outcome_path

    renew_every = max(POLL_S, settings.lease_seconds / 3)
    next_renewal = time.monotonic()  # at once: preparing the members' run directories took part of the lease
    live = list(members)
    preemption: _Preemption | None = None

    def stopped(outcome: Outcome) -> dict[str, Outcome]:
        stop_process_group(proc, STOP_GRACE_S)
        return {m.job_id: m.leaving or outcome for m in live}

    while True:
        try:
            code = proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            return {m.job_id: m.leaving or _outcome_of_exit(code, m.run_dir) for m in live}
        if len(members) > 1:  # members that left the group while it trains on
            for m in [m for m in live if outcome_path(m.run_dir, 0).exists()]:
                live.remove(m)
                on_left(m, m.leaving or _outcome_of_exit(0, m.run_dir))
            if not live:
                return stopped(Outcome(FAILED, "the student group ended without its members"))
        if should_stop():
            log.info("job %s: the worker is shutting down; stopping the trainer", members[0].job_id)
            return stopped(Outcome(REQUEUE, _shutdown_reason(worker_name)))
        try:
            with session_scope(settings) as session:
                renew = time.monotonic() >= next_renewal
                held: dict[str, Held | None] = {}
                for m in live:
                    if renew:
                        held[m.job_id] = renew_lease(session, m.job_id, worker_name, settings.lease_seconds)
                    else:
                        held[m.job_id] = held_state(session, m.job_id, worker_name)
                    if held[m.job_id] is not None:
                        m.recorder.record_new(session)  # the epochs and checkpoints the child wrote since the last tick
                if renew:
                    heartbeat(session, worker_name, queues)
                    next_renewal = time.monotonic() + renew_every
        except SQLAlchemyError as err:  # the database is away: keep training, try again next tick
            for m in live:
                m.recorder.undo()
            log.warning("job %s: could not reach the database: %s", members[0].job_id, err)
            continue
        for m in live:
            state = held[m.job_id]
            if m.leaving is not None:
                continue
            if state is None:
                log.warning("job %s: lease lost (the reconciler gave the job to another worker); stopping", m.job_id)
                m.leaving = Outcome(None, "lease lost")
            elif state.state == CANCELLING:
                log.info("job %s: cancel requested; stopping its training", m.job_id)
                m.leaving = Outcome(CANCELLED, "cancelled on request")
            else:
                continue
            if len(live) > 1:
                (m.run_dir / LEAVE_FILE).touch()
        if all(m.leaving is not None for m in live):
            return stopped(Outcome(FAILED, "stopped"))  # (each has its own end)
        wanted = next((h.preempted_by for h in held.values() if h is not None and h.preempted_by), None)
        if wanted is not None:
            if preemption is None:
                preemption = _Preemption(wanted, [m.run_dir for m in live], settings.preempt_grace_seconds)
                log.info("job %s: preempted by %s; stopping at the next epoch boundary (within %g s)",
                         members[0].job_id, wanted, settings.preempt_grace_seconds)
            if preemption.due():
                return stopped(Outcome(PREEMPT, preemption.reason()))


class _Preemption:
    """A preemption under way: the job stops once the trainer has written its next epoch checkpoint (state.pt is
    replaced atomically after each epoch), or when the grace period is over, whichever comes first."""

    def __init__(self, by: str, run_dirs: list[Path], grace_s: float):
        self.by, self.state_paths = by, [run_dir / "state.pt" for run_dir in run_dirs]
        self.deadline = time.monotonic() + grace_s
        self.seen = self._mark()

    def _mark(self) -> list[tuple[int, int] | None]:
        marks: list[tuple[int, int] | None] = []
        for path in self.state_paths:  # a group's members end their epochs together: any one will do
            try:
                st = path.stat()
            except OSError:
                marks.append(None)
                continue
            marks.append((st.st_ino, st.st_mtime_ns))
        return marks

    def due(self) -> bool:
        now = self._mark()
        return any(a != b for a, b in zip(now, self.seen)) or time.monotonic() >= self.deadline

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
