"""A student group (ttm.group) against separate runs on scikit-learn's digits with the zoo's digits teacher: three
members (WTTM, TTM, KD + CRD: different losses, γ, β, lr and schedules) end with the weights and metrics of three
`ttm.train` runs of the same specs; a group killed with SIGKILL in its first epoch's end resumes every member from its
own state.pt (members at different epochs) to the uninterrupted group's weights; a member that should_stop ends
leaves for good while the others go on; a diverging member fails alone; specs that cannot share a pipeline are
refused with the field named."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ttm.group import STOPPED_KEY, GroupError, check_group, train_group
from ttm.spec import parse_spec
from ttm.train import train

REPO = Path(__file__).resolve().parents[2]
TIMING = ("images_per_s", "epoch_time_s", "elapsed_s", "eta_s")  # wall-clock figures: the only ones that differ
SHARED = {"student": {"arch": "resnet8"},
          "dataset": {"name": "digits", "subset": {"train": 512, "test": 200}, "validation": {"fraction": 0.2}},
          "train": {"epochs": 2, "batch_size": 64, "seed": 3, "device": "cpu", "precision": "fp32"}}
MEMBERS = [
    {"name": "wttm", "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5},
     "train": {"lr": 0.05, "schedule": {"kind": "step", "milestones": [1]}}},
    {"name": "ttm", "loss": {"kind": "ttm", "gamma": 0.5, "beta": 3.0},
     "train": {"lr": 0.1, "optimizer": "adamw", "weight_decay": 0.0, "schedule": {"kind": "cosine"}}},
    # CRD draws its negatives from the global RNG every step: the member's own RNG state is what keeps it equal
    {"name": "kd-crd", "loss": {"kind": "kd", "temperature": 4.0, "features": {"kind": "crd", "negatives": 64,
                                                                              "dim": 16}},
     "train": {"lr": 0.02, "schedule": {"kind": "constant"}}},
]


def member_spec(member: dict, dataset: dict | None = None, **train_over):
    from ttm.cli import _teacher_from_zoo

    data = {**SHARED, "name": member["name"], "teacher": {"zoo": "digits/resnet20"}, "loss": member["loss"],
            "dataset": {**SHARED["dataset"], **(dataset or {})},
            "train": {**SHARED["train"], **member["train"], **train_over}}
    return _teacher_from_zoo(parse_spec(data))


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / f"{which}.pt", weights_only=True)


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-5, atol=1e-6), f"{what}: {k}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three separate runs and one uninterrupted group of the same three specs (progress reported every step)."""
    import ttm.group

    base = tmp_path_factory.mktemp("group")
    specs = [member_spec(m) for m in MEMBERS]
    separate = [base / "separate" / s.name for s in specs]
    for spec, out in zip(specs, separate):
        train(spec, out)
    grouped = [base / "group" / s.name for s in specs]
    seen: dict[tuple[int, int], dict] = {}
    ended: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ttm.group, "PROGRESS_EVERY_S", 0.0)
        results = train_group(specs, grouped, on_metrics=lambda m, e, metrics: seen.__setitem__((m.index, e), metrics),
                              on_member_end=ended.append)
    return {"base": base, "specs": specs, "separate": separate, "grouped": grouped, "results": results,
            "seen": seen, "ended": ended}


