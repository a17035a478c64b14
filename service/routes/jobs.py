from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BeforeValidator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.admission import Admitted, admit
from service.broker import enqueue_export, enqueue_job
from service.deps import CurrentUser, ReadSessionDep, SessionDep, SettingsDep
from service.errors import ApiError, not_found
from service.models import Checkpoint, Job
from service.principal import Principal
from service.queries import checkpoints as cq
from service.queries import exports as eq
from service.queries import history as hq
from service.queries import jobs as q
from service.schemas import (
    JOB_EXAMPLES,
    MAX_TAGS,
    CheckpointOut,
    ExportPending,
    JobList,
    JobOut,
    JobPatch,
    MetricList,
    MetricOut,
    Note,
    Tag,
    error_responses,
)
from service.settings import Settings
from service.states import (
    CANCELLED,
    CANCELLING,
    HELD_STATES,
    QUEUED,
    RUNNING,
    WAITING,
    IllegalTransition,
    JobState,
    transition,
)
from ttm.registry import CheckpointFormat, checkpoint_name

log = logging.getLogger("ttm.service")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422))  # on every route

LOG_CHUNK = 4 * 1024 * 1024
JOB_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/JobSpec"}, "examples": JOB_EXAMPLES}}}}


def job_out(job: Job, owner: str, position: q.Position) -> JobOut:
    return JobOut(id=job.id, name=job.name, state=job.state, queue=job.queue, queue_position=position,
                  attempts=job.attempts, reason=job.reason, owner=owner, created_at=job.created_at,
                  started_at=job.started_at, finished_at=job.finished_at, best_top1=job.best_top1, spec=job.spec,
                  waits_for=job.waits_for, tags=job.tags, note=job.note,
                  progress=job.progress if job.state in HELD_STATES else None,
                  sweep_id=job.sweep_id, trial=job.trial, group_id=job.group_id)


def visible_job(session: Session, who: Principal, job_id: str) -> tuple[Job, str]:
    found = q.get_job(session, who, job_id)
    if found is None:
        raise not_found("job", job_id)
    return found


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _replay(session: Session, prior: Job, owner: str, body: dict[str, Any], settings: Settings) -> JobOut:
    if prior.request_hash != request_hash(body):
        raise ApiError(409, f"Idempotency-Key {prior.idempotency_key!r} was used for another request "
                            f"(job {prior.id}); use a new key for a new job", code="idempotency_conflict")
    return job_out(prior, owner, q.queue_position(session, prior, settings))


IDEMPOTENCY_KEY_MAX = 200
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=IDEMPOTENCY_KEY_MAX, pattern=r"^[\x20-\x7e]+$",
    description="the same key with the same body gives the same job (200) instead of a second one; with another "
                "body, a 409. Printable ASCII. A retried CI job should send a key of its own attempt.")]
Tags = Annotated[list[Tag] | None, Query(alias="tag", max_length=MAX_TAGS,
                                         description="a tag (repeat for more): 1-64 letters, digits or . _ : + -")]


@router.post("", status_code=201, response_model=JobOut, openapi_extra=JOB_BODY,
             responses={200: {"model": JobOut, "description": "replay of an earlier request with this "
                                                               "Idempotency-Key"},
                        **error_responses(400, 401, 403, 409, 413, 422, 429, 503)})
def submit_job(body: Annotated[dict[str, Any], Body()], who: CurrentUser, session: SessionDep,
               settings: SettingsDep, request: Request, response: Response,
               idempotency_key: IdempotencyKey = None, tags: Tags = None,
               note: Annotated[Note | None, Query(description="a note on the job")] = None) -> JobOut:
    """Submit a job spec. It is validated (architectures, γ/β/T, dataset, the server's limits, the teacher's
    tensors against its declared architecture) before it is queued; any refusal is a 4xx that names the field.
    Tags and a note (not part of the spec: its owner may change them later with PATCH) may come with it."""
    if idempotency_key is not None:
        prior = q.find_idempotent(session, who.id, idempotency_key)
        if prior is not None:  # its first answer, even where the same body would no longer be admitted
            response.status_code = 200
            return _replay(session, prior, who.name, body, settings)
    job = store_job(session, who, admit(session, who, body, settings), idempotency_key,
                    request_hash(body) if idempotency_key else None)
    q.set_tags(job, tags or [])
    job.note = note or None
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key committed first: answer with its job
        session.rollback()
        prior = q.find_idempotent(session, who.id, idempotency_key or "")
        if prior is None:
            raise
        response.status_code = 200
        return _replay(session, prior, who.name, body, settings)
    send(request, job)
    return job_out(job, who.name, q.queue_position(session, job, settings))


