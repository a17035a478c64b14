from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.deps import CurrentUser, ReadSessionDep, SessionDep, SettingsDep
from service.errors import ApiError, not_found
from service.queries import artifacts as q
from service.queries.projects import MAX_NAME, NAME_PATTERN, ProjectError, project_id_for
from service.schemas import ArtifactOut, error_responses
from service.uploads import receive_upload, store_artifact

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"], responses=error_responses(401, 422))  # on every route

UPLOAD_BODY = {
    "required": True,
    "description": "The weights file: the raw bytes, or a multipart form with the file in field `file`. "
                   "A state_dict saved by torch.save, a `{'model': state_dict}` checkpoint, safetensors, or "
                   "a TorchScript archive where the server allows code teachers (TTM_ALLOW_CODE_TEACHERS; "
                   "refused otherwise). Pickles that need code to load are refused (422). The file is inspected "
                   "in a sandboxed subprocess; its tensors' shapes are kept.",
    "content": {
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "example": "<bytes of torch.save(model.state_dict(), 'teacher.pt')>",
        },
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                       "required": ["file"]},
            "example": {"file": "teacher.pt"},
        },
    },
}


@router.post("", status_code=201, response_model=ArtifactOut, openapi_extra={"requestBody": UPLOAD_BODY},
             responses={200: {"model": ArtifactOut, "description": "the same bytes were uploaded before"},
                        **error_responses(400, 401, 403, 413, 422, 503)})
async def upload_artifact(request: Request, response: Response, who: CurrentUser, session: SessionDep,
                          settings: SettingsDep,
                          filename: Annotated[str | None, Query(max_length=255)] = None,
                          project: Annotated[str | None, Query(min_length=1, max_length=MAX_NAME,
                                                               pattern=NAME_PATTERN, description=(
                              "a project of yours: its members may name the artifact as a teacher"))] = None
                          ) -> ArtifactOut:
    """Upload teacher weights: streamed to disk, addressed by sha256, deduplicated per owner, checked on arrival."""
    project_id = None
    if project is not None:  # before reading the body: a refusal costs no upload
        try:
            project_id = project_id_for(session, who.id, project)
        except ProjectError as err:
            raise ApiError(403, f"project: {err}", code="not_a_member", field="project") from None
    received = await receive_upload(request, settings.artifact_dir / "tmp", settings.max_upload_bytes, filename)
    try:
        out, created = await run_in_threadpool(store_artifact, session, who, settings, received, project_id)
    finally:
        received.path.unlink(missing_ok=True)
    if not created:
        response.status_code = 200
    return out


@router.get("", response_model=list[ArtifactOut], responses=error_responses(401, 422))
def list_artifacts(who: CurrentUser, session: ReadSessionDep,
                   sha256: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$", description=(
                       "only the artifact with these bytes: a client asks before uploading a file it may have "
                       "sent before"))] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[ArtifactOut]:
    """Your artifacts, newest first; `?sha256=` finds the one holding those bytes ([] when there is none)."""
    rows = q.list_artifacts(session, who.id, sha256=sha256, limit=limit)
    return [ArtifactOut.model_validate(a, from_attributes=True) for a in rows]


@router.get("/{artifact_id}", response_model=ArtifactOut, responses=error_responses(401, 404))
def get_artifact(artifact_id: str, who: CurrentUser, session: ReadSessionDep) -> ArtifactOut:
    artifact = q.get_artifact(session, who, artifact_id)
    if artifact is None:
        raise not_found("artifact", artifact_id)
    return ArtifactOut.model_validate(artifact, from_attributes=True)
