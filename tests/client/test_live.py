"""The CLI and the SDK against a real server and a real worker training tiny jobs (sklearn digits, resnet8, CPU):
submit --wait in CI style, watching through a connection that drops mid-event, the timeout and cancel exit codes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from ttm.client import Client
from ttm.client_cli import Exit

from client_helpers import DropProxy, digits_spec, run_cli, start_cli


def _json(result) -> dict:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return json.loads(lines[0])


def test_ci_submit_wait_download(live, tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(digits_spec("ci-teacher", epochs=2)))
    args = ["submit", "spec.yaml", "--wait", "--timeout", "3m", "--min-accuracy", "20", "-o", "student.safetensors",
            "--idempotency-key", "pipeline-1", "--json"]
    r = run_cli(*args, server=live.url, token=live.alice, cwd=tmp_path, timeout=240)
    assert r.returncode == Exit.SUCCEEDED, r.stderr
    out = _json(r)
    job = out["job"]
    assert out["result"] == "succeeded" and job["state"] == "succeeded" and job["best_top1"] >= 20
    assert out["file"] == "student.safetensors"
    assert "epoch 2/2" in r.stderr and "succeeded" in r.stderr

    # the file is the server's best checkpoint, and loads into the student's architecture
    from safetensors.torch import load_file

    from ttm.client import sha256_file
    from ttm.models import build_model

    with Client(live.url, live.alice) as c:
        best = {(k["which"], k["format"]): k for k in c.checkpoints(job["id"])}
    assert sha256_file(tmp_path / "student.safetensors") == best[("best", "safetensors")]["sha256"]
    build_model("resnet8", 10, 1).load_state_dict(load_file(tmp_path / "student.safetensors"))

    # the pipeline step retried with the same key: the same job, no second training; the gate now fails it
    r = run_cli(*args[:6], "100", "--idempotency-key", "pipeline-1", "--json", server=live.url, token=live.alice,
                cwd=tmp_path)
    assert r.returncode == Exit.BELOW_MIN_ACCURACY, r.stderr
    assert _json(r)["job"]["id"] == job["id"] and _json(r)["result"] == "below_min_accuracy"

    r = run_cli("download", job["id"], "--which", "last", "--format", "pt", "-o", "last.pt", server=live.url,
                token=live.alice, cwd=tmp_path)
    assert r.returncode == 0 and sha256_file(tmp_path / "last.pt") == best[("last", "pt")]["sha256"]
    r = run_cli("logs", job["id"], server=live.url, token=live.alice)
    assert r.returncode == 0 and "epoch 2/2" in r.stdout


def _ci_snippets() -> dict[str, Any]:
    """The README's GitHub Actions step and GitLab job, as YAML."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("### In CI"):]
    github, gitlab = re.findall(r"```yaml\n(.*?)```", section, re.S)[:2]
    return {"github": yaml.safe_load(github)[0], "gitlab": yaml.safe_load(gitlab)["distill"]}


def _run_step(commands: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """What a CI runner does with a step: each command in one shell, stopping at the first failure. The `pip
    install` of the client is left out: the base install is tested in test_base_install.py."""
    lines = [line for c in commands for line in c.splitlines() if not line.lstrip().startswith("pip install")]
    script = "\n".join(["set -eo pipefail", *lines])
    full = {k: v for k, v in os.environ.items() if not k.startswith("TTM_")} | {"PYTHONUNBUFFERED": "1", **env}
    full["PATH"] = f"{Path(sys.executable).parent}:{full.get('PATH', '')}"
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=full, capture_output=True, text=True, timeout=600)


