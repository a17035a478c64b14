"""What POST /v1/jobs checks before a job is accepted, beyond the spec model itself: the server's limits on what one
job may ask for, the dataset lies inside the data root, the student can take the dataset's input, and the teacher
exists, belongs to the caller and fits its declared architecture. Every refusal names its field (and the limit).

Nothing here imports torch or opens a teacher: architectures and files are described by the inspection subprocess
(service/inspection.py), and admission compares what it recorded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.errors import ApiError
from service.inspection import InspectionFailed, InspectionRefused, inspect_arch
from service.models import Job, User
from service.paths import PathRefused, inside_data_root
from service.principal import Principal
from service.queries import artifacts as artifact_queries
from service.queries.datasets import get_dataset
from service.queries.projects import ProjectError, project_id_for
from service.scheduling import allowed_priorities, week_usage_hours
from service.settings import Settings
from service.states import QUEUED, WAITING
from service.teachers import TeacherProblem, TeacherSource, image_size_of, resolve_teacher, weights_problem
from service.uploads import Received, blob_path, store_artifact
from service.webhooks import submit_refusal
from ttm import zoo
from ttm.registry import missing_library
from ttm.spec import JobSpec, TeacherSpec, parse_spec

# (train, test) images of the named datasets as the trainer splits them (ttm.data): a subset may not ask for more.
DATASET_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "mnist": (60_000, 10_000),
                 "fashion_mnist": (60_000, 10_000), "svhn": (73_257, 26_032), "digits": (1_500, 297)}


@dataclass(frozen=True)
class Admitted:
    spec: JobSpec
    spec_json: dict[str, Any]
    queue: str
    waits_for: str | None = None  # a teacher job that has not succeeded yet: the job is stored as waiting
    project_id: int | None = None  # resources.project: its members may name the job as their teacher

    @property
    def slots(self) -> int:
        """What the job holds while it runs, the unit of fair-share usage: its GPUs, or one on the cpu queue."""
        return max(1, self.spec.resources.gpus) if self.queue == "gpu" else 1


def _refuse(field: str, message: str, code: str = "invalid_spec", status: int = 422) -> ApiError:
    return ApiError(status, f"{field}: {message}", code=code, field=field,
                    errors=[{"field": field, "message": message}])


def choose_queue(spec: JobSpec) -> str:
    if spec.resources.queue != "auto":
        return spec.resources.queue
    return "gpu" if spec.resources.gpus > 0 else "cpu"


def check_limits(spec: JobSpec, queue: str, settings: Settings) -> None:
    """The server's bounds on one job (TTM_LIMITS_*), each refusal naming the field, the value and the limit."""
    def over(field: str, value: int, limit: int, setting: str) -> None:
        if value > limit:
            raise _refuse(field, f"{value} is over this server's limit of {limit} (TTM_LIMITS_{setting})",
                          code="over_limit")

    over("train.epochs", spec.train.epochs, settings.limits_max_epochs, "MAX_EPOCHS")
    over("train.batch_size", spec.train.batch_size, settings.limits_max_batch_size, "MAX_BATCH_SIZE")
    over("train.num_workers", spec.train.num_workers, settings.limits_max_num_workers, "MAX_NUM_WORKERS")
    over("resources.gpus", spec.resources.gpus, settings.limits_max_gpus_per_job, "MAX_GPUS_PER_JOB")
    if queue == "cpu" and spec.resources.gpus > settings.limits_max_cpu_ranks:
        raise _refuse("resources.gpus", f"{spec.resources.gpus} processes on the cpu queue is over this server's "
                                        f"limit of {settings.limits_max_cpu_ranks} (TTM_LIMITS_MAX_CPU_RANKS): "
                                        "on the cpu queue each GPU asked for is a gloo rank sharing one worker's "
                                        "cores; lower resources.gpus, or queue gpu", code="over_limit")
    if spec.dataset.name in ("imagefolder", "synthetic"):
        over("dataset.image_size", spec.dataset.image_size, settings.limits_max_image_size, "MAX_IMAGE_SIZE")
    classes = spec.num_classes
    if classes is not None:
        field = "student.num_classes" if spec.student.num_classes else "dataset.num_classes"
        over(field, classes, settings.limits_max_num_classes, "MAX_NUM_CLASSES")
    check_feature_memory(spec, settings)
    sizes, subset = DATASET_SIZES.get(spec.dataset.name), spec.dataset.subset
    if sizes is not None and subset is not None:
        for split, asked, has in (("train", subset.train, sizes[0]), ("test", subset.test, sizes[1])):
            if asked is not None and asked > has:
                raise _refuse(f"dataset.subset.{split}", f"{asked} samples asked, but {spec.dataset.name}'s "
                                                         f"{split} split has {has}")


