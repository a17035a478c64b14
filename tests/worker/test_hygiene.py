"""Process hygiene, seen from /proc, with real processes:

- the trainer child (and every process of its group) runs without the server's credentials (no TTM_* variable, no
  database URL, token or password anywhere in its environment), in its run directory (cwd, HOME, TMPDIR), under the
  limits worker/proc.py sets, and holds no file open for writing but its run directory's and its slot's lock;
- `kill -9` of `ttm serve` takes everything it started down with it (its workers, the trainer and the trainer's
  process group), the job goes back to the queue, and a second `ttm serve` on the same home finishes it, each
  metric once;
- two workers of one host given the same slot never train at once: the second waits for the slot, and says so.
"""
from __future__ import annotations

import os
import resource
import secrets
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.db import session_scope
from service.models import Job
from service.settings import Settings
from service.states import CANCELLING, transition
from worker.proc import CHILD_MAX_FILE_BYTES, CHILD_MAX_OPEN_FILES, MP_SOCKET_SUFFIX, SOCKET_PATH_MAX
from worker.runner import job_run_dir

from worker_helpers import (
    Processes,
    child_pids,
    env_for,
    get_job,
    insert_job,
    make_settings,
    metric_rows,
    spec_data,
    wait_for,
    wait_state,
    wait_worker_ready,
)

GONE_WITHIN_S = 30  # a wait limit, not a speed claim


# ------------------------------------------------------------------------------------------------ /proc
@dataclass(frozen=True)
class Proc:
    """A process as /proc shows it; the start time tells it from a later process given the same pid."""

    pid: int
    ppid: int
    pgid: int
    start: int

    def alive(self) -> bool:
        now = read_proc(self.pid)
        return now is not None and now.start == self.start

    def cmdline(self) -> str:
        try:
            return Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "(gone)"