def store_job(session: Session, who: Principal, admitted: Admitted, key: str | None, body_hash: str | None
              ) -> Job:
    return q.insert_job(session, who.id, name=admitted.spec.name, spec=admitted.spec_json, queue=admitted.queue,
                        priority=admitted.spec.resources.priority, slots=admitted.slots, idempotency_key=key,
                        request_hash=body_hash, waits_for=admitted.waits_for, project_id=admitted.project_id)


def send(request: Request, job: Job) -> None:
    """Wake a worker of the job's queue (a waiting job is sent when its teacher job succeeds)."""
    if job.state == QUEUED:
        send_queued(request, job.id, job.queue)


def send_queued(request: Request, job_id: str, queue: str) -> None:
    """Send a stored, queued job to its queue; a broker that is away leaves it to the reconciler."""
    try:
        enqueue_job(job_id, queue, request.app.state.celery)
    except Exception as err:  # noqa: BLE001 - kombu raises transport-specific errors; the job is stored
        log.error("could not enqueue %s (%s: %s); it stays queued for the reconciler", job_id,
                  type(err).__name__, err)


def _comma_separated(values: Any) -> Any:
    """?state=running,succeeded means ?state=running&state=succeeded."""
    if not isinstance(values, list):
        return values
    return [part for value in values for part in str(value).split(",") if part]


@router.get("", response_model=JobList)
def list_jobs(who: CurrentUser, session: ReadSessionDep, settings: SettingsDep,
              state: Annotated[list[JobState] | None, BeforeValidator(_comma_separated),
                               Query(description="filter: repeat, or comma-separate")] = None,
              cursor: Annotated[str | None, Query(description="next_cursor of the previous page",
                                                   pattern=r"^job_[0-9A-Za-z]{1,36}$")] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50, tags: Tags = None,
              text: Annotated[str | None, Query(alias="q", min_length=1, max_length=200, pattern=r"^[^\x00]*$",
                                                description="search: in the name or the note, ignoring case")]
              = None) -> JobList:
    """Your jobs (an admin: everyone's), newest first; filtered by state, by tags (all of them) and by text."""
    rows = q.list_jobs(session, who, states=list(state) if state else None, before=cursor, limit=limit,
                       tags=tags, text=text)
    positions = q.queue_positions(session, [job for job, _ in rows], settings)
    items = [job_out(job, owner, positions.get(job.id)) for job, owner in rows]
    return JobList(items=items, next_cursor=rows[-1][0].id if len(rows) == limit else None)


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(401, 404))
def get_job(job_id: str, who: CurrentUser, session: ReadSessionDep, settings: SettingsDep) -> JobOut:
    job, owner = visible_job(session, who, job_id)
    return job_out(job, owner, q.queue_position(session, job, settings))


PATCH_EXAMPLES = {"tags": {"summary": "label it", "value": {"tags": ["baseline", "paper:table2"]}},
                  "note": {"summary": "say why", "value": {"note": "the CE row of the lab's Table 2"}}}


@router.patch("/{job_id}", response_model=JobOut, responses=error_responses(400, 401, 404))
def patch_job(job_id: str, body: Annotated[JobPatch, Body(openapi_examples=PATCH_EXAMPLES)], who: CurrentUser,
              session: SessionDep, settings: SettingsDep) -> JobOut:
    """Change a job's tags or note (in any state); what the job ran, its spec, stays as it was."""
    job, owner = visible_job(session, who, job_id)
    if body.tags is not None:
        q.set_tags(job, body.tags)
    if body.note is not None:
        job.note = body.note or None
    session.commit()
    return job_out(job, owner, q.queue_position(session, job, settings))


