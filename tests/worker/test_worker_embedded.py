"""`ttm serve` with the embedded defaults (SQLite, kombu's filesystem transport, artifacts under TTM_HOME), driven
over HTTP as a user would: submit → running → succeeded with metrics over SSE and a checkpoint that reloads;
WTTM + CRD / ITRD; a pipeline file (teacher, then students that wait for it; a failing teacher fails them); cancel
while running; a 2-process (torchrun, gloo on CPU) job."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from service.settings import Settings

from worker_helpers import Processes, child_pids, env_for, free_port, get_job, make_settings, spec_data, wait_for


class Server:
    def __init__(self, url: str, settings: Settings, procs: Processes, name: str = "serve"):
        self.url, self.settings, self.procs, self.name = url, settings, procs, name
        self.home = settings.home
        self.http = httpx.Client(base_url=url, timeout=30)

    def submit(self, spec: dict) -> dict:
        response = self.http.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, states: set[str], timeout: float) -> dict:
        try:
            return wait_for(lambda: (j := self.job(job_id))["state"] in states and j, timeout,
                            f"job {job_id} to become {states}", interval=0.2)
        except AssertionError:
            raise AssertionError(f"{self.job(job_id)}\n--- log\n{self.procs.log(self.name)[-4000:]}") from None

    def events(self, job_id: str, timeout: float = 120) -> list[tuple[str, dict]]:
        """The job's SSE stream, read to its end (after the final state)."""
        out: list[tuple[str, dict]] = []
        kind, data = None, []
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data.append(line.split(":", 1)[1].strip())
                elif not line and kind:
                    out.append((kind, json.loads("\n".join(data))))
                    kind, data = None, []
        return out

    def run_dir(self, job_id: str) -> Path:
        return self.home / "artifacts" / "jobs" / job_id



def start_server(settings: Settings, procs: Processes, name: str) -> Server:
    port = free_port()
    proc = procs.start(name, ["serve", "--host=127.0.0.1", f"--port={port}", "--workers=1"], env_for(settings))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, procs.log(name)
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200 and " ready" in procs.log(name)
        except httpx.HTTPError:
            return False

    wait_for(up, 90, "ttm serve to listen with a ready worker", interval=0.3)
    return Server(url, settings, procs, name)


def stop_server(server: Server) -> None:
    """Ctrl-C, as a user at the terminal would."""
    proc = server.procs.procs[server.name]
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=40) == 0, server.procs.log(server.name)[-3000:]
    said = server.procs.log(server.name)
    assert "ttm serve: stopped" in said
    # quiet by default: our lines and warnings, not Celery's banner, its root warning, kombu's missing host, nor a
    # traceback for the message a stopping worker hands back
    for noise in ("-------------- [queues]", "SecurityWarning", "No hostname was supplied", "Traceback",
                  "Hitting Ctrl+C again", "alembic.runtime"):
        assert noise not in said, (noise, said[-3000:])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    settings = make_settings(home, f"sqlite:///{home / 'ttm.db'}", lease_seconds=10)
    procs = Processes(home)
    try:
        server = start_server(settings, procs, "serve")
        yield server
        stop_server(server)
    finally:
        procs.stop_all()