def test_the_readmes_ci_snippets_run_as_ci_jobs_and_retry_safely(live, tmp_path):
    snippets = _ci_snippets()
    spec = {**digits_spec("ci-gate", epochs=5), "dataset": {"name": "digits"}}  # reaches the snippets' 70 %
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    step = snippets["github"]
    server = {"TTM_SERVER": live.url, "TTM_TOKEN": live.alice}
    assert set(step["env"]) == set(server)

    def github(run_id: str, attempt: str) -> dict:
        commands = step["run"].replace("${{ github.run_id }}", run_id).replace("${{ github.run_attempt }}", attempt)
        done = _run_step([commands], server, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads((tmp_path / "result.json").read_text())
        assert result["result"] == "succeeded" and result["exit_code"] == 0 and result["job"]["best_top1"] >= 70
        assert result["file"] == "student.safetensors" and (tmp_path / "student.safetensors").is_file()
        return result["job"]

    first = github("9001", "1")
    assert github("9001", "1")["id"] == first["id"]  # the step retried within its attempt: no second training
    assert github("9001", "2")["id"] != first["id"]  # "Re-run jobs": a new attempt trains again

    job = snippets["gitlab"]
    ci = {"CI_PIPELINE_ID": "512", "CI_JOB_ID": "7001", **server}
    done = _run_step(job["script"], ci, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    gitlab = json.loads((tmp_path / "result.json").read_text())["job"]
    assert gitlab["id"] not in (first["id"],) and gitlab["state"] == "succeeded"
    assert set(job["artifacts"]["paths"]) == {"student.safetensors", "result.json"}


def test_watch_through_a_dropped_connection(live):
    """The SDK's event iterator and `ttm watch` each lose their stream in the middle of an event; both resume with
    Last-Event-ID and see every event exactly once."""
    with Client(live.url, live.alice) as c:
        job = c.submit(digits_spec("drop", epochs=3))
    sdk_proxy, cli_proxy = DropProxy(live.url, after=2), DropProxy(live.url, after=2)
    cli = start_cli("watch", job["id"], "--json", "--timeout", "3m", server=cli_proxy.url, token=live.alice)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(Client(sdk_proxy.url, live.alice, backoff=0.05)
                                                         .events(job["id"])))
    reader.start()
    stdout, stderr = cli.communicate(timeout=240)
    reader.join(60)
    assert sdk_proxy.dropped == 1 and cli_proxy.dropped == 1

    with Client(live.url, live.alice) as c:
        everything = list(c.events(job["id"]))  # the whole history, on a good connection
    key = lambda e: (e.type, e.data["seq"])  # noqa: E731
    assert [key(e) for e in seen] == [key(e) for e in everything]  # no gap, no repeat, same order
    assert [e.data["state"] for e in seen if e.type == "state"] == ["queued", "running", "succeeded"]

    assert cli.returncode == Exit.SUCCEEDED, stderr
    assert json.loads(stdout)["job"]["state"] == "succeeded"
    lines = stderr.splitlines()
    for epoch in (1, 2, 3):
        assert sum(line.startswith(f"epoch {epoch}/3") for line in lines) == 1, stderr
    assert "resuming after" in stderr  # the drop was noticed and survived


def test_timeout_then_cancel(live, tmp_path):
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(digits_spec("long", epochs=500)))
    r = run_cli("submit", "long.yaml", "--wait", "--timeout", "3s", "--json", server=live.url, token=live.alice,
                cwd=tmp_path)
    assert r.returncode == Exit.TIMED_OUT, r.stderr
    out = _json(r)
    assert out["result"] == "timed_out" and out["job"]["state"] in ("queued", "running")
    job_id = out["job"]["id"]
    r = run_cli("cancel", job_id, "--json", server=live.url, token=live.alice)
    assert r.returncode == 0 and _json(r)["state"] in ("cancelling", "cancelled")
    r = run_cli("watch", job_id, "--timeout", "1m", server=live.url, token=live.alice)
    assert r.returncode == Exit.CANCELLED, r.stderr
    with Client(live.url, live.alice) as c:
        assert c.job(job_id)["state"] == "cancelled"


def test_gpus_asked_on_a_host_without_any_fail_saying_so(live):
    """`resources.gpus: 2` on the gpu queue, and a worker with no CUDA: the job fails with the reason and the fix,
    instead of training two CPU processes as if they were the GPUs asked for (the cpu queue does that on request)."""
    with Client(live.url, live.alice) as c:
        job = c.submit({**digits_spec("two-gpus", epochs=1), "resources": {"gpus": 2}})
        assert job["queue"] == "gpu"
        final = c.wait(job["id"], timeout=120)
    assert final["state"] == "failed"
    assert final["reason"].endswith(
        "the job asks for 2 GPUs (resources.gpus: 2) but its worker has no GPU (CUDA is not available there): submit "
        "it with resources.queue: cpu to train 2 CPU processes, or run a worker on a GPU host"), final["reason"]
