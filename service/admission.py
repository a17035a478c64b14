"""What POST /v1/jobs checks before a job is accepted, beyond the spec model itself: the dataset lies inside the
data root, and the teacher exists, belongs to the caller, and loads into the declared architecture with the
dataset's classes. Every refusal names its field."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.deps import Principal
from service.errors import ApiError
from service.settings import Settings
from service.teachers import TeacherCheckCache, TeacherProblem, image_size_of, resolve_teacher
from ttm.spec import JobSpec, parse_spec


@dataclass(frozen=True)
class Admitted:
    spec: JobSpec
    spec_json: dict[str, Any]
    queue: str


def _refuse(field: str, message: str, code: str = "invalid_spec") -> ApiError:
    return ApiError(422, f"{field}: {message}", code=code, field=field,
                    errors=[{"field": field, "message": message}])


def inside_data_root(value: str, field: str, data_root: Path) -> Path:
    root = data_root.resolve()
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise _refuse(field, f"{value} is outside the data root {root}; datasets are named, or lie under the "
                             "server's data root (TTM_DATA_ROOT)")
    return path


def choose_queue(spec: JobSpec) -> str:
    if spec.resources.queue != "auto":
        return spec.resources.queue
    return "gpu" if spec.resources.gpus > 0 else "cpu"


def _imagefolder_classes(path: Path) -> int | None:
    train = path / "train"
    if not train.is_dir():
        return None
    return sum(1 for p in train.iterdir() if p.is_dir()) or None


class WouldBlock(Exception):
    """Admission needs the database or the disk (a teacher not seen lately, a dataset folder): run it again with
    `may_block` in the thread pool."""


def admit(make_session: Callable[[], Session], who: Principal, body: dict[str, Any], settings: Settings,
          checks: TeacherCheckCache, *, may_block: bool = True) -> Admitted:
    """The admitted job, or an ApiError/SpecError naming the field. Opens a session only for a teacher not seen in
    the last seconds; without `may_block`, raises WouldBlock instead of touching the database or the disk (so that
    most submits are admitted on the event loop: parsing a spec takes some 50 µs, a thread-pool hop more)."""
    spec = parse_spec(body)  # SpecError → 422 naming the field (errors.py)
    data = spec.dataset
    if data.root is not None:
        data.root = str(inside_data_root(data.root, "dataset.root", settings.data_root))
    num_classes = spec.num_classes
    if data.path is not None:
        if not may_block:
            raise WouldBlock
        path = inside_data_root(data.path, "dataset.path", settings.data_root)
        if not path.is_dir():
            raise _refuse("dataset.path", f"{data.path} is not a directory under the data root")
        data.path = str(path)
        if num_classes is None:
            num_classes = _imagefolder_classes(path)
    if spec.teacher is not None:
        _check_teacher(make_session, who, spec, num_classes, checks, may_block)
    return Admitted(spec, spec.model_dump(mode="json"), choose_queue(spec))


def _check_teacher(make_session: Callable[[], Session], who: Principal, spec: JobSpec, num_classes: int | None,
                   checks: TeacherCheckCache, may_block: bool) -> None:
    assert spec.teacher is not None
    owner = None if who.is_admin else who.id
    key = (owner, spec.teacher.model_dump_json())
    source = checks.known_source(key)
    if source is None:
        if not may_block:
            raise WouldBlock
        try:
            with make_session() as session:
                source = resolve_teacher(session, spec, owner)
        except TeacherProblem as err:
            raise _refuse(err.field, str(err), code="invalid_teacher") from None
        assert source is not None
        checks.remember_source(key, source)
    field = "teacher.job" if spec.teacher.job else ("teacher.torchscript" if source.torchscript else "teacher.weights")
    if num_classes is None:
        raise _refuse("dataset.num_classes", "give num_classes (or a path whose train/ holds one folder per "
                                             "class): the teacher is checked against it")
    channels = spec.dataset.channels
    if source.num_classes is not None and source.num_classes != num_classes:
        raise _refuse(field, f"the teacher job's student has {source.num_classes} classes, this dataset "
                             f"{num_classes}", code="invalid_teacher")
    if source.in_channels is not None and source.in_channels != channels:
        raise _refuse(field, f"the teacher job's student takes {source.in_channels} input channels, this dataset "
                             f"has {channels}", code="invalid_teacher")
    size = image_size_of(spec)
    seen, problem = checks.known(source, num_classes=num_classes, in_channels=channels, image_size=size)
    if not seen:
        if not may_block:
            raise WouldBlock
        problem = checks.check(source, num_classes=num_classes, in_channels=channels, image_size=size)
    if problem is not None:
        raise _refuse(field, problem, code="invalid_teacher")
