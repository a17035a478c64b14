"""Process plumbing for the trainer child: it dies with its worker, and the worker can stop it and all it started.

The child runs in its own session (so its process group holds it, its DataLoader workers and, under torchrun, the
launcher), which is what the worker signals. A worker killed with SIGKILL cannot clean up, so the child watches
for that itself: the kernel's parent-death signal where Linux offers it, and a thread that polls the supervisor.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send `sig` to this process when its parent exits (kept across exec, so torchrun inherits it)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


# Resource limits of a trainer child. No RLIMIT_AS: CUDA maps tens of GB of virtual address space at initialisation
# (and torch alone ~3 GB), so an address-space cap breaks GPU jobs; host memory is the OOM killer's (or a cgroup's).
CHILD_MAX_OPEN_FILES = 16384  # DataLoader workers pass tensors as file descriptors: room for many, not unbounded
CHILD_MAX_FILE_BYTES = 64 * 1024**3  # one file (a checkpoint, a log) the child writes
# What a trainer child's environment may hold: nothing of the server's (no TTM_*: database and broker URLs carry
# passwords). Prefixes end in "_".
CHILD_ENV_ALLOWED = ("PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "LD_LIBRARY_PATH", "OMP_NUM_THREADS",
                     "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "LC_", "NCCL_",
                     "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def child_environment(environ: dict[str, str], run_dir: Path, project_root: Path) -> dict[str, str]:
    """The trainer's environment: the allow-listed variables of `environ`, HOME and TMPDIR in the run directory,
    and this project on PYTHONPATH (the child starts with the run directory as its working directory)."""
    env = {k: v for k, v in environ.items()
           if any(k == name or (name.endswith("_") and k.startswith(name)) for name in CHILD_ENV_ALLOWED)}
    env.setdefault("PATH", os.defpath)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root), env.get("PYTHONPATH")) if p)
    env.update(HOME=str(run_dir), TMPDIR=str(run_dir / "tmp"), PYTHONUNBUFFERED="1")
    return env


def limit_resources() -> None:
    """Lower this process's limits (the trainer child calls it first thing; set in the child rather than in a
    preexec_fn, which is unsafe in the worker: it runs threads). No core files: they would hold the model."""
    import resource

    def lower(which: int, value: int) -> None:
        soft, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))

    lower(resource.RLIMIT_CORE, 0)
    lower(resource.RLIMIT_NOFILE, CHILD_MAX_OPEN_FILES)
    lower(resource.RLIMIT_FSIZE, CHILD_MAX_FILE_BYTES)


# multiprocessing's sockets (DataLoader workers hand tensors over them) lie at $TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX,
# and an AF_UNIX socket's path holds at most 107 bytes.
SOCKET_PATH_MAX = 107
MP_SOCKET_SUFFIX = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def fit_socket_paths() -> None:
    """When TMPDIR (in the run directory) is too deep for multiprocessing's socket paths, give multiprocessing a
    directory under /tmp for them (Python 3.11's does not fall back by itself); TMPDIR stays for the rest. Without a
    short path a DataLoader worker cannot send its first batch ("AF_UNIX path too long" in child.log) and the trainer
    waits for it forever. Called before any DataLoader starts: its workers inherit the directory."""
    import multiprocessing.process
    import multiprocessing.util
    import shutil
    import tempfile

    if len(tempfile.gettempdir()) + MP_SOCKET_SUFFIX <= SOCKET_PATH_MAX:
        return
    directory = tempfile.mkdtemp(prefix="pymp-", dir="/tmp")
    multiprocessing.util.Finalize(None, shutil.rmtree, args=(directory, True), exitpriority=-100)
    # what util.get_temp_dir() returns; _config is private, so typeshed leaves it out
    multiprocessing.process.current_process()._config["tempdir"] = directory  # type: ignore[attr-defined]


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (killed, not yet reaped by its own parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: fall back to a signal probe, which cannot tell a zombie
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def watch_supervisor(supervisor_pid: int, interval: float = 0.5) -> None:
    """Exit (with the whole process group, when we lead one) once the supervising worker is gone or our parent
    changed: a daemon thread, for the processes the parent-death signal does not reach (torchrun's ranks)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent or not process_alive(supervisor_pid):
                if os.getpgrp() == os.getpid():  # our own group (the worker started us in a new session)
                    os.killpg(os.getpid(), signal.SIGKILL)
                os._exit(128 + signal.SIGKILL)
            time.sleep(interval)

    threading.Thread(target=watch, name="watch-supervisor", daemon=True).start()


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_process_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the child's process group; SIGKILL whatever is left after `grace` seconds; reap the child."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc.pid, signal.SIGKILL)  # the leader if it held on, and stragglers such as DataLoader workers
    proc.wait()


def signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"
