"""Experiment tracking end to end, against a real `mlflow server` (SQLite backend, artifacts served by it) on
loopback and `ttm serve` with a worker: one real job (KD from the zoo's digits teacher, 2 epochs) whose MLflow
server is away when it ends: the job succeeds all the same, the failed export is recorded and shown; the job's
TensorBoard events come down through the API and read back with TensorBoard's own reader equal the job's metric
rows; then the export pass, retried against the server once it is up, makes one run named by the job with its
owner, teacher and state as tags, its spec as params, every metric row at step = epoch and the best student's files
and manifest as artifacts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.models import utcnow
from service.settings import Settings
from ttm.client_cli import app as cli
from worker.tracking import export_due

from test_worker_embedded import start_server
from worker_helpers import Processes, free_port, make_settings, spec_data, wait_for


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    root.mkdir()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # its own group: the server and the workers it starts
    log.close()
    return proc


def mlflow_up(proc: subprocess.Popen, url: str, root: Path) -> bool:
    assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The embedded server, whose MLflow server is at a port nothing listens on (it is away)."""
    from service.migrate import upgrade_to_head

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'ttm.db'}", mlflow_uri=f"http://127.0.0.1:{free_port()}",
                             mlflow_experiment="lab", mlflow_timeout_seconds=5)
    upgrade_to_head(settings)
    (tmp_path / "data").mkdir()
    return settings


def test_a_job_goes_to_mlflow_and_its_events_to_tensorboard(settings: Settings, tmp_path: Path):
    from mlflow import MlflowClient

    port = free_port()
    live = f"http://127.0.0.1:{port}"
    mlflow = start_mlflow_server(tmp_path / "mlflow", port)  # starts while the job runs
    procs = Processes(settings.home)
    try:
        server = start_server(settings, procs, "serve")
        job = server.submit(spec_data(epochs=2, name="kd-digits", teacher={"zoo": "digits/resnet20"},
                                      loss={"kind": "kd"}))
        done = server.wait(job["id"], {"succeeded", "failed", "cancelled"}, 180)
        assert done["state"] == "succeeded", done
        job_id = done["id"]

        # the tracking server is away: the job is not held, the failure is recorded and shown to its owner
        pending = wait_for(lambda: (t := server.http.get(f"/v1/jobs/{job_id}/tracking").json())["last_error"] and t,
                           60, "a first export attempt to fail")  # (attempts counts one as soon as it starts)
        assert pending["state"] == "pending" and pending["next_attempt_at"] and pending["run_id"] is None
        assert "ConnectionError" in pending["last_error"] or "refused" in pending["last_error"], pending
        assert server.job(job_id)["state"] == "succeeded"

        rows = server.http.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 10_000}).json()["items"]
        history: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            history.setdefault(row["name"], []).append((row["epoch"], row["value"]))
        assert {"train/loss", "test/top1", "teacher/top1", "lr"} <= set(history)
        assert [epoch for epoch, _ in history["test/top1"]] == [1, 2]

        status = CliRunner().invoke(cli, ["status", job_id, "--server", server.url])
        assert status.exit_code == 0 and "mlflow:     not exported yet (attempt 1: " in status.stdout, status.stdout

        # the TensorBoard events, through the API and `ttm tensorboard`, read back by TensorBoard's reader
        got = CliRunner().invoke(cli, ["tensorboard", job_id, "-o", str(tmp_path / "tb"), "--server", server.url,
                                       "--json"])
        assert got.exit_code == 0, got.stdout
        folder = Path(json.loads(got.stdout)["folder"])
        assert folder == tmp_path / "tb" / job_id
        assert all(p.name.startswith("events.out.tfevents.") for p in folder.iterdir())
        shown = scalars(folder)
        assert set(shown) == set(history)
        for name, points in history.items():  # TensorBoard keeps float32
            assert [s for s, _ in shown[name]] == [e for e, _ in points], name
            assert [v for _, v in shown[name]] == pytest.approx([v for _, v in points], rel=1e-6), name
        manifest = server.http.get(f"/v1/jobs/{job_id}/checkpoints/best/manifest").json()
        procs.stop("serve")

        # the server is up now: the retry makes the run
        wait_for(lambda: mlflow_up(mlflow, live, tmp_path / "mlflow"), 120, "mlflow server to answer", interval=0.3)
        up = settings.model_copy(update={"mlflow_uri": live})
        assert export_due(up, now=utcnow() + timedelta(hours=1)).exported == [job_id]

        client = MlflowClient(tracking_uri=live)
        experiment = client.get_experiment_by_name("lab")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.run_name == job_id and run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["ttm.owner"] == tags["mlflow.user"] == "local" and tags["ttm.state"] == "succeeded"
        assert tags["ttm.teacher"] == "zoo:digits/resnet20" and tags["ttm.job"] == job_id
        assert "ttm.sweep" not in tags  # not a sweep's trial
        params = run.data.params
        assert params["train.epochs"] == "2" and params["loss.kind"] == "kd" and params["student.arch"] == "resnet8"
        assert params["teacher.weights"].startswith("art_") and params["dataset.name"] == "digits"
        for name, points in history.items():
            logged_points = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
            assert sorted(logged_points) == points, name
        files = {f.path for f in client.list_artifacts(run.info.run_id, "best")}
        assert files == {"best/best.json", "best/best.pt", "best/best.safetensors"}
        got = json.loads(Path(client.download_artifacts(run.info.run_id, "best/best.json", str(tmp_path))).read_text())
        assert got["top1"] == manifest["top1"] and got["files"] == manifest["files"]

        # the owner sees the run; a pass later exports nothing twice
        with TestClient(create_app(up, host="127.0.0.1"), base_url="http://127.0.0.1") as api:
            tracking = api.get(f"/v1/jobs/{job_id}/tracking").json()
        assert tracking["state"] == "exported" and tracking["run_id"] == run.info.run_id
        assert tracking["run_url"] == f"{live}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
        assert tracking["last_error"] is None and tracking["attempts"] >= 2
        assert export_due(up, now=utcnow() + timedelta(days=3)).exported == []
    finally:
        procs.stop_all()
        stop_group(mlflow)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group this test started, SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(20)
            break
        except subprocess.TimeoutExpired:
            continue
