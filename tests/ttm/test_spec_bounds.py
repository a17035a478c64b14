"""Hostile values in a spec (non-finite floats, NUL characters, huge integers, deep nesting) are refused with an
error naming the field; the default step schedule scales to any number of epochs."""
from __future__ import annotations

import math

import pytest

from ttm.spec import MAX_DEPTH, SpecError, paper_milestones, parse_spec

BASE = {"student": {"arch": "resnet20"}, "dataset": {"name": "cifar100"}}
TEACHER = {"arch": "resnet56", "weights": "t.pth"}


def problems(data):
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    return dict(e.value.problems)


def with_at(path: str, value):
    """BASE with `value` written at the dotted `path` (mappings created on the way)."""
    data = {k: dict(v) for k, v in BASE.items()}
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return data


# ---------------------------------------------------------------------------------------------- default milestones
def test_paper_milestones_scale_to_any_length():
    assert paper_milestones(240) == [150, 180, 210]
    assert paper_milestones(100) == [63, 75, 88]
    assert paper_milestones(10) == [6, 8, 9]
    assert (paper_milestones(3), paper_milestones(2), paper_milestones(1)) == ([2], [1], [])
    for epochs in range(1, 1001):
        ms = paper_milestones(epochs)
        assert all(1 <= m < epochs for m in ms) and ms == sorted(set(ms)), epochs
        assert len(ms) == 3 or epochs < 20, epochs  # only short runs lose a decay


def test_a_spec_without_schedule_fits_its_epochs():
    short = parse_spec(with_at("train.epochs", 3))
    assert (short.train.schedule.kind, short.train.schedule.milestones) == ("step", [2])
    assert parse_spec(BASE).train.schedule.milestones == [150, 180, 210]
    assert parse_spec(with_at("train", {"epochs": 100, "schedule": {"kind": "step"}})).train.schedule.milestones \
        == [63, 75, 88]
    # the stored spec says what it ran, and reads back the same
    dumped = short.model_dump(mode="json")
    assert dumped["train"]["schedule"]["milestones"] == [2]
    assert parse_spec(dumped) == short
    # written milestones and the presets' are kept as written
    mine = parse_spec(with_at("train", {"epochs": 20, "schedule": {"kind": "step", "milestones": [5, 20]}}))
    assert mine.train.schedule.milestones == [5, 20]
    preset = parse_spec({"preset": "paper/cifar100/resnet56-resnet20/kd", "teacher": {"weights": "t.pth"},
                         "train": {"epochs": 240}})
    assert preset.train.schedule.milestones == [150, 180, 210]


def test_a_written_milestone_past_epochs_is_an_error():
    found = problems(with_at("train", {"epochs": 3, "schedule": {"kind": "step", "milestones": [2, 4]}}))
    assert "milestone 4 is past epochs=3" in found["train.schedule.milestones"]
    assert "leave them out" in found["train.schedule.milestones"]


# ---------------------------------------------------------------------------------------------- non-finite floats
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "NaN", "Infinity"])
@pytest.mark.parametrize("path", ["train.lr", "train.weight_decay", "train.momentum", "loss.beta", "loss.gamma",
                                  "loss.ce_weight"])
def test_non_finite_floats_are_refused(path, bad):
    data = with_at(path, bad)
    data["teacher"] = TEACHER
    data["loss"] = {"kind": "wttm", "gamma": 0.3, "beta": 1.0, **data.get("loss", {})}
    found = problems(data)
    assert path in found and "finite" in found[path], found


@pytest.mark.parametrize("path, value", [
    ("train.schedule", {"kind": "step", "factor": math.nan}),
    ("train.schedule", {"kind": "cosine", "min_lr": math.inf}),
])
def test_non_finite_floats_in_schedules_are_refused(path, value):
    field = f"{path}.{next(k for k in value if k != 'kind')}"
    assert "finite" in problems(with_at(path, value))[field]


# ---------------------------------------------------------------------------------------------- NUL characters
@pytest.mark.parametrize("path", ["name", "preset", "student.arch", "dataset.root", "teacher.weights",
                                  "teacher.arch", "teacher.job"])
