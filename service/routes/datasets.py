"""POST /v1/datasets: an ImageFolder tree as a .tar, .tar.gz or .zip, streamed to disk, unpacked as data and
checked entry by entry (service/datasets.py); a job names it as `dataset: {name: imagefolder, id: ds_...}`."""
from __future__ import annotations

import shutil
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.datasets import DatasetRefused, unpack_in_sandbox
from service.deps import CurrentUser, ReadSessionDep, SessionDep, SettingsDep
from service.errors import ApiError, not_found
from service.ids import new_dataset_id
from service.models import Dataset
from service.principal import Principal
from service.queries import datasets as q
from service.schemas import error_responses
from service.settings import Settings
from service.uploads import Received, receive_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 422))


class DatasetOut(BaseModel):
    id: str = Field(examples=["ds_5f0c2b7e9a1d4c3b8e6f7a21"])
    name: str | None = Field(description="the archive's file name, as sent")
    sha256: str = Field(description="of the archive: the same archive again is the same data set")
    size: int = Field(description="the archive's bytes")
    files: int
    unpacked_bytes: int
    classes: list[str]
    counts: dict[str, dict[str, int]] = Field(description="images per split (train, val) and class")
    created_at: datetime


UPLOAD_BODY = {
    "required": True,
    "description": "An ImageFolder tree (train/<class>/<image> and val/<class>/<image>, or one folder holding "
                   "them) as a .tar, .tar.gz or .zip: the raw bytes, or a multipart form with the file in field "
                   "`file`. Refused with a 422 naming the entry: absolute paths, `..`, links, device files, other "
                   "files than images, images PIL cannot decode, more than TTM_DATASET_MAX_FILES files or "
                   "TTM_DATASET_MAX_UNPACKED_BYTES unpacked.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                             "example": "<bytes of tar czf shapes.tar.gz train val>"},
                "multipart/form-data": {"schema": {"type": "object",
                                                   "properties": {"file": {"type": "string", "format": "binary"}},
                                                   "required": ["file"]}, "example": {"file": "shapes.zip"}}},
}


def _out(d: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(d, from_attributes=True)


def store_dataset(session: Session, who: Principal, settings: Settings, received: Received) -> tuple[DatasetOut, bool]:
    """The caller's data set of these bytes: the one unpacked before, or a new one, unpacked and checked now."""
    known = q.by_sha256(session, who.id, received.sha256)
    if known is not None:
        return _out(known), False
    dataset_id = new_dataset_id()
    dest = settings.artifact_dir / "datasets" / dataset_id
    try:
        unpacked = unpack_in_sandbox(received.path, dest, max_files=settings.dataset_max_files,
                                     max_bytes=settings.dataset_max_unpacked_bytes,
                                     memory_bytes=settings.inspect_memory_bytes,
                                     timeout_s=settings.dataset_unpack_timeout_seconds)
    except DatasetRefused as err:
        raise ApiError(422, f"file: {err}", code="invalid_dataset", field="file") from None
    row = Dataset(id=dataset_id, owner_id=who.id, name=received.filename, sha256=received.sha256,
                  size=received.size, files=unpacked.files, unpacked_bytes=unpacked.size, classes=unpacked.classes,
                  counts=unpacked.counts, path=str(dest))
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # the same archive, sent twice at once: the first one stays
        session.rollback()
        shutil.rmtree(dest, ignore_errors=True)
        known = q.by_sha256(session, who.id, received.sha256)
        if known is None:
            raise
        return _out(known), False
    return _out(row), True


@router.post("", status_code=201, response_model=DatasetOut, openapi_extra={"requestBody": UPLOAD_BODY},
             responses={200: {"model": DatasetOut, "description": "the same archive was sent before"},
                        **error_responses(400, 401, 413, 422)})
async def upload_dataset(request: Request, response: Response, who: CurrentUser, session: SessionDep,
                         settings: SettingsDep,
                         filename: Annotated[str | None, Query(max_length=255)] = None) -> DatasetOut:
    """Send a data set; use its id as `dataset: {name: imagefolder, id: ds_...}` in a job spec."""
    received = await receive_upload(request, settings.artifact_dir / "tmp", settings.dataset_max_upload_bytes,
                                    filename, setting="TTM_DATASET_MAX_UPLOAD_BYTES")
    try:
        out, created = await run_in_threadpool(store_dataset, session, who, settings, received)
    finally:
        received.path.unlink(missing_ok=True)
    if not created:
        response.status_code = 200
    return out


@router.get("", response_model=list[DatasetOut])
def list_datasets(who: CurrentUser, session: ReadSessionDep) -> list[DatasetOut]:
    """Your data sets, newest first."""
    return [_out(d) for d in q.list_datasets(session, who)]


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(401, 404))
def get_dataset(dataset_id: str, who: CurrentUser, session: ReadSessionDep) -> DatasetOut:
    found = q.get_dataset(session, who, dataset_id) if "\x00" not in dataset_id else None
    if found is None:
        raise not_found("data set", dataset_id)
    return _out(found)