def test_a_group_gives_each_member_the_weights_and_metrics_of_its_own_run(runs):
    for i, (alone, grouped) in enumerate(zip(runs["separate"], runs["grouped"])):
        name = runs["specs"][i].name
        assert_same_weights(weights(alone), weights(grouped), f"{name} last")
        assert_same_weights(weights(alone, "best"), weights(grouped, "best"), f"{name} best")
        ours, theirs = metric_lines(alone), metric_lines(grouped)
        assert [line["epoch"] for line in theirs] == [0, 1, 2]  # the teacher's line, then one per epoch
        for a, b in zip(ours, theirs):
            assert set(a["metrics"]) == set(b["metrics"]), name
            for key, value in a["metrics"].items():
                if key not in TIMING:
                    assert b["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, a["epoch"], key)
        assert {"val/top1", "test/top1", "train/loss"} <= set(theirs[-1]["metrics"])
        manifest_a, manifest_b = (json.loads((d / "best.json").read_text()) for d in (alone, grouped))
        assert (manifest_b["epoch"], manifest_b["selected_by"]) == (manifest_a["epoch"], "val/top1")
        state = torch.load(grouped / "state.pt", weights_only=True)
        assert state["epoch"] == 2 and STOPPED_KEY not in state
        assert "epoch 2/2" in (grouped / "train.log").read_text()
        progress = json.loads((grouped / "progress.json").read_text())
        assert progress["epoch"] == 2 and progress["step"] == progress["steps"] > 0  # every step was reported
    assert metric_lines(runs["grouped"][2])[-1]["metrics"]["train/crd"] > 0
    assert [(r.member.index, r.state, r.result.epochs_done) for r in runs["results"]] == [(0, "done", 2),
                                                                                          (1, "done", 2),
                                                                                          (2, "done", 2)]
    assert sorted(r.member.index for r in runs["ended"]) == [0, 1, 2]
    # the group's training time is split among its members
    assert all(r.device_s > 0 for r in runs["results"])
    assert runs["seen"][(1, 2)]["test/top1"] == metric_lines(runs["grouped"][1])[-1]["metrics"]["test/top1"]


KILLED_GROUP = """
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(2)
sys.path.insert(0, {tests!r})
from test_group import MEMBERS, member_spec
from ttm.group import train_group
run_dirs = [Path(p) for p in {dirs!r}]

def hang_at_member_1(member, epoch, metrics):
    # member 0 and 1 have written their epoch-1 state, member 2 not yet: the kill leaves them at different epochs
    if member.index == 1 and epoch == 1:
        (run_dirs[0].parent / "ready").write_text("")
        time.sleep(600)
    return False

train_group([member_spec(m) for m in MEMBERS], run_dirs, should_stop=hang_at_member_1)
"""


def test_a_group_killed_mid_run_resumes_every_member_from_its_own_state(runs, tmp_path):
    dirs = [tmp_path / s.name for s in runs["specs"]]
    script = KILLED_GROUP.format(tests=str(REPO / "tests" / "ttm"), dirs=[str(d) for d in dirs])
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():
            assert child.poll() is None, "the group ended before it could be killed"
            assert time.monotonic() < deadline, "the group never reached its first epoch's end"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    epochs = [torch.load(d / "state.pt", weights_only=True)["epoch"] if (d / "state.pt").exists() else 0
              for d in dirs]
    assert epochs == [1, 1, 0]

    results = train_group(runs["specs"], dirs)
    assert [r.state for r in results] == ["done", "done", "done"]
    for d, uninterrupted in zip(dirs, runs["grouped"]):
        assert_same_weights(weights(uninterrupted), weights(d), d.name)
        lines = [line["epoch"] for line in metric_lines(d)]
        assert lines[-1] == 2 and lines.count(2) == 1  # epoch 2 once; epoch 1 again only where its state was lost
    assert [line["epoch"] for line in metric_lines(dirs[0])] == [0, 1, 2]
    # member 2 had only its teacher line: it starts over, as a single run killed in its first epoch does
    assert [line["epoch"] for line in metric_lines(dirs[2])] == [0, 0, 1, 2]

    # should_stop ends one member after epoch 1 for good: the others go on, and a resumed group leaves it stopped
    again = [tmp_path / "stop" / s.name for s in runs["specs"]]
    stopped = train_group(runs["specs"], again, should_stop=lambda m, epoch, metrics: m.index == 1)
    assert [r.state for r in stopped] == ["done", "stopped", "done"]
    assert stopped[1].result is not None and stopped[1].result.epochs_done == 1
    assert torch.load(again[1] / "state.pt", weights_only=True)[STOPPED_KEY] == {"epoch": 1}
    assert_same_weights(weights(runs["grouped"][0]), weights(again[0]), "a member beside a stopped one")
    lines_before = (again[1] / "metrics.jsonl").read_text()
    resumed = train_group(runs["specs"], again)
    assert [r.state for r in resumed] == ["done", "stopped", "done"]
    assert (again[1] / "metrics.jsonl").read_text() == lines_before  # not trained again


def test_a_diverging_member_fails_alone(tmp_path):
    plain = {"validation": None}  # the subset of the others, 8 steps an epoch
    specs = [member_spec(MEMBERS[0], plain, epochs=1, schedule={"kind": "constant"}),
             member_spec(MEMBERS[1], plain, epochs=1, schedule={"kind": "constant"}, lr=1e4, optimizer="sgd",
                         weight_decay=0)]
    ended: list = []
    results = train_group(specs, [tmp_path / "ok", tmp_path / "nan"], on_member_end=ended.append)
    assert [r.state for r in results] == ["done", "failed"]
    assert results[1].error is not None and "lower train.lr" in results[1].error and results[1].result is None
    assert [r.member.index for r in ended] == [1, 0]  # the failed one as it left, the other at the end
    assert [line["epoch"] for line in metric_lines(tmp_path / "ok")] == [0, 1]


def test_a_member_asked_to_leave_stops_within_its_epoch_and_the_others_go_on(tmp_path):
    """leave_now (the worker's LEAVE_FILE for a cancelled job) ends a member inside its epoch: that epoch is
    dropped, its state.pt stays the last finished epoch's, and the others train to the end."""
    import ttm.group

    plain = {"validation": None}
    specs = [member_spec(MEMBERS[0], plain, epochs=3), member_spec(MEMBERS[1], plain, epochs=3)]
    dirs = [tmp_path / "stays", tmp_path / "leaves"]
    asked: list[int] = []

    def leave_now(member) -> bool:  # asked within epoch 2, once epoch 1's checkpoint is written
        asked.append(member.index)
        return member.index == 1 and any(m["epoch"] == 1 for m in _lines(dirs[1]))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ttm.group, "LEAVE_CHECK_S", 0.0)  # every step
        results = train_group(specs, dirs, leave_now=leave_now)
    assert [r.state for r in results] == ["done", "left"]
    assert results[1].result is not None and results[1].result.epochs_done == 1
    assert [m["epoch"] for m in metric_lines(dirs[1])] == [0, 1]  # epoch 2 dropped, nothing after
    assert torch.load(dirs[1] / "state.pt", weights_only=False)["epoch"] == 1
    assert [m["epoch"] for m in metric_lines(dirs[0])] == [0, 1, 2, 3]
    assert 1 in asked


