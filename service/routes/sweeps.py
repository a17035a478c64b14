"""/v1/sweeps: a search over a job spec's fields as one request (service/sweeps.py runs it with Optuna).

The result reads the trials from Optuna's study and their jobs from ours: each trial's parameters, state (complete,
pruned, failed, running) and selected validation metric; the chosen trial's test accuracy, and only its.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.deps import CurrentUser, ReadSessionDep, SessionDep, SettingsDep
from service.errors import ApiError, not_found
from service.models import Sweep, User
from service.principal import Principal
from service.queries import webhooks as wq
from service.routes.jobs import IdempotencyKey, request_hash, send_queued
from service.routes.webhooks import DeliveryList, delivery_out
from service.schemas import error_responses
from service.settings import Settings
from service.sweeps import SWEEP_RUNNING, cancel_sweep, create_sweep, drive, read_trials, trial_jobs

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=error_responses(401, 422))
EVENTS_POLL_S = 1.0


class TrialOut(BaseModel):
    number: int
    state: str = Field(description="running (its job queued or running, or waiting for room in the queue) | complete |"
                                   " pruned | failed")
    params: dict[str, Any]
    value: float | None = Field(description="the sweep's metric: the best epoch's (complete), or the last reported")
    epochs: dict[int, float] = Field(description="the metric at each epoch, as reported to the pruner")
    job_id: str | None
    job_state: str | None
    reason: str | None = Field(None, description="why a trial failed or was pruned")


class BestTrialOut(BaseModel):
    number: int
    job_id: str | None
    params: dict[str, Any]
    value: float = Field(description="its validation metric, on which it was chosen")
    test_top1: float | None = Field(description="its best checkpoint's test top-1: the one test figure a sweep shows")


class SweepOut(BaseModel):
    id: str = Field(examples=["swp_01jfz8q2x4m7c9v3b5n8k2r6tw"])
    name: str
    state: str = Field(description="running | succeeded | failed | cancelled")
    reason: str | None
    owner: str
    created_at: Any
    finished_at: Any
    metric: str
    budget: int
    spec: dict[str, Any]
    best: BestTrialOut | None
    trials: list[TrialOut]


class SweepList(BaseModel):
    items: list[SweepOut]


SWEEP_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["job", "space"]},
    "examples": {"wttm-gamma-beta": {"summary": "γ and β of a WTTM student, 8 trials of TPE, 2 at once", "value": {
        "name": "wttm-digits", "strategy": "tpe", "trials": 8, "max_running": 2, "metric": "val/top1",
        "pruning": {"kind": "median"},
        "space": {"loss.gamma": {"uniform": [0.1, 0.8]}, "loss.beta": {"log_uniform": [0.5, 100]}},
        "job": {"teacher": {"zoo": "digits/resnet20"}, "student": {"arch": "resnet8"},
                "dataset": {"name": "digits", "validation": {"fraction": 0.1}},
                "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}, "train": {"epochs": 3}}}}}}}}}


def visible_sweep(session: Session, who: Principal, sweep_id: str) -> tuple[Sweep, str]:
    query = select(Sweep, User.name).join(User, User.id == Sweep.owner_id).where(Sweep.id == sweep_id)
    if not who.is_admin:
        query = query.where(Sweep.owner_id == who.id)
    row = session.execute(query).first()
    if row is None:
        raise not_found("sweep", sweep_id)
    return row[0], row[1]


def sweep_out(session: Session, sweep: Sweep, owner: str, settings: Settings) -> SweepOut:
    spec = sweep.spec
    jobs = {job.trial: job for job in trial_jobs(session, sweep.id)}
    trials, best = [], None
    for t in read_trials(sweep, settings):
        if t.state.name == "WAITING":  # a grid point not asked for yet
            continue
        job = jobs.get(t.number)
        epochs = {int(k): float(v) for k, v in t.intermediate_values.items()}
        value = t.value if t.value is not None else (epochs[max(epochs)] if epochs else None)
        reason = (t.user_attrs.get("refused") or (t.user_attrs.get("waits") if job is None else None)
                  or (job.reason if job is not None and t.state.name in ("PRUNED", "FAIL") else None))
        trials.append(TrialOut(number=t.number, state=t.state.name.lower().replace("fail", "failed"),
                               params=t.params, value=value, epochs=epochs, job_id=job.id if job else None,
                               job_state=job.state if job else None, reason=reason))
        if sweep.best_job_id is not None and job is not None and job.id == sweep.best_job_id:
            best = BestTrialOut(number=t.number, job_id=job.id, params=t.params, value=float(t.value or 0.0),
                                test_top1=job.best_top1)
    return SweepOut(id=sweep.id, name=sweep.name, state=sweep.state, reason=sweep.reason, owner=owner,
                    created_at=sweep.created_at, finished_at=sweep.finished_at, metric=spec["metric"],
                    budget=_budget(spec), spec=spec, best=best, trials=trials)


def _budget(spec: dict[str, Any]) -> int:
    from ttm.sweeps import SweepSpec

    return SweepSpec.model_validate(spec).budget


@router.post("", status_code=201, response_model=SweepOut, openapi_extra=SWEEP_BODY,
             responses={200: {"model": SweepOut, "description": "replay of an earlier request with this key"},
                        **error_responses(400, 401, 403, 409, 413, 422, 429, 503)})
def submit_sweep(body: Annotated[dict[str, Any], Body()], who: CurrentUser, session: SessionDep,
                 settings: SettingsDep, request: Request, response: Response,
                 idempotency_key: IdempotencyKey = None) -> SweepOut:
    """Start a sweep: its job is checked as a job would be, every value of its space against the job spec; its first
    trials are queued by the time this answers."""
    body_hash = request_hash(body)
    if idempotency_key is not None:
        prior = session.scalar(select(Sweep).where(Sweep.owner_id == who.id, Sweep.idempotency_key == idempotency_key))
        if prior is not None:
            return _replay(session, prior, who, body_hash, settings, response)
    sweep = create_sweep(session, who, body, settings, idempotency_key, body_hash if idempotency_key else None)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key committed first
        session.rollback()
        prior = session.scalar(select(Sweep).where(Sweep.owner_id == who.id,
                                                   Sweep.idempotency_key == idempotency_key))
        if prior is None:
            raise
        return _replay(session, prior, who, body_hash, settings, response)
    for job_id, queue in drive(session, sweep.id, settings, leased=True):
        send_queued(request, job_id, queue)  # (trials the pass queued)
    session.refresh(sweep)
    return sweep_out(session, sweep, who.name, settings)


def _replay(session: Session, prior: Sweep, who: Principal, body_hash: str, settings: Settings,
            response: Response) -> SweepOut:
    if prior.request_hash != body_hash:
        raise ApiError(409, f"Idempotency-Key {prior.idempotency_key!r} was used for another sweep ({prior.id}); use "
                            "a new key for a new sweep", code="idempotency_conflict")
    response.status_code = 200
    return sweep_out(session, prior, who.name, settings)


@router.get("", response_model=SweepList)
def list_sweeps(who: CurrentUser, session: ReadSessionDep, settings: SettingsDep,
                limit: Annotated[int, Query(ge=1, le=100)] = 20) -> SweepList:
    """Your sweeps, newest first."""
    rows = session.execute(select(Sweep, User.name).join(User, User.id == Sweep.owner_id)
                           .where(Sweep.owner_id == who.id).order_by(Sweep.id.desc()).limit(limit)).all()
    return SweepList(items=[sweep_out(session, sweep, owner, settings) for sweep, owner in rows])


@router.get("/{sweep_id}", response_model=SweepOut, responses=error_responses(401, 404))
def get_sweep(sweep_id: str, who: CurrentUser, session: ReadSessionDep, settings: SettingsDep) -> SweepOut:
    """The sweep's state, its best trial once it has ended, and a table of its trials."""
    sweep, owner = visible_sweep(session, who, sweep_id)
    return sweep_out(session, sweep, owner, settings)


