"""The job spec: one pydantic model that the CLI, the API, the database and the worker all share.

A spec names a teacher, a student, a dataset, a loss and a recipe. `preset:` fills any of those from the paper's
tables (see `ttm.presets`); fields written in the spec win over the preset's. Unknown fields are errors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ttm.registry import DATASET_CLASSES, DATASET_CHANNELS, is_known_arch, known_archs_hint


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ---------------------------------------------------------------------------------------------- models
class TeacherSpec(Strict):
    """Exactly one source: `arch` + `weights`, `torchscript`, or `job` (the best student of a finished job)."""

    arch: str | None = None
    weights: str | None = Field(None, description="a path, or an artifact id (art_...) on the server")
    torchscript: str | None = Field(None, description="a TorchScript archive: path or artifact id")
    job: str | None = Field(None, description="id of a finished job whose best student becomes this teacher")
    format: Literal["auto", "state_dict", "safetensors"] = "auto"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str | None) -> str | None:
        if v is not None and not is_known_arch(v):
            raise ValueError(f"unknown architecture {v!r}; {known_archs_hint()}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherSpec":
        sources = [s for s in ("weights", "torchscript", "job") if getattr(self, s)]
        if len(sources) != 1:
            raise ValueError("give exactly one of weights (with arch), torchscript or job; got "
                             + (", ".join(sources) or "none"))
        if self.weights and not self.arch:
            raise ValueError("weights need an arch (e.g. arch: resnet56)")
        if (self.torchscript or self.job) and self.arch:
            raise ValueError("arch is only for weights: a TorchScript archive or a job carries its own")
        return self


class StudentSpec(Strict):
    arch: str
    num_classes: int | None = Field(None, gt=0, description="defaults to the dataset's class count")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if not is_known_arch(v):
            raise ValueError(f"unknown architecture {v!r}; {known_archs_hint()}")
        return v


# ---------------------------------------------------------------------------------------------- data
class SubsetSpec(Strict):
    train: int | None = Field(None, gt=0, description="keep the first N training samples")
    test: int | None = Field(None, gt=0, description="keep the first M test samples")


DatasetName = Literal["cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "digits", "imagefolder", "synthetic"]


class DatasetSpec(Strict):
    name: DatasetName
    root: str | None = Field(None, description="data root in torchvision's layout; default: TTM_DATA_ROOT")
    path: str | None = Field(None, description="imagefolder only: a directory with train/ and val/")
    num_classes: int | None = Field(None, gt=0, description="imagefolder: checked against the tree; "
                                    "synthetic: the number of random labels (default 100)")
    image_size: int = Field(32, gt=0, description="imagefolder: images are resized to this; synthetic: their size")
    subset: SubsetSpec | None = None
    augment: bool = True
    download: bool = Field(False, description="let torchvision download a missing dataset")

    @model_validator(mode="after")
    def _imagefolder_needs_path(self) -> "DatasetSpec":
        if self.name == "imagefolder" and not self.path:
            raise ValueError("imagefolder needs path: a directory holding train/ and val/")
        if self.name != "imagefolder" and self.path:
            raise ValueError(f"path is for imagefolder; {self.name} is found by name under the data root")
        if self.name not in ("imagefolder", "synthetic") and self.num_classes:
            raise ValueError(f"num_classes is for imagefolder and synthetic; {self.name} knows its own")
        return self

    @property
    def classes(self) -> int | None:
        if self.name == "synthetic":
            return self.num_classes or 100
        return self.num_classes if self.name == "imagefolder" else DATASET_CLASSES[self.name]

    @property
    def channels(self) -> int:
        return DATASET_CHANNELS.get(self.name, 3)


# ---------------------------------------------------------------------------------------------- losses
Gamma = Annotated[float, Field(gt=0, le=1, description="γ = 1/T, in (0, 1]")]
NonNeg = Annotated[float, Field(ge=0)]
Temperature = Annotated[float, Field(gt=0, description="T > 0")]


class CELoss(Strict):
    kind: Literal["ce"]


class KDLoss(Strict):
    """Hinton: ce_weight·CE + kd_weight·T²·KL(p_t^T ‖ q^T). Defaults: T = 4, λ = 0.9 (the paper's baseline)."""

    kind: Literal["kd"]
    temperature: Temperature = 4.0
    kd_weight: NonNeg = 0.9
    ce_weight: NonNeg = 0.1


class TTMLoss(Strict):
    """ce_weight·CE + β·KL(p_t^T ‖ q), no temperature on the student."""

    kind: Literal["ttm"]
    gamma: Gamma
    beta: NonNeg
    ce_weight: NonNeg = 1.0


class WTTMLoss(Strict):
    """ce_weight·CE + β·U_γ(p_t)·KL(p_t^T ‖ q). ce_weight 0 trains without labels (paper Table 6)."""

    kind: Literal["wttm"]
    gamma: Gamma
    beta: NonNeg
    ce_weight: NonNeg = 1.0


class DKDLoss(Strict):
    """Decoupled KD (Zhao et al. 2022): ce_weight·CE + warm-up·(α·TCKD + β·NCKD)."""

    kind: Literal["dkd"]
    alpha: NonNeg = 1.0
    beta: NonNeg = 8.0
    temperature: Temperature = 4.0
    ce_weight: NonNeg = 1.0
    warmup_epochs: int = Field(20, ge=0)


class DISTLoss(Strict):
    """DIST (Huang et al. 2022): ce_weight·CE + inter·(1 − Pearson over classes) + intra·(1 − Pearson over batch)."""

    kind: Literal["dist"]
    inter_weight: NonNeg = 2.0
    intra_weight: NonNeg = 2.0
    temperature: Temperature = 4.0
    ce_weight: NonNeg = 1.0


LossSpec = Annotated[Union[CELoss, KDLoss, TTMLoss, WTTMLoss, DKDLoss, DISTLoss], Field(discriminator="kind")]
DISTILLATION_KINDS = {"kd", "ttm", "wttm", "dkd", "dist"}


# ---------------------------------------------------------------------------------------------- recipe
class StepSchedule(Strict):
    kind: Literal["step"]
    milestones: list[int] = Field(default_factory=lambda: [150, 180, 210])
    factor: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])) or any(m <= 0 for m in v):
            raise ValueError("milestones must be positive and strictly increasing")
        return v


