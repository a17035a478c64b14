"""Sweeps through real processes: `ttm serve` (the API and the reconciler, which drives sweeps) and `ttm worker`s run
the trials, real digits, a real zoo teacher; Optuna's study in the service's database. A grid of 4 gives 4 trials and
chooses the one with the best validation metric, whose student downloads as the sweep's output and teaches a next
job; the median pruner stops a trial with an absurd β before its last epoch (`ttm sweep --wait`); cancelling a sweep
cancels its trials; trials that share their data and teacher train as one student group on one worker, where a
cancelled member leaves while the others train on, and a kill -9 of that worker resumes every member together on
another."""
from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
import yaml
from safetensors.torch import load as load_safetensors
from sqlalchemy import select
from typer.testing import CliRunner

from service.db import session_scope
from service.migrate import upgrade_to_head
from service.models import Job, Metric
from service.queries.users import create_user
from service.settings import Settings
from ttm.client_cli import app
from worker.runner import job_run_dir

from worker_helpers import (
    Processes,
    child_pids,
    env_for,
    events,
    free_port,
    get_job,
    metric_rows,
    spec_data,
    wait_for,
    wait_state,
    wait_worker_ready,
)


def _job(epochs: int) -> dict:
    spec = spec_data(epochs=epochs, name="digits-wttm", teacher={"zoo": "digits/resnet20"},
                     loss={"kind": "wttm", "gamma": 0.3, "beta": 1.0},
                     dataset={"name": "digits", "subset": {"train": 800, "test": 200}})
    spec.pop("preset", None)
    return spec


def _serve(settings: Settings, procs: Processes, workers: int) -> tuple[httpx.Client, str, dict[str, str]]:
    upgrade_to_head(settings)
    with session_scope(settings) as session:
        tokens = {name: create_user(session, name)[1] for name in ("alice", "bob")}
    env = env_for(settings)
    port = free_port()
    procs.start("api", ["serve", "--host=127.0.0.1", f"--port={port}", "--workers=0"], env)
    wait_for(lambda: "Application startup complete" in procs.log("api"), 90, "the API", interval=0.3)
    for n in range(workers):
        procs.worker(f"w{n}", env)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                        headers={"Authorization": f"Bearer {tokens['alice']}"})
    return http, tokens["bob"], env


def _wait_sweep(http: httpx.Client, sweep_id: str, procs: Processes, timeout: float) -> dict:
    def ended() -> dict | None:
        sweep = http.get(f"/v1/sweeps/{sweep_id}").json()
        assert sweep["state"] != "failed", (sweep, procs.log("api")[-3000:])
        return sweep if sweep["state"] != "running" else None

    return wait_for(ended, timeout, f"sweep {sweep_id} to end", interval=0.5)


# A lab's setup; the embedded one (SQLite, Optuna's optuna.db beside it) runs a sweep in tests/browser.
@pytest.mark.parametrize("lab_settings", ["postgresql+redis"], indirect=True)
def test_sweeps_choose_on_validation_prune_cancel_and_teach(lab_settings: Settings):
    procs = Processes(lab_settings.home)
    try:
        http, bob, env = _serve(lab_settings, procs, workers=2)
        _grid_of_four(lab_settings, http, bob, procs)
        _the_median_pruner_stops_an_absurd_beta(lab_settings, http)
        _cancel_cancels_the_trials(http)
        _a_student_group_loses_a_cancelled_member_and_survives_kill_9(lab_settings, http, procs, env)
    finally:
        procs.stop_all()


