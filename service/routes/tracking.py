"""Experiment tracking of a job: GET /v1/jobs/{id}/tensorboard, its TensorBoard events as a tar."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from service.deps import CurrentUser, ReadSessionDep
from service.errors import ApiError
from service.routes.jobs import visible_job
from service.schemas import error_responses
from service.tensorboard import event_files, tar_stream

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422))


@router.get("/{job_id}/tensorboard", response_class=Response,
            responses={200: {"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"},
                                                               "example": "<tar bytes>"}},
                             "description": "job_id/events.out.tfevents.* (regular files only): unpack, then "
                                            "`tensorboard --logdir .`"},
                       **error_responses(401, 404)})
def job_tensorboard(job_id: str, who: CurrentUser, session: ReadSessionDep) -> StreamingResponse:
    """The job's TensorBoard event files as a tar, streamed: one scalar per metric, step = epoch (written after
    each epoch, so a running job's are there too)."""
    job, _ = visible_job(session, who, job_id)
    names = event_files(Path(job.out_dir)) if job.out_dir else []
    if not names:
        why = "it has not started" if not job.out_dir else "its trainer writes them at the end of each epoch"
        raise ApiError(404, f"job {job_id} has no TensorBoard events yet: {why}", code="tensorboard_missing")
    return StreamingResponse(tar_stream(Path(job.out_dir or ""), names, job.id), media_type="application/x-tar",
                             headers={"Content-Disposition": f'attachment; filename="{job.id}-tensorboard.tar"'})
