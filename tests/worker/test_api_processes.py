"""`ttm serve --api-processes 2`: two API processes (uvicorn's --workers) share one port on SQLite and on PostgreSQL;
both take connections, both die with a killed serve, and a SIGTERM in the middle of a burst of submits loses no
accepted job: every 201 is a
committed job with its first event and its message."""
from __future__ import annotations

import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from service.db import session_scope
from service.models import Job, JobEvent
from service.settings import Settings

from worker_helpers import Processes, env_for, free_port, wait_for

SPEC = {"name": "burst", "student": {"arch": "resnet8"}, "dataset": {"name": "digits"}, "loss": {"kind": "ce"},
        "resources": {"gpus": 0}}



def children(pid: int) -> dict[int, str]:
    """{pid: command line} of the live child processes of `pid`."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def start_two_api_processes(procs: Processes, settings: Settings, port: int) -> tuple[subprocess.Popen, list[int]]:
    """`ttm serve --workers 0 --api-processes 2` once both have started; with the two API processes' pids. No
    reconciler: it would re-send the messages of jobs queued longer than two (short) leases."""
    serve = procs.start("serve", ["serve", "--host=127.0.0.1", f"--port={port}", "--workers=0", "--no-reconciler",
                                  "--api-processes=2", "--no-access-log"], env_for(settings))
    wait_for(lambda: procs.log("serve").count("Application startup complete") == 2, 120,
             "both API processes to start", interval=0.3)
    apis = [pid for pid, cmd in children(serve.pid).items() if "spawn_main" in cmd]
    assert len(apis) == 2, children(serve.pid)
    return serve, apis


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)  # the suite's time: passed on both when written
def test_two_api_processes_share_the_port_and_a_sigterm_loses_no_accepted_job(settings: Settings):
    procs = Processes(settings.home)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        serve, apis = start_two_api_processes(procs, settings, port)
        cpu_before = {pid: cpu_seconds(pid) for pid in apis}

        accepted: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:  # one keep-alive connection each, accepted by whichever process is free
            with httpx.Client(base_url=url, timeout=30) as http:
                while not stop.is_set():
                    try:
                        r = http.post("/v1/jobs", json=SPEC)
                    except httpx.HTTPError:
                        return  # the server is going away: nothing was accepted by this request
                    if r.status_code == 201:
                        accepted.append(r.json()["id"])
                    elif r.status_code != 503:
                        failures.append(f"{r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        wait_for(lambda: len(accepted) >= 300 or failures, 120, "300 accepted submits", interval=0.05)
        used = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in apis}
        assert all(seconds > 0.1 for seconds in used.values()), f"CPU seconds per API process: {used}"

        serve.send_signal(signal.SIGTERM)  # while the sixteen clients keep submitting
        assert serve.wait(timeout=60) == 0, procs.log("serve")[-3000:]
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not failures, failures[:3]
        assert "ttm serve: stopped" in procs.log("serve")
        assert not any(Path(f"/proc/{pid}").exists() for pid in apis)
    finally:
        procs.stop_all()

    with session_scope(settings) as session:
        stored = set(session.scalars(select(Job.id)))
        first_events = set(session.scalars(select(JobEvent.job_id).where(JobEvent.reason == "submitted")))
    assert set(accepted) <= stored and len(accepted) == len(set(accepted)) >= 300
    assert stored == first_events  # every job has its first event
    sent = sum(1 for p in (settings.broker_dir / "queue").iterdir() if p.is_file())
    assert sent == len(stored)  # and its "run job" message: the writers sent them before their processes ended


def test_a_port_in_use_is_named(settings: Settings):
    procs = Processes(settings.home)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = procs.start("serve", ["serve", "--host=127.0.0.1", f"--port={port}", "--workers=0",
                                      "--api-processes=2"], env_for(settings))
        try:
            assert serve.wait(timeout=60) == 2
        finally:
            procs.stop_all()
    assert f"cannot listen on 127.0.0.1:{port}" in procs.log("serve")


@pytest.mark.parametrize("count", ["0", "-1"])
def test_api_processes_must_be_positive(settings: Settings, count: str):
    procs = Processes(settings.home)
    serve = procs.start("serve", ["serve", f"--port={free_port()}", f"--api-processes={count}"], env_for(settings))
    try:
        assert serve.wait(timeout=60) == 2
    finally:
        procs.stop_all()
    assert "--api-processes" in procs.log("serve")


def test_api_processes_die_with_a_killed_serve(sqlite_settings: Settings):
    """kill -9 leaves uvicorn's supervisor no time to stop its processes: their parent-death signal does."""
    procs = Processes(sqlite_settings.home)
    port = free_port()
    try:
        serve, apis = start_two_api_processes(procs, sqlite_settings, port)
        serve.send_signal(signal.SIGKILL)
        serve.wait()
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in apis), 30, "the API processes to exit")
        with socket.socket() as again:  # and the port is free for the next serve
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
    finally:
        procs.stop_all()
