"""`ttm` as a user runs it: a real process, its exit codes and what it prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

TTM = [sys.executable, "-m", "ttm.cli"]


def run(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "COLUMNS": "200"}
    return subprocess.run([*TTM, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_a_bad_spec_names_the_field_without_a_traceback(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nteacher: {arch: resnet56, weights: t.pth}\nstudent: {arch: resnet20}\n"
                    "dataset: {name: cifar100}\nloss: {kind: wttm, gamma: 1.5, beta: 1, temprature: 4}\n")
    r = run("train", str(spec), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2
    assert "loss.gamma" in r.stderr and "γ = 1/T must be in (0, 1]" in r.stderr
    assert "loss.temprature" in r.stderr and "unknown field" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert run("train", str(tmp_path / "missing.yaml")).returncode == 2


def test_train_teacher_then_student_from_one_file_with_torchscript_export(tmp_path):
    spec = tmp_path / "jobs.yaml"
    spec.write_text(
        "name: teacher\nstudent: {arch: resnet8}\ndataset: {name: digits}\n"
        "train: {epochs: 2, batch_size: 64, lr: 0.1, schedule: {kind: constant}}\n---\n"
        "name: student\nteacher: {job: teacher}\nstudent: {arch: resnet8}\ndataset: {name: digits}\n"
        "loss: {kind: ttm, gamma: 0.3, beta: 7}\noutput: {torchscript: true}\n"
        "train: {epochs: 2, batch_size: 64, lr: 0.1, schedule: {kind: step, milestones: [2]}}\n")
    r = run("train", str(spec), "--out", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    student = tmp_path / "runs" / "student"
    assert "best test top-1" in r.stdout and str(student / "best.safetensors") in r.stdout
    manifest = json.loads((student / "best.json").read_text())
    assert manifest["spec"]["teacher"]["weights"] == str(tmp_path / "runs" / "teacher" / "best.safetensors")
    assert set(manifest["files"]) == {"pt", "safetensors", "torchscript"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load says TorchScript is deprecated
        scripted = torch.jit.load(str(student / "best.torchscript.pt"))
    assert manifest["exports"]["torchscript"]["offered"]  # checked on the test images before it was offered
    from ttm.models import build_model

    eager = build_model("resnet8", 10, 1)
    eager.load_state_dict(torch.load(student / "best.pt", weights_only=True))
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(scripted(x), eager.eval()(x), atol=1e-5)
    # a second run resumes: nothing left to train, same result
    again = run("train", str(spec), "--out", str(tmp_path / "runs"))
    assert again.returncode == 0 and "resumed from" in again.stderr


def test_a_missing_teacher_run_is_a_spec_error(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nteacher: {job: nowhere}\nstudent: {arch: resnet8}\ndataset: {name: digits}\n"
                    "loss: {kind: kd}\n")
    r = run("train", str(spec), "--out", str(tmp_path))
    assert r.returncode == 2 and "teacher.job" in r.stderr and "no finished run" in r.stderr


def test_listing_commands():
    models = run("models")
    assert models.returncode == 0 and "resnet32x4" in models.stdout and "torchvision/<name>" in models.stdout
    presets = run("presets", "paper/cifar100/resnet56-resnet20")
    assert presets.returncode == 0
    lines = presets.stdout.splitlines()
    assert len(lines) == 6 and any("gamma=0.3, beta=1.5" in l for l in lines)  # kd ttm wttm wttm_noce +crd +itrd
    assert any("wttm_crd" in l and "crd" in l.split("wttm_crd", 1)[1] for l in lines)
    v = run("validate", str(Path(__file__).parents[2] / "examples" / "cifar100_resnet56_resnet20_wttm.yaml"))
    assert v.returncode == 0 and json.loads(v.stdout)["loss"]["beta"] == 1.5


def test_epochs_override_rescales_the_default_milestones():
    from ttm.cli import _with_epochs
    from ttm.spec import parse_spec

    base = {"name": "x", "student": {"arch": "resnet8"}, "dataset": {"name": "digits"}, "loss": {"kind": "ce"}}
    default = parse_spec({**base, "train": {"epochs": 240, "schedule": {"kind": "step"}}})
    assert default.train.schedule.milestones == [150, 180, 210]
    assert _with_epochs(default, 8).train.schedule.milestones == [5, 6, 7]  # 62.5 / 75 / 87.5 % of 8
    written = parse_spec({**base, "train": {"epochs": 240, "schedule": {"kind": "step", "milestones": [100, 200]}}})
    assert _with_epochs(written, 150).train.schedule.milestones == [100]


def test_version_and_short_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("ttm 0."), r.stdout + r.stderr
    r = run("-h")
    assert r.returncode == 0 and "zoo" in r.stdout and "predict" in r.stdout and "train" in r.stdout
    assert run("train", "-h").returncode == 0
