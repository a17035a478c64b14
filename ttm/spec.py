"""The job spec: one pydantic model that the CLI, the API, the database and the worker all share.

A spec names a teacher, a student, a dataset, a loss and a recipe. `preset:` fills any of those from the paper's
tables (see `ttm.presets`); fields written in the spec win over the preset's. Unknown fields are errors.

A spec comes from strangers over HTTP, so every value has an outer bound whatever the server's policy: floats are
finite, integers fit int64 (most far tighter), strings hold no NUL (PostgreSQL cannot store one) and have a length
limit, and `parse_spec` refuses nesting deeper than `MAX_DEPTH`. Every refusal is a `SpecError` naming the field.

A loss is a spec class here, registered with `@loss_spec` (torch-free: the API validates specs), and its function in
`ttm.losses`, attached with `@loss_for`. The union of loss specs, its tags, which kinds need a teacher and the
dispatch table all come from that one registry, `ttm.registry.LOSS_KINDS`.
"""
from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ttm.registry import (
    DATASET_CHANNELS,
    DATASET_CLASSES,
    DATASET_IMAGE_SIZES,
    EXPORT_FORMATS,
    LOSS_KINDS,
    ExportFormat,
    is_known_arch,
    kind_of,
    loss_spec,
    teacher_kinds,
    unknown_arch_message,
)

INT64_MAX = 2**63 - 1
MAX_EPOCHS = 10_000
MAX_CLASSES = 1_000_000
MAX_NAME = 200  # names: job name, preset, architecture
MAX_PATH = 4096  # paths and ids (PATH_MAX on Linux)
MAX_DEPTH = 32  # nesting of mappings and lists in a spec; a real one is 4 deep
MAX_VALUES = 100_000  # values in a spec; a real one has ~50 (YAML aliases can make a small file hold billions)


class Strict(BaseModel):
    # allow_inf_nan: NaN and ±Infinity are refused in every float field ("Input should be a finite number")
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        # a model-level check, as a field validator on "*" would also cover the union tags, which pydantic forbids
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, str) and "\x00" in value and key in cls.model_fields:
                    raise _at(key, "contains a NUL character (\\x00), which cannot be stored: remove it")
        return data


# ---------------------------------------------------------------------------------------------- models
class TeacherSpec(Strict):
    """Exactly one source: `arch` + `weights`, `torchscript`, `job` (the best student of a finished job), `zoo` (a
    teacher of this project's zoo, `ttm zoo`), or `sweep` (the chosen trial of a finished sweep; the server turns it
    into that trial's `job`)."""

    arch: str | None = Field(None, max_length=MAX_NAME)
    weights: str | None = Field(None, max_length=MAX_PATH,
                                description="a path, or an artifact id (art_...) on the server")
    torchscript: str | None = Field(None, max_length=MAX_PATH, description="a TorchScript archive: path or artifact id")
    job: str | None = Field(None, max_length=MAX_PATH,
                            description="id of a finished job whose best student becomes this teacher")
    zoo: str | None = Field(None, max_length=MAX_NAME,
                            description="a teacher of the zoo, e.g. fashion_mnist/resnet20 (`ttm zoo` lists them)")
    sweep: str | None = Field(None, max_length=MAX_PATH, pattern=r"^swp_[0-9a-z]{1,36}$",
                              description="id of a finished sweep (on a server): its chosen trial's student")
    format: Literal["auto", "state_dict", "safetensors"] = "auto"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str | None) -> str | None:
        if v is not None and not is_known_arch(v):
            raise ValueError(unknown_arch_message(v))
        return v

    @field_validator("zoo")
    @classmethod
    def _in_zoo(cls, v: str | None) -> str | None:
        from ttm import zoo

        if v is not None and v not in zoo.teachers():
            raise ValueError(zoo.unknown_message(v))
        return v

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        sources = [s for s in ("weights", "torchscript", "job", "zoo", "sweep") if getattr(self, s)]
        if len(sources) != 1:
            raise ValueError("give exactly one of weights (with arch), torchscript, job, zoo or sweep; got "
                             + (", ".join(sources) or "none"))
        if self.weights and not self.arch:
            raise ValueError("weights need an arch (e.g. arch: resnet56)")
        if (self.torchscript or self.job or self.zoo or self.sweep) and self.arch:
            raise ValueError("arch is only for weights: a TorchScript archive, a job, a sweep or a zoo teacher "
                             "carries its own")
        return self


