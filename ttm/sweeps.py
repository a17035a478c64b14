"""The sweep spec: a search over γ, β or any other field of a job spec, as one request (POST /v1/sweeps,
`ttm sweep`). Torch-free and Optuna-free: the client checks a file with it, the server (service/sweeps.py) runs the
search with Optuna.

    name: wttm-beta            # trials are named <name>-t<number>
    job: {...}                 # the job spec every trial starts from
    space:                     # dotted spec fields, each a list of values or a range
      loss.gamma: {uniform: [0.1, 0.8]}
      loss.beta: {log_uniform: [0.5, 100]}
      loss.kind: [ttm, wttm]
    strategy: tpe              # grid (every combination of lists, in order), random, tpe
    trials: 12                 # the budget (grid: at most the number of combinations)
    max_running: 2             # trials queued or running at once
    metric: val/top1           # what the best trial is chosen on: a validation metric, never the test set
    pruning: {kind: median}    # stop weak trials from their per-epoch metric (median, asha), or leave it out
    notify: {url: https://ci.example/hook}   # called, signed, when the sweep ends (sweep.finished)

A job without `dataset.validation` gets `{fraction: 0.1}`: a sweep chooses on held-out training samples, and only
the chosen trial's test accuracy is reported.
"""
from __future__ import annotations

import builtins
import itertools
import math
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ttm.spec import (
    MAX_NAME,
    JobSpec,
    NotifySpec,
    SpecError,
    Strict,
    _at,
    _too_deep,
    parse_spec,
    problems_of,
    set_field,
)

MAX_TRIALS = 500
MAX_DIMENSIONS = 16
MAX_CHOICES = 100
MAX_CHECKED = 200  # listed values and range ends of a space, each admitted as a trial's job at submit
DEFAULT_VALIDATION = {"fraction": 0.1, "seed": 0}
Scalar = bool | int | float | str


class Uniform(Strict):
    uniform: tuple[float, float] = Field(description="[low, high]: any float between")


class LogUniform(Strict):
    log_uniform: tuple[float, float] = Field(description="[low, high], low > 0: uniform in log space")


class IntRange(Strict):
    # (builtins: inside the class body `int` is this field)
    int: tuple[builtins.int, builtins.int] = Field(description="[low, high]: any whole number between, both included")


Dimension = list[Scalar] | Uniform | LogUniform | IntRange


class PruningSpec(Strict):
    kind: Literal["median", "asha"] = Field(description="median: stop a trial whose metric at an epoch is below the "
                                                        "median of earlier trials at that epoch; asha: successive "
                                                        "halving (keeps the best third at each rung)")
    warmup_epochs: int = Field(1, ge=0, le=10_000, description="never stop a trial before this epoch")
    startup_trials: int = Field(2, ge=0, le=MAX_TRIALS, description="median: trials that finish unpruned first")


