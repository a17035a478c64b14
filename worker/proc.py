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
