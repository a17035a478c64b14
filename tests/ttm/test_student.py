"""A student file says what it is: `ttm.load_student(path)` alone (no manifest beside it) rebuilds the network and its
preprocessing, and gives on the raw test images exactly the accuracy the trainer recorded; `ttm predict` reads
image files."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import ttm
from ttm.data import load_arrays
from ttm.spec import parse_spec
from ttm.train import train

from test_train_cli import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    spec = parse_spec({"name": "s", "student": {"arch": "resnet8"}, "dataset": {"name": "digits"},
                       "train": {"epochs": 2, "batch_size": 64}})
    train(spec, out / "run", job_id="job_0123456789abcdef")
    alone = out / "alone" / "student.safetensors"  # as a user keeps it: no best.json beside it
    alone.parent.mkdir()
    shutil.copyfile(out / "run" / "best.safetensors", alone)
    return spec, out / "run", alone


def test_the_file_carries_what_rebuilding_needs(trained):
    _, run_dir, alone = trained
    with safe_open(str(alone), framework="pt") as f:
        meta = f.metadata()
    manifest = json.loads((run_dir / "best.json").read_text())
    assert meta["arch"] == "resnet8" and meta["num_classes"] == "10" and meta["in_channels"] == "1"
    assert meta["input_size"] == "8" and json.loads(meta["input_shape"]) == [1, 8, 8]
    assert json.loads(meta["normalization"]) == manifest["normalization"] and meta["dataset"] == "digits"
    assert meta["job_id"] == "job_0123456789abcdef" and float(meta["top1"]) == manifest["top1"]
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]


def test_load_student_gives_the_recorded_accuracy_on_raw_images(trained):
    spec, run_dir, alone = trained
    student = ttm.load_student(alone)
    assert not student.training and student.input_shape == (1, 8, 8)
    _, _, test_x, test_y, _ = load_arrays(spec.dataset)
    with torch.no_grad():
        top1 = (student(test_x).argmax(1) == test_y).float().mean().item() * 100  # uint8 in, as decoded
        same = student(test_x.float() / 255).argmax(1)  # or floats in [0, 1]
    assert top1 == pytest.approx(json.loads((run_dir / "best.json").read_text())["top1"], abs=0.01)
    assert torch.equal(same, student(test_x).argmax(1))
    with pytest.raises(ValueError, match=r"N×1×8×8"):
        student(torch.zeros(1, 3, 8, 8))


def test_a_file_that_says_nothing_is_refused_with_what_to_do(tmp_path, trained):
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(trained[2])), str(bare))
    with pytest.raises(ValueError, match="download it again"):
        ttm.load_student(bare)


def test_ttm_predict_names_the_class_of_each_image(trained, tmp_path):
    spec, _, alone = trained
    _, _, test_x, test_y, _ = load_arrays(spec.dataset)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):  # upscaled and saved as PNG: the command resizes to the student's 8×8
        Image.fromarray(test_x[i, 0].numpy()).resize((32, 32)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    r = run("predict", str(alone), str(folder), "--top", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split("\t")[0].rsplit("/", 1)[1] for line in lines] == ["0.png", "1.png", "2.png"]
    assert all(len(line.split("\t")) == 3 for line in lines) and "notes.txt: not an image" in r.stderr
