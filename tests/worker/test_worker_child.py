"""The trainer's child process on its own (no broker, no worker): its rows, its failure report, its death with the
worker. (Its torchrun mode runs end to end in test_worker_embedded.py.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import select

from service.db import session_scope
from service.models import Checkpoint
from worker.record import RunRecorder
from worker.runner import job_run_dir

from worker_helpers import ROOT, child_pids, env_for, insert_job, metric_rows, spec_data, wait_for


@pytest.fixture
def settings(sqlite_settings):
    """One database kind is enough here: what runs is one process (the PostgreSQL paths run in the recovery tests)."""
    return sqlite_settings


def start_child(settings, job_id: str, spec: dict, nproc: int = 1, supervisor: int | None = None
                ) -> subprocess.Popen:
    run_dir = job_run_dir(settings, job_id)
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(json.dumps(spec))
    log = open(run_dir / "child.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "worker.child", job_id, str(run_dir),
                             str(supervisor or os.getpid()), str(nproc)],
                            env=env_for(settings), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def checkpoint_kinds(settings, job_id: str) -> set[tuple[str, str]]:
    with session_scope(settings) as session:
        return {tuple(r) for r in session.execute(select(Checkpoint.which, Checkpoint.format)
                                                  .where(Checkpoint.job_id == job_id))}


def epochs_in_file(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def test_child_trains_and_reports(settings):
    """The child writes metrics.jsonl and the checkpoint manifests; the worker's recorder turns them into rows."""
    from safetensors.torch import load_file

    spec = spec_data(epochs=2)
    job_id = insert_job(settings, spec)
    run_dir = job_run_dir(settings, job_id)
    recorder = RunRecorder(job_id, run_dir)  # as the worker makes it, before the child starts
    proc = start_child(settings, job_id, spec)
    assert proc.wait(timeout=180) == 0, (run_dir / "child.log").read_text()[-3000:]
    outcome = json.loads((run_dir / "outcome-0.json").read_text())
    assert outcome["ok"] and outcome["epochs_done"] == 2
    assert epochs_in_file(run_dir) == [1, 2]
    assert metric_rows(settings, job_id) == []  # the child has no database
    with session_scope(settings) as session:
        recorder.record_new(session)
    rows = metric_rows(settings, job_id)
    epochs = {e for e, _, _ in rows}
    assert epochs == {1, 2}
    names = {n for e, n, _ in rows if e == 1}
    assert {"train/loss", "test/top1", "lr"} <= names and {n for e, n, _ in rows if e == 2} == names
    assert checkpoint_kinds(settings, job_id) == {(w, f) for w in ("best", "last") for f in ("pt", "safetensors")}
    manifest = json.loads((run_dir / "best.json").read_text())
    state = load_file(str(run_dir / "best.safetensors"))
    assert manifest["arch"] == "resnet8" and manifest["epoch"] in (1, 2) and "conv1.weight" in state


def test_child_reports_a_training_failure(settings):
    # an absurd loss weight: the KD term overflows float32 in the first step
    spec = spec_data(epochs=2, loss={"kind": "kd", "kd_weight": 1e39}, teacher={"arch": "resnet8",
                                                                                  "weights": "teacher.pt"})
    job_id = insert_job(settings, spec)
    import torch

    from ttm.models import build_model

    teacher = settings.artifact_dir / "teacher.pt"
    teacher.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_model("resnet8", 10, 1).state_dict(), teacher)
    spec["teacher"]["weights"] = str(teacher)
    proc = start_child(settings, job_id, spec)
    assert proc.wait(timeout=120) == 3
    outcome = json.loads((job_run_dir(settings, job_id) / "outcome-0.json").read_text())
    assert not outcome["ok"] and "the training loss became" in outcome["reason"], outcome


def test_child_dies_with_its_supervisor(settings):
    """A worker killed with SIGKILL cannot stop its child: the child notices and takes its process group down."""
    spec = spec_data(epochs=500)
    job_id = insert_job(settings, spec)
    run_dir = job_run_dir(settings, job_id)
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(json.dumps(spec))
    # a stand-in worker: starts the child as the real one does, then waits
    starter = ("import subprocess, sys, os, time; subprocess.Popen([sys.executable, '-m', 'worker.child', "
               f"{job_id!r}, {str(run_dir)!r}, str(os.getpid())], start_new_session=True); "
               "time.sleep(600)")
    fake_worker = subprocess.Popen([sys.executable, "-c", starter], env=env_for(settings), cwd=ROOT)
    try:
        wait_for(lambda: epochs_in_file(run_dir), 60, "the first epoch")
        assert child_pids(job_id)
        fake_worker.send_signal(signal.SIGKILL)  # not reaped yet: a zombie, as a killed Celery worker can be
        wait_for(lambda: not child_pids(job_id), 30, "the child to die with its worker")  # a hang check
    finally:
        fake_worker.kill()
        fake_worker.wait()
