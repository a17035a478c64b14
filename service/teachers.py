"""Where a job's teacher comes from, and whether it loads into the declared architecture.

A spec names its teacher by artifact id (`art_...` in weights or torchscript) or by job (`{"job": "job_..."}`: the
best student of a succeeded job). `resolve_teacher` turns that into files on disk (the worker uses it too);
`check_teacher_cached` runs ttm.teacher.check_teacher once per (sha256, arch, classes, channels, size, format), so a
repeated submit costs a dictionary lookup. torch is imported on the first check, or at startup by `warm_up`.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Artifact, Job
from service.queries.checkpoints import best_weights
from service.states import SUCCEEDED
from ttm.registry import DATASET_CHANNELS
from ttm.spec import JobSpec, SpecError, parse_spec

# Input sizes of the trainer's batches for the named datasets (ttm.data); image folders give their own.
IMAGE_SIZES = {"mnist": 28, "fashion_mnist": 28, "digits": 8}


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


def image_size_of(spec: JobSpec) -> int:
    return spec.dataset.image_size if spec.dataset.name == "imagefolder" else IMAGE_SIZES.get(spec.dataset.name, 32)


def _artifact(session: Session, ref: str, field: str, owner_id: int | None) -> Artifact:
    if not ref.startswith("art_"):
        raise TeacherProblem(field, f"{ref!r} is a path; the server takes no paths from clients: upload the file "
                                    "(POST /v1/artifacts) and give its id (art_...)")
    query = select(Artifact).where(Artifact.id == ref)
    if owner_id is not None:
        query = query.where(Artifact.owner_id == owner_id)
    artifact = session.scalar(query)
    if artifact is None:
        raise TeacherProblem(field, f"unknown artifact {ref}")
    return artifact


def resolve_teacher(session: Session, spec: JobSpec, owner_id: int | None) -> TeacherSource | None:
    """The teacher's files; `owner_id` limits artifacts and jobs to that user's (None: any, e.g. for admins)."""
    t = spec.teacher
    if t is None:
        return None
    if t.weights:
        art = _artifact(session, t.weights, "teacher.weights", owner_id)
        if art.format == "torchscript":
            raise TeacherProblem("teacher.weights", f"artifact {art.id} is a TorchScript archive: give it as "
                                                    "teacher.torchscript (without arch)")
        return TeacherSource(t.arch, art.path, None, t.format, art.sha256)
    if t.torchscript:
        art = _artifact(session, t.torchscript, "teacher.torchscript", owner_id)
        if art.format != "torchscript":
            raise TeacherProblem("teacher.torchscript", f"artifact {art.id} is {art.format}, not TorchScript: give "
                                                        "it as teacher.weights with teacher.arch")
        return TeacherSource(None, None, art.path, "auto", art.sha256)
    assert t.job is not None
    query = select(Job).where(Job.id == t.job)
    if owner_id is not None:
        query = query.where(Job.owner_id == owner_id)
    job = session.scalar(query)
    if job is None:
        raise TeacherProblem("teacher.job", f"unknown job {t.job}")
    if job.state != SUCCEEDED:
        raise TeacherProblem("teacher.job", f"job {t.job} is {job.state}; only a succeeded job can teach")
    ckpt = best_weights(session, job.id)
    if ckpt is None:
        raise TeacherProblem("teacher.job", f"job {t.job} has no best checkpoint")
    try:
        parent = parse_spec(job.spec)
    except SpecError as err:
        raise TeacherProblem("teacher.job", f"job {t.job} has a spec this server no longer reads: {err}") from None
    fmt = "safetensors" if ckpt.format == "safetensors" else "state_dict"
    return TeacherSource(parent.student.arch, ckpt.path, None, fmt, ckpt.sha256,
                         num_classes=parent.num_classes, in_channels=DATASET_CHANNELS.get(parent.dataset.name, 3))


class TeacherCheckCache:
    """Outcomes of teacher checks (None: it loads; a string: why not), least recently used out first. One check
    runs at a time: a burst of submits with a new teacher loads it once, and the server's cores stay for requests.

    It also remembers, for SOURCE_TTL seconds, where a spec's teacher resolved to (the artifact or the job's best
    checkpoint, for this owner), so that a run of submits naming the same teacher makes no query each: artifacts
    and best checkpoints do not change, and a user deleted meanwhile can still submit for as long as their token
    stays in the token cache anyway. With both cached, admission needs neither the database nor the disk."""

    SOURCE_TTL = 10.0

    def __init__(self, size: int = 512):
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], str | None] = OrderedDict()
        self._sources: dict[tuple[Any, ...], tuple[float, TeacherSource]] = {}
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()

    def known_source(self, key: tuple[Any, ...]) -> TeacherSource | None:
        hit = self._sources.get(key)
        return hit[1] if hit is not None and hit[0] >= time.monotonic() else None

    def remember_source(self, key: tuple[Any, ...], source: TeacherSource) -> None:
        with self._lock:
            if len(self._sources) >= 8 * self.size:
                self._sources.clear()
            self._sources[key] = (time.monotonic() + self.SOURCE_TTL, source)

    def _get(self, key: tuple[Any, ...]) -> tuple[bool, str | None]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return True, self._items[key]
            return False, None

    @staticmethod
    def _key(source: TeacherSource, num_classes: int, in_channels: int, image_size: int) -> tuple[Any, ...]:
        return source.sha256, source.arch, source.fmt, num_classes, in_channels, image_size

    def known(self, source: TeacherSource, *, num_classes: int, in_channels: int,
              image_size: int) -> tuple[bool, str | None]:
        """(whether this check ran already, its outcome), without running it."""
        return self._get(self._key(source, num_classes, in_channels, image_size))

    def check(self, source: TeacherSource, *, num_classes: int, in_channels: int, image_size: int) -> str | None:
        key = self._key(source, num_classes, in_channels, image_size)
        hit, outcome = self._get(key)
        if hit:
            return outcome
        with self._check_lock:
            hit, outcome = self._get(key)
            if hit:
                return outcome
            outcome = _run_check(source, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
            with self._lock:
                self._items[key] = outcome
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return outcome


def _run_check(source: TeacherSource, *, num_classes: int, in_channels: int, image_size: int) -> str | None:
    from ttm.teacher import WeightsError, check_teacher

    try:
        check_teacher(arch=source.arch, weights=source.weights, torchscript=source.torchscript,
                      num_classes=num_classes, in_channels=in_channels, image_size=image_size, fmt=source.fmt)
    except WeightsError as err:
        return str(err)
    except (ValueError, RuntimeError) as err:  # e.g. an architecture that cannot take this input at all
        return f"the teacher cannot be built or run: {str(err).splitlines()[0][:300]}"
    return None


def warm_up() -> None:
    """Import torch and the model zoo before the first request needs them (called in a thread at startup)."""
    import ttm.teacher  # noqa: F401
    from ttm.registry import torchvision_archs

    torchvision_archs()
    try:
        import ttm.models  # noqa: F401
    except ImportError:
        pass
