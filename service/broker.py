"""The Celery side of the server: the message only says "run job <id>"; the database owns the job's state."""
from __future__ import annotations

import logging
import threading

from celery import Celery

from service.settings import Settings, get_settings

log = logging.getLogger("ttm.service")
RUN_JOB_TASK = "ttm.run_job"
MAKE_EXPORT_TASK = "ttm.make_export"


def make_celery(settings: Settings) -> Celery:
    """A Celery app for hours-long tasks: late acks (a worker that dies mid-job gets its message redelivered),
    one message prefetched per process, and no result backend (results go to the database)."""
    transport_options: dict[str, object] = {"visibility_timeout": settings.broker_visibility_timeout}
    broker = settings.broker_url
    if broker is None:
        queue_dir = settings.broker_dir / "queue"
        processed_dir = settings.broker_dir / "processed"
        control_dir = settings.broker_dir / "control"  # kombu's default is ./control, under the current directory
        for folder in (queue_dir, processed_dir, control_dir):
            folder.mkdir(parents=True, exist_ok=True)
        broker = "filesystem://localhost//"  # a host for kombu to name (it warns without one); files only
        transport_options.update(data_folder_in=str(queue_dir), data_folder_out=str(queue_dir),
                                 processed_folder=str(processed_dir), control_folder=str(control_dir),
                                 store_processed=False)
    app = Celery("ttm", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="cpu",
        worker_hijack_root_logger=False,
    )
    return app


_default_app: Celery | None = None
_default_lock = threading.Lock()


def default_celery() -> Celery:
    global _default_app
    with _default_lock:
        if _default_app is None:
            _default_app = make_celery(get_settings())
        return _default_app


def enqueue_job(job_id: str, queue: str, app: Celery | None = None) -> None:
    """Send "run job <id>" to `queue`. The reconciler re-sends for queued jobs whose message was lost."""
    (app or default_celery()).send_task(RUN_JOB_TASK, args=[job_id], queue=queue)


def enqueue_export(job_id: str, which: str, fmt: str, queue: str, app: Celery | None = None) -> None:
    """Send "make export <job> <which> <format>" to `queue` (the job's). The reconciler re-sends for export requests
    that no worker has taken."""
    (app or default_celery()).send_task(MAKE_EXPORT_TASK, args=[job_id, which, fmt], queue=queue)


def waiting_messages(app: Celery, queues: list[str]) -> dict[str, int] | None:
    """How many messages wait in each queue of the broker (not counting those a worker holds), or None when the
    broker cannot say (the reconciler then assumes nothing)."""
    from kombu.exceptions import ChannelError

    counts: dict[str, int] = {}
    try:
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            for queue in queues:
                try:
                    counts[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except ChannelError:  # no such queue yet: nothing was ever sent to it, or all was taken
                    counts[queue] = 0
    except Exception:  # noqa: BLE001 - kombu raises transport-specific errors
        log.warning("could not count the broker's messages", exc_info=True)
        return None
    return counts


def broker_reachable(app: Celery, timeout: float = 2.0) -> str | None:
    """None when the broker answers, else why not (for /readyz)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return None
    except Exception as err:  # kombu raises transport-specific errors
        return f"{type(err).__name__}: {err}"
