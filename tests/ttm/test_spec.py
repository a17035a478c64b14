"""The job spec: presets, validation messages naming the field, unknown fields, multi-document files."""
from __future__ import annotations

import pytest

from ttm.presets import PRESETS
from ttm.spec import SpecError, load_specs, parse_spec

TEACHER = {"arch": "resnet56", "weights": "t.pth"}


def problems(data):
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    return dict(e.value.problems)


def test_preset_fills_the_paper_recipe_and_spec_fields_win():
    spec = parse_spec({"preset": "paper/cifar100/resnet56-resnet20/wttm", "teacher": {"weights": "t.pth"}})
    assert (spec.teacher.arch, spec.student.arch, spec.dataset.name) == ("resnet56", "resnet20", "cifar100")
    assert (spec.loss.kind, spec.loss.gamma, spec.loss.beta) == ("wttm", 0.3, 1.5)
    assert (spec.train.epochs, spec.train.batch_size, spec.train.lr) == (240, 64, 0.05)
    assert spec.train.schedule.milestones == [150, 180, 210]
    over = parse_spec({"preset": "paper/cifar100/resnet56-resnet20/wttm", "teacher": {"weights": "t.pth"},
                       "loss": {"beta": 2.0}, "train": {"epochs": 10, "schedule": {"kind": "cosine"}}})
    assert (over.loss.gamma, over.loss.beta, over.train.epochs, over.train.schedule.kind) == (0.3, 2.0, 10, "cosine")


def test_presets_cover_the_papers_tables():
    pairs = {name.split("/")[2] for name in PRESETS if name.startswith("paper/cifar100/")}
    assert len(pairs) == 13
    for name in PRESETS:
        if name.startswith("paper/cifar100/") and not name.endswith("wttm_noce"):
            student = name.split("/")[2].split("-")[1]
            small = student in {"MobileNetV2", "ShuffleV1", "ShuffleV2"}
            assert PRESETS[name]["train"]["lr"] == (0.01 if small else 0.05)
    assert sum(n.endswith("/wttm_noce") for n in PRESETS) == 7
    assert PRESETS["paper/cifar100/resnet32x4-ShuffleV2/ttm"]["loss"] == {"kind": "ttm", "gamma": 0.4, "beta": 40,
                                                                           "ce_weight": 1.0}
    assert PRESETS["paper/imagenet/resnet34-resnet18/wttm"]["loss"]["gamma"] == 0.8
    for name in PRESETS:  # every preset validates once given its weights (and a path for ImageNet)
        extra = {"dataset": {"path": "/data/imagenet"}} if "imagenet" in name else {}
        parse_spec({"preset": name, "teacher": {"weights": "t.pth"}, **extra})


@pytest.mark.parametrize("loss, field, words", [
    ({"kind": "wttm", "gamma": 0, "beta": 1}, "loss.gamma", "γ = 1/T must be in (0, 1], not 0"),
    ({"kind": "wttm", "gamma": 3, "beta": 1}, "loss.gamma", "a temperature T = 3 is γ = 0.333"),
    ({"kind": "ttm", "gamma": 0.3, "beta": -1}, "loss.beta", "must be ≥ 0, not -1"),
    ({"kind": "kd", "temperature": 0}, "loss.temperature", "must be > 0, not 0"),
    ({"kind": "wttm", "gamma": 0.3, "beta": 1, "temperature": 4}, "loss.temperature", "unknown field"),
    ({"kind": "magic"}, "loss.kind", "unknown loss kind 'magic'; kinds: ce, kd, ttm, wttm, dkd, dist"),
    ({"kind": "wtm"}, "loss.kind", "unknown loss kind 'wtm'; did you mean 'wttm'? kinds: ce, kd,"),
    ({"gamma": 0.3}, "loss.kind", "missing: give one of ce, kd, ttm, wttm, dkd, dist"),
])
def test_loss_errors_name_the_field(loss, field, words):
    found = problems({"teacher": TEACHER, "student": {"arch": "resnet20"}, "dataset": {"name": "cifar100"},
                      "loss": loss})
    assert field in found and words in found[field], found