def test_a_nul_character_is_refused_naming_the_field(path):
    data = with_at(path, "a\x00b")
    data["loss"] = {"kind": "kd"}
    if path.startswith("teacher"):
        data["teacher"] = {**TEACHER, **data["teacher"]}
    else:
        data["teacher"] = TEACHER
    found = problems(data)
    assert "NUL" in found[path], found
    assert all("\x00" not in f + m for f, m in found.items())


def test_a_nul_in_an_unknown_key_or_kind_is_escaped_in_the_error():
    found = problems({**BASE, "x\x00y": 1, "loss": {"kind": "w\x00"}})
    assert found["x\\x00y"].startswith("unknown field 'x\\x00y' (the spec has: name,")
    assert all("\x00" not in f + m for f, m in found.items())


# ---------------------------------------------------------------------------------------------- integer bounds
@pytest.mark.parametrize("path, value", [
    ("train.num_workers", 65), ("train.num_workers", -1),
    ("dataset.image_size", 0), ("dataset.image_size", 4097),
    ("dataset.subset.train", 0), ("dataset.subset.test", 10**9 + 1),
    ("resources.gpus", 65), ("resources.gpus", -1),
    ("train.epochs", 0), ("train.batch_size", 0),
    ("student.num_classes", 1), ("student.num_classes", 2**64),
    ("train.seed", 2**63), ("train.seed", 10**400),
    ("train.schedule", {"kind": "cosine", "warmup_epochs": 2**64}),
])
def test_integers_have_outer_bounds(path, value):
    found = problems(with_at(path, value))
    field = path if not isinstance(value, dict) else path + ".warmup_epochs"
    assert field in found, found


def test_generous_values_inside_the_bounds_pass():
    spec = parse_spec({**BASE, "train": {"num_workers": 64, "seed": 2**63 - 1, "epochs": 3},
                       "dataset": {"name": "synthetic", "num_classes": 2, "image_size": 4096,
                                   "subset": {"train": 10**9, "test": 1}},
                       "resources": {"gpus": 64}})
    assert spec.dataset.subset_sizes == (10**9, 1)
    assert parse_spec(BASE).dataset.subset_sizes == (None, None)


def test_strings_have_length_limits():
    assert "name" in problems({**BASE, "name": "x" * 201})
    assert "dataset.root" in problems(with_at("dataset.root", "/" * 5000))


# ---------------------------------------------------------------------------------------------- nesting
def nested(levels: int, leaf=1):
    data = leaf
    for _ in range(levels):
        data = {"x": data}
    return data


def test_deep_nesting_is_a_spec_error_not_a_recursion_error():
    found = problems({**BASE, "dataset": nested(1000)})
    assert f"more than {MAX_DEPTH} levels" in found["dataset"] and "dataset.x.x" in found["dataset"]
    deep_list: object = [1]
    for _ in range(40):
        deep_list = [deep_list]
    lists = problems({**BASE, "train": {"schedule": {"kind": "step", "milestones": deep_list}}})
    assert "levels" in lists["train"]
    # a cyclic object stops at the limit as well
    loop: dict = {}
    loop["x"] = loop
    assert "levels" in problems({**BASE, "dataset": loop})["dataset"]


def test_shared_subtrees_that_explode_are_refused():
    wide: object = [1] * 10
    for _ in range(8):  # 10**8 values in a few hundred bytes, as YAML aliases can write
        wide = [wide] * 10
    assert "values" in problems({**BASE, "dataset": {"name": "cifar100", "x": wide}})[""]


def test_ordinary_nesting_still_reports_pydantic_errors():
    assert problems({**BASE, "dataset": nested(MAX_DEPTH - 2)})["dataset.x"]


def test_load_specs_refuses_deep_yaml(tmp_path):
    from ttm.spec import load_specs

    f = tmp_path / "deep.yaml"
    f.write_text("student: {arch: resnet20}\ndataset: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError):
        load_specs(f)