def _grid_of_four(lab_settings: Settings, http: httpx.Client, bob: str, procs: Processes) -> None:
    body = {"name": "beta-grid", "strategy": "grid", "max_running": 2, "job": _job(epochs=1),
            "space": {"loss.beta": [0.5, 1.0, 2.0, 4.0]}}
    r = http.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "grid-1"})
    assert r.status_code == 201, r.text
    sweep = r.json()
    assert sweep["budget"] == 4 and sweep["metric"] == "val/top1"
    assert len([t for t in sweep["trials"] if t["job_id"]]) == 2  # max_running: two queued by the answer
    again = http.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "grid-1"})
    assert again.status_code == 200 and again.json()["id"] == sweep["id"]
    assert httpx.get(f"{http.base_url}/v1/sweeps/{sweep['id']}",
                     headers={"Authorization": f"Bearer {bob}"}).status_code == 404  # not bob's to see

    with http.stream("GET", f"/v1/sweeps/{sweep['id']}/events", timeout=300) as events:
        kinds, last = [], None
        for line in events.iter_lines():
            if line.startswith("event:"):
                kinds.append(line.split(":", 1)[1].strip())
            elif line.startswith("data:") and kinds[-1] == "sweep":
                last = json.loads(line.split(":", 1)[1])
    assert "trial" in kinds and kinds[-1] == "sweep" and last["state"] == "succeeded", kinds
    done = _wait_sweep(http, sweep["id"], procs, 30)

    trials = done["trials"]
    assert [t["params"]["loss.beta"] for t in trials] == [0.5, 1.0, 2.0, 4.0]  # the grid, in its order
    assert {t["state"] for t in trials} == {"complete"} and {t["job_state"] for t in trials} == {"succeeded"}
    with session_scope(lab_settings) as session:
        for t in trials:  # each trial's value is its best epoch's val/top1, as its job recorded it
            rows = session.scalars(select(Metric.value).where(Metric.job_id == t["job_id"],
                                                              Metric.name == "val/top1")).all()
            assert len(rows) == 1 and t["value"] == pytest.approx(max(rows))
            job = session.get(Job, t["job_id"])
            assert job.sweep_id == sweep["id"] and job.spec["loss"]["beta"] == t["params"]["loss.beta"]
            assert job.spec["dataset"]["validation"] == {"fraction": 0.1, "seed": 0}  # the same held-out set
    best = done["best"]
    assert best["value"] == max(t["value"] for t in trials)
    assert best["job_id"] in {t["job_id"] for t in trials if t["value"] == best["value"]}  # (ties: any of them)
    assert best["test_top1"] == http.get(f"/v1/jobs/{best['job_id']}").json()["best_top1"]

    r = http.get(f"/v1/sweeps/{sweep['id']}/checkpoints/best?format=safetensors", follow_redirects=True)
    assert r.status_code == 200 and r.headers["X-TTM-Sha256"]
    assert len(load_safetensors(r.content)) > 10  # the student's tensors

    r = http.post("/v1/jobs", json={**_job(epochs=1), "name": "from-sweep", "teacher": {"sweep": sweep["id"]}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["teacher"]["job"] == best["job_id"]
    r = http.post("/v1/jobs", json={**_job(epochs=1), "teacher": {"sweep": "swp_nosuchsweep"}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "teacher.sweep", r.text


PRUNED = {"name": "prune", "strategy": "grid", "max_running": 1,
          "job": {**_job(epochs=4), "dataset": {"name": "digits"}},
          "pruning": {"kind": "median", "startup_trials": 1, "warmup_epochs": 1},
          "space": {"loss.beta": [1.0, 1000.0]}}  # 1000: chance accuracy, a finite loss


def _the_median_pruner_stops_an_absurd_beta(lab_settings: Settings, http: httpx.Client) -> None:
    body = PRUNED
    path = lab_settings.home / "prune.yaml"
    path.write_text(yaml.safe_dump(body))
    env = {"TTM_SERVER": str(http.base_url), "TTM_TOKEN": http.headers["Authorization"].split()[1]}
    result = CliRunner().invoke(app, ["sweep", str(path), "--wait", "--json", "--timeout", "5m"], env=env)
    assert result.exit_code == 0, result.output  # `ttm sweep --wait`: the exit code says how it ended
    done = json.loads(result.stdout)
    good, absurd = done["trials"]
    assert good["state"] == "complete" and absurd["state"] == "pruned", json.dumps(done, indent=1)
    assert absurd["job_state"] == "cancelled" and "pruned by its sweep" in absurd["reason"]
    assert max(int(e) for e in absurd["epochs"]) < 4  # stopped before its last epoch
    assert done["best"]["number"] == good["number"]


def _cancel_cancels_the_trials(http: httpx.Client) -> None:
    r = http.post("/v1/sweeps", json={**PRUNED, "name": "cancel-me", "pruning": None})
    sweep = r.json()
    first = sweep["trials"][0]["job_id"]
    wait_for(lambda: http.get(f"/v1/jobs/{first}").json()["state"] == "running", 60, "the first trial to run")
    r = http.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    wait_for(lambda: http.get(f"/v1/jobs/{first}").json()["state"] == "cancelled", 60, "its trial cancelled")
    assert "its sweep" in http.get(f"/v1/jobs/{first}").json()["reason"]
    assert http.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 409
    assert len(http.get(f"/v1/sweeps/{sweep['id']}").json()["trials"]) == 1  # no trial asked after it


GROUP_EPOCHS = 6


def _a_student_group_loses_a_cancelled_member_and_survives_kill_9(settings: Settings, http: httpx.Client,
                                                                   procs: Processes, env: dict[str, str]) -> None:
    procs.stop("w1")  # one worker: the three trials, queued together, all go to it
    body = {"name": "group", "strategy": "grid", "max_running": 3, "group": 3, "job": _job(epochs=GROUP_EPOCHS),
            "space": {"loss.beta": [0.5, 1.0, 2.0]}}
    sweep = http.post("/v1/sweeps", json=body).json()
    ids = [t["job_id"] for t in sweep["trials"]]
    assert len(ids) == 3 and all(ids), sweep

    def training() -> bool:
        return all(get_job(settings, i).state == "running" and (job_run_dir(settings, i) / "state.pt").exists()
                   for i in ids)

    wait_for(training, 120, "the three trials to finish an epoch", interval=0.2)
    with session_scope(settings) as session:
        assert {session.get(Job, i).group_id for i in ids} == {ids[0]}  # one group, led by the first trial
    trainer = child_pids(ids[0])
    assert len(trainer) == 1 and all(child_pids(i) == trainer for i in ids), "one trainer process for the group"

    # a cancelled member leaves the group at once; the same process trains the other two on
    assert http.post(f"/v1/jobs/{ids[2]}/cancel").status_code == 200
    wait_for(lambda: get_job(settings, ids[2]).state == "cancelled", 30, "the cancelled member to end")
    assert child_pids(ids[0]) == trainer and get_job(settings, ids[0]).state == "running"
    left_at = max(e for e, _, _ in metric_rows(settings, ids[2]))

    # kill -9 of the group's worker: another worker resumes both members, together, each from its own state.pt
    procs.worker("w2", env)
    wait_worker_ready(procs, "w2")
    victim = int(get_job(settings, ids[0]).worker.rsplit(":", 1)[1])
    assert procs.by_pid(victim) == "w0"
    os.kill(victim, signal.SIGKILL)
    for i in ids[:2]:
        job = wait_state(settings, i, {"succeeded", "failed"}, 180)
        assert job.state == "succeeded" and job.attempts == 2 and job.worker.startswith("w2"), events(settings, i)
        assert job.group_id in ids[:2] and job.group_id == get_job(settings, ids[0]).group_id  # one group again
        assert "resumed from" in (job_run_dir(settings, i) / "train.log").read_text()
        keys = [(e, n) for e, n, _ in metric_rows(settings, i)]
        assert len(keys) == len(set(keys)), "no duplicate metric rows"
        assert {e for e, _ in keys if e > 0} == set(range(1, GROUP_EPOCHS + 1)), "no missing epoch"
    cancelled = get_job(settings, ids[2])
    assert cancelled.state == "cancelled" and cancelled.attempts == 1
    assert max(e for e, _, _ in metric_rows(settings, ids[2])) == left_at  # it trained no further
    done = _wait_sweep(http, sweep["id"], procs, 60)
    assert done["state"] == "succeeded" and done["best"]["job_id"] in ids[:2]
