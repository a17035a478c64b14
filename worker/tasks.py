"""The tasks: `ttm.run_job(job_id)`, whose body is lease, run, record (worker/runner.py), and
`ttm.make_export(job_id, which, format)`, an export asked for after its job (worker/exports.py). They pass ids only.
A run_job message wakes a worker of its queue; which queued job it runs is the lab's policy's
(service/scheduling.py)."""
from __future__ import annotations

import logging
import os
import threading

from celery import signals
from celery.exceptions import Reject

from service.broker import MAKE_EXPORT_TASK, RUN_JOB_TASK, enqueue_job
from service.settings import get_settings
from worker.app import celery_app

log = logging.getLogger("ttm.worker")
HEARTBEAT_S = 10.0


def worker_identity(nodename: str | None) -> str:
    """The name a worker leases jobs under: Celery's node name plus the pid, unique even if two workers on one host
    were started with the same --name."""
    return f"{nodename or 'worker'}:{os.getpid()}"


def shutting_down() -> bool:
    from celery.worker import state

    # Celery's flags hold an exit code once set, and EX_OK is 0: compare by identity, as celery.worker.state does
    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


def consumed_queues() -> str:
    return ",".join(sorted(celery_app.amqp.queues.consume_from or celery_app.amqp.queues))


@celery_app.task(name=RUN_JOB_TASK, bind=True, ignore_result=True)
def run_job(self, job_id: str) -> str:
    """Lease the job, train it in a child process, record its end. A job that is not ours to run is a no-op."""
    from worker.runner import execute_job

    if shutting_down():  # a worker on its way out takes no new job: the message goes back to its queue
        raise Reject("worker shutting down", requeue=True)
    settings = get_settings()
    outcome = execute_job(job_id, worker_identity(self.request.hostname), settings, queues=consumed_queues(),
                          should_stop=shutting_down, enqueue=lambda jid, queue: enqueue_job(jid, queue, celery_app))
    if outcome != "skipped":
        wake_queue(settings, job_id)
    return outcome


@celery_app.task(name=MAKE_EXPORT_TASK, bind=True, ignore_result=True)
def make_export(self, job_id: str, which: str, fmt: str) -> str:
    """Make the export of a succeeded job's student that its owner asked for; a request that is not ours to make
    (made, failed, taken by another worker) is a no-op."""
    from worker.exports import execute_export

    if shutting_down():
        raise Reject("worker shutting down", requeue=True)
    return execute_export(job_id, which, fmt, worker_identity(self.request.hostname), get_settings(),
                          should_stop=shutting_down)


def wake_queue(settings, job_id: str) -> None:  # noqa: ANN001
    """After a job ends: if the queue of `job_id` holds fewer messages than queued jobs (a message was spent while
    every owner with queued jobs was at their max_running), send one, so that a worker looks again now."""
    from service.broker import waiting_messages
    from service.db import session_scope
    from service.models import Job
    from service.queries.jobs import queue_depths
    from service.scheduling import pick_next

    try:
        with session_scope(settings) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise LookupError(f"job {job_id} is not in the database")
            queue = job.queue
            depth = queue_depths(session).get(queue, 0)
            next_id = pick_next(session, queue, settings) if depth else None
        if next_id is None:
            return
        waiting = waiting_messages(celery_app, [queue])
        if waiting is not None and waiting.get(queue, 0) < depth:
            enqueue_job(next_id, queue, celery_app)
    except Exception as err:  # the reconciler re-sends what is missing, a little later
        log.warning("could not wake queue after job %s: %s", job_id, err)


# ------------------------------------------------------------------------------------------ heartbeat
_stop_heartbeat = threading.Event()


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_kwargs) -> None:
    """An idle worker still says it is alive (the `workers` table, /metrics); a busy one also does so per renewal."""
    name = worker_identity(getattr(sender, "hostname", None))

    def beat() -> None:
        from service.db import session_scope
        from worker.record import heartbeat

        while not _stop_heartbeat.is_set():
            try:
                with session_scope(get_settings()) as session:
                    heartbeat(session, name, consumed_queues())
            except Exception as err:  # the database is away: try again later
                log.warning("heartbeat failed: %s", err)
            _stop_heartbeat.wait(HEARTBEAT_S)

    threading.Thread(target=beat, name="worker-heartbeat", daemon=True).start()
    log.info("worker %s ready, consuming %s", name, consumed_queues())


@signals.worker_shutdown.connect
def _stop_heartbeat_thread(**_kwargs) -> None:
    _stop_heartbeat.set()