@router.post("/{job_id}/cancel", response_model=JobOut, responses=error_responses(401, 404, 409))
def cancel_job(job_id: str, who: CurrentUser, session: SessionDep, settings: SettingsDep) -> JobOut:
    """A waiting or queued job is cancelled at once (students waiting for it fail, saying so); a running one becomes
    `cancelling` until its worker has stopped the trainer. Cancelling a finished job is a 409."""
    job, owner = visible_job(session, who, job_id)
    for _ in range(3):  # the worker may move the job while we look at it
        if job.state == CANCELLING:
            break
        target = {WAITING: CANCELLED, QUEUED: CANCELLED, RUNNING: CANCELLING}.get(job.state)
        if target is None:
            raise ApiError(409, f"job {job.id} is already {job.state}", code="job_finished")
        try:
            transition(session, job, target, reason=f"cancelled by {who.name}")
            session.commit()
            break
        except IllegalTransition:
            session.rollback()
            session.refresh(job)
    return job_out(job, owner, q.queue_position(session, job, settings))


@router.get("/{job_id}/metrics", response_model=MetricList, responses=error_responses(401, 404))
def job_metrics(job_id: str, who: CurrentUser, session: ReadSessionDep,
                after: Annotated[int, Query(ge=0, le=2**63 - 1, description="return rows with seq > after")] = 0,
                limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> MetricList:
    """The job's metric rows in sequence order."""
    visible_job(session, who, job_id)
    rows = hq.metrics_after(session, job_id, after, limit)
    return MetricList(items=[MetricOut(seq=m.id, epoch=m.epoch, name=m.name, value=m.value, at=m.at)
                             for m in rows], next_after=rows[-1].id if rows else after)


@router.get("/{job_id}/metrics.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"},
                                                      "example": "epoch,test_top1,train_loss\n1,71.2,0.91\n"}}},
                       **error_responses(401, 404)})
def job_metrics_csv(job_id: str, who: CurrentUser, session: ReadSessionDep) -> Response:
    """Every metric of the job as CSV, one row per epoch and one column per metric (sorted by name), as pandas and
    spreadsheets read it; a metric not recorded at an epoch is an empty cell. Epoch 0 holds what was measured
    before training (the teacher's accuracy and entropy)."""
    job, _ = visible_job(session, who, job_id)
    table: dict[int, dict[str, float]] = {}
    for m in hq.all_metrics(session, job.id):
        table.setdefault(m.epoch, {})[m.name] = m.value
    names = sorted({name for row in table.values() for name in row})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *names])
    for epoch in sorted(table):
        writer.writerow([epoch, *(repr(table[epoch][n]) if n in table[epoch] else "" for n in names)])
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{job.id}-metrics.csv"'})


# Routes that answer with text or bytes document their content themselves (response_class=Response has no media
# type of its own): otherwise FastAPI files their JSON error bodies under text/plain.
@router.get("/{job_id}/log", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"},
                                                        "example": "epoch 1/2 loss 0.91 top1 71.2\n"}}},
                       **error_responses(404)})
def job_log(job_id: str, who: CurrentUser, session: ReadSessionDep,
            offset: Annotated[int, Query(ge=0, le=2**63 - 1, description="byte offset to read from")] = 0,
            ) -> PlainTextResponse:
    """The trainer's log text (empty until the worker writes one); `X-TTM-Log-Next-Offset` says where to go on."""
    job, _ = visible_job(session, who, job_id)
    data = b""
    if job.out_dir:
        path = Path(job.out_dir) / "train.log"
        if path.is_file() and offset < path.stat().st_size:  # (a read far past the end is an OSError)
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(LOG_CHUNK)
    return PlainTextResponse(data.decode("utf-8", "replace"),
                             headers={"X-TTM-Log-Next-Offset": str(offset + len(data))})


def _checkpoint_out(c: Checkpoint) -> CheckpointOut:
    return CheckpointOut(which=c.which, format=c.format, sha256=c.sha256, size=c.size, epoch=c.epoch,
                         manifest=c.manifest or {},
                         url=f"/v1/jobs/{c.job_id}/checkpoints/{c.which}?format={c.format}")


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointOut], responses=error_responses(401, 404))
def list_checkpoints(job_id: str, who: CurrentUser, session: ReadSessionDep) -> list[CheckpointOut]:
    visible_job(session, who, job_id)
    return [_checkpoint_out(c) for c in cq.list_checkpoints(session, job_id)]


