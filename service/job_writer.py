"""Group commit for POST /v1/jobs.

Every accepted job is one committed transaction before its 201 (nothing accepted may be lost), and a commit waits
for the database to flush its log. Under load, one transaction per request makes the database's per-statement and
per-commit work the bottleneck. Here the requests hand their rows to one writer thread per API process, which
inserts whatever has gathered while the previous batch was committing and commits once (service.queries.jobs.
insert_jobs: on PostgreSQL one statement for the jobs and their first events and one per queue for the positions,
sent with the COMMIT in one round trip). With one client a batch is one job, and the latency is that of a plain
insert; with 32 clients the batches grow and each job costs a fraction of a commit.

After the commit each request gets its answer, then the writer sends the batch's "run job <id>" messages (one Redis
pipeline: service.broker.enqueue_jobs) while the next submits gather into the next batch. (A separate sending
thread was tried: batches got smaller, and every job dearer.) A message that cannot be sent leaves its job queued
for the reconciler to send again.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from service.queries.jobs import insert_jobs

log = logging.getLogger("ttm.service")

MAX_BATCH = 256


class KeyTaken(Exception):
    """The (owner, Idempotency-Key) of the row belongs to a job already stored."""


class WriterClosed(RuntimeError):
    """The server is shutting down: no new rows."""


@dataclass
class _Pending:
    row: dict[str, Any]
    answer: Future[int] = field(default_factory=Future)


class JobWriter:
    """`submit(row)` gives a future of the row's queue position once it is committed; the future raises KeyTaken
    when the row's Idempotency-Key is used already, or the database's error. After each commit, `send` gets the
    batch's [(job id, queue)] and returns those it could not send, with why (service.broker.enqueue_jobs)."""

    def __init__(self, engine: Engine, send: Callable[[list[tuple[str, str]]], list[tuple[str, BaseException]]],
                 max_batch: int = MAX_BATCH):
        self.engine, self.send, self.max_batch = engine, send, max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.batches = self.rows = 0  # batches taken and rows in them, for tests and benchmarks

    def submit(self, row: dict[str, Any]) -> Future[int]:
        pending = _Pending(row)
        with self._lock:
            if self._closed:
                raise WriterClosed("the server is shutting down; submit again (with the same Idempotency-Key)")
            if self._thread is None:  # started on first use: most apps a test builds never submit
                self._thread = threading.Thread(target=self._run, name="ttm-job-writer", daemon=True)
                self._thread.start()
            self._queue.put(pending)
        return pending.answer

    def close(self) -> None:
        """Write what is queued and send its messages, then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            self.batches += 1
            self.rows += len(batch)
            self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        try:
            with self.engine.connect() as conn:
                positions = insert_jobs(conn, [p.row for p in batch])  # commits
        except Exception as err:  # noqa: BLE001 - every waiting request gets an answer
            if len(batch) > 1:  # one bad row (a user deleted meanwhile, say) must not fail the others
                for pending in batch:
                    self._write([pending])
                return
            batch[0].answer.set_exception(err)
            return
        for pending in batch:
            position = positions.get(pending.row["id"])
            if position is None:
                pending.answer.set_exception(KeyTaken(pending.row["idempotency_key"]))
            else:
                pending.answer.set_result(position)
        sent = [(p.row["id"], p.row["queue"]) for p in batch if p.row["id"] in positions]
        try:
            failed = self.send(sent)
        except Exception as err:  # noqa: BLE001 - the thread must live on: the next batch waits for it
            failed = [(job_id, err) for job_id, _ in sent]
        for job_id, err in failed:  # committed all the same: the reconciler sends them again
            log.error("could not enqueue %s (%s: %s); it stays queued for the reconciler", job_id,
                      type(err).__name__, err)
