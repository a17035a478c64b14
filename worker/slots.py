"""A host's training slots: one lock file per GPU index (`gpu<I>.lock`) or per CPU worker slot (`cpu<I>.lock`)
under TTM_HOME/locks, each held with flock for the life of the worker process that claimed it, and inherited by
its trainer child, so a slot is taken while any process of its worker or job lives. A second worker claiming a
taken slot (a restarted `ttm serve` while the old worker still hands its job back) waits for it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO

log = logging.getLogger("ttm.worker")
_held: list[IO[str]] = []  # open for the process's life: closing a file releases its lock


def lock_dir(home: Path) -> Path:
    return home / "locks"


def try_claim(directory: Path, slot: str) -> bool:
    """Take slot `slot` (e.g. "gpu0", "cpu1") if free; True when this process now holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / f"{slot}.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held.append(handle)
    return True


def claim(directory: Path, slot: str, wait_s: float | None = None) -> None:
    """Take `slot`, waiting while another process of this host holds it; TimeoutError after `wait_s` seconds."""
    if try_claim(directory, slot):
        return
    log.warning("slot %s of this host is held by another worker or its trainer (%s); waiting for it", slot,
                directory / f"{slot}.lock")
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while not try_claim(directory, slot):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"slot {slot} of this host stayed held by another worker for {wait_s:.0f} s")
        time.sleep(0.2)
    log.info("slot %s claimed", slot)


def held_slot_fds() -> tuple[int, ...]:
    """The lock files' descriptors, for the trainer child to inherit."""
    return tuple(h.fileno() for h in _held)


def watch_lifeline(fd: int, on_lost) -> None:  # noqa: ANN001
    """A daemon thread that calls `on_lost()` once `fd` (the read end of a pipe whose write end only the
    supervising `ttm serve` holds) reads end-of-file: the supervisor is gone, however it died (kill -9 included)."""
    import threading

    def watch() -> None:
        while True:
            try:
                if not os.read(fd, 1):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        on_lost()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