class CosineSchedule(Strict):
    kind: Literal["cosine"]
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)


class ConstantSchedule(Strict):
    kind: Literal["constant"]


Schedule = Annotated[Union[StepSchedule, CosineSchedule, ConstantSchedule], Field(discriminator="kind")]


class TrainSpec(Strict):
    epochs: int = Field(240, gt=0, le=10_000)
    batch_size: int = Field(64, gt=0, le=65_536)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, le=1e4)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Schedule = Field(default_factory=lambda: StepSchedule(kind="step"))
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    fast_path: Literal["auto", "on", "off"] = Field(
        "auto", description="device-resident data with on-device augmentation (auto: where it fits)")
    compile: bool = Field(False, description="torch.compile the student and teacher")
    num_workers: int = Field(2, ge=0, description="DataLoader workers (DataLoader path only)")
    drop_last: bool = Field(True, description="static shapes: drop the ragged last batch")

    @model_validator(mode="after")
    def _schedule_fits(self) -> "TrainSpec":
        s = self.schedule
        if isinstance(s, StepSchedule) and s.milestones and s.milestones[-1] > self.epochs:
            raise ValueError(f"schedule milestone {s.milestones[-1]} is past epochs={self.epochs}")
        if getattr(s, "warmup_epochs", 0) >= self.epochs:
            raise ValueError(f"warmup_epochs must be below epochs={self.epochs}")
        return self


class ResourcesSpec(Strict):
    gpus: int = Field(1, ge=0, le=64, description="GPUs for one job; N > 1 runs under torchrun (DDP)")
    queue: Literal["gpu", "cpu", "auto"] = Field("auto", description="auto: gpu when gpus > 0 and CUDA is there")


class OutputSpec(Strict):
    torchscript: bool = Field(False, description="also export the best student as TorchScript")


# ---------------------------------------------------------------------------------------------- the job
class JobSpec(Strict):
    name: str = Field("job", min_length=1, max_length=200)
    preset: str | None = Field(None, description="e.g. paper/cifar100/resnet56-resnet20/wttm; fills missing fields")
    teacher: TeacherSpec | None = None
    student: StudentSpec
    dataset: DatasetSpec
    loss: LossSpec = Field(default_factory=lambda: CELoss(kind="ce"))
    train: TrainSpec = Field(default_factory=TrainSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset"):
            from ttm.presets import expand_preset  # presets import this module's types

            data = expand_preset(data)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "JobSpec":
        if self.loss.kind in DISTILLATION_KINDS and self.teacher is None:
            raise _at("teacher", f"loss {self.loss.kind} distills from a teacher: add teacher")
        if self.loss.kind == "ce" and self.teacher is not None:
            raise _at("teacher", "loss ce trains without a teacher: remove teacher, or pick kd/ttm/wttm/dkd/dist")
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


def problems_of(err: ValidationError) -> list[tuple[str, str]]:
    """Turn pydantic's errors into (dotted field, reason), dropping the union tags pydantic puts in paths."""
    out = []
    for e in err.errors(include_url=False):
        loc = [str(p) for p in e["loc"] if not (isinstance(p, str) and p.endswith("Loss") or p in _UNION_TAGS)]
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(_FIELD_MARK):
            field, msg = msg.removeprefix(_FIELD_MARK).split(" ", 1)
            loc = [*loc, field]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append((".".join(loc), msg))
    return out


_UNION_TAGS = {"ce", "kd", "ttm", "wttm", "dkd", "dist", "step", "cosine", "constant"}


def parse_spec(data: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(problems_of(err)) from None


def load_specs(path: str | Path) -> list[JobSpec]:
    """Read a YAML or JSON spec file: one job, or several YAML documents (`---`) run in order, e.g. a teacher
    trained with `ce` and then a student whose `teacher: {job: <teacher's name>}` refers to it.

    Relative paths in a spec are relative to the file's directory. Errors name the document when there are several.
    """
    import yaml

    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except FileNotFoundError:
        raise SpecError([("", f"no such spec file: {path}")]) from None
    except yaml.YAMLError as err:
        raise SpecError([("", f"{path} is not valid YAML/JSON: {err}")]) from None
    if not docs:
        raise SpecError([("", f"{path} is empty")])
    specs = []
    for i, data in enumerate(docs):
        where = f"document {i + 1}: " if len(docs) > 1 else ""
        if not isinstance(data, dict):
            raise SpecError([("", f"{where}{path} must hold a mapping at the top level")])
        try:
            specs.append(resolve_relative_paths(parse_spec(data), path.parent))
        except SpecError as err:
            raise SpecError([(f, where + m) for f, m in err.problems]) from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpecError([("name", f"the jobs of {path} need distinct names, got {names}")])
    return specs


def load_spec(path: str | Path) -> JobSpec:
    """Read a spec file holding exactly one job."""
    specs = load_specs(path)
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
