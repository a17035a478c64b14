"""POST /v1/pipelines: several job specs in one submit (a teacher, then its students), as `ttm train` runs a file of
several specs locally. A spec's `teacher: {job: NAME}` may name an earlier spec of the same submit by its `name`: it
becomes that job's id, and the student waits for it (state `waiting`) until it succeeds. All or nothing: a refusal
names the spec (`jobs[2].loss.beta: ...`) and stores none of them."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request, Response
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.admission import admit
from service.deps import CurrentUser, SessionDep, SettingsDep
from service.errors import ApiError, spec_error
from service.models import Job
from service.principal import Principal
from service.queries import jobs as q
from service.routes.jobs import job_out, request_hash, send, store_job
from service.schemas import JobOut, error_responses
from service.settings import Settings
from ttm.spec import SpecError

router = APIRouter(prefix="/v1/pipelines", tags=["jobs"], responses=error_responses(401, 422))

MAX_JOBS = 20  # specs in one pipeline: each is admitted (architectures inspected) inside the one request
KEY_MAX = 190  # each job stores the key with "#<index>" after it, in a column of 200


class PipelineOut(BaseModel):
    items: list[JobOut]


PipelineKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=KEY_MAX, pattern=r"^[\x20-\x7e]+$",
    description="the same key with the same body gives the same jobs (200); with another body, a 409")]


PIPELINE_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["jobs"], "properties": {"jobs": {
        "type": "array", "minItems": 1, "maxItems": MAX_JOBS, "items": {"$ref": "#/components/schemas/JobSpec"}}}},
    "examples": {"teacher-then-student": {"summary": "a teacher, then a WTTM student that waits for it", "value": {
        "jobs": [{"name": "teacher", "student": {"arch": "resnet20"}, "dataset": {"name": "digits"}},
                 {"name": "student", "teacher": {"job": "teacher"}, "student": {"arch": "resnet8"},
                  "dataset": {"name": "digits"}, "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}}]}}}}}}}


@router.post("", status_code=201, response_model=PipelineOut, openapi_extra=PIPELINE_BODY,
             responses={200: {"model": PipelineOut, "description": "replay of an earlier request with this key"},
                        **error_responses(400, 401, 403, 409, 413, 422, 429, 503)})
def submit_pipeline(body: Annotated[dict[str, Any], Body()], who: CurrentUser, session: SessionDep,
                    settings: SettingsDep, request: Request, response: Response,
                    idempotency_key: PipelineKey = None) -> PipelineOut:
    """Submit `{"jobs": [spec, ...]}` in order; a student names a teacher of the same submit by its name."""
    specs = body.get("jobs")
    if set(body) != {"jobs"} or not isinstance(specs, list) or not specs:
        raise ApiError(422, "jobs: give {\"jobs\": [spec, ...]}, one or more job specs in order (a teacher before "
                            "the students that name it)", code="invalid_spec", field="jobs")
    if len(specs) > MAX_JOBS:
        raise ApiError(422, f"jobs: {len(specs)} specs, the most one pipeline takes is {MAX_JOBS}",
                       code="over_limit", field="jobs")
    body_hash = request_hash(body) if idempotency_key else None
    if idempotency_key is not None:
        replay = _replay(session, who, idempotency_key, body_hash, len(specs), settings)
        if replay is not None:
            response.status_code = 200
            return replay
    jobs = _admit_all(session, who, specs, settings, idempotency_key, body_hash)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key committed first
        session.rollback()
        replay = _replay(session, who, idempotency_key or "", body_hash, len(specs), settings)
        if replay is None:
            raise
        response.status_code = 200
        return replay
    for job in jobs:
        send(request, job)
    return PipelineOut(items=[job_out(job, who.name, q.queue_position(session, job, settings)) for job in jobs])


def _admit_all(session: Session, who: Principal, specs: list[Any], settings: Settings, key: str | None,
               body_hash: str | None) -> list[Job]:
    names = [spec.get("name") if isinstance(spec, dict) else None for spec in specs]
    ids: dict[str, str] = {}  # name → id of the jobs stored so far
    jobs = []
    for i, spec in enumerate(specs):
        where = f"jobs[{i}]"
        if not isinstance(spec, dict):
            raise ApiError(422, f"{where}: a job spec is a mapping, not {type(spec).__name__}", code="invalid_spec",
                           field=where)
        given = spec.get("teacher")
        teacher: dict[str, Any] = given if isinstance(given, dict) else {}
        ref = teacher.get("job")
        if isinstance(ref, str) and ref in ids:
            spec = {**spec, "teacher": {**teacher, "job": ids[ref]}}
        elif isinstance(ref, str) and ref in names[i:]:
            raise ApiError(422, f"{where}.teacher.job: {ref!r} is a spec after this one (jobs[{names.index(ref, i)}]);"
                                " put the teacher before the students that name it", code="invalid_spec",
                           field=f"{where}.teacher.job")
        try:
            admitted = admit(session, who, spec, settings)
        except SpecError as err:
            raise _within(where, spec_error(err)) from None
        except ApiError as err:
            raise _within(where, err) from None
        name = admitted.spec.name
        if name in ids:
            raise ApiError(422, f"{where}.name: {name!r} is already the name of jobs[{names.index(name)}]: names are "
                                "unique within a pipeline (students name their teacher by it)", code="invalid_spec",
                           field=f"{where}.name")
        job = store_job(session, who, admitted, f"{key}#{i}" if key else None, body_hash)
        session.flush()
        ids[name] = job.id
        jobs.append(job)
    return jobs


def _within(where: str, err: ApiError) -> ApiError:
    """The same refusal, its field and message prefixed with the spec's place in the pipeline."""
    field = f"{where}.{err.field}" if err.field else where
    errors = [{**e, "field": f"{where}.{e['field']}" if e.get("field") else where} for e in (err.errors or [])]
    return ApiError(err.status, f"{where}.{err.message}" if err.field else f"{where}: {err.message}",
                    code=err.code, field=field, errors=errors or None, headers=err.headers)


def _replay(session: Session, who: Principal, key: str, body_hash: str | None, count: int,
            settings: Settings) -> PipelineOut | None:
    jobs = [q.find_idempotent(session, who.id, f"{key}#{i}") for i in range(count)]
    if jobs[0] is None:
        return None
    if any(job is None or job.request_hash != body_hash for job in jobs):
        raise ApiError(409, f"Idempotency-Key {key!r} was used for another pipeline (job {jobs[0].id}); use a new "
                            "key for a new pipeline", code="idempotency_conflict")
    return PipelineOut(items=[job_out(job, who.name, q.queue_position(session, job, settings))
                              for job in jobs if job is not None])