def _checkpoint(session: Session, who: Principal, job_id: str, which: str, fmt: str) -> Checkpoint:
    job, _ = visible_job(session, who, job_id)
    ckpt = cq.get_checkpoint(session, job_id, which, fmt)
    if ckpt is None:
        code, message = cq.why_missing(session, job, which, fmt)
        raise ApiError(404, message, code=code)
    return ckpt


@router.get("/{job_id}/checkpoints/{which}/manifest", responses=error_responses(401, 404))
def checkpoint_manifest(job_id: str, which: Literal["best", "last"], who: CurrentUser, session: ReadSessionDep,
                        format: CheckpointFormat = "pt") -> dict[str, Any]:
    """The manifest written beside the checkpoint: architecture, classes, input shape, normalization, accuracy."""
    return _checkpoint(session, who, job_id, which, format).manifest or {}


@router.get("/{job_id}/checkpoints/{which}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                                                      "example": "<checkpoint bytes>"}},
                             "description": "the file; ETag is its sha256, X-TTM-Manifest its manifest (JSON)"},
                       202: {"model": ExportPending, "description": "the export is being made on request: ask again "
                                                                       "after Retry-After seconds"},
                       304: {"description": "If-None-Match matched the sha256"}, **error_responses(401, 404, 409)})
def download_checkpoint(job_id: str, which: Literal["best", "last"], who: CurrentUser, session: ReadSessionDep,
                        writer: SessionDep, request: Request, format: CheckpointFormat = "pt",
                        if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """A checkpoint file. An export (onnx, pt2, torchscript) of a succeeded job's best student that its spec did not
    make is made on the first request: 202 with Retry-After until a worker has made and checked it, then 200 with
    the kept file; an export that cannot be made is a 409 naming why, at once, on every later request too."""
    job, _ = visible_job(session, who, job_id)
    ckpt = cq.get_checkpoint(session, job_id, which, format)
    if ckpt is None:
        if eq.makeable(session, job, which, format):
            return _export_on_request(writer, job, which, format, request)
        code, message = cq.why_missing(session, job, which, format)
        raise ApiError(404, message, code=code)
    etag = f'"{ckpt.sha256}"'
    headers = {"ETag": etag, "X-TTM-Sha256": ckpt.sha256, "Cache-Control": "private, max-age=0",
               "X-TTM-Manifest": json.dumps(ckpt.manifest or {}, separators=(",", ":"), ensure_ascii=True)}
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    path = Path(ckpt.path)
    if not path.is_file():
        raise ApiError(404, f"the {which} checkpoint of job {job_id} is recorded but its file is gone",
                       code="checkpoint_missing")
    return FileResponse(path, media_type="application/octet-stream", headers=headers,
                        filename=f"{job_id}-{checkpoint_name(which, format)}")


def _export_on_request(session: Session, job: Job, which: str, fmt: str, request: Request) -> JSONResponse:
    """202 while the export is made (the first request records it and sends it to a worker of the job's queue);
    409 when it was refused or failed, so a poll never starts it again."""
    refused = cq.export_refusal(session, job.id, fmt)
    if refused is not None:
        raise ApiError(409, f"job {job.id}'s {fmt} export was refused when it was made: {refused}",
                       code="export_refused")
    row, inserted = eq.request_export(session, job, which, fmt)
    if row.state == eq.FAILED:
        raise ApiError(409, f"job {job.id}'s {fmt} export failed: {row.reason}", code="export_failed")
    if inserted:
        try:
            enqueue_export(job.id, which, fmt, job.queue, request.app.state.celery)
        except Exception as err:  # noqa: BLE001 - kombu raises transport-specific errors; the request is stored
            log.error("could not send the %s export of %s (%s: %s); the reconciler re-sends it", fmt, job.id,
                      type(err).__name__, err)
    return JSONResponse(eq.pending_body(row, job.queue), status_code=202,
                        headers={"Retry-After": str(eq.RETRY_AFTER_S), "Cache-Control": "no-store"})
