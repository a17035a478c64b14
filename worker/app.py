"""The Celery app of the workers: `celery -A worker.app worker` (which `ttm worker` runs for you).

The broker, the queues and the settings for hours-long tasks (late acks, prefetch 1, reject on worker lost, a long
visibility timeout, no result backend) come from `service.broker.make_celery`, the one place the API shares with
the workers; here are only what a consuming worker needs on top.
"""
from __future__ import annotations

from service.broker import make_celery
from service.settings import get_settings

settings = get_settings()
celery_app = make_celery(settings)
celery_app.conf.update(
    include=["worker.tasks"],
    worker_concurrency=1,  # one job at a time per worker process (one worker per GPU)
    worker_pool="solo",  # the task runs in the worker process: kill -9 of the worker takes the task host with it
    worker_send_task_events=False,
    task_track_started=False,
    # a broker that goes away mid-job must not cancel the job: the database, not the message, owns its state
    worker_cancel_long_running_tasks_on_connection_loss=False,
)
if settings.broker_url is None:
    # kombu's filesystem transport is polled; the default second would be most of the "submit → running" budget
    celery_app.conf.broker_transport_options = {**celery_app.conf.broker_transport_options, "polling_interval": 0.1}
app = celery_app  # `celery -A worker.app` finds either name
