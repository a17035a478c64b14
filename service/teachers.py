"""Where a job's teacher comes from, and whether it fits the declared architecture, without loading it.

A spec names its teacher by artifact id (`art_...` in weights or torchscript) or by job (`{"job": "job_..."}`: the
best student of a succeeded job). `resolve_teacher` turns that into files on disk (the worker uses it too).
`teacher_problem` compares the artifact's recorded tensor shapes with those the architecture expects (both from
the inspection subprocess, service/inspection.py): the API never loads a teacher.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Artifact, Job
from service.queries.checkpoints import best_weights
from service.queries.projects import visible_teacher
from service.settings import Settings, get_settings
from service.states import QUEUED, RUNNING, SUCCEEDED, WAITING
from ttm.registry import DATASET_CHANNELS
from ttm.shapes import shape_mismatch
from ttm.spec import JobSpec, SpecError, parse_spec

# A teacher job in one of these may be named by a new student, which then waits for it (a pipeline).
PENDING_TEACHER_STATES = (WAITING, QUEUED, RUNNING)
# Input sizes of the trainer's batches for the named datasets (ttm.data); image folders give their own.
CODE_REFUSED = ("is a TorchScript archive: a program, which can read and write files when it runs. This server "
                "refuses teachers that carry code (an admin of a trusted lab may allow them with "
                "TTM_ALLOW_CODE_TEACHERS=1); upload a state_dict or safetensors file with teacher.arch instead")


class TeacherProblem(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class TeacherSource:
    arch: str | None  # None for TorchScript
    weights: str | None  # path of a state_dict / safetensors file
    torchscript: str | None  # path of a TorchScript archive
    fmt: str  # "auto" | "state_dict" | "safetensors" (ttm.teacher's names)
    sha256: str
    num_classes: int | None = None  # a job teacher's class count (must match the new job's)
    in_channels: int | None = None
    tensors: dict[str, list[int]] | None = None  # an artifact's recorded shapes (None: a job's own checkpoint)
    label: str = "the teacher weights"  # what messages call it: the user's file name, or the job
    pending: str | None = None  # a teacher job that has not succeeded yet: the student waits for it (no files yet)


def image_size_of(spec: JobSpec) -> int:
    return spec.dataset.image_size  # a named data set's own (ttm.spec.DatasetSpec)


def _artifact(session: Session, ref: str, field: str, owner_id: int | None) -> Artifact:
    if not ref.startswith("art_"):
        raise TeacherProblem(field, f"{ref!r} is a path; the server takes no paths from clients: upload the file "
                                    "(POST /v1/artifacts) and give its id (art_...)")
    query = select(Artifact).where(Artifact.id == ref)
    if owner_id is not None:
        query = query.where(visible_teacher(Artifact, owner_id))
    artifact = session.scalar(query)
    if artifact is None:
        raise TeacherProblem(field, f"unknown artifact {ref}")
    return artifact


def _label(art: Artifact) -> str:
    return f"teacher weights {art.filename or art.id}"


def resolve_teacher(session: Session, spec: JobSpec, owner_id: int | None,
                    settings: Settings | None = None, *, pending_ok: bool = False) -> TeacherSource | None:
    """The teacher's files; `owner_id` limits artifacts and jobs to that user's and those of their projects (None:
    any, e.g. for admins). A
    TorchScript teacher is refused unless the settings allow code teachers. With `pending_ok`, a teacher job that is
    waiting, queued or running is accepted: the source names it as `pending` and describes its student from its
    spec (there are no files yet)."""
    t = spec.teacher
    if t is None:
        return None
    if t.weights:
        art = _artifact(session, t.weights, "teacher.weights", owner_id)
        if art.format == "torchscript":
            raise TeacherProblem("teacher.weights", f"artifact {art.id} is a TorchScript archive: give it as "
                                                    "teacher.torchscript (without arch)")
        return TeacherSource(t.arch, art.path, None, t.format, art.sha256, tensors=art.tensors, label=_label(art))
    if t.torchscript:
        art = _artifact(session, t.torchscript, "teacher.torchscript", owner_id)
        if art.format != "torchscript":
            raise TeacherProblem("teacher.torchscript", f"artifact {art.id} is {art.format}, not TorchScript: give "
                                                        "it as teacher.weights with teacher.arch")
        if not (settings or get_settings()).allow_code_teachers:
            raise TeacherProblem("teacher.torchscript", f"{art.filename or art.id} {CODE_REFUSED}")
        return TeacherSource(None, None, art.path, "auto", art.sha256, label=_label(art))
    assert t.job is not None
    query = select(Job).where(Job.id == t.job)
    if owner_id is not None:
        query = query.where(visible_teacher(Job, owner_id))
    if pending_ok:  # on PostgreSQL: the teacher cannot end (and settle its students) before this submit commits
        query = query.with_for_update(read=True)
    job = session.scalar(query)
    if job is None:
        raise TeacherProblem("teacher.job", f"unknown job {t.job}")
    try:
        parent = parse_spec(job.spec)
    except SpecError as err:
        raise TeacherProblem("teacher.job", f"job {t.job} has a spec this server no longer reads: {err}") from None
    classes, channels = parent.num_classes, DATASET_CHANNELS.get(parent.dataset.name, 3)
    label = f"the best student of job {job.id}"
    if pending_ok and job.state in PENDING_TEACHER_STATES:
        return TeacherSource(parent.student.arch, None, None, "auto", "", num_classes=classes, in_channels=channels,
                             label=label, pending=job.id)
    if job.state != SUCCEEDED:
        hint = "; a student may name a teacher job that is waiting, queued or running, and waits for it" \
            if job.state not in PENDING_TEACHER_STATES else ""
        raise TeacherProblem("teacher.job", f"job {t.job} is {job.state}; only a succeeded job can teach{hint}")
    ckpt = best_weights(session, job.id)
    if ckpt is None:
        raise TeacherProblem("teacher.job", f"job {t.job} has no best checkpoint")
    fmt = "safetensors" if ckpt.format == "safetensors" else "state_dict"
    return TeacherSource(parent.student.arch, ckpt.path, None, fmt, ckpt.sha256, num_classes=classes,
                         in_channels=channels, label=label)


def weights_problem(source: TeacherSource, expected: dict[str, list[int]]) -> str | None:
    """Why the artifact's recorded tensors do not fit `expected` (the architecture's), or None. A job's own
    checkpoint was written by the trainer for its architecture: it fits by construction."""
    if source.tensors is None:
        return None
    return shape_mismatch(expected, source.tensors, source.label)