def read_proc(pid: int) -> Proc | None:
    """None when `pid` is gone, or a zombie (dead, waiting for a parent that may never reap it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return Proc(pid, ppid=int(fields[1]), pgid=int(fields[2]), start=int(fields[19]))


def all_procs() -> list[Proc]:
    return [p for entry in Path("/proc").iterdir() if entry.name.isdigit() and (p := read_proc(int(entry.name)))]


def descendants(pid: int) -> list[Proc]:
    procs = all_procs()
    found, frontier = [], {pid}
    while frontier:
        kids = [p for p in procs if p.ppid in frontier]
        found += kids
        frontier = {p.pid for p in kids}
    return found


def group(pgid: int) -> list[Proc]:
    return [p for p in all_procs() if p.pgid == pgid]


def environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)


def limits(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits as {"Max open files": (soft, hard)}."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        out[name] = (soft, hard)
    return out


def files_open_for_writing(pid: int) -> list[Path]:
    """The files (not pipes, sockets, ...) `pid` holds open with write access."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
            flags = int(next(line for line in (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().splitlines()
                             if line.startswith("flags:")).split()[1], 8)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("/") and flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
            out.append(Path(target))
    return out


def expected_limit(which: int, value: int) -> str:
    """What worker/proc.py's limit_resources leaves: `value`, or a lower hard limit the server inherited."""
    hard = resource.getrlimit(which)[1]
    return str(value if hard == resource.RLIM_INFINITY else min(value, hard))


# ------------------------------------------------------------------------------------------------ ttm serve
class Serve:
    def __init__(self, settings: Settings, procs: Processes, name: str, env: dict[str, str]):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.name, self.procs = name, procs
        self.proc = procs.start(name, ["serve", "--host=127.0.0.1", f"--port={port}", "--workers=1"], env)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        wait_for(self._up, 90, f"{name} to listen with a ready worker", interval=0.3)

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.procs.log(self.name)[-3000:]
        try:
            return self.http.get("/healthz", timeout=1).status_code == 200 and " ready" in self.procs.log(self.name)
        except httpx.HTTPError:
            return False

    def submit(self, spec: dict) -> str:
        response = self.http.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        return response.json()["id"]


# The server's secrets, as a lab's environment may hold them: none of them may reach a trainer.
SECRETS = {name: f"{name.lower()}-{secrets.token_hex(8)}" for name in
           ("TTM_TOKEN", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN")}
SECRETS["DATABASE_URL"] = f"postgresql://ttm:{secrets.token_hex(8)}@db.example:5432/ttm"
SECRETS["REDIS_URL"] = f"redis://:{secrets.token_hex(8)}@redis.example:6379/0"

EPOCHS = 12


@dataclass
class Running:
    """A `ttm serve` training one job (DataLoader path with one worker process: the trainer leads a group of two)."""

    settings: Settings
    procs: Processes
    env: dict[str, str]
    serve: Serve
    job_id: str

    @property
    def run_dir(self) -> Path:
        return job_run_dir(self.settings, self.job_id)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("hygiene")
    (home / "data").mkdir()
    # a shared artifact store mounted deep in the file tree: the run directory's TMPDIR is too long for
    # multiprocessing's socket paths, which the DataLoader worker needs (worker/proc.py: fit_socket_paths)
    store = home / "mnt" / "a-lab-share-mounted-deep-in-the-tree" / "artifacts"
    settings = make_settings(home, f"sqlite:///{home / 'ttm.db'}", lease_seconds=3, artifact_dir=store)
    env = env_for(settings, **SECRETS)
    procs = Processes(home)
    try:
        serve = Serve(settings, procs, "serve", env)
        job_id = serve.submit(spec_data(epochs=EPOCHS, name="hygiene", train={"fast_path": "off", "num_workers": 1}))
        assert len(str(job_run_dir(settings, job_id) / "tmp")) + MP_SOCKET_SUFFIX > SOCKET_PATH_MAX
        try:
            # the first epoch's metrics and its resume state (written just after them): a kill between the two
            # would redo the epoch from scratch, which is right but leaves nothing to resume from
            wait_for(lambda: metric_rows(settings, job_id) and (job_run_dir(settings, job_id) / "state.pt").exists(),
                     120, "the first epoch and its resume state", interval=0.2)
        except AssertionError as err:
            child_log = (job_run_dir(settings, job_id) / "child.log").read_text(errors="replace")
            raise AssertionError(f"{err}\n--- child.log\n{child_log[-3000:]}") from None
        yield Running(settings, procs, env, serve, job_id)
    finally:
        procs.stop_all()


def trainer_group(running: Running) -> list[Proc]:
    """The trainer child and the processes of its group (its DataLoader worker)."""
    leaders = [p for pid in child_pids(running.job_id) if (p := read_proc(pid)) and p.pgid == p.pid]
    assert len(leaders) == 1, [p.cmdline() for p in leaders]
    return group(leaders[0].pgid)


# ------------------------------------------------------------------------------------------------ the tests
def test_the_trainer_runs_without_credentials_in_its_run_directory_under_limits(running: Running):
    run_dir = running.run_dir.resolve()
    members = trainer_group(running)
    assert len(members) >= 2, "the trainer and its DataLoader worker"
    lock = (running.settings.home / "locks" / "cpu0.lock").resolve()
    forbidden = [*SECRETS.values(), running.settings.database_url]
    for proc in members:
        env = environ(proc.pid)
        assert not [k for k in env if k.startswith("TTM_")], f"pid {proc.pid}: {sorted(env)}"
        raw = Path(f"/proc/{proc.pid}/environ").read_bytes() + Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert not [s for s in forbidden if s.encode() in raw], f"pid {proc.pid} holds a secret: {sorted(env)}"

        assert Path(os.readlink(f"/proc/{proc.pid}/cwd")) == run_dir
        assert Path(env["HOME"]).resolve() == run_dir
        assert Path(env["TMPDIR"]).resolve().is_relative_to(run_dir) and Path(env["TMPDIR"]).is_dir()

        lim = limits(proc.pid)
        assert lim["Max core file size"] == ("0", "0")
        nofile = expected_limit(resource.RLIMIT_NOFILE, CHILD_MAX_OPEN_FILES)
        assert lim["Max open files"] == (nofile, nofile)
        fsize = expected_limit(resource.RLIMIT_FSIZE, CHILD_MAX_FILE_BYTES)
        assert lim["Max file size"] == (fsize, fsize)

        # writing only under its run directory (/dev: /dev/null, and the shared memory its DataLoader worker hands
        # batches over in); the slot's lock is inherited, so the slot stays taken while the trainer lives
        written = [p.resolve() for p in files_open_for_writing(proc.pid)]
        elsewhere = [p for p in written if not p.is_relative_to(run_dir) and p != lock and p.parts[1] != "dev"]
        assert elsewhere == [], f"pid {proc.pid} writes outside its run directory: {written}"
        assert lock in written, f"pid {proc.pid} does not hold its slot's lock"


def test_kill_9_of_serve_takes_its_workers_and_trainer_down_and_the_next_serve_finishes_the_job(running: Running):
    serve = running.serve
    started = descendants(serve.proc.pid)  # its worker process(es) and their trainer
    workers = [p for p in started if p.ppid == serve.proc.pid]
    assert workers and all(" worker " in p.cmdline() for p in workers), [p.cmdline() for p in workers]
    trainers = trainer_group(running)
    assert {p.pid for p in trainers} <= {p.pid for p in started}

    os.kill(serve.proc.pid, signal.SIGKILL)
    serve.proc.wait()
    doomed = {p.pid: p for p in [*started, *trainers]}
    try:
        wait_for(lambda: not [p for p in doomed.values() if p.alive()], GONE_WITHIN_S,
                 "the processes of the killed serve to be gone", interval=0.1)
    except AssertionError:
        left = [p for p in doomed.values() if p.alive()]
        described = [f"{p.pid}: {p.cmdline()}" for p in left]
        for p in left:  # no orphan outlives the test
            os.kill(p.pid, signal.SIGKILL)
        raise AssertionError(f"still running {GONE_WITHIN_S} s after kill -9 of ttm serve: {described}") from None
    assert not child_pids(running.job_id)

    # the worker, its lifeline cut, handed the job back (as on Ctrl-C) instead of leaving a lease to expire
    handed_back = get_job(running.settings, running.job_id)
    assert handed_back.state == "queued", (handed_back.state, handed_back.reason)
    assert "shut down; the job resumes" in handed_back.reason
    epochs_before = {e for e, _, _ in metric_rows(running.settings, running.job_id)}
    assert epochs_before and max(epochs_before) < EPOCHS

    again = Serve(running.settings, running.procs, "serve-again", running.env)
    job = wait_state(running.settings, running.job_id, {"succeeded", "failed"}, 240)
    assert job.state == "succeeded" and job.attempts == 2, (job.state, job.reason)
    assert "resumed from" in (running.run_dir / "train.log").read_text()
    rows = metric_rows(running.settings, running.job_id)
    keys = [(e, n) for e, n, _ in rows]
    assert len(keys) == len(set(keys)), "no duplicate metric rows"
    names = {n for e, n in keys if e == EPOCHS}
    assert set(keys) == {(e, n) for e in range(1, EPOCHS + 1) for n in names}, "no missing metric rows"
    assert again.proc.poll() is None


# ------------------------------------------------------------------------------------------------ slots
def start_worker(procs: Processes, name: str, env: dict[str, str], *flags: str):
    return procs.start(name, ["worker", *flags, f"--name={name}@%h", "--loglevel=info"], env)


WAITING = "of this host is held by another worker or its trainer"


def test_two_workers_of_one_cpu_slot_never_train_at_once(tmp_path: Path):
    from service.broker import enqueue_job, make_celery
    from service.migrate import upgrade_to_head

    (tmp_path / "data").mkdir()
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'ttm.db'}", lease_seconds=3)
    upgrade_to_head(settings)
    env = env_for(settings)
    procs = Processes(tmp_path)
    jobs: list[str] = []
    most_at_once = 0
    done = threading.Event()

    def watch() -> None:  # how many of the jobs have a trainer at the same moment
        nonlocal most_at_once
        while not done.is_set():
            most_at_once = max(most_at_once, len(jobs_training(jobs)))
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        start_worker(procs, "w1", env, "--slot=0", "--queues=cpu")
        wait_worker_ready(procs, "w1")
        start_worker(procs, "w2", env, "--slot=0", "--queues=cpu")
        wait_for(lambda: f"slot cpu0 {WAITING}" in procs.log("w2"), 60, "w2 to say it waits for slot cpu0")

        watcher.start()
        app = make_celery(settings)
        for spec in (spec_data(epochs=500, name="long"), spec_data(epochs=2, name="short")):
            jobs.append(insert_job(settings, spec))
            enqueue_job(jobs[-1], "cpu", app)
        long, short = jobs
        wait_for(lambda: metric_rows(settings, long), 120, "the long job's first epoch", interval=0.2)
        assert get_job(settings, long).worker.startswith("w1@")
        assert get_job(settings, short).state == "queued", "w2 took a job while w1 held the slot"
        assert " ready" not in procs.log("w2")

        procs.stop("w1")  # warm shutdown: the long job goes back to the queue; w2 gets the slot, and both jobs
        wait_for(lambda: (j := get_job(settings, long)).state == "running" and j.worker.startswith("w2@"), 180,
                 "w2 to resume the long job", interval=0.2)
        with session_scope(settings) as session:  # as POST /v1/jobs/{id}/cancel does
            transition(session, session.get(Job, long), CANCELLING, "cancelled by the test")
        assert wait_state(settings, long, {"cancelled", "failed"}, 60).state == "cancelled"
        job = wait_state(settings, short, {"succeeded", "failed"}, 180)
        assert job.state == "succeeded" and job.worker.startswith("w2@"), (job.state, job.reason, job.worker)
        assert "slot cpu0 claimed" in procs.log("w2")
    finally:
        done.set()
        procs.stop_all()
    assert most_at_once == 1, f"{most_at_once} trainers of one slot ran at once"


def jobs_training(job_ids: list[str]) -> set[str]:
    """Which of `job_ids` have a trainer process now (one pass over /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker.child" in cmd:
            found |= {j for j in job_ids if j.encode() in cmd}
    return found


def test_a_worker_for_a_gpu_another_worker_holds_waits_for_it(tmp_path: Path):
    from service.migrate import upgrade_to_head

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'ttm.db'}")
    upgrade_to_head(settings)
    env = env_for(settings)
    procs = Processes(tmp_path)
    try:
        start_worker(procs, "gpus01", env, "--gpu=0,1", "--queues=gpu")
        wait_worker_ready(procs, "gpus01")
        start_worker(procs, "gpu1", env, "--gpu=1", "--queues=gpu")
        wait_for(lambda: f"slot gpu1 {WAITING}" in procs.log("gpu1"), 60, "the second worker to wait for gpu1")
        assert " ready" not in procs.log("gpu1")
        procs.stop("gpus01")
        wait_worker_ready(procs, "gpu1")
        assert "slot gpu1 claimed" in procs.log("gpu1")
    finally:
        procs.stop_all()
