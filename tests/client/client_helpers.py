"""Servers, a worker, a connection-dropping proxy and the CLI, for the client and browser tests.

Two kinds of server:
  api_server(home)  the API alone in a thread (jobs stay queued; tests move them with svc_helpers.run_job)
  live_stack()      the API plus a real worker process training tiny jobs (sklearn digits, resnet8, CPU); started
                    once per test session and shared by tests/client and tests/browser (1 worker: jobs run in turn)
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "service") not in sys.path:
    sys.path.insert(0, str(TESTS / "service"))

from service.settings import Settings  # noqa: E402

from svc_helpers import free_port, make_settings, run_job  # noqa: E402  (after the path is set)

__all__ = ["Stack", "api_server", "live_stack", "run_cli", "start_cli", "digits_spec", "add_metrics", "run_job",
           "DropProxy", "wait_for", "save_teacher"]


@dataclass
class Stack:
    url: str
    settings: Settings
    alice: str
    bob: str
    admin: str
    home: Path


def _prepare(home: Path) -> tuple[Settings, list[str]]:
    from service.db import session_scope
    from service.migrate import upgrade_to_head
    from service.queries.users import create_user

    (home / "data").mkdir(parents=True, exist_ok=True)
    settings = make_settings(home, f"sqlite:///{home / 'ttm.db'}")
    upgrade_to_head(settings)
    with session_scope(settings) as session:
        tokens = [create_user(session, name, is_admin=name == "root")[1] for name in ("alice", "bob", "root")]
    return settings, tokens


def make_app(settings: Settings):
    """The API app as `ttm serve` builds it (the dashboard included)."""
    from service.app import create_app

    return create_app(settings, host="127.0.0.1")


@contextmanager
def serve_app(app) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 20, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def api_server(home: Path) -> Iterator[Stack]:
    settings, (alice, bob, admin) = _prepare(home)
    with serve_app(make_app(settings)) as url:
        yield Stack(url, settings, alice, bob, admin, home)


# ---------------------------------------------------------------------------------------------- the real worker
_LIVE: dict[str, Any] = {}


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTM_")}
    env.update(TTM_HOME=str(settings.home), TTM_DATABASE_URL=settings.database_url, TTM_BROKER_URL="",
               TTM_ARTIFACT_DIR=str(settings.artifact_dir), TTM_DATA_ROOT=str(settings.data_root),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def live_stack() -> Stack:
    """The API and one real worker, started on first use and stopped when the test process exits."""
    if "stack" in _LIVE:
        return _LIVE["stack"]
    home = Path(tempfile.mkdtemp(prefix="ttm-live-"))
    settings, (alice, bob, admin) = _prepare(home)
    server = serve_app(make_app(settings))
    url = server.__enter__()
    log = (home / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--queues", "cpu,gpu",
                               "--name", "test-worker@%h", "--loglevel", "info"],
                              env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)

    def stop() -> None:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        server.__exit__(None, None, None)
        log.close()
        shutil.rmtree(home, ignore_errors=True)

    atexit.register(stop)
    wait_for(lambda: b" ready" in (home / "worker.log").read_bytes() or worker.poll() is not None, 60,
             "the worker to start")
    if worker.poll() is not None:
        raise RuntimeError(f"the worker died:\n{(home / 'worker.log').read_text()[-3000:]}")
    _LIVE["stack"] = Stack(url, settings, alice, bob, admin, home)
    return _LIVE["stack"]


# ---------------------------------------------------------------------------------------------- jobs and rows
def digits_spec(name: str = "digits", epochs: int = 3, **train: Any) -> dict[str, Any]:
    """A job that trains in seconds on a CPU: resnet8 on a slice of sklearn's 8×8 digits."""
    return {"name": name, "student": {"arch": "resnet8"},
            "dataset": {"name": "digits", "subset": {"train": 512, "test": 200}},
            "loss": {"kind": "ce"},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 0.1, "schedule": {"kind": "cosine"}, "device": "cpu",
                      "num_workers": 0, **train},
            "resources": {"gpus": 0}}


def save_teacher(folder: Path) -> Path:
    """resnet8 weights for digits (10 classes, 1 channel), as torch.save writes a state_dict."""
    import torch

    from ttm.models import build_model

    path = folder / "teacher.pth"
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 10, 1).state_dict(), path)
    return path


def add_metrics(settings: Settings, job_id: str, epoch: int, values: dict[str, float]) -> None:
    """Metric rows as the worker writes them (names as the trainer reports them: train/loss, test/top1, ...)."""
    from service.db import session_scope
    from service.models import Metric, utcnow

    with session_scope(settings) as session:
        for name, value in values.items():
            session.add(Metric(job_id=job_id, epoch=epoch, name=name, value=value, at=utcnow()))


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- the CLI
def _cli_env(server: str, token: str | None, cwd: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTM_")}
    env.update(TTM_SERVER=server, PYTHONUNBUFFERED="1", COLUMNS="200")
    if token:
        env["TTM_TOKEN"] = token
    return env


def run_cli(*args: str, server: str, token: str | None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`ttm ARGS` in a fresh process (the client commands alone: python -m ttm.client_cli)."""
    return subprocess.run([sys.executable, "-m", "ttm.client_cli", *args], env=_cli_env(server, token, cwd),
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, server: str, token: str | None, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ttm.client_cli", *args], env=_cli_env(server, token, cwd),
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------------------------- a bad network
class DropProxy:
    """A TCP proxy in front of the server that cuts an event stream in the middle of an event, `drops` times:
    once `after` metric events of a connection have passed, it forwards half of the next piece and closes."""

    MARK = b"event: metric"

    def __init__(self, target_url: str, after: int = 2, drops: int = 1):
        host, port = target_url.rsplit("//", 1)[1].split(":")
        self.target = (host, int(port))
        self.after, self.drops_left, self.dropped = after, drops, 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        seen, tail = 0, b""
        try:
            while data := src.recv(65536):
                if downstream:
                    seen += (tail + data).count(self.MARK) - tail.count(self.MARK)
                    tail = data[-len(self.MARK):]
                    with self.lock:
                        cut = seen > self.after and self.drops_left > 0
                        if cut:
                            self.drops_left -= 1
                            self.dropped += 1
                    if cut:
                        dst.sendall(data[: max(1, len(data) // 2)])
                        break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


# ---------------------------------------------------------------------------------------------- fixtures
# Shared by tests/client and tests/browser: their conftest files import them.
@pytest.fixture
def api(tmp_path: Path) -> Iterator[Stack]:
    """The API alone: submitted jobs stay queued until a test moves them (svc_helpers.run_job)."""
    with api_server(tmp_path / "home") as stack:
        yield stack


@pytest.fixture(scope="session")
def live() -> Stack:
    """The API plus one real worker (shared with tests/browser; jobs run one at a time)."""
    return live_stack()


@pytest.fixture(scope="session")
def teacher_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher"))
