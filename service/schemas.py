"""Response bodies and the examples /docs shows."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class ArtifactOut(BaseModel):
    id: str = Field(examples=["art_5f0c2b7e9a1d4c3b8e6f7a21"])
    sha256: str
    size: int
    format: str = Field(description="state_dict | safetensors | torchscript")
    filename: str | None = None
    created_at: datetime


class JobOut(BaseModel):
    id: str = Field(examples=["job_01jfz8q2x4m7c9v3b5n8k2r6tw"])
    name: str
    state: str = Field(description="waiting | queued | running | cancelling | succeeded | failed | cancelled")
    queue: str = Field(description="gpu | cpu")
    queue_position: int | str | None = Field(
        description='1 = next to run in its queue; "1000+" past the first 1000; null unless queued')
    attempts: int
    reason: str | None
    owner: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    best_top1: float | None
    spec: dict[str, Any] = Field(description="the job spec as accepted (defaults and preset filled in)")
    waits_for: str | None = Field(None, description="a waiting job's teacher job: it becomes queued when that one "
                                                    "succeeds, and fails if that one fails")
    tags: list[str] = Field(default_factory=list, description="its owner's labels (PATCH changes them)")
    note: str | None = Field(None, description="its owner's note (PATCH changes it)")
    progress: dict[str, int] | None = Field(None, description='a running job\'s place in its epoch, {"epoch", "step", '
                                                              '"steps"}, as its trainer said a few seconds ago')
    sweep_id: str | None = Field(None, description="the sweep this job is a trial of (its name is <sweep>-t<trial>)")
    trial: int | None = Field(None, description="its trial's number in that sweep")
    group_id: str | None = Field(None, description="the student group it trains (or trained) in: the id of the "
                                                   "group's first job; null when it trained alone")


TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$"
MAX_TAGS = 20  # per job
MAX_NOTE = 4000  # characters


def _tag(value: str) -> str:
    if not re.fullmatch(TAG_PATTERN, value):
        raise ValueError(f"tag {value[:80]!r} is not a tag: 1-64 letters, digits or . _ : + -, starting with a "
                         "letter or digit (e.g. baseline, paper:table2, lr-0.1)")
    return value


def _note(value: str) -> str:
    bad = next((c for c in value if ord(c) < 32 and c not in "\n\t"), None)
    if bad is not None:
        raise ValueError(f"a note holds text: control character {bad!r} is not allowed (newlines and tabs are)")
    return value


Tag = Annotated[str, AfterValidator(_tag)]
Note = Annotated[str, Field(max_length=MAX_NOTE), AfterValidator(_note)]


class JobPatch(BaseModel):
    """What its owner may change on a job after submitting it; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")
    tags: list[Tag] | None = Field(None, max_length=MAX_TAGS, description="the job's tags from now on (replaces them; "
                                                                           "[] removes all)")
    note: Note | None = Field(None, description='the job\'s note from now on ("" removes it)')


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null at the end")


class MetricOut(BaseModel):
    seq: int = Field(description="the row's sequence number; ?after=seq continues after it")
    epoch: int
    name: str
    value: float
    at: datetime


class MetricList(BaseModel):
    items: list[MetricOut]
    next_after: int = Field(description="the last seq returned (or the given after): pass as ?after= to go on")


class CheckpointOut(BaseModel):
    which: str = Field(description="best | last")
    format: str = Field(description="pt | safetensors (every epoch) | onnx | pt2 | torchscript (exports of the best "
                                    "student that the spec asked for, checked before they are offered)")
    sha256: str
    size: int
    epoch: int
    url: str
    manifest: dict[str, Any]


class ExportInProgress(BaseModel):
    job_id: str
    which: str = Field(description="best")
    format: str = Field(description="onnx | pt2 | torchscript")
    state: str = Field(description="requested (waits for a worker of the job's queue) | running (being made)")
    attempts: int = Field(description="times a worker took it (a worker lost on the way makes it take again)")
    requested_at: datetime


class ExportPending(BaseModel):
    """202 of a download whose export is being made on request; ask `poll` again after `retry_after` seconds."""

    export: ExportInProgress
    poll: str = Field(examples=["/v1/jobs/job_01jfz8q2x4m7c9v3b5n8k2r6tw/checkpoints/best?format=onnx"])
    retry_after: int = Field(description="seconds, as the Retry-After header says")
    message: str


class Readiness(BaseModel):
    status: str = Field(description="ready | not ready")
    checks: dict[str, str] = Field(description='each dependency: "ok", or what went wrong',
                                   examples=[{"database": "ok", "broker": "ok"}])


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    errors: list[dict[str, str]] | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "wttm": {
        "summary": "WTTM from an uploaded teacher on Fashion-MNIST",
        "value": {
            "name": "fmnist-wttm",
            "teacher": {"arch": "resnet8", "weights": "art_5f0c2b7e9a1d4c3b8e6f7a21"},
            "student": {"arch": "resnet8"},
            "dataset": {"name": "fashion_mnist", "subset": {"train": 2000, "test": 500}},
            "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5},
            "train": {"epochs": 2, "batch_size": 128, "lr": 0.05, "schedule": {"kind": "cosine"}},
            "resources": {"gpus": 1, "queue": "auto"},
        },
    },
    "paper_preset": {
        "summary": "A preset from the paper (CIFAR-100, resnet56 → resnet20, WTTM)",
        "value": {"preset": "paper/cifar100/resnet56-resnet20/wttm",
                  "teacher": {"arch": "resnet56", "weights": "art_5f0c2b7e9a1d4c3b8e6f7a21"}},
    },
    "train_teacher": {
        "summary": "Train a teacher with plain cross-entropy (no teacher)",
        "value": {"name": "teacher", "student": {"arch": "resnet8"}, "dataset": {"name": "fashion_mnist"},
                  "loss": {"kind": "ce"}, "train": {"epochs": 5, "schedule": {"kind": "cosine"}}},
    },
    "chain": {
        "summary": "Distill from the best student of a finished job",
        "value": {"name": "chained", "teacher": {"job": "job_01jfz8q2x4m7c9v3b5n8k2r6tw"},
                  "student": {"arch": "resnet8"}, "dataset": {"name": "fashion_mnist"},
                  "loss": {"kind": "ttm", "gamma": 0.5, "beta": 2.0}, "train": {"epochs": 5,
                                                                                 "schedule": {"kind": "cosine"}}},
    },
}
