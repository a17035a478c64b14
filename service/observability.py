"""Prometheus: a request latency histogram by route template, and job gauges computed at scrape time."""
from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.models import Worker, utcnow
from service.queries.jobs import counts_by_state, queue_depths
from service.scheduling import WORKER_SEEN_S
from service.states import ALL_STATES

disable_created_metrics()  # no *_created samples: they double the scrape for nothing a dashboard uses


class LatencyMiddleware:
    """Time to the response's first byte, labelled by the route template (`/v1/jobs/{job_id}`), so the label set
    stays small and an SSE stream counts its setup, not its hours."""

    def __init__(self, app: ASGIApp, histogram: Histogram):
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                template = getattr(route, "path", None) or "<unmatched>"
                self.histogram.labels(scope["method"], template, str(message["status"])).observe(
                    time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, timed_send)


class JobCollector(Collector):
    def __init__(self, make_session: sessionmaker[Session]):
        self.make_session = make_session

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.make_session() as session:
            states = counts_by_state(session)
            depths = queue_depths(session)
            since = utcnow() - timedelta(seconds=WORKER_SEEN_S)
            workers = dict(session.execute(select(Worker.queue, func.count()).where(Worker.last_seen >= since)
                                           .group_by(Worker.queue)).all())
        jobs = GaugeMetricFamily("ttm_jobs", "jobs by state", labels=["state"])
        for state in ALL_STATES:
            jobs.add_metric([state], states.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily("ttm_queue_depth", "queued jobs per queue", labels=["queue"])
        for queue in sorted({"gpu", "cpu", *depths}):
            depth.add_metric([queue], depths.get(queue, 0))
        yield depth
        seen = GaugeMetricFamily("ttm_workers_seen", f"workers with a heartbeat in the last "
                                                     f"{WORKER_SEEN_S} s", labels=["queue"])
        for queue, n in sorted(workers.items()):
            seen.add_metric([queue], n)
        yield seen
        total = GaugeMetricFamily("ttm_workers_seen_total", "all workers with a recent heartbeat")
        total.add_metric([], sum(workers.values()))
        yield total


def make_registry(make_session: sessionmaker[Session]) -> tuple[CollectorRegistry, Histogram]:
    """A registry per app (tests build many apps in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    histogram = Histogram("ttm_http_request_duration_seconds", "request latency to the first response byte",
                          ["method", "route", "status"], registry=registry,
                          buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    registry.register(JobCollector(make_session))
    return registry, histogram