class StudentSpec(Strict):
    arch: str = Field(max_length=MAX_NAME)
    num_classes: int | None = Field(None, ge=2, le=MAX_CLASSES, description="defaults to the dataset's class count")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if not is_known_arch(v):
            raise ValueError(unknown_arch_message(v))
        return v


# ---------------------------------------------------------------------------------------------- data
class SubsetSpec(Strict):
    train: int | None = Field(None, gt=0, le=10**9, description="keep the first N training samples")
    test: int | None = Field(None, gt=0, le=10**9, description="keep the first M test samples")


class ValidationSpec(Strict):
    """A validation split held out of the training set (after `subset`): per class the same fraction, chosen by
    `seed` alone, so jobs that differ in anything else (train.seed, the loss, γ, β) hold out the same samples."""

    fraction: float = Field(gt=0, le=0.5, description="share of each class's training samples held out")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="which samples are held out")


DatasetName = Literal["cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "digits", "imagefolder", "synthetic"]


class DatasetSpec(Strict):
    name: DatasetName
    root: str | None = Field(None, max_length=MAX_PATH,
                             description="data root in torchvision's layout; default: TTM_DATA_ROOT")
    path: str | None = Field(None, max_length=MAX_PATH,
                             description="imagefolder only: a directory with train/ and val/")
    id: str | None = Field(None, pattern=r"^ds_[0-9a-f]{24}$",
                           description="imagefolder only, instead of path: a data set sent to the server "
                                       "(POST /v1/datasets)")
    num_classes: int | None = Field(None, ge=2, le=MAX_CLASSES, description="imagefolder: checked against the tree; "
                                    "synthetic: the number of random labels (default 100)")
    image_size: int = Field(32, gt=0, le=4096,
                            description="imagefolder: images are resized to this; synthetic: their size; a named "
                                        "data set has its own (28 for Fashion-MNIST), which the spec then shows")
    subset: SubsetSpec | None = None
    validation: ValidationSpec | None = Field(None, description="hold out a validation split of the training set: "
                                              "reported per epoch as val/*, and the best checkpoint is chosen on it "
                                              "instead of on the test set")
    augment: bool = True
    download: bool = Field(False, description="let torchvision download a missing dataset")

    @model_validator(mode="after")
    def _imagefolder_needs_path(self) -> DatasetSpec:
        if self.name == "imagefolder" and not self.path and not self.id:
            raise ValueError("imagefolder needs path (a directory holding train/ and val/) or id (a data set sent "
                             "with POST /v1/datasets, `ttm upload-dataset`)")
        if self.path and self.id:
            raise ValueError("give path or id, not both")
        if self.name != "imagefolder" and (self.path or self.id):
            raise ValueError(f"path and id are for imagefolder; {self.name} is found by name under the data root")
        if self.name not in ("imagefolder", "synthetic") and self.num_classes:
            raise ValueError(f"num_classes is for imagefolder and synthetic; {self.name} knows its own")
        if self.name in DATASET_IMAGE_SIZES:  # the size that runs, so the spec shown back is the one that ran
            self.__dict__["image_size"] = DATASET_IMAGE_SIZES[self.name]
        return self

    @property
    def classes(self) -> int | None:
        if self.name == "synthetic":
            return self.num_classes or 100
        return self.num_classes if self.name == "imagefolder" else DATASET_CLASSES[self.name]

    @property
    def channels(self) -> int:
        return DATASET_CHANNELS.get(self.name, 3)

    @property
    def subset_sizes(self) -> tuple[int | None, int | None]:
        """(train, test) sample counts to keep; None where the whole split is kept."""
        if self.subset is None:
            return None, None
        return self.subset.train, self.subset.test


# ---------------------------------------------------------------------------------------------- losses
def _gamma(v: float) -> float:
    if not 0 < v <= 1:
        as_t = f"; a temperature T = {v:g} is γ = {1 / v:.3g}" if v > 1 else " (T = 4 is γ = 0.25)"
        raise ValueError(f"γ = 1/T must be in (0, 1], not {v:g}{as_t}")
    return v


Gamma = Annotated[float, AfterValidator(_gamma), Field(description="γ = 1/T, in (0, 1]", json_schema_extra={
    "exclusiveMinimum": 0, "maximum": 1})]  # the bounds for the schema; _gamma says them in the paper's terms
NonNeg = Annotated[float, Field(ge=0)]
Temperature = Annotated[float, Field(gt=0, description="T > 0")]


# Feature terms a teacher-based loss may add on the penultimate features (the classifier's input) of both networks:
# loss = the logit loss + weight·term, as the paper combines WTTM with CRD and ITRD (its eq. 23, Tables 2 and 4).
class CRDFeatures(Strict):
    """CRD (Tian et al., ICLR 2020): embedding heads onto the unit sphere, a momentum memory bank of the training set
    per network, NCE against `negatives` samples of other classes. Defaults: the CRD paper's, and μ = 0.8 (WTTM
    paper A.5)."""

    kind: Literal["crd"]
    weight: NonNeg = Field(0.8, description="μ, the term's weight in the total loss")
    dim: int = Field(128, ge=1, le=8192, description="width of the embedding heads")
    negatives: int = Field(16384, ge=1, le=1_000_000, description="K, negatives per sample (drawn with "
                           "replacement from the training samples of other classes)")
    temperature: float = Field(0.07, gt=0, le=100, description="τ of the NCE scores exp(s·t/τ)")
    momentum: float = Field(0.5, ge=0, lt=1, description="memory bank update: m·old + (1 − m)·new")


class ITRDFeatures(Strict):
    """ITRD (Miles et al., BMVC 2022): a linear map of the student's features to the teacher's width, then
    corr_weight·L_corr + mi_weight·L_mi. μ = 1 and β_corr = 2 as in the WTTM paper (A.5); β_mi = 1 (0 for three
    of its pairs); α_it 1.01 for same-architecture pairs, 1.5 across architectures."""

    kind: Literal["itrd"]
    weight: NonNeg = Field(1.0, description="μ, the term's weight in the total loss")
    corr_weight: NonNeg = Field(2.0, description="β_corr, the correlation term's weight")
    mi_weight: NonNeg = Field(1.0, description="β_mi, the mutual-information term's weight")
    alpha: float = Field(1.01, gt=0, le=10, description="α_it, the order of the correlation term")


FEATURE_TERMS: tuple[type[Strict], ...] = (CRDFeatures, ITRDFeatures)
FeatureSpec = Annotated[CRDFeatures | ITRDFeatures, Field(discriminator="kind")]


# Every loss that distills from a teacher has this field, last: a feature term, or None (logits only).
Features = Annotated[FeatureSpec | None, Field(description="add CRD or ITRD on the penultimate features")]


@loss_spec(needs_teacher=False)
class CELoss(Strict):
    kind: Literal["ce"]


@loss_spec(needs_teacher=True)
class KDLoss(Strict):
    """Hinton: ce_weight·CE + kd_weight·T²·KL(p_t^T ‖ q^T). Defaults: T = 4, λ = 0.9 (the paper's baseline)."""

    kind: Literal["kd"]
    temperature: Temperature = 4.0
    kd_weight: NonNeg = 0.9
    ce_weight: NonNeg = 0.1
    features: Features = None


@loss_spec(needs_teacher=True)
class TTMLoss(Strict):
    """ce_weight·CE + β·KL(p_t^T ‖ q), no temperature on the student."""

    kind: Literal["ttm"]
    gamma: Gamma
    beta: NonNeg
    ce_weight: NonNeg = 1.0
    features: Features = None


@loss_spec(needs_teacher=True)
class WTTMLoss(Strict):
    """ce_weight·CE + β·U_γ(p_t)·KL(p_t^T ‖ q). ce_weight 0 trains without labels (paper Table 6)."""

    kind: Literal["wttm"]
    gamma: Gamma
    beta: NonNeg
    ce_weight: NonNeg = 1.0
    features: Features = None


@loss_spec(needs_teacher=True)
class DKDLoss(Strict):
    """Decoupled KD (Zhao et al. 2022): ce_weight·CE + warm-up·(α·TCKD + β·NCKD)."""

    kind: Literal["dkd"]
    alpha: NonNeg = 1.0
    beta: NonNeg = 8.0
    temperature: Temperature = 4.0
    ce_weight: NonNeg = 1.0
    warmup_epochs: int = Field(20, ge=0, le=MAX_EPOCHS)
    features: Features = None


@loss_spec(needs_teacher=True)
class DISTLoss(Strict):
    """DIST (Huang et al. 2022): ce_weight·CE + inter·(1 − Pearson over classes) + intra·(1 − Pearson over batch)."""

    kind: Literal["dist"]
    inter_weight: NonNeg = 2.0
    intra_weight: NonNeg = 2.0
    temperature: Temperature = 4.0
    ce_weight: NonNeg = 1.0
    features: Features = None


# Every class registered with @loss_spec above, in registration order.
if TYPE_CHECKING:  # mypy cannot read a union built at run time: the same classes, spelled out
    LossSpec = CELoss | KDLoss | TTMLoss | WTTMLoss | DKDLoss | DISTLoss
else:
    LossSpec = Annotated[Union[tuple(lk.spec for lk in LOSS_KINDS.values())],  # noqa: UP007
                         Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------------- recipe
PAPER_EPOCHS, PAPER_MILESTONES = 240, (150, 180, 210)


def paper_milestones(epochs: int) -> list[int]:
    """The paper's ×0.1 at 150/180/210 of 240 epochs (62.5 / 75 / 87.5 %), scaled to `epochs`.

    Each is the nearest epoch (halves round up), kept only if it is at least 1, below `epochs` (a decay at the last
    epoch would never be trained with) and above the one before, so short runs get fewer decays:
    240 → [150, 180, 210], 100 → [63, 75, 88], 10 → [6, 8, 9], 4 → [3], 3 → [2], 2 → [1], 1 → [].
    """
    out: list[int] = []
    for m in PAPER_MILESTONES:
        e = (2 * m * epochs + PAPER_EPOCHS) // (2 * PAPER_EPOCHS)  # round(m·epochs/240), half up, in integers
        if 1 <= e < epochs and (not out or e > out[-1]):
            out.append(e)
    return out


class StepSchedule(Strict):
    kind: Literal["step"]
    milestones: list[Annotated[int, Field(gt=0, le=INT64_MAX)]] | None = Field(
        None, max_length=MAX_EPOCHS,
        description="epochs after which lr ×= factor; default: the paper's 150/180/210 of 240 scaled to epochs")
    factor: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0, le=MAX_EPOCHS)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("milestones must be positive and strictly increasing")
        return v


class CosineSchedule(Strict):
    kind: Literal["cosine"]
    warmup_epochs: int = Field(0, ge=0, le=MAX_EPOCHS)
    min_lr: float = Field(0.0, ge=0)


class ConstantSchedule(Strict):
    kind: Literal["constant"]


SCHEDULES = (StepSchedule, CosineSchedule, ConstantSchedule)
if TYPE_CHECKING:  # mypy cannot read a union built from a tuple: the same classes, spelled out
    Schedule = StepSchedule | CosineSchedule | ConstantSchedule
else:
    Schedule = Annotated[Union[SCHEDULES], Field(discriminator="kind")]  # noqa: UP007


class TrainSpec(Strict):
    epochs: int = Field(240, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(64, gt=0, le=65_536)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, le=1e4)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Schedule = Field(default_factory=lambda: StepSchedule(kind="step"))
    seed: int = Field(0, ge=-INT64_MAX - 1, le=INT64_MAX)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    fast_path: Literal["auto", "on", "off"] = Field(
        "auto", description="device-resident data with on-device augmentation (auto: where it fits)")
    compile: bool = Field(False, description="torch.compile the student and teacher")
    num_workers: int = Field(2, ge=0, le=64, description="DataLoader workers (DataLoader path only)")
    drop_last: bool = Field(True, description="static shapes: drop the ragged last batch")

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainSpec:
        s = self.schedule
        if getattr(s, "warmup_epochs", 0) >= self.epochs:
            assert not isinstance(s, ConstantSchedule)  # it has no warm-up: getattr gave 0, below epochs
            raise _at("schedule.warmup_epochs", f"{s.warmup_epochs} must be below epochs={self.epochs}")
        if isinstance(s, StepSchedule):
            if s.milestones is None:  # stored filled in, so the job's JSON says what it ran
                s.milestones = paper_milestones(self.epochs)
            elif s.milestones and s.milestones[-1] > self.epochs:
                raise _at("schedule.milestones", f"milestone {s.milestones[-1]} is past epochs={self.epochs}: "
                          "write milestones up to epochs, or leave them out to scale the paper's 150/180/210 "
                          "of 240 to epochs")
        return self


PRIORITIES = ("low", "normal", "high")


class ResourcesSpec(Strict):
    gpus: int = Field(1, ge=0, le=64, description="GPUs for one job; N > 1 runs under torchrun (DDP)")
    queue: Literal["gpu", "cpu", "auto"] = Field("auto", description="auto: gpu when gpus > 0 and CUDA is there")
    priority: Literal["low", "normal", "high"] = Field(
        "normal", description="the job's class in a shared queue: high before normal before low (which classes a "
                              "user may use is the server admin's to say)")
    project: str | None = Field(None, min_length=1, max_length=100, description="a project of yours on the server: "
                                "its members may name this job as their teacher")


class OutputSpec(Strict):
    formats: list[ExportFormat] = Field(
        default_factory=list, max_length=2 * len(EXPORT_FORMATS),
        description="exports of the best student, made when the job ends and each checked in its own runtime "
                    "against PyTorch on test images before it is offered: onnx, pt2 (torch.export), torchscript")

    @model_validator(mode="before")
    @classmethod
    def _old_spelling(cls, data: Any) -> Any:
        # `torchscript: true` came before formats; old specs and the jobs stored with them (which say
        # `torchscript: false` when they asked for nothing, also when a copy of one sets formats) must still
        # validate, and afterwards formats alone says what is exported
        if not isinstance(data, dict) or "torchscript" not in data:
            return data
        data = dict(data)
        old = data.pop("torchscript")
        if not isinstance(old, bool):
            raise _at("torchscript", "is true or false (the old spelling of formats: [torchscript])")
        formats = data.get("formats", [])
        if old and isinstance(formats, list):  # anything else is the formats field's own error
            data["formats"] = [*formats, "torchscript"]
        return data

    @field_validator("formats")
    @classmethod
    def _in_one_order(cls, formats: list[str]) -> list[str]:
        return [f for f in EXPORT_FORMATS if f in formats]  # a repeated format is one export


MAX_URL = 2048


class NotifySpec(Strict):
    """Where the server POSTs a signed JSON body when the job reaches a final state (docs/API.md, Webhooks). Only
    the URL's form is checked here; which addresses the server may call is its admin's policy (TTM_WEBHOOK_ALLOW)."""

    url: str = Field(max_length=MAX_URL, description="http(s)://host[:port]/path, no user:password@")

    @field_validator("url")
    @classmethod
    def _web_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("a URL holds no spaces or control characters (percent-encode them)")
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number below 65536
        except ValueError as err:
            raise ValueError(f"{_shown(v)} is not a URL: {err}") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError(f"the URL's scheme is {parts.scheme or 'missing'!r}: give http:// or https://")
        if "@" in parts.netloc:  # credentials would travel in every request and show in the job's record
            raise ValueError("the URL may not hold user:password@; the receiver checks X-TTM-Signature instead")
        if not parts.hostname:
            raise ValueError("the URL has no host")
        return v


# ---------------------------------------------------------------------------------------------- the job
class JobSpec(Strict):
    name: str = Field("job", min_length=1, max_length=MAX_NAME)
    preset: str | None = Field(None, max_length=MAX_NAME,
                               description="e.g. paper/cifar100/resnet56-resnet20/wttm; fills missing fields")
    teacher: TeacherSpec | None = None
    student: StudentSpec
    dataset: DatasetSpec
    loss: LossSpec = Field(default_factory=lambda: CELoss(kind="ce"))
    train: TrainSpec = Field(default_factory=TrainSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    notify: NotifySpec | None = Field(None, description="a URL the server calls when the job ends (not locally)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        # a preset that is not a string, or holds a NUL, is left to the field's own error
        preset = data.get("preset") if isinstance(data, dict) else None
        if preset and isinstance(preset, str) and "\x00" not in preset:
            from ttm.presets import expand_preset  # presets import this module's types

            data = expand_preset(data)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        kind = self.loss.kind
        if LOSS_KINDS[kind].needs_teacher and self.teacher is None:
            raise _at("teacher", f"loss {kind} distills from a teacher: add teacher")
        if not LOSS_KINDS[kind].needs_teacher and self.teacher is not None:
            raise _at("teacher", f"loss {kind} trains without a teacher: remove teacher, or pick "
                      + "/".join(teacher_kinds()))
        features = getattr(self.loss, "features", None)
        if features is not None and self.teacher is not None and self.teacher.torchscript:
            raise _at("loss.features", f"{features.kind} reads the teacher's penultimate features, which a "
                      "TorchScript teacher does not expose: give teacher.arch and teacher.weights instead")
        if features is not None and self.resources.gpus > 1:
            raise _at("loss.features", f"{features.kind} keeps its heads and memory in one process: set "
                      f"resources.gpus to 1 (not {self.resources.gpus})")
        if self.teacher is not None and self.teacher.zoo:
            from ttm import zoo

            trained_on = zoo.get(self.teacher.zoo).dataset
            if trained_on != self.dataset.name:
                raise _at("teacher.zoo", f"{self.teacher.zoo} was trained on {trained_on} (its classes and "
                          f"normalization), not {self.dataset.name}: pick a zoo teacher of {self.dataset.name} "
                          "(`ttm zoo`) or bring your own weights")
        classes = self.dataset.classes
        if classes is not None and self.student.num_classes not in (None, classes):
            raise _at("student.num_classes", f"{self.student.num_classes} classes, but {self.dataset.name} "
                      f"has {classes}")
        return self

    @property
    def num_classes(self) -> int | None:
        return self.student.num_classes or self.dataset.classes


# ---------------------------------------------------------------------------------------------- helpers
_FIELD_MARK = "@field "


def _at(field: str, message: str) -> ValueError:
    """A model-level error that still names its field (pydantic gives model validators no location)."""
    return ValueError(f"{_FIELD_MARK}{field} {message}")


class SpecError(ValueError):
    """A spec that does not validate; `problems` holds (field path, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{f or '<spec>'}: {m}" for f, m in problems))


# The tagged unions of the spec: the field holding one, and its tags in order (pydantic puts the tag in error paths).
_UNIONS: dict[str, list[str]] = {"loss": list(LOSS_KINDS), "schedule": [kind_of(c) for c in SCHEDULES],
                                  "features": [kind_of(c) for c in FEATURE_TERMS]}


def _shown(part: Any, limit: int = 100) -> str:
    """A path part or a value for a message: escaped (no NUL or control characters), cut to `limit`."""
    text = part if isinstance(part, str) else str(part)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + "…"


def _unknown_kind(field: str, tag: Any) -> str:
    kinds = _UNIONS[field]
    close = difflib.get_close_matches(str(tag), kinds, n=1) if isinstance(tag, str) and len(tag) <= 100 else []
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown {field} kind '{_shown(tag, 50)}'{hint} kinds: {', '.join(kinds)}"


def _model_at(raw: tuple[Any, ...], root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    """The spec class whose field `raw[-1]` is, following pydantic's error path `raw` (which names the tag of a
    tagged union after the union's field) from `root` (JobSpec); None where the path leaves the spec's classes."""
    node: Any = root or JobSpec
    for part in raw[:-1]:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = field.annotation if field is not None else None
        else:  # a tagged union: this part is the tag
            node = next((m for m in get_args(node) if isinstance(m, type) and issubclass(m, BaseModel)
                         and "kind" in m.model_fields and kind_of(m) == part), None)
        while get_origin(node) is Annotated:
            node = get_args(node)[0]
        members = [m for m in get_args(node) if m is not type(None)]
        if len(members) == 1 and get_origin(members[0]) is Annotated:
            members = [get_args(members[0])[0]]
        if len(members) == 1:  # X | None: X (a tagged union stays a union: the next part is its tag)
            node = members[0]
        if node is None:
            return None
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _where(raw: tuple[Any, ...]) -> str:
    """How a message names the mapping that holds field raw[-1]: 'a wttm loss', 'train', 'the spec'."""
    parent = [str(p) for p in raw[:-1]]
    if len(parent) >= 2 and parent[-2] in _UNIONS:  # a kd loss, a cosine schedule, crd features
        return f"{parent[-1]} {parent[-2]}" if parent[-2] == "features" else f"a {parent[-1]} {parent[-2]}"
    return ".".join(parent) if parent else "the spec"


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", "≥"), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "≤")}


def _plain_message(e: Any, root: type[BaseModel] | None = None) -> str | None:
    """Our words for pydantic's most common errors: what was given, what is expected, the likely fix; None to keep
    pydantic's message."""
    raw, kind, ctx, given = tuple(e["loc"]), e["type"], e.get("ctx") or {}, e.get("input")
    name = str(raw[-1]) if raw else ""
    if kind == "extra_forbidden":
        model = _model_at(raw, root)
        fields = [f for f in model.model_fields if f != "kind"] if model is not None else []
        close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6) if len(name) <= 100 else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = f" ({_where(raw)} has: {', '.join(fields)})" if fields else ""
        return f"unknown field '{_shown(name, 50)}'{hint}{known}"
    if kind == "missing":
        return f"missing: {_where(raw)} needs {name}"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(given), expected, n=1, cutoff=0.6) if len(str(given)) <= 100 else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"'{_shown(given, 50)}' is not one of {', '.join(expected)}{hint}"
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        bound = ctx.get(key)
        return f"must be {sign} {bound:g}, not {_shown(given, 50)}" if isinstance(bound, (int, float)) else \
            f"must be {sign} {bound}, not {_shown(given, 50)}"
    if kind in ("float_parsing", "int_parsing", "float_type", "int_type"):
        what = "a whole number" if kind.startswith("int") else "a number"
        return f"must be {what}, not " + (f"'{_shown(given, 50)}'" if isinstance(given, str) else _shown(given, 50))
    if kind == "int_from_float":
        return f"must be a whole number, not {given}"
    if kind == "string_too_long":
        return f"at most {ctx.get('max_length')} characters, not {len(str(given))}"
    if kind == "string_too_short":
        return f"at least {ctx.get('min_length')} character(s)"
    return None


def problems_of(err: ValidationError, root: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """Turn pydantic's errors into (dotted field, reason), dropping the union tags pydantic puts in paths; `root` is
    the model validated (JobSpec unless said)."""
    out = []
    for e in err.errors(include_url=False):
        raw = e["loc"]
        loc = [_shown(p) for i, p in enumerate(raw)
               if not (i and raw[i - 1] in _UNIONS and p in _UNIONS[str(raw[i - 1])])]
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(_FIELD_MARK):
            field, msg = msg.removeprefix(_FIELD_MARK).split(" ", 1)
            loc = [*loc, field]
        union = str(raw[-1]) if raw else ""
        plain = _plain_message(e, root)
        if plain is not None:
            msg = plain
        elif e["type"] == "union_tag_invalid" and union in _UNIONS:
            msg, loc = _unknown_kind(union, e.get("ctx", {}).get("tag")), [*loc, "kind"]
        elif e["type"] == "union_tag_not_found" and union in _UNIONS:
            msg, loc = f"missing: give one of {', '.join(_UNIONS[union])}", [*loc, "kind"]
        out.append((".".join(loc), msg))
    return out


def _too_deep(data: Any) -> SpecError | None:
    """The error for mappings/lists nested beyond MAX_DEPTH or holding more than MAX_VALUES values, found without
    recursion (a deep spec would overflow pydantic's and our own stack); None for a spec of sane shape. Cyclic or
    shared objects stop at a limit too."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    seen = 0
    while stack:
        node, path = stack.pop()
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            seen += 1
            if seen > MAX_VALUES:
                return SpecError([("", f"holds more than {MAX_VALUES} values: a spec is a few dozen")])
            if isinstance(child, (dict, list)):
                if len(path) + 1 >= MAX_DEPTH:
                    where = ".".join(_shown(p, 20) for p in (*path, key)[:6]) + ".…"
                    return SpecError([(_shown(path[0] if path else key),
                                       f"nested more than {MAX_DEPTH} levels deep (at {where}): a spec is a few "
                                       "levels of mappings; flatten it")])
                stack.append((child, (*path, key)))
    return None


def parse_spec(data: dict[str, Any]) -> JobSpec:
    deep = _too_deep(data)
    if deep is not None:
        raise deep
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(problems_of(err)) from None
    except RecursionError:  # the depth check above makes this unreachable for plain JSON; kept as a last guard
        raise SpecError([("", "nested too deeply: a spec is a few levels of mappings")]) from None


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-3, which YAML 1.1 reads as a string


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the spec mapping `data` with each `FIELD=VALUE` of `overrides` (`--set` on the command line) set:
    FIELD is a dotted path (train.lr, loss.beta, dataset.subset.train), VALUE is read as YAML (0.1 and 1e-3 are
    numbers, kd a string, `{kind: kd, temperature: 4}` a whole mapping) and `null` removes the field."""
    import yaml

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError([("", f"--set {_shown(item)!r}: expected FIELD=VALUE, e.g. train.lr=0.1 or "
                                  "loss.kind=wttm")])
        field = ".".join(parts)
        try:
            value = float(raw) if _NUMBER.fullmatch(raw.strip()) else yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise SpecError([(field, f"--set {_shown(item)!r}: the value is not YAML ({err}); quote it")]) from None
        out = set_field(out, field, value, f"--set {_shown(item)!r}: ")
    return out


def set_field(data: dict[str, Any], field: str, value: Any, context: str = "") -> dict[str, Any]:
    """A copy of the spec mapping `data` with the dotted `field` set to `value` (None removes it); the mappings on
    the way are made where missing. `context` starts the message of a refusal (a path through a non-mapping)."""
    out = copy.deepcopy(data)
    parts = field.split(".")
    node = out
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError([(".".join(parts[:i + 1]), f"{context}{'.'.join(parts[:i + 1])} is {_shown(child)!r}, "
                              "not a mapping")])
        node = child
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return out


def load_specs(path: str | Path, overrides: Sequence[str] = ()) -> list[JobSpec]:
    """Read a YAML or JSON spec file: one job, or several YAML documents (`---`) run in order, e.g. a teacher
    trained with `ce` and then a student whose `teacher: {job: <teacher's name>}` refers to it.

    Relative paths in a spec are relative to the file's directory. Errors name the document when there are several.
    `overrides` (FIELD=VALUE, see apply_overrides) change every document before it is checked.
    """
    import yaml

    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except FileNotFoundError:
        raise SpecError([("", f"no such spec file: {path}")]) from None
    except yaml.MarkedYAMLError as err:  # the line and column the reader stopped at, and what it expected there
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        tabs = "; YAML indents with spaces, not tabs" if "'\\t'" in str(err.problem) else ""
        raise SpecError([("", f"{path} is not valid YAML/JSON{where}: {err.problem}"
                              + (f" ({err.context})" if err.context else "") + tabs)]) from None
    except yaml.YAMLError as err:
        raise SpecError([("", f"{path} is not valid YAML/JSON: {err}")]) from None
    except RecursionError:
        raise SpecError([("", f"{path} is nested too deeply to read")]) from None
    if not docs:
        raise SpecError([("", f"{path} is empty")])
    specs = []
    for i, data in enumerate(docs):
        where = f"document {i + 1}: " if len(docs) > 1 else ""
        if not isinstance(data, dict):
            raise SpecError([("", f"{where}{path} must hold a mapping at the top level")])
        try:
            specs.append(resolve_relative_paths(parse_spec(apply_overrides(data, overrides)), path.parent))
        except SpecError as err:
            raise SpecError([(f, where + m) for f, m in err.problems]) from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpecError([("name", f"the jobs of {path} need distinct names, got {names}")])
    return specs


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Read a spec file holding exactly one job."""
    specs = load_specs(path, overrides)
    if len(specs) != 1:
        raise SpecError([("", f"{path} holds {len(specs)} jobs; expected one")])
    return specs[0]


def resolve_relative_paths(spec: JobSpec, base: Path) -> JobSpec:
    def fix(p: str | None) -> str | None:
        if p is None or p.startswith("art_") or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    t = spec.teacher
    if t is not None:
        t.weights, t.torchscript = fix(t.weights), fix(t.torchscript)
    spec.dataset.path = fix(spec.dataset.path)
    spec.dataset.root = fix(spec.dataset.root)
    return spec