@router.post("/{sweep_id}/cancel", response_model=SweepOut, responses=error_responses(401, 404, 409, 503))
def cancel(sweep_id: str, who: CurrentUser, session: SessionDep, settings: SettingsDep) -> SweepOut:
    """Cancel the sweep and every trial that has not ended; a finished sweep is a 409."""
    sweep, owner = visible_sweep(session, who, sweep_id)
    cancel_sweep(session, sweep, who.name, settings)
    return sweep_out(session, sweep, owner, settings)


@router.get("/{sweep_id}/checkpoints/{which}", status_code=307, response_class=RedirectResponse,
            responses={307: {"description": "to the chosen trial's checkpoint (GET /v1/jobs/{id}/checkpoints/...)"},
                       **error_responses(401, 404, 409)})
def sweep_checkpoint(sweep_id: str, which: Literal["best", "last"], who: CurrentUser, session: ReadSessionDep,
                     request: Request) -> RedirectResponse:
    """The sweep's output: its chosen trial's student (any `format` a job offers)."""
    sweep, _ = visible_sweep(session, who, sweep_id)
    if sweep.best_job_id is None:
        raise ApiError(409, f"sweep {sweep.id} is {sweep.state}" + (
            ": its student is chosen when it ends" if sweep.state == SWEEP_RUNNING else
            f" without a chosen trial ({sweep.reason})"), code="no_student")
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/v1/jobs/{sweep.best_job_id}/checkpoints/{which}{query}", status_code=307)


@router.get("/{sweep_id}/deliveries", response_model=DeliveryList, responses=error_responses(401, 404))
def sweep_deliveries(sweep_id: str, who: CurrentUser, session: ReadSessionDep) -> DeliveryList:
    """The calls of the sweep's `notify.url` (event sweep.finished, one when it ends), oldest first."""
    visible_sweep(session, who, sweep_id)
    return DeliveryList(items=[delivery_out(d) for d in wq.list_deliveries(session, sweep_id=sweep_id)])


@router.get("/{sweep_id}/events", response_class=EventSourceResponse, responses=error_responses(401, 404))
async def sweep_events(sweep_id: str, who: CurrentUser, request: Request, settings: SettingsDep) -> Any:
    """Server-Sent Events: `trial` each time a trial changes (its state, its metric), then `sweep` with the final
    result, and the stream ends."""
    make = request.app.state.read_sessionmaker

    def read() -> SweepOut:
        with make() as session:
            sweep, owner = visible_sweep(session, who, sweep_id)
            return sweep_out(session, sweep, owner, settings)

    first = await anyio.to_thread.run_sync(read)  # a 404 before the stream starts

    async def stream() -> AsyncIterator[ServerSentEvent]:
        seen: dict[int, str] = {}
        out = first
        while True:
            for trial in out.trials:
                shown = trial.model_dump_json()
                if seen.get(trial.number) != shown:
                    seen[trial.number] = shown
                    yield ServerSentEvent(data=shown, event="trial")
            if out.state != SWEEP_RUNNING:
                yield ServerSentEvent(data=json.dumps(out.model_dump(mode="json", exclude={"trials"})),
                                      event="sweep")
                return
            await asyncio.sleep(EVENTS_POLL_S)
            if await request.is_disconnected():
                return
            out = await anyio.to_thread.run_sync(read)

    return EventSourceResponse(stream(), ping=15)

