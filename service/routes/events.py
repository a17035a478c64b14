"""GET /v1/jobs/{id}/events: one Server-Sent Events stream of a job's state changes and metric rows.

State events and metrics live in two tables with their own sequences, so an event id is both cursors:
"<last job_events id>-<last metrics id>" sent so far. Resuming with Last-Event-ID reads each table after its own
cursor: nothing is skipped and nothing is sent twice. The stream ends after a final state, once every metric row
written before it has been sent.

An open stream holds no database connection while it waits. One change feed per process (`ChangeFeed`) asks the
database every POLL_SECONDS which jobs have rows newer than it has seen (one indexed query for all streams) and
wakes only those jobs' streams; a woken stream reads its rows with a short session of its own, in a thread, and
returns the connection at once. Polls run under their own small limiter, so any number of streams take at most
POLL_THREADS connections and threads, and leave the rest to other requests. A stream also reads again every
FALLBACK_SECONDS whatever the feed says (a row committed after one with a higher id, a job deleted).
"""
from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.deps import CurrentUser, SettingsDep
from service.errors import ApiError
from service.models import Job, JobEvent, Metric
from service.principal import Principal
from service.queries import history as hq
from service.routes.jobs import visible_job
from service.schemas import error_responses
from service.states import FINAL_STATES, HELD_STATES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422))  # on every route
POLL_SECONDS = 0.3
FALLBACK_SECONDS = 5.0
POLL_THREADS = 6  # at most this many stream reads at once: threads and pooled connections
EVENT_BATCH, METRIC_BATCH = 500, 1000
EVENT_ID_PATTERN = r"^[0-9]{1,19}-[0-9]{1,19}$"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_SEQ_MAX = 2**63 - 1  # a BIGINT: a larger cursor is no id the database has, and its driver refuses to bind it
T = TypeVar("T")


def parse_event_id(value: str | None) -> tuple[int, int]:
    if not value:
        return 0, 0
    cursors = tuple(int(part) for part in value.split("-")) if _EVENT_ID.fullmatch(value) else ()
    if len(cursors) != 2 or max(cursors) > _SEQ_MAX:
        shown = value if len(value) <= 60 else value[:60] + "..."
        raise ApiError(400, f"bad Last-Event-ID {shown!r}: expected <event seq>-<metric seq> (decimal, each below "
                            "2^63), as sent in the stream", field="Last-Event-ID")
    return cursors[0], cursors[1]


class ChangeFeed:
    """Wakes the streams of the jobs that have new rows: one query per POLL_SECONDS for all of them, run only
    while some stream is open."""

    def __init__(self, make_session: sessionmaker[Session]):
        self.make_session = make_session
        self.limiter = anyio.CapacityLimiter(POLL_THREADS)
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._cursors: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def subscribe(self, job_id: str) -> asyncio.Event:
        flag = asyncio.Event()
        self._waiting.setdefault(job_id, set()).add(flag)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="ttm-sse-feed")
        return flag

    def unsubscribe(self, job_id: str, flag: asyncio.Event) -> None:
        flags = self._waiting.get(job_id)
        if flags is not None:
            flags.discard(flag)
            if not flags:
                del self._waiting[job_id]

    async def _watch(self) -> None:
        while self._waiting:
            try:
                self._cursors, changed = await self.run_sync(self._changes, self._cursors)
            except Exception:  # noqa: BLE001 - the database is away for a moment: streams fall back to their own reads
                changed = set()
            for job_id in changed:
                for flag in self._waiting.get(job_id, ()):
                    flag.set()
            await anyio.sleep(POLL_SECONDS)
        self._cursors = None  # the next stream starts from the then newest rows

    def _changes(self, cursors: tuple[int, int] | None) -> tuple[tuple[int, int], set[str]]:
        """The newest ids and the jobs with rows past the given ones (none the first time: streams read once)."""
        with self.make_session() as session:
            if cursors is None:
                ev = session.scalar(select(func.max(JobEvent.id))) or 0
                m = session.scalar(select(func.max(Metric.id))) or 0
                return (ev, m), set()
            ev, m = cursors
            events = session.execute(select(JobEvent.id, JobEvent.job_id).where(JobEvent.id > ev)).all()
            metrics = session.execute(select(Metric.id, Metric.job_id).where(Metric.id > m)).all()
        changed = {row.job_id for row in events} | {row.job_id for row in metrics}
        return (max((r.id for r in events), default=ev), max((r.id for r in metrics), default=m)), changed


def change_feed(request: Request) -> ChangeFeed:
    state = request.app.state
    feed = getattr(state, "sse_feed", None)
    if feed is None:
        feed = state.sse_feed = ChangeFeed(state.read_sessionmaker)
    return feed


def _check_visible(make_session: sessionmaker[Session], who: Principal, job_id: str) -> None:
    with make_session() as session:
        visible_job(session, who, job_id)


