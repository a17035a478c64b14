"""The teacher zoo as a user of the trainer sees it: `ttm zoo`, `teacher: {zoo: NAME}` in a spec, and `ttm train`
with a zoo teacher, whose first evaluation gives exactly the accuracy its manifest records."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ttm import zoo
from ttm.models import build_model
from ttm.spec import SpecError, parse_spec

from test_train_cli import run


def test_every_zoo_teacher_loads_strictly_into_its_architecture():
    for name, t in zoo.teachers().items():
        m = t.manifest
        model = build_model(t.arch, num_classes=m["num_classes"], in_channels=m["input_shape"][0])
        model.load_state_dict(load_file(str(t.path)))  # strict: every key and shape
        assert sum(p.numel() for p in model.parameters()) == m["params"], name
        assert torch.isfinite(model.eval()(torch.zeros(2, *m["input_shape"]))).all()
        assert set(m["normalization"]) == {"mean", "std"} and m["command"].startswith("python -m benchmarks.make_zoo")


def test_spec_names_a_zoo_teacher_or_says_what_exists():
    base = {"student": {"arch": "resnet8"}, "dataset": {"name": "digits"}, "loss": {"kind": "kd"}}
    assert parse_spec({**base, "teacher": {"zoo": "digits/resnet20"}}).teacher.zoo == "digits/resnet20"
    with pytest.raises(SpecError, match="did you mean digits/resnet20"):
        parse_spec({**base, "teacher": {"zoo": "digits/resnet2O"}})
    with pytest.raises(SpecError, match="trained on fashion_mnist"):
        parse_spec({**base, "teacher": {"zoo": "fashion_mnist/resnet20"}})


def test_ttm_zoo_lists_the_teachers():
    r = run("zoo")
    assert r.returncode == 0, r.stderr
    for name, t in zoo.teachers().items():
        assert name in r.stdout and f"{t.manifest['top1']:.2f}" in r.stdout
    listed = json.loads(run("zoo", "--json").stdout)
    assert listed["digits/resnet20"]["sha256"] == zoo.get("digits/resnet20").sha256


def test_train_a_student_from_a_zoo_teacher(tmp_path):
    spec = tmp_path / "student.yaml"
    spec.write_text("name: s\nteacher: {zoo: digits/resnet20}\nstudent: {arch: resnet8}\ndataset: {name: digits}\n"
                    "loss: {kind: wttm, gamma: 0.3, beta: 1.5}\ntrain: {epochs: 1, batch_size: 64}\n")
    r = run("train", str(spec), "--out", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "runs" / "s" / "metrics.jsonl").read_text().splitlines()]
    teacher = next(r["metrics"] for r in rows if r["epoch"] == 0)
    # the trainer's own evaluation of the zoo file on the whole test split: the manifest's figure
    assert round(teacher["teacher/top1"], 2) == zoo.get("digits/resnet20").manifest["top1"]
