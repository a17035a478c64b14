"""The README's main job, `./dev demo` (python -m ttm.demo), in a reduced size: a real `ttm serve` on the embedded
defaults, the zoo's teacher uploaded, four students trained from it through the HTTP API, the chain (a teacher
trained by the service, then a student from that job), the best WTTM student downloaded."""
from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from ttm.models import build_model


def test_demo_runs_end_to_end_through_the_service(tmp_path):
    student = tmp_path / "student.safetensors"
    env = {**os.environ, "COLUMNS": "160", "OMP_NUM_THREADS": "2"}
    for var in ("TTM_DATABASE_URL", "TTM_BROKER_URL", "TTM_ARTIFACT_DIR", "TTM_SERVER", "TTM_TOKEN"):
        env.pop(var, None)
    r = subprocess.run([sys.executable, "-m", "ttm.demo", "--home", str(tmp_path / "home"), "--port", "0",
                        "--train-size", "800", "--test-size", "300", "--epochs", "1", "--chain-epochs", "1",
                        "--batch-size", "100",
                        "--output", str(student), "--no-serve"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.count("│") > 5}
    assert "uploaded" in rows["teacher (zoo)"], r.stdout
    for label in ("CE", "KD", "TTM", "WTTM", "chain: teacher (CE)", "chain: WTTM"):
        assert label in rows and "succeeded" in rows[label], r.stdout
    # the zoo teacher, evaluated by the KD job on the demo's 300 test images: far ahead of a 1-epoch student
    teacher_top1 = float(rows["teacher (zoo)"].split("│")[4])
    assert teacher_top1 > 85 > float(rows["CE"].split("│")[4]), r.stdout
    assert "dashboard: http://127.0.0.1:" in r.stdout and "/ui" in r.stdout
    model = build_model("resnet8", num_classes=10, in_channels=1)
    model.load_state_dict(load_file(str(student)))  # strict: the download is a whole resnet8
    assert torch.isfinite(model(torch.zeros(1, 1, 28, 28))).all()
    assert not processes_with_env(f"TTM_HOME={tmp_path / 'home'}"), "the demo left server or worker processes"


def processes_with_env(entry: str) -> list[int]:
    found = []
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                with open(f"/proc/{proc}/environ", "rb") as f:
                    if entry.encode() in f.read().split(b"\0"):
                        found.append(int(proc))
            except OSError:
                pass
    return found