def check_feature_memory(spec: JobSpec, settings: Settings) -> None:
    """CRD's memory banks hold 2·N·dim floats and one step gathers 2·B·(K+1)·dim: a spec may not ask for more than
    TTM_LIMITS_MAX_FEATURE_BYTES of either (16 GiB; CRD's own CIFAR-100 setting needs 51 MB and 1.1 GB)."""
    features = getattr(spec.loss, "features", None)
    if features is None or features.kind != "crd":
        return
    limit = settings.limits_max_feature_bytes
    step = 2 * spec.train.batch_size * (features.negatives + 1) * features.dim * 4
    train = (spec.dataset.subset.train if spec.dataset.subset and spec.dataset.subset.train else
             DATASET_SIZES.get(spec.dataset.name, (0, 0))[0])
    bank = 2 * train * features.dim * 4
    for what, need, field in (("one step's gather of negatives", step, "loss.features.negatives"),
                              ("the memory banks", bank, "loss.features.dim")):
        if need > limit:
            raise _refuse(field, f"CRD with batch {spec.train.batch_size}, {features.negatives} negatives and dim "
                                 f"{features.dim} needs {need / 2**30:.1f} GiB for {what}, over this server's limit of "
                                 f"{limit / 2**30:.0f} GiB (TTM_LIMITS_MAX_FEATURE_BYTES); lower negatives, dim or "
                                 "train.batch_size", code="over_limit")


def check_user_limits(session: Session, who: Principal, spec: JobSpec, settings: Settings) -> None:
    """What an admin set for this user (`ttm admin user set`): the priority classes they may use, their queued
    jobs (else the server's TTM_LIMITS_MAX_QUEUED_PER_USER), their GPU-hours of the last 7 days."""
    user = session.get(User, who.id)
    assert user is not None
    priority = spec.resources.priority
    allowed = allowed_priorities(user)
    if priority not in allowed:
        raise _refuse("resources.priority", f"{priority!r} is not a class you may use here (yours: "
                                            f"{', '.join(allowed)}); an admin grants classes with "
                                            f"`ttm admin user set {user.name} --priorities ...`",
                      code="priority_not_allowed", status=403)
    queued = session.scalar(select(func.count()).select_from(Job)  # waiting students count: they are queued later
                            .where(Job.owner_id == who.id, Job.state.in_((QUEUED, WAITING)))) or 0
    limit, setting = ((user.max_queued, "your max-queued, set by an admin") if user.max_queued is not None else
                      (settings.limits_max_queued_per_user, "TTM_LIMITS_MAX_QUEUED_PER_USER"))
    if queued >= limit:
        raise ApiError(429, f"you have {queued} queued or waiting jobs, the limit is {limit} ({setting}); wait for "
                            "some to start, or cancel some", code="too_many_queued", headers={"Retry-After": "60"})
    if user.gpu_hours_per_week is not None:
        used = week_usage_hours(session, who.id)
        if used >= user.gpu_hours_per_week:
            raise ApiError(403, f"your jobs used {used:.1f} GPU-hours in the last 7 days, your quota is "
                                f"{user.gpu_hours_per_week:g} (gpu-hours-per-week, set by an admin); it frees up "
                                "as the week's oldest usage passes", code="quota_spent")