class SweepSpec(Strict):
    name: str = Field("sweep", min_length=1, max_length=MAX_NAME)
    job: dict[str, Any] = Field(description="the job spec each trial starts from")
    space: dict[str, Dimension] = Field(min_length=1, max_length=MAX_DIMENSIONS,
                                        description="dotted job-spec field → a list of values or a range")
    strategy: Literal["grid", "random", "tpe"] = "tpe"
    trials: int | None = Field(None, ge=1, le=MAX_TRIALS, description="the budget; default: the grid's size "
                                                                       "(grid), else 20")
    max_running: int = Field(2, ge=1, le=64, description="trials queued or running at once")
    group: int = Field(4, ge=1, le=16, description="at most this many trials train as one student group on one "
                                                   "worker (one process, one data pipeline, one teacher forward per "
                                                   "batch) when they share the data, teacher, seed and batch plan; "
                                                   "the queue counts a group as one job. 1: each trial alone")
    metric: Literal["val/top1", "val/top5"] = "val/top1"
    pruning: PruningSpec | None = None
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the sampler's seed")
    notify: NotifySpec | None = Field(None, description="a URL the server calls when the sweep ends (its trials call "
                                                        "their job's notify.url, if any)")

    @field_validator("space", mode="before")
    @classmethod
    def _shapes(cls, space: Any) -> Any:
        """Each value as one of the four shapes, with one message naming the field when it is none of them."""
        if not isinstance(space, dict):
            return space
        out = {}
        for key, dim in space.items():
            kinds: dict[str, type[Strict]] = {"uniform": Uniform, "log_uniform": LogUniform, "int": IntRange}
            if isinstance(dim, dict) and len(dim) == 1 and next(iter(dim)) in kinds:
                kind = next(iter(dim))
                low_high = dim[kind]
                ok = (isinstance(low_high, list) and len(low_high) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in low_high))
                if not ok or (kind == "int" and not all(isinstance(v, int) for v in low_high)):
                    what = "whole numbers" if kind == "int" else "numbers"
                    raise _at(str(key), f"{kind} takes [low, high], two finite {what}, not {low_high!r:.80}")
                dim = kinds[kind].model_validate(dim)
            elif isinstance(dim, list):
                bad = next((v for v in dim if not _scalar(v)), None)
                if bad is not None or None in dim:
                    raise _at(str(key), f"each value is a finite number, true/false or a word of at most {MAX_NAME} "
                                        f"characters without NUL; not {bad!r:.80}")
            else:
                raise _at(str(key), f"give a list of values, or a range: {{uniform: [low, high]}}, "
                                    f"{{log_uniform: [low, high]}} or {{int: [low, high]}}; not {dim!r:.80}")
            out[key] = dim
        return out

    @field_validator("space")
    @classmethod
    def _dimensions(cls, space: dict[str, Any]) -> dict[str, Any]:
        for key, dim in space.items():
            if not key or len(key) > MAX_NAME or not all(key.split(".")) or not key.replace(".", "").replace(
                    "_", "").isalnum():
                raise ValueError(f"{key[:MAX_NAME]!r} is not a dotted field of a job spec (e.g. loss.beta)")
            if key == "name" or key.split(".")[0] in ("teacher", "resources", "notify", "output"):
                raise _at(key, "a sweep searches the recipe, not where a trial runs or what teaches it: set it in "
                               "job")
            if isinstance(dim, list) and not 1 <= len(dim) <= MAX_CHOICES:
                raise _at(key, f"give 1 to {MAX_CHOICES} values, not {len(dim)}")
            low_high = _range(dim)
            if low_high is not None and not low_high[0] < low_high[1]:
                raise _at(key, f"low must be below high, not {list(low_high)}")
            if isinstance(dim, LogUniform) and dim.log_uniform[0] <= 0:
                raise _at(key, f"log_uniform needs low > 0, not {dim.log_uniform[0]}")
        return space

    @model_validator(mode="after")
    def _budget(self) -> SweepSpec:
        if self.strategy == "grid":
            ranges = [key for key, dim in self.space.items() if not isinstance(dim, list)]
            if ranges:
                raise _at("strategy", f"grid takes lists of values, and {', '.join(ranges)} is a range: list "
                                      "its values, or use random or tpe")
            if grid_size(self) > MAX_TRIALS:
                raise _at("space", f"a grid of {grid_size(self):,} points is more than a sweep runs "
                                   f"({MAX_TRIALS}): list fewer values, or use random or tpe")
        points = len(corner_points(self))
        if points > MAX_CHECKED:
            raise _at("space", f"{points} values and range ends in all, over {MAX_CHECKED}: each is checked "
                               "against the job when the sweep is submitted; list fewer, or give ranges")
        return self

    @property
    def budget(self) -> int:
        if self.strategy == "grid":
            size = grid_size(self)
            return min(self.trials or size, size)
        return self.trials or 20


def _scalar(v: Any) -> bool:
    if isinstance(v, str):
        return len(v) <= MAX_NAME and "\x00" not in v
    return isinstance(v, (bool, int)) or (isinstance(v, float) and math.isfinite(v))


def _range(dim: Dimension) -> Any:
    """(low, high) of a range; None for a list of values."""
    return (dim.uniform if isinstance(dim, Uniform) else dim.log_uniform if isinstance(dim, LogUniform) else
            dim.int if isinstance(dim, IntRange) else None)


def grid_size(sweep: SweepSpec) -> int:
    size = 1
    for dim in sweep.space.values():
        size *= len(dim) if isinstance(dim, list) else 1
    return size


def grid_points(sweep: SweepSpec) -> list[dict[str, Scalar]]:
    """Every combination of the lists, the first key varying slowest, in the order they are written."""
    keys = list(sweep.space)
    lists = [sweep.space[k] for k in keys]
    return [dict(zip(keys, values)) for values in itertools.product(*lists)]  # type: ignore[arg-type]