def test_submit_run_succeed_with_metrics_over_sse_and_a_checkpoint_that_reloads(server: Server, tmp_path: Path):
    import torch
    from safetensors.torch import load as load_safetensors

    from ttm.models import build_model

    job = server.submit(spec_data(epochs=3, output={"formats": ["onnx"]}))
    stream = server.events(job["id"])
    states = [d["state"] for kind, d in stream if kind == "state"]
    assert states == ["queued", "running", "succeeded"], stream
    running_at = next(datetime.fromisoformat(d["at"]) for k, d in stream if k == "state" and d["state"] == "running")
    latency = (running_at - datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))).total_seconds()
    assert latency < 2.0, f"submit → running took {latency:.2f} s with an idle worker"

    streamed = {(d["epoch"], d["name"], d["value"]) for kind, d in stream if kind == "metric"}
    stored = {(m["epoch"], m["name"], m["value"]) for m in server.http.get(f"/v1/jobs/{job['id']}/metrics").json()
              ["items"]}
    assert streamed == stored and {e for e, _, _ in stored} == {1, 2, 3}
    assert len(stored) == 3 * len({n for e, n, _ in stored if e == 3})  # every epoch has every metric

    done = server.job(job["id"])
    assert done["attempts"] == 1 and done["best_top1"] > 20 and "best test top-1" in done["reason"]
    response = server.http.get(f"/v1/jobs/{job['id']}/checkpoints/best", params={"format": "safetensors"})
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == response.headers["X-TTM-Sha256"]
    manifest = json.loads(response.headers["X-TTM-Manifest"])
    student = build_model(manifest["arch"], manifest["num_classes"], manifest["input_shape"][0])
    student.load_state_dict(load_safetensors(response.content))  # strict: every tensor in place
    pt = server.http.get(f"/v1/jobs/{job['id']}/checkpoints/best", params={"format": "pt"})
    state = torch.load(io.BytesIO(pt.content), weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in student.state_dict().items())

    # the ONNX export the spec asked for: checked on test images, then offered; the SDK picks it by the suffix
    import onnxruntime

    from ttm.client import Client
    from ttm.data import load_arrays
    from ttm.spec import DatasetSpec

    made = manifest["exports"]["onnx"]
    assert made["offered"] and made["check"]["max_abs_diff"] <= made["check"]["tolerance"], made
    with Client(server.url) as client:
        onnx_file = client.download(job["id"], dest=tmp_path / "student.onnx")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    *_, test_x, _, _ = load_arrays(DatasetSpec(name="digits"))
    norm = made["input"]["normalization"]  # the manifest says what the file takes: (pixel / 255 - mean) / std
    x = (test_x[:50].float() / 255 - norm["mean"][0]) / norm["std"][0]
    logits = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        assert (logits - student.eval()(x)).abs().max() <= made["check"]["tolerance"]
    missing = server.http.get(f"/v1/jobs/{job['id']}/checkpoints/best/manifest", params={"format": "pt2"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "export_not_made"  # made on request


def test_the_papers_best_rows_wttm_with_crd_and_itrd_run_through_the_service(server: Server):
    # WTTM + 0.8·CRD and WTTM + ITRD (the paper's Tables 2 and 4) on real digits, from the zoo's teacher
    loss = {"kind": "wttm", "gamma": 0.3, "beta": 1.5}
    jobs = {kind: server.submit(spec_data(epochs=1, name=f"wttm-{kind}", teacher={"zoo": "digits/resnet20"},
                                          dataset={"name": "digits", "subset": {"train": 512, "test": 297}},
                                          loss={**loss, "features": features}))
            for kind, features in {"crd": {"kind": "crd", "negatives": 1024},
                                   "itrd": {"kind": "itrd", "alpha": 1.01}}.items()}
    for kind, job in jobs.items():
        done = server.wait(job["id"], {"succeeded", "failed"}, timeout=180)
        assert done["state"] == "succeeded", done
        assert done["spec"]["loss"]["features"]["kind"] == kind
        names = {m["name"] for m in server.http.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]}
        assert ({"train/crd"} if kind == "crd" else {"train/corr", "train/mi"}) <= names, names
        assert done["best_top1"] > 20


def _cli(server: Server, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTM_")} | {"TTM_SERVER": server.url}
    return subprocess.run([sys.executable, "-m", "ttm.client_cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _pipeline_file(path: Path, teacher_train: dict) -> Path:
    import yaml

    base = {"dataset": {"name": "digits"}, "resources": {"gpus": 0, "queue": "cpu"},
            "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "num_workers": 0, "device": "cpu"}}
    docs = [{**base, "name": "teacher", "student": {"arch": "resnet20"}, "train": {**base["train"], **teacher_train}},
            {**base, "name": "wttm", "student": {"arch": "resnet8"}, "teacher": {"job": "teacher"},
             "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}},
            {**base, "name": "kd", "student": {"arch": "resnet8"}, "teacher": {"job": "teacher"},
             "loss": {"kind": "kd"}}]
    path.write_text(yaml.safe_dump_all(docs))
    return path


def test_a_pipeline_file_submits_a_teacher_and_its_students_in_one_call(server: Server, tmp_path: Path):
    # as a CI job would: one command, teacher then two students; its exit code and JSON say how all three ended
    done = _cli(server, "submit", str(_pipeline_file(tmp_path / "pipeline.yaml", {})), "--wait", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    teacher, *students = [r["job"] for r in result["jobs"]]
    assert [j["name"] for j in (teacher, *students)] == ["teacher", "wttm", "kd"] and result["exit_code"] == 0
    assert all(j["state"] == "succeeded" for j in (teacher, *students))
    for job in students:
        assert job["spec"]["teacher"]["job"] == teacher["id"] and job["waits_for"] == teacher["id"]
        assert job["started_at"] > teacher["finished_at"]  # they waited for it
        assert job["best_top1"] > 20


def test_a_failing_teacher_fails_its_students_with_its_reason(server: Server, tmp_path: Path):
    done = _cli(server, "submit", str(_pipeline_file(tmp_path / "bad.yaml", {"lr": 10000.0})), "--wait", "--json")
    assert done.returncode == 1, done.stderr  # failed
    teacher, *students = [r["job"] for r in json.loads(done.stdout)["jobs"]]
    assert teacher["state"] == "failed" and "training loss became" in teacher["reason"]
    for job in students:
        assert job["state"] == "failed" and job["started_at"] is None
        assert job["reason"] == f"teacher job {teacher['id']} failed: {teacher['reason']}"


def test_cancel_while_running_stops_the_child(server: Server):
    job = server.submit(spec_data(epochs=500, name="long"))
    wait_for(lambda: server.http.get(f"/v1/jobs/{job['id']}/metrics").json()["items"], 60, "the first epoch",
             interval=0.2)
    assert child_pids(job["id"])
    assert server.http.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelling"
    wait_for(lambda: not child_pids(job["id"]) and server.job(job["id"])["state"] == "cancelled", 30,
             "the child to be gone and the job cancelled", interval=0.1)  # a hang check, not a speed claim
    assert server.job(job["id"])["reason"].startswith("cancelled by ")  # who asked, as the cancel recorded it


def test_a_two_process_job_runs_under_torchrun(server: Server):
    from safetensors.torch import load_file

    one = server.submit(spec_data(epochs=2, name="one-process"))
    two = server.submit(spec_data(epochs=2, name="two-processes", resources={"gpus": 2, "queue": "cpu"}))
    for job in (one, two):
        server.wait(job["id"], {"succeeded", "failed"}, 180)
    assert server.job(two["id"])["state"] == "succeeded", server.job(two["id"])
    assert (server.run_dir(two["id"]) / "outcome-1.json").exists()  # rank 1 ran, and ended well
    assert not (server.run_dir(one["id"]) / "outcome-1.json").exists()
    kinds = [{(c["which"], c["format"]) for c in server.http.get(f"/v1/jobs/{j['id']}/checkpoints").json()}
             for j in (one, two)]
    assert kinds[0] == kinds[1] == {(w, f) for w in ("best", "last") for f in ("pt", "safetensors")}
    manifests = [json.loads((server.run_dir(j["id"]) / "best.json").read_text()) for j in (one, two)]
    assert manifests[0].keys() == manifests[1].keys()
    assert {k: manifests[1][k] for k in ("arch", "num_classes", "input_shape")} == \
           {k: manifests[0][k] for k in ("arch", "num_classes", "input_shape")}
    tensors = [load_file(str(server.run_dir(j["id"]) / "best.safetensors")) for j in (one, two)]
    assert {k: v.shape for k, v in tensors[0].items()} == {k: v.shape for k, v in tensors[1].items()}  # not DDP's


def test_ctrl_c_hands_a_running_job_back_and_the_next_serve_resumes_it(server: Server):
    job = server.submit(spec_data(epochs=14, name="interrupted"))
    wait_for(lambda: any(m["epoch"] >= 2 for m in server.http.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]),
             60, "epoch 2", interval=0.1)
    stop_server(server)
    assert not child_pids(job["id"])
    stopped = get_job(server.settings, job["id"])
    assert stopped.state == "queued" and "shut down; the job resumes" in stopped.reason

    again = start_server(server.settings, server.procs, "serve-again")
    try:
        done = again.wait(job["id"], {"succeeded", "failed"}, 120)
        assert done["state"] == "succeeded" and done["attempts"] == 2, done
        assert "resumed from" in (again.run_dir(job["id"]) / "train.log").read_text()
        epochs = {m["epoch"] for m in again.http.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]}
        assert epochs == set(range(1, 15))
    finally:
        stop_server(again)