def _imagefolder_classes(path: Path) -> int | None:
    train = path / "train"
    if not train.is_dir():
        return None
    return sum(1 for p in train.iterdir() if p.is_dir()) or None


def _arch(arch: str, field: str, num_classes: int, channels: int, size: int, settings: Settings):  # noqa: ANN202
    missing = missing_library(arch)
    if missing:  # the server's installation lacks it, not the user's: say where it must be installed
        raise _refuse(field, f"{missing} (on the server and its workers)")
    try:
        info = inspect_arch(arch, num_classes, channels, size, settings)
    except InspectionFailed as err:
        raise ApiError(503, f"{field}: could not check {arch} now ({err}); try again",
                       code="unavailable", field=field, headers={"Retry-After": "5"}) from None
    except InspectionRefused as err:
        raise _refuse(field, str(err)) from None
    if info.params > settings.limits_max_params:
        raise _refuse(field, f"{arch} has {info.params:,} parameters, over this server's limit of "
                             f"{settings.limits_max_params:,} (TTM_LIMITS_MAX_PARAMS)", code="over_limit")
    if info.output != [2, num_classes]:
        raise _refuse(field, f"{arch} outputs {info.output} for a batch of 2, expected [2, {num_classes}] logits")
    return info


def admit(session: Session, who: Principal, body: dict[str, Any], settings: Settings) -> Admitted:
    """The admitted job, or an ApiError/SpecError naming the field."""
    spec = parse_spec(body)  # SpecError → 422 naming the field (errors.py)
    queue = choose_queue(spec)
    check_limits(spec, queue, settings)
    check_user_limits(session, who, spec, settings)
    if spec.notify is not None and (why := submit_refusal(spec.notify.url, settings.webhook_allow)) is not None:
        raise _refuse("notify.url", why, code="url_refused")
    data = spec.dataset
    num_classes = spec.num_classes
    try:
        if data.root is not None:
            data.root = str(inside_data_root(data.root, "dataset.root", settings.data_root))
        if data.path is not None:
            path = inside_data_root(data.path, "dataset.path", settings.data_root, image_folder=True)
            if not path.is_dir():
                raise PathRefused("dataset.path", f"{data.path!r} is not a directory under the server's data "
                                                  "root (TTM_DATA_ROOT)")
            data.path = str(path)
            if num_classes is None:
                num_classes = _imagefolder_classes(path)
    except PathRefused as err:
        raise _refuse(err.field, str(err)) from None
    if data.id is not None:  # a data set sent to this server: the caller's own (the worker finds its folder)
        sent = get_dataset(session, who, data.id)
        if sent is None:
            raise _refuse("dataset.id", f"no data set {data.id} of yours (POST /v1/datasets sends one)")
        if num_classes is not None and num_classes != len(sent.classes):
            raise _refuse("dataset.num_classes", f"data set {data.id} has {len(sent.classes)} classes, not "
                                                 f"{num_classes}")
        num_classes = len(sent.classes)
    if num_classes is None:
        raise _refuse("dataset.num_classes", "give num_classes (or a path whose train/ holds one folder per "
                                             "class)")
    channels, size = data.channels, image_size_of(spec)
    _arch(spec.student.arch, "student.arch", num_classes, channels, size, settings)
    if spec.teacher is not None and spec.teacher.zoo:
        spec.teacher = zoo_teacher(session, who, settings, spec.teacher.zoo)
    if spec.teacher is not None and spec.teacher.sweep:
        spec.teacher = TeacherSpec(job=sweep_teacher(session, who, spec.teacher.sweep))
    waits_for = _check_teacher(session, who, spec, num_classes, settings) if spec.teacher is not None else None
    project_id = None
    if spec.resources.project is not None:
        try:
            project_id = project_id_for(session, who.id, spec.resources.project)
        except ProjectError as err:
            raise _refuse("resources.project", str(err), code="not_a_member", status=403) from None
    return Admitted(spec, spec.model_dump(mode="json"), queue, waits_for, project_id)