def test_other_errors_name_the_field():
    base = {"student": {"arch": "resnet20"}, "dataset": {"name": "cifar100"}}
    assert "unknown architecture 'resnet21'" in problems({**base, "student": {"arch": "resnet21"}})["student.arch"]
    assert "unknown field" in problems({**base, "studnet": {}})["studnet"]
    assert "fashion_mnist" in problems({**base, "dataset": {"name": "imagenet"}})["dataset.name"]
    assert "add teacher" in problems({**base, "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1}})["teacher"]
    assert "has 100" in problems({**base, "student": {"arch": "resnet20", "num_classes": 10}})["student.num_classes"]
    assert "exactly one" in problems({**base, "loss": {"kind": "kd"}, "teacher": {"arch": "resnet56"}})["teacher"]
    past = problems({**base, "train": {"epochs": 100, "schedule": {"kind": "step", "milestones": [50, 150]}}})
    assert "milestone 150 is past epochs=100" in past["train.schedule.milestones"]
    assert "below epochs=5" in problems({**base, "train": {"epochs": 5, "schedule": {"kind": "cosine",
                                                                                       "warmup_epochs": 5}}})[
        "train.schedule.warmup_epochs"]
    assert "did you mean 'cosine'" in problems({**base, "train": {"schedule": {"kind": "cosin"}}})[
        "train.schedule.kind"]
    assert "unknown preset" in problems({**base, "preset": "paper/cifar100/nope/wttm"})[""]


def test_multi_document_file_and_relative_paths(tmp_path):
    f = tmp_path / "jobs.yaml"
    f.write_text("name: t\nstudent: {arch: resnet8}\ndataset: {name: digits}\n---\n"
                 "name: s\nteacher: {arch: resnet8, weights: w/best.safetensors}\nstudent: {arch: resnet8}\n"
                 "dataset: {name: digits}\nloss: {kind: kd}\n")
    t, s = load_specs(f)
    assert (t.name, s.name) == ("t", "s")
    assert s.teacher.weights == str(tmp_path / "w" / "best.safetensors")
    f.write_text("name: a\nstudent: {arch: resnet8}\ndataset: {name: digits}\n---\n"
                 "name: b\nstudent: {arch: resnet8, depth: 3}\ndataset: {name: digits}\n")
    with pytest.raises(SpecError) as e:
        load_specs(f)
    assert e.value.problems == [("student.depth", "document 2: unknown field 'depth' (student has: arch, num_classes)")]


def test_output_formats_and_the_old_torchscript_spelling():
    base = {"name": "s", "student": {"arch": "resnet8"}, "dataset": {"name": "digits"}}
    assert parse_spec(base).output.formats == []
    # one order, a repeat is one export
    asked = parse_spec({**base, "output": {"formats": ["torchscript", "onnx", "pt2", "onnx"]}})
    assert asked.output.formats == ["onnx", "pt2", "torchscript"]
    # old specs and the jobs stored with them: torchscript: true is formats: [torchscript], and nothing else says so
    old = parse_spec({**base, "output": {"torchscript": True}})
    assert old.output.formats == ["torchscript"] and old.model_dump()["output"] == {"formats": ["torchscript"]}
    assert parse_spec({**base, "output": {"torchscript": False}}).output.formats == []
    assert parse_spec(old.model_dump(mode="json")) == old  # what the database stores validates again
    unknown = problems({**base, "output": {"formats": ["tflite"]}})["output.formats.0"]
    assert all(fmt in unknown for fmt in ("onnx", "pt2", "torchscript")), unknown
    # a stored job copied with formats set (ttm submit --from ID --set output.formats=[onnx]) keeps its old field
    assert parse_spec({**base, "output": {"torchscript": False, "formats": ["onnx"]}}).output.formats == ["onnx"]
    assert parse_spec({**base, "output": {"torchscript": True, "formats": ["pt2"]}}).output.formats == [
        "pt2", "torchscript"]
    assert "true or false" in problems({**base, "output": {"torchscript": "yes"}})["output.torchscript"]


def test_the_spec_shows_the_image_size_that_runs():
    """A named data set has its own size, and the spec shown back says it (not a default of 32 for 28×28 images);
    an image folder or synthetic data is made at the size asked for."""
    def size(dataset: dict) -> int:
        spec = parse_spec({"name": "s", "student": {"arch": "resnet8"}, "dataset": dataset})
        return spec.model_dump(mode="json")["dataset"]["image_size"]

    assert size({"name": "fashion_mnist"}) == 28 and size({"name": "fashion_mnist", "image_size": 64}) == 28
    assert size({"name": "digits"}) == 8 and size({"name": "cifar100"}) == 32
    assert size({"name": "synthetic", "image_size": 64}) == 64
    assert size({"name": "imagefolder", "path": "x", "image_size": 96}) == 96
