"""GET /v1/jobs/{id}/events: one Server-Sent Events stream of a job's state changes and metric rows.

State events and metrics live in two tables with their own sequences, so an event id is both cursors:
"<last job_events id>-<last metrics id>" sent so far. Resuming with Last-Event-ID reads each table after its own
cursor: nothing is skipped and nothing is sent twice. The stream ends after a final state, once every metric row
written before it has been sent.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from service.deps import CurrentUser, ReadSessionDep, SettingsDep
from service.errors import ApiError
from service.models import Job, JobEvent, Metric
from service.queries import history as hq
from service.routes.jobs import visible_job
from service.schemas import error_responses
from service.states import FINAL_STATES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
POLL_SECONDS = 0.3
EVENT_BATCH, METRIC_BATCH = 500, 1000


def parse_event_id(value: str | None) -> tuple[int, int]:
    if not value:
        return 0, 0
    try:
        ev, m = value.split("-")
        cursors = int(ev), int(m)
    except ValueError:
        raise ApiError(400, f"bad Last-Event-ID {value!r}: expected <event seq>-<metric seq>, as sent in the "
                            "stream", field="Last-Event-ID") from None
    if min(cursors) < 0:
        raise ApiError(400, f"bad Last-Event-ID {value!r}", field="Last-Event-ID")
    return cursors


def _poll(make_session: sessionmaker[Session], job_id: str, ev: int, m: int
          ) -> tuple[list[JobEvent | Metric], bool]:
    """The next rows to send, in time order, and whether the stream ends after them."""
    with make_session() as session:
        # the state first: if it is final here, the rows read next include everything written before it
        state = session.scalar(select(Job.state).where(Job.id == job_id))
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
        return rows, True
    return rows, not rows and (state is None or state in FINAL_STATES)


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


async def _stream(make_session: sessionmaker[Session], job_id: str, ev: int, m: int) -> AsyncIterator[Any]:
    while True:
        rows, done = await run_in_threadpool(_poll, make_session, job_id, ev, m)
        for row in rows:
            if isinstance(row, Metric):
                m = row.id
            else:
                ev = row.id
            yield _encode(row, f"{ev}-{m}")
        if done:
            return
        if not rows:
            await anyio.sleep(POLL_SECONDS)


@router.get("/{job_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {"example": (
                'id: 3-0\nevent: state\ndata: {"state":"running","reason":null,"at":"2025-11-26T09:00:00+00:00",'
                '"seq":3}\n\nid: 3-7\nevent: metric\ndata: {"epoch":1,"name":"test_top1","value":71.2,"seq":7,'
                '"at":"2025-11-26T09:01:00+00:00"}\n\n')}},
                "description": "events `state` and `metric`; the id resumes the stream (Last-Event-ID)"},
                       **error_responses(400, 401, 404)})
async def job_events(job_id: str, request: Request, who: CurrentUser, session: ReadSessionDep, settings: SettingsDep,
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                     after: Annotated[str | None, Query(description="same as Last-Event-ID")] = None
                     ) -> EventSourceResponse:
    """Server-Sent Events: state changes and metric rows as they are written, keep-alive pings, and the end of
    the stream after a final state."""
    ev, m = parse_event_id(last_event_id or after)
    await run_in_threadpool(visible_job, session, who, job_id)
    await run_in_threadpool(session.close)  # the stream polls with short sessions of its own
    return EventSourceResponse(_stream(request.app.state.read_sessionmaker, job_id, ev, m),
                               ping=settings.sse_ping_seconds)