def sweep_teacher(session: Session, who: Principal, sweep_id: str) -> str:
    """The job of a finished sweep's chosen trial: the job's record names that job, as if the user had."""
    from service.models import Sweep

    sweep = session.get(Sweep, sweep_id)
    if sweep is None or (sweep.owner_id != who.id and not who.is_admin):
        raise _refuse("teacher.sweep", f"no sweep {sweep_id} of yours", code="invalid_teacher")
    if sweep.best_job_id is None:
        why = "its student is chosen when it ends" if sweep.state == "running" else f"it ended without a chosen " \
              f"trial ({sweep.reason})"
        raise _refuse("teacher.sweep", f"sweep {sweep_id} is {sweep.state}: {why}", code="invalid_teacher")
    return sweep.best_job_id


def zoo_teacher(session: Session, who: Principal, settings: Settings, name: str) -> TeacherSpec:
    """A zoo teacher becomes the caller's artifact of the same bytes, stored and inspected once like an upload, so
    that the job's record names an artifact and an architecture as if the user had uploaded the file."""
    entry = zoo.get(name)  # the spec checked the name
    mine = artifact_queries.find_by_sha(session, who.id, entry.sha256)
    if mine is None or not blob_path(settings, entry.sha256).is_file():
        tmp_dir = settings.artifact_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="zoo-", dir=tmp_dir)
        os.close(fd)
        try:
            shutil.copyfile(entry.path, tmp)
            sha256 = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
            if sha256 != entry.sha256:
                raise ApiError(500, f"the zoo's file for {name} does not match its manifest's sha256: this "
                                    "installation is damaged; reinstall ttm", code="zoo_damaged")
            received = Received(Path(tmp), sha256, Path(tmp).stat().st_size,
                                f"zoo-{name.replace('/', '-')}.safetensors")
            artifact_id = store_artifact(session, who, settings, received)[0].id
        finally:
            Path(tmp).unlink(missing_ok=True)
    else:
        artifact_id = mine.id
    return TeacherSpec(arch=entry.arch, weights=artifact_id, format="safetensors")


def _check_teacher(session: Session, who: Principal, spec: JobSpec, num_classes: int, settings: Settings
                   ) -> str | None:
    """Refuses a teacher that is not the caller's or does not fit; returns the teacher job to wait for, if any."""
    assert spec.teacher is not None
    try:
        source = resolve_teacher(session, spec, None if who.is_admin else who.id, settings, pending_ok=True)
    except TeacherProblem as err:
        raise _refuse(err.field, str(err), code="invalid_teacher") from None
    assert source is not None
    field = _teacher_field(spec, source)
    channels = spec.dataset.channels
    if source.num_classes is not None and source.num_classes != num_classes:
        raise _refuse(field, f"the teacher job's student has {source.num_classes} classes, this dataset "
                             f"{num_classes}", code="invalid_teacher")
    if source.in_channels is not None and source.in_channels != channels:
        raise _refuse(field, f"the teacher job's student takes {source.in_channels} input channels, this dataset "
                             f"has {channels}", code="invalid_teacher")
    if source.arch is None:  # TorchScript (allowed by an admin): only its trainer child may run it
        return None
    expected = _arch(source.arch, "teacher.arch", num_classes, channels, image_size_of(spec), settings)
    problem = weights_problem(source, expected.tensors)
    if problem is not None:
        raise _refuse(field, problem, code="invalid_teacher")
    return source.pending


def _teacher_field(spec: JobSpec, source: TeacherSource) -> str:
    assert spec.teacher is not None
    return "teacher.job" if spec.teacher.job else ("teacher.torchscript" if source.torchscript else "teacher.weights")