def trial_spec(sweep: SweepSpec, params: dict[str, Any], number: int) -> dict[str, Any]:
    """The job spec of trial `number`: the sweep's job with `params` set and the trial's name."""
    data = job_with_validation(sweep.job)
    for key, value in params.items():
        data = set_field(data, key, value)
    data["name"] = f"{sweep.name}-t{number}"
    return data


def job_with_validation(job: dict[str, Any]) -> dict[str, Any]:
    """The sweep's job, holding out a validation split if it does not say one (selection never sees the test set)."""
    data = dict(job)
    dataset = data.get("dataset")
    if isinstance(dataset, dict) and dataset.get("validation") is None:
        data["dataset"] = {**dataset, "validation": dict(DEFAULT_VALIDATION)}
    return data


def corner_points(sweep: SweepSpec) -> list[tuple[str, Scalar]]:
    """(field, value) pairs a submit checks: every listed value and both ends of every range."""
    out: list[tuple[str, Scalar]] = []
    for key, dim in sweep.space.items():
        low_high = _range(dim)
        out += [(key, v) for v in dim] if isinstance(dim, list) else [(key, low_high[0]), (key, low_high[1])]
    return out


def _nul_at(data: Any) -> str | None:
    """The dotted place of the first NUL character in a key or a string of `data`, or None."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, path = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            where = f"{path}.{key}" if path else str(key)
            if (isinstance(key, str) and "\x00" in key) or (isinstance(child, str) and "\x00" in child):
                return where.replace("\x00", "\\x00")
            stack.append((child, where))
    return None


def check_sweep(data: Any) -> tuple[SweepSpec, JobSpec]:
    """The sweep, and its job as written; a SpecError naming the field otherwise (`job.loss.beta`,
    `space.loss.beta`). Every point of a grid, or every listed value and each end of each range, is tried against the
    job spec, so a value no trial could run is refused now, not an hour into the sweep."""
    if not isinstance(data, dict):
        raise SpecError([("", f"a sweep is a mapping with job and space, not {type(data).__name__}")])
    deep = _too_deep(data)
    if deep is not None:
        raise deep
    nul = _nul_at(data)
    if nul is not None:  # anywhere, the job's own name included (a trial's name replaces it): PostgreSQL stores none
        raise SpecError([(nul, "contains a NUL character (\\x00), which cannot be stored: remove it")])
    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(problems_of(err, SweepSpec)) from None
    try:
        first = parse_spec(trial_spec(sweep, {}, 0))
    except SpecError as err:
        raise SpecError([(f"job.{f}" if f else "job", m) for f, m in err.problems]) from None
    points = grid_points(sweep) if sweep.strategy == "grid" else [{k: v} for k, v in corner_points(sweep)]
    for params in points:
        try:
            parse_spec(trial_spec(sweep, params, 0))
        except SpecError as err:
            key = next(iter(params)) if len(params) == 1 else next((k for k in params if any(
                f == k or f.startswith(k + ".") for f, _ in err.problems)), next(iter(params)))
            shown = ", ".join(f"{k} = {v!r}" for k, v in params.items())
            raise SpecError([(f"space.{key}", f"with {shown}: " + "; ".join(
                f"{f}: {m}" if f and f != key else m for f, m in err.problems))]) from None
    return sweep, first


# ---------------------------------------------------------------------------------------------- student groups
# What every member must share, as dotted fields of the spec: one pipeline (the data set with its subset, validation
# split, augmentation and image size; the seed; the batch size and what is done with the ragged last batch; the
# number of epochs), one teacher, and one device and precision for every network. The rest may differ: the student,
# the loss and its γ/β, the optimizer, lr and schedule, the exports.
SHARED_FIELDS = ("teacher", "dataset", "train.seed", "train.batch_size", "train.drop_last", "train.epochs",
                 "train.fast_path", "train.device", "train.precision", "train.compile", "resources.gpus")


def group_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first SHARED_FIELDS leaf in which two specs (as JSON) differ, with both values; None: they can train in
    one group (the worker forms groups with this, from the specs its jobs were admitted with)."""
    for name in SHARED_FIELDS:
        where = _first_difference(_leaf(a, name), _leaf(b, name), name)
        if where is not None:
            return where
    return None


def _leaf(dump: dict[str, Any], dotted: str) -> Any:
    node: Any = dump
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    """The dotted path of the first leaf where a and b differ, with both values; None if they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    return None if a == b else (path, a, b)
