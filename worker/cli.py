"""`ttm serve`, `ttm worker` and `ttm reconcile` (mounted into `ttm` through the `ttm.cli` entry points; also
`python -m worker.cli serve ...`).

`ttm serve` is the one-machine server: it migrates the database, then runs the API, N workers and the reconciler,
with the embedded defaults (SQLite, kombu's filesystem transport, artifacts under TTM_HOME) unless TTM_* says
otherwise. A lab runs the parts apart (docker-compose.yml): `ttm serve --workers 0` for the API and the reconciler,
and one `ttm worker --gpu I` per GPU.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

log = logging.getLogger("ttm.worker")


QUIET = ("alembic", "kombu", "celery", "amqp")  # their INFO lines say how they work, not what ours do


def _configure_logging(verbose: bool = False) -> None:
    """Our own lines (ttm.*) and every library's warnings; -v adds the libraries' INFO lines too. Celery's banner and
    its warning about running as root (a container's usual user) go with them."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges")


class _QuietHandBack(logging.Filter):
    """Drops Celery's warning, with its traceback, about the message a stopping worker hands back (worker/tasks.py
    raises Reject for it): our own line has said already that the job goes back to the queue."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery.exceptions import Reject

        return not (record.exc_info and isinstance(record.exc_info[1], Reject))


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="also the INFO lines of Celery, kombu and Alembic, "
                                                               "and Celery's banner")]


def _where(settings) -> str:
    db = settings.database_url.split("@")[-1]  # never print a password
    broker = settings.broker_url.split("@")[-1] if settings.broker_url else f"files under {settings.broker_dir}"
    return f"database {db}; broker {broker}; artifacts {settings.artifact_dir}"


# --------------------------------------------------------------------------------------------- ttm worker
def worker(
    gpu: Annotated[str | None, typer.Option(
        "--gpu", help="CUDA device(s) this worker owns: 0, or 0,1 for multi-GPU jobs, or auto to claim a free one "
                      "on this host (one worker per GPU); sets CUDA_VISIBLE_DEVICES")] = None,
    queues: Annotated[str | None, typer.Option(
        "--queues", "-Q", help="queues to take jobs from [default: gpu with --gpu, else gpu,cpu]")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", "-n", help="node name; %h is the host name [default: gpu<I>@%h or worker@%h]")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="our own lines' level")] = "info",
    verbose: Verbose = False,
    slot: Annotated[int | None, typer.Option(
        "--slot", min=0, help="CPU worker slot of this host to hold (lock file cpu<I>.lock); `ttm serve` numbers its "
                              "workers this way; GPU workers hold gpu<I>.lock per device instead")] = None,
    lifeline_fd: Annotated[int | None, typer.Option("--lifeline-fd", hidden=True,
                                                       help="exit when this pipe closes (set by ttm serve)")] = None,
) -> None:
    """Start one worker: it takes one job at a time from its queues and trains it in a child process."""
    from service.settings import get_settings
    from worker import slots

    _configure_logging(verbose)
    logging.getLogger("ttm").setLevel(loglevel.upper())
    if not verbose:
        logging.getLogger("celery.app.trace").addFilter(_QuietHandBack())
    settings = get_settings()
    if lifeline_fd is not None:
        slots.watch_lifeline(lifeline_fd, _supervisor_lost)
    locks = slots.lock_dir(settings.home)
    if gpu == "auto":
        gpu = claim_gpu(locks)
    elif gpu is not None:
        for index in [d.strip() for d in gpu.split(",") if d.strip()]:
            slots.claim(locks, f"gpu{index}")  # one GPU never holds two trainers of this host's workers
    elif slot is not None:
        slots.claim(locks, f"cpu{slot}")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # the trainer child inherits it
    queues = queues or ("gpu" if gpu is not None else "gpu,cpu")
    name = name or (f"gpu{gpu.replace(',', '-')}@%h" if gpu is not None else "worker@%h")
    devices = f", CUDA devices {gpu}" if gpu is not None else ""
    log.info("worker %s: queues %s%s; %s", name.replace("%h", socket.gethostname()), queues, devices, _where(settings))
    from worker.app import celery_app

    celery_app.worker_main([*([] if verbose else ["--quiet"]), "worker", "--pool=solo", "--concurrency=1",
                            f"--queues={queues}", f"--hostname={name}", "--without-gossip", "--without-mingle",
                            "--without-heartbeat", f"--loglevel={'info' if verbose else 'warning'}"])


def claim_gpu(lock_dir: Path) -> str:
    """The index of a GPU no other worker on this host has claimed (its lock file, held for this process's life)."""
    from worker import slots

    count = visible_gpu_count()
    if count == 0:
        raise typer.BadParameter("no GPU visible on this host", param_hint="--gpu auto")
    for index in range(count):
        if slots.try_claim(lock_dir, f"gpu{index}"):
            return str(index)
    raise typer.BadParameter(f"all {count} GPUs of this host are claimed by other workers", param_hint="--gpu auto")


def _supervisor_lost() -> None:
    """`ttm serve` is gone (killed, even with -9): hand the job back as on SIGTERM (Celery's warm shutdown), and
    if that has not ended this process in STOP_TIMEOUT_S, exit anyway (the trainer dies by its parent-death
    signal)."""
    log.warning("ttm serve, which started this process, is gone; shutting down")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(WorkerPool.STOP_TIMEOUT_S)
    os._exit(1)


def visible_gpu_count() -> int:
    """Counted without initialising CUDA in this process: nvidia-smi, else torch in a throwaway interpreter."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if out.returncode == 0:
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                         capture_output=True, text=True)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


# --------------------------------------------------------------------------------------------- ttm reconcile
def reconcile(
    loop: Annotated[bool, typer.Option("--loop", help="keep going (a lab's reconciler service)")] = False,
    interval: Annotated[float | None, typer.Option(help="seconds between passes [default: a third of "
                                                           "TTM_LEASE_SECONDS, 0.5 to 10]")] = None,
) -> None:
    """Re-enqueue jobs whose worker or message was lost; fail them after TTM_MAX_ATTEMPTS; send due webhooks."""
    from service.settings import get_settings
    from worker.reconcile import reconcile_and_send, reconcile_forever
    from worker.webhooks import deliver_due

    _configure_logging()
    settings = get_settings()
    if not loop:  # one pass over everything: page after page of the queued jobs
        totals = {"requeued": 0, "failed": 0, "cancelled": 0, "resent": 0}
        after = None
        while True:
            summary = reconcile_and_send(settings, after=after)
            for key in totals:
                totals[key] += len(getattr(summary, key))
            if (after := summary.resume_after) is None:
                break
        deliver_due(settings)
        typer.echo(f"requeued {totals['requeued']}, failed {totals['failed']}, cancelled {totals['cancelled']}, "
                   f"re-sent {totals['resent']}", err=True)
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("reconciler running; %s", _where(settings))
    reconcile_forever(settings, stop, interval)


# --------------------------------------------------------------------------------------------- ttm serve
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=0, help="worker processes (one job each at a time); 0: "
                                                                  "the API and the reconciler only")] = 1,
    queues: Annotated[str, typer.Option(help="queues the workers take jobs from")] = "gpu,cpu",
    gpus: Annotated[str | None, typer.Option(help="CUDA devices to spread the workers over, e.g. 0,1,2,3 "
                                                     "(worker i owns the i-th)")] = None,
    reconciler: Annotated[bool, typer.Option("--reconciler/--no-reconciler",
                                             help="run the reconciler loop in this process")] = True,
    api_processes: Annotated[int, typer.Option(
        "--api-processes", min=1, help="API server processes (uvicorn's --workers): one Python process serves "
                                       "about one core")] = 1,
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", help="a line on stdout per request (Prometheus' /metrics counts them "
                                             "either way)")] = True,
    verbose: Verbose = False,
) -> None:
    """The API, N workers and the reconciler on this machine; the database is migrated first. Ctrl-C stops all:
    a running job goes back to the queue and resumes from its last epoch checkpoint next time."""
    import uvicorn

    from service.app import create_app
    from service.migrate import upgrade_to_head
    from service.settings import get_settings
    from worker.reconcile import start_reconciler_thread

    _configure_logging(verbose)
    settings = get_settings()
    upgrade_to_head(settings)
    api = create_app(settings, host=host)  # refuses bad settings before anything starts
    _check_port_free(host, port)
    devices = [d.strip() for d in gpus.split(",") if d.strip()] if gpus else []
    if devices and workers > len(devices):
        raise typer.BadParameter(f"{workers} workers on {len(devices)} GPUs: a GPU takes one worker (one trainer "
                                 "at a time); give --workers at most the number of --gpus", param_hint="--workers")
    pool = WorkerPool([_worker_command(i, queues, devices[i] if devices else None, verbose)
                       for i in range(workers)], env=_cpu_share_env(workers, devices))
    pool.start()
    stop_reconciler = None
    if reconciler:
        _, stop_reconciler = start_reconciler_thread(settings)
    processes = f", {api_processes} API processes" if api_processes > 1 else ""
    typer.echo(f"ttm serve: http://{host}:{port}  ({workers} worker{'s' if workers != 1 else ''}{processes}; "
               f"{_where(settings)})", err=True)
    # uvicorn re-raises the signal that stopped it once it has shut down; with SIGTERM's default action that would
    # end this process before the workers below have handed their jobs back. As an exception it unwinds instead.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if api_processes == 1:
            _api_server(uvicorn.Config(api, host=host, port=port, log_level="info", access_log=access_log),
                        pool.begin_stop).run()
        else:  # uvicorn's own supervisor: it restarts a process that dies, and stops them all on SIGINT/SIGTERM
            os.environ[_API_HOST_VARIABLE] = host
            uvicorn.run(f"{__name__}:api_process_app", factory=True, host=host, port=port, workers=api_processes,
                        log_level="info", access_log=access_log)
    except KeyboardInterrupt:  # Ctrl-C, or the SIGTERM uvicorn (or the handler above) turned into one
        pass
    finally:
        if stop_reconciler is not None:
            stop_reconciler.set()
        pool.stop()  # SIGTERM: the workers hand their jobs back
        typer.echo("ttm serve: stopped", err=True)


_API_HOST_VARIABLE = "TTM_SERVE_LISTEN_HOST"  # from `ttm serve` to its API processes, for the auth-off check


def api_process_app():  # noqa: ANN201
    """The app of one of `ttm serve --api-processes N`'s processes, which uvicorn starts (spawned) and imports by
    name. Each dies with its supervisor however that ends (kill -9 included): a parent-death SIGTERM, which
    uvicorn turns into a graceful shutdown."""
    import multiprocessing

    from service.app import create_app
    from service.settings import get_settings
    from worker.proc import die_with_parent

    die_with_parent(signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the supervisor died before the line above
        os._exit(1)
    return create_app(get_settings(), host=os.environ.get(_API_HOST_VARIABLE))


def _check_port_free(host: str, port: int) -> None:
    """Say now, before any worker starts, that the port is taken (uvicorn would say so only after)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT does not count
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as err:
            raise typer.BadParameter(f"cannot listen on {host}:{port}: {err.strerror}", param_hint="--port") \
                from None


def _api_server(config, on_exit: Callable[[], None]):  # noqa: ANN001, ANN202
    """uvicorn's server, which also tells the workers to stop the moment it is asked to (Ctrl-C, SIGTERM from
    `docker stop`), so their jobs are handed back while the API drains its connections."""
    import uvicorn

    class ApiServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # noqa: ANN001
            on_exit()
            super().handle_exit(sig, frame)

    return ApiServer(config)


def _cpu_share_env(workers: int, devices: list[str]) -> dict[str, str]:
    """Workers that train on the CPU split its cores: N trainers each running a thread per core make OpenMP's
    threads spin against each other, which was seen here to slow a step tenfold. An explicit OMP_NUM_THREADS wins."""
    env = dict(os.environ)
    if workers > 1 and not devices and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return env


def _worker_command(index: int, queues: str, gpu: str | None, verbose: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "worker.cli", "worker", f"--queues={queues}", f"--name=worker{index + 1}@%h",
           *(["--verbose"] if verbose else [])]
    return cmd + ([f"--gpu={gpu}"] if gpu is not None else [f"--slot={index}"])


class WorkerPool:
    """Worker processes that are restarted when they die (a crash, the OOM killer) until `stop`."""

    RESTART_DELAY_S = 2.0
    STOP_TIMEOUT_S = 30.0  # a warm shutdown stops the trainer child (3 s grace) and hands the job back

    _lifeline: int | None = None  # the read end of a pipe whose write end only this process holds
    _lifeline_write: int  # that write end, set with _lifeline and never closed

    def __init__(self, commands: list[list[str]], env: dict[str, str] | None = None):
        self.commands = commands
        self.env = env
        self.procs: list[subprocess.Popen | None] = [None] * len(commands)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-pool", daemon=True)

    def start(self) -> None:
        for i in range(len(self.commands)):
            self._spawn(i)
        if self.commands:
            self._thread.start()

    def _spawn(self, i: int) -> None:
        """Each process gets the read end of this server's lifeline: when this process dies, however (kill -9),
        the pipe reads end-of-file and they stop (a parent-death signal would fire when the spawning *thread* ends,
        which for a restart is the pool's watcher thread)."""
        if WorkerPool._lifeline is None:
            WorkerPool._lifeline, _write_end = os.pipe()  # both not inheritable; the write end stays here, open
            WorkerPool._lifeline_write = _write_end
        fd = WorkerPool._lifeline
        # a session of its own: Ctrl-C in the terminal reaches `ttm serve` alone, which stops the workers in order
        # (SIGTERM, a warm shutdown), instead of each worker taking the SIGINT for a second, cold one
        self.procs[i] = subprocess.Popen([*self.commands[i], f"--lifeline-fd={fd}"], stdin=subprocess.DEVNULL,
                                         env=self.env, pass_fds=(fd,), start_new_session=True)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                    log.warning("worker %d exited with code %s; restarting it", i + 1, proc.returncode)
                    time.sleep(self.RESTART_DELAY_S)
                    if not self._stopping.is_set():
                        self._spawn(i)

    def begin_stop(self) -> None:
        """SIGTERM every worker (Celery's warm shutdown: the job in hand goes back to the queue); returns at once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.begin_stop()
        live = [p for p in self.procs if p is not None and p.poll() is None]
        deadline = time.monotonic() + self.STOP_TIMEOUT_S
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


cli = typer.Typer(no_args_is_help=True, add_completion=False, help="The job server's workers and one-machine server.")
cli.command("serve")(serve)
cli.command("worker")(worker)
cli.command("reconcile")(reconcile)

if __name__ == "__main__":
    cli()