def _poll(make_session: sessionmaker[Session], job_id: str, ev: int, m: int
          ) -> tuple[list[JobEvent | Metric], bool, dict[str, int] | None]:
    """The next rows to send, in time order, whether the stream ends after them, and a running job's progress."""
    with make_session() as session:
        # the state first: if it is final here, the rows read next include everything written before it
        state, progress = session.execute(select(Job.state, Job.progress).where(Job.id == job_id)).first() or (
            None, None)
        progress = progress if state in HELD_STATES else None
        events = hq.events_after(session, job_id, ev, EVENT_BATCH)
        metrics = hq.metrics_after(session, job_id, m, METRIC_BATCH)
    final = next((e for e in events if e.kind == "state" and e.state in FINAL_STATES), None)
    if final is not None:
        events = [e for e in events if e.id < final.id]
        if len(metrics) == METRIC_BATCH:  # more metrics than one batch precede the end: send them first
            final = None
    rows: list[JobEvent | Metric] = sorted([*events, *metrics], key=lambda r: (r.at, isinstance(r, Metric), r.id))
    if final is not None:
        rows.append(final)
        return rows, True, None
    return rows, not rows and (state is None or state in FINAL_STATES), progress


def _encode(row: JobEvent | Metric, event_id: str) -> ServerSentEvent:
    data: dict[str, Any]
    if isinstance(row, Metric):
        kind = "metric"
        data = {"epoch": row.epoch, "name": row.name, "value": row.value, "seq": row.id, "at": row.at.isoformat()}
    elif row.kind == "state":
        kind = "state"
        data = {"state": row.state, "reason": row.reason, "at": row.at.isoformat(), "seq": row.id}
    else:
        kind = row.kind
        data = {"message": row.reason, "at": row.at.isoformat(), "seq": row.id}
    return ServerSentEvent(json.dumps(data, separators=(",", ":")), event=kind, id=event_id)


async def _stream(feed: ChangeFeed, job_id: str, ev: int, m: int) -> AsyncIterator[Any]:
    woken = feed.subscribe(job_id)
    sent_progress = None
    try:
        while True:
            woken.clear()  # set again by any change seen from here on: none falls between the read and the wait
            rows, done, progress = await feed.run_sync(_poll, feed.make_session, job_id, ev, m)
            for row in rows:
                if isinstance(row, Metric):
                    m = row.id
                else:
                    ev = row.id
                yield _encode(row, f"{ev}-{m}")
            if done:
                return
            if progress is not None and progress != sent_progress:  # not a stored row: the id stays where it was
                sent_progress = progress
                yield ServerSentEvent(json.dumps(progress, separators=(",", ":")), event="progress", id=f"{ev}-{m}")
            if not rows:
                with anyio.move_on_after(FALLBACK_SECONDS):
                    await woken.wait()
    finally:
        feed.unsubscribe(job_id, woken)


# One event of the stream, as OpenAPI 3.1 describes an event stream (the schema of each event).
EVENT_SCHEMA = {"type": "object", "required": ["id", "event", "data"], "properties": {
    "id": {"type": "string", "pattern": EVENT_ID_PATTERN, "description": "<event seq>-<metric seq>: resume after it"},
    "event": {"type": "string", "enum": ["state", "metric", "log", "progress"]},
    "data": {"type": "string", "contentMediaType": "application/json",
             "description": "state: {state, reason, at, seq}; metric: {epoch, name, value, seq, at}; "
                            "log: {message, at, seq}; progress: {epoch, step, steps} (a running job's place in "
                            "its epoch; not stored, so not replayed)"}}}


@router.get("/{job_id}/events", response_class=Response,  # (its own content below; errors are JSON)
            responses={200: {"content": {"text/event-stream": {"schema": EVENT_SCHEMA, "example": (
                'id: 3-0\nevent: state\ndata: {"state":"running","reason":null,"at":"2025-11-26T09:00:00+00:00",'
                '"seq":3}\n\nid: 3-7\nevent: metric\ndata: {"epoch":1,"name":"test_top1","value":71.2,"seq":7,'
                '"at":"2025-11-26T09:01:00+00:00"}\n\n')}},
                "description": "events `state` and `metric`; the id resumes the stream (Last-Event-ID)"},
                       **error_responses(400, 401, 404)})
async def job_events(job_id: str, request: Request, who: CurrentUser, settings: SettingsDep,
                     last_event_id: Annotated[str | None, Header(
                         alias="Last-Event-ID", description="the id of the last event received: resume after it",
                         json_schema_extra={"pattern": EVENT_ID_PATTERN})] = None,
                     after: Annotated[str | None, Query(description="same as Last-Event-ID",
                                                        json_schema_extra={"pattern": EVENT_ID_PATTERN})] = None
                     ) -> EventSourceResponse:
    """Server-Sent Events: state changes and metric rows as they are written, keep-alive pings, and the end of
    the stream after a final state."""
    # No session dependency: FastAPI keeps a generator dependency open until the response ends, here the stream's
    # whole life. The caller (CurrentUser) and the job are checked with short sessions, closed before streaming.
    ev, m = parse_event_id(last_event_id or after)
    if "\x00" in job_id:  # no job id has one, and PostgreSQL refuses the string
        raise ApiError(404, f"no job {job_id!r}", code="not_found")
    feed = change_feed(request)
    await feed.run_sync(_check_visible, feed.make_session, who, job_id)
    return EventSourceResponse(_stream(feed, job_id, ev, m), ping=settings.sse_ping_seconds)
