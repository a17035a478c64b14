"""The API's window on uploaded files and architectures: `python -m ttm.inspection` in a short-lived subprocess.

The API process never imports torch and never opens an upload with it (DESIGN decision 8). The subprocess gets a
cleared environment (no database or broker URL, no token), an empty working directory, limits on its address space,
CPU time, open files and the size of any file it writes (none; it sets them on itself before it reads anything),
and a wall-clock timeout; at most
`inspect_concurrency` run at once, and a request that cannot get a slot in time is a 503 with Retry-After.

What an architecture expects is the same for every request, so it is kept per (arch, classes, channels, size) for
the life of the process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import ApiError
from service.settings import Settings

SLOT_WAIT_SECONDS = 30.0


class InspectionRefused(ValueError):
    """The file or architecture is not usable; the message says why (it names no server path)."""


class InspectionFailed(InspectionRefused):
    """The inspection did not finish (timeout, a limit, a crash): not an answer to keep."""


@dataclass(frozen=True)
class FileInfo:
    format: str  # state_dict | safetensors | torchscript
    tensors: dict[str, list[int]] | None  # None for TorchScript: a program, never opened


@dataclass(frozen=True)
class ArchInfo:
    tensors: dict[str, list[int]]
    params: int
    output: list[int] | None  # for a batch of 2: [2, num_classes] when the architecture fits


_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()
_arch_cache: dict[tuple[str, int, int, int], ArchInfo | str] = {}


def inspection_slot(settings: Settings) -> threading.BoundedSemaphore:
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(settings.inspect_concurrency)
        return _slots


def sandbox_environment(tmp: str) -> dict[str, str]:
    """Only what Python needs to start: none of the server's variables (TTM_*, passwords, tokens) go along."""
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
            if k in os.environ}
    root = str(Path(__file__).resolve().parent.parent)  # where ttm/ lives, for a checkout that is not installed
    return {**keep, "PYTHONPATH": root, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "HOME": tmp, "TMPDIR": tmp}


def _run(args: list[str], settings: Settings) -> dict[str, Any]:
    slot = inspection_slot(settings)
    if not slot.acquire(timeout=SLOT_WAIT_SECONDS):
        raise ApiError(503, "the server is busy checking other uploads; try again in a few seconds",
                       code="busy", headers={"Retry-After": "5"})
    try:
        with tempfile.TemporaryDirectory(prefix="ttm-inspect-") as cwd:
            try:
                # the child sets its own limits before it reads anything (a preexec_fn is unsafe in a
                # process with threads); start_new_session: a timeout kills it and whatever it started
                limits = ["--memory", str(settings.inspect_memory_bytes),
                          "--cpu", str(int(settings.inspect_timeout_seconds) + 1)]
                done = subprocess.run([sys.executable, "-m", "ttm.inspection", *limits, *args], cwd=cwd,
                                      env=sandbox_environment(cwd), stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=settings.inspect_timeout_seconds, start_new_session=True)
            except subprocess.TimeoutExpired:
                raise InspectionFailed(f"checking it took longer than {settings.inspect_timeout_seconds:g} s "
                                        "(TTM_INSPECT_TIMEOUT_SECONDS)") from None
    finally:
        slot.release()
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}")
        raise InspectionFailed(f"checking it failed ({why}: past the inspection's memory or CPU limit, or a "
                                "file it cannot read)")
    result = json.loads(lines[-1])
    if "error" in result:
        raise InspectionRefused(result["error"])
    return result


def inspect_file(path: Path, settings: Settings) -> FileInfo:
    """What an uploaded file holds: its format and, for weights, each tensor's shape."""
    result = _run(["file", str(path), "--max-bytes", str(settings.max_inflated_bytes)], settings)
    return FileInfo(result["format"], result["tensors"])


def inspect_arch(arch: str, num_classes: int, in_channels: int, image_size: int, settings: Settings) -> ArchInfo:
    """What `arch` expects (its state_dict's shapes), its size, and its output for this input; InspectionRefused
    when it cannot be built or cannot take the input. Outcomes are kept for the process's life."""
    key = (arch, num_classes, in_channels, image_size)
    known = _arch_cache.get(key)
    if known is None:
        try:
            result = _run(["arch", arch, str(num_classes), str(in_channels), str(image_size)], settings)
            known = ArchInfo(result["tensors"], result["params"], result["output"])
        except InspectionFailed:
            raise
        except InspectionRefused as err:
            known = str(err)
        if len(_arch_cache) > 4096:
            _arch_cache.clear()
        _arch_cache[key] = known
    if isinstance(known, str):
        raise InspectionRefused(known)
    return known