def _lines(run_dir: Path) -> list[dict]:
    return metric_lines(run_dir) if (run_dir / "metrics.jsonl").exists() else []


def test_specs_that_cannot_share_a_pipeline_are_refused_by_field():
    specs = [member_spec(m) for m in MEMBERS]
    check_group(specs)  # losses, γ, β, optimizers, lr and schedules may differ
    other_seed = member_spec(MEMBERS[1], seed=4)
    with pytest.raises(GroupError, match=r"^train\.seed differs: 4 in member 1 \(ttm\), 3 in member 0 \(wttm\)"):
        check_group([specs[0], other_seed])
    cases = [({"subset": {"train": 500}}, "dataset.subset.train"), ({"validation": {"fraction": 0.2, "seed": 1}},
                                                              "dataset.validation.seed"),
             ({"augment": False}, "dataset.augment")]
    for change, field in cases:
        with pytest.raises(GroupError, match=rf"^{field}(\.\w+)? differs"):
            check_group([specs[0], member_spec(MEMBERS[1], change)])
    with pytest.raises(GroupError, match=r"^train\.batch_size differs"):
        check_group([specs[0], member_spec(MEMBERS[1], batch_size=32)])
    with pytest.raises(GroupError, match=r"^teacher\.weights differs"):
        check_group([specs[0], specs[1].model_copy(update={"teacher": specs[1].teacher.model_copy(
            update={"weights": "/elsewhere/teacher.safetensors"})})])
    with pytest.raises(GroupError, match="two members share a run directory"):
        train_group(specs[:2], ["runs/x", "runs/./x"])


def test_ttm_train_group_trains_a_files_documents_together(tmp_path):
    from typer.testing import CliRunner

    from ttm.cli import app

    common = ("teacher: {zoo: digits/resnet20}\nstudent: {arch: resnet8}\n"
              "dataset: {name: digits, subset: {train: 256, test: 100}}\n"
              "train: {epochs: 1, batch_size: 64, seed: 1, schedule: {kind: constant}}\n")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"name: a\nloss: {{kind: wttm, gamma: 0.3, beta: 1}}\n{common}---\n"
                    f"name: b\nloss: {{kind: ttm, gamma: 0.5, beta: 2}}\n{common}")
    r = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "runs"), "--group"])
    assert r.exit_code == 0, r.output
    assert "a: done, best test top-1" in r.output and "b: done, best test top-1" in r.output
    assert all((tmp_path / "runs" / name / "best.safetensors").exists() for name in "ab")
    spec.write_text(f"name: a\nloss: {{kind: wttm, gamma: 0.3, beta: 1}}\n{common}---\n"
                    f"name: b\nloss: {{kind: ttm, gamma: 0.5, beta: 2}}\n{common.replace('seed: 1', 'seed: 5')}")
    r = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "bad"), "--group"])
    assert r.exit_code == 2 and "train.seed differs: 5 in member 1 (b), 1 in member 0 (a)" in r.output, r.output
    assert not (tmp_path / "bad").exists()  # refused before anything was written
