"""What a run writes into the database: metric rows, checkpoint rows, the worker's heartbeat.

Every write is an upsert on the row's natural key, so writing the same thing twice (a resumed job re-running an
epoch, the final sweep after the per-epoch writes) leaves exactly one row.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, update
from sqlalchemy.orm import Session

from service.models import Checkpoint, Job, Metric, Worker, utcnow

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger("ttm.worker")

CHECKPOINT_KINDS = ("best", "last")


def upsert(session: Session, table: Table, rows: list[dict[str, Any]], keys: Iterable[str],
           update: Iterable[str] = ()) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET update-columns (or DO NOTHING), in PostgreSQL's or SQLite's words."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert]  # the two dialects' INSERT ... ON CONFLICT
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"no upsert for the {dialect} database")
    stmt = insert(table).values(rows)
    update = list(update)
    if update:
        stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in update})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    session.execute(stmt)


# The trainer's names (train/loss, test/top1, teacher/entropy, ...). The child may run a teacher's code, so a name
# is checked before it reaches the database (a NUL or an over-long one would fail every later write of the job) or
# a CSV export (a leading = or @ is a formula in a spreadsheet).
METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,99}")


def metric_rows(job_id: str, epoch: int, metrics: dict[str, float]) -> list[dict[str, Any]]:
    now = utcnow()
    rows: list[dict[str, Any]] = []
    if not isinstance(metrics, dict) or not 0 <= epoch < 2**31:
        return rows
    for name, raw in metrics.items():
        if not isinstance(name, str) or not METRIC_NAME.fullmatch(name):
            log.warning("job %s: metric %.100r at epoch %d is not a metric name; not stored", job_id, name, epoch)
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError, OverflowError):
            log.warning("job %s epoch %d: metric %s is not a number; not stored", job_id, epoch, name)
            continue
        if not math.isfinite(value):  # SQLite cannot store NaN; a non-finite metric is skipped, not invented
            log.warning("job %s epoch %d: metric %s is %s; not stored", job_id, epoch, name, value)
            continue
        rows.append({"job_id": job_id, "epoch": epoch, "name": name, "value": value, "at": now})
    return rows


def upsert_metrics(session: Session, job_id: str, epoch: int, metrics: dict[str, float]) -> None:
    """One epoch's metrics; a re-run epoch overwrites its values (the row, and its sequence number, stay)."""
    upsert(session, Metric.__table__, metric_rows(job_id, epoch, metrics), ("job_id", "epoch", "name"),
           update=("value", "at"))


def backfill_metrics(session: Session, job_id: str, run_dir: Path) -> int:
    """Insert the epochs of `run_dir/metrics.jsonl` that the database lacks (rows already there are kept).

    The trainer appends to that file before it calls back, so this closes the gap a killed child may leave between
    its last file line and its last database write. Returns the number of epochs read.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    latest: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            latest[int(entry["epoch"])] = entry["metrics"]  # a re-run epoch's later line wins
        except (ValueError, KeyError, TypeError):  # a line cut short by a kill
            continue
    rows = [row for epoch, metrics in sorted(latest.items()) for row in metric_rows(job_id, epoch, metrics)]
    for start in range(0, len(rows), 1000):
        upsert(session, Metric.__table__, rows[start:start + 1000], ("job_id", "epoch", "name"))
    return len(latest)


def read_manifest(run_dir: Path, which: str) -> dict[str, Any] | None:
    path = run_dir / f"{which}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def sync_checkpoints(session: Session, job_id: str, run_dir: Path) -> dict[str, Any] | None:
    """Checkpoint rows for the best and last students that `run_dir` holds now; returns the best manifest."""
    rows = []
    for which in CHECKPOINT_KINDS:
        manifest = read_manifest(run_dir, which)
        if manifest is None:
            continue
        for fmt, info in manifest.get("files", {}).items():
            rows.append({"job_id": job_id, "which": which, "format": fmt, "path": str(run_dir / info["name"]),
                         "sha256": info["sha256"], "size": info["size"], "epoch": manifest["epoch"],
                         "manifest": manifest, "created_at": utcnow()})
    upsert(session, Checkpoint.__table__, rows, ("job_id", "which", "format"),
           update=("path", "sha256", "size", "epoch", "manifest", "created_at"))
    return read_manifest(run_dir, "best")


def heartbeat(session: Session, worker_name: str, queues: str) -> None:
    upsert(session, Worker.__table__, [{"name": worker_name, "queue": queues[:100], "last_seen": utcnow()}],
           ("name",), update=("queue", "last_seen"))


class RunRecorder:
    """What the trainer child wrote since the last look, into the database: the new lines of metrics.jsonl (an epoch
    run again overwrites its values) and, when best.json or last.json changed, the checkpoint rows and the job's best
    accuracy. The worker calls it each tick of its supervision, so the child needs no database credentials."""

    def __init__(self, job_id: str, run_dir: Path):
        self.job_id, self.run_dir = job_id, run_dir
        path = run_dir / "metrics.jsonl"
        self.offset = path.stat().st_size if path.exists() else 0  # earlier attempts' lines: backfilled already
        self.manifests: tuple[float, ...] = ()
        self.progress = _mtime(run_dir / "progress.json")  # an earlier attempt's: not this one's
        self._undo: tuple[int, tuple[float, ...], float] | None = None

    def record_new(self, session: Session) -> None:
        self._undo = (self.offset, self.manifests, self.progress)
        path = self.run_dir / "metrics.jsonl"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size > self.offset:
            with open(path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(size - self.offset)
            complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits for the next tick
            self.offset += len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                try:
                    entry = json.loads(line)
                    upsert_metrics(session, self.job_id, int(entry["epoch"]), entry["metrics"])
                except (ValueError, KeyError, TypeError):
                    continue
        manifests = tuple(_mtime(self.run_dir / f"{which}.json") for which in CHECKPOINT_KINDS)
        if manifests != self.manifests:
            self.manifests = manifests
            best = sync_checkpoints(session, self.job_id, self.run_dir)
            if best is not None:
                session.execute(update(Job).where(Job.id == self.job_id).values(best_top1=best["top1"]))
        progress = _mtime(self.run_dir / "progress.json")
        if progress != self.progress:
            self.progress = progress
            step = read_progress(self.run_dir)
            if step is not None:
                session.execute(update(Job).where(Job.id == self.job_id).values(progress=step))

    def undo(self) -> None:
        """The transaction of the last record_new did not commit: read the same lines again next time."""
        if self._undo is not None:
            self.offset, self.manifests, self.progress = self._undo
            self._undo = None


def read_progress(run_dir: Path) -> dict[str, int] | None:
    """progress.json as the trainer writes it ({"epoch", "step", "steps"}, whole numbers, step ≤ steps), or None
    for anything else: the child may run a teacher's code, so what it writes is checked before it is stored."""
    try:
        data = json.loads((run_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or set(data) != {"epoch", "step", "steps"}:
        return None
    if not all(type(data[k]) is int and 0 <= data[k] < 2**31 for k in data) or data["step"] > data["steps"]:
        return None
    return {k: data[k] for k in ("epoch", "step", "steps")}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0.0
