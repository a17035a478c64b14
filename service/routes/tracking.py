"""Experiment tracking of a job: GET /v1/jobs/{id}/tensorboard, its TensorBoard events as a tar, and
GET /v1/jobs/{id}/tracking, where its export to the lab's MLflow server stands (worker/tracking.py makes it)."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from service.deps import CurrentUser, ReadSessionDep, SettingsDep
from service.errors import ApiError
from service.models import TrackingExport
from service.queries import tracking as q
from service.routes.jobs import visible_job
from service.schemas import error_responses
from service.tensorboard import event_files, tar_stream

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422))

ExportState = Literal["off", "none", "pending", "exported", "failed"]


class TrackingOut(BaseModel):
    state: ExportState = Field(description="off: this server exports to no MLflow server (TTM_MLFLOW_URI); none: "
                                           "nothing to export (the job has not ended, or ended without running); "
                                           "pending: tried again at next_attempt_at; exported; failed: gave up")
    mlflow_uri: str | None = Field(description="the tracking server", examples=["http://mlflow.lab:5000"])
    experiment: str | None = Field(description="the MLflow experiment the jobs of this server go to")
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = Field(None, description="why the last attempt did not export")
    run_id: str | None = Field(None, description="the job's MLflow run (its name is the job's id)")
    run_url: str | None = Field(None, description="the run in MLflow's web UI")
    exported_at: datetime | None = None


def _state(export: TrackingExport | None) -> ExportState:
    if export is None:
        return "none"
    return "exported" if export.exported_at else "pending" if export.next_attempt_at else "failed"


@router.get("/{job_id}/tracking", response_model=TrackingOut, responses=error_responses(401, 404))
def job_tracking(job_id: str, who: CurrentUser, session: ReadSessionDep, settings: SettingsDep) -> TrackingOut:
    """Where the job's export to MLflow stands: a job that ends after running is exported once, retried while the
    tracking server is away."""
    visible_job(session, who, job_id)
    if not settings.mlflow_uri:
        return TrackingOut(state="off", mlflow_uri=None, experiment=None)
    uri = settings.mlflow_shown_uri
    export = q.get_export(session, job_id)
    out = TrackingOut(state=_state(export), mlflow_uri=uri, experiment=settings.mlflow_experiment)
    if export is not None:
        out.attempts, out.next_attempt_at, out.last_error = export.attempts, export.next_attempt_at, export.last_error
        out.exported_at = export.exported_at
        if export.exported_at and export.run_id:
            out.run_id = export.run_id
            if uri.startswith(("http://", "https://")):
                out.run_url = f"{uri}/#/experiments/{export.experiment_id}/runs/{export.run_id}"
    return out


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
