"""The job writer (group commit for POST /v1/jobs) on SQLite and PostgreSQL, with the real broker of the settings
(kombu's filesystem transport): batches form while the database is busy, every row is committed once with its
first event and its message, a taken Idempotency-Key skips only its own row, a bad row fails alone, and close()
writes what is queued."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from service.broker import enqueue_jobs, make_celery, waiting_messages
from service.db import get_engine, session_scope
from service.job_writer import JobWriter, KeyTaken, WriterClosed
from service.models import Job, JobEvent, User
from service.queries.jobs import new_job_row
from service.settings import Settings


@pytest.fixture
def writer(settings: Settings, users) -> Iterator[JobWriter]:  # noqa: ANN001 - users: the fixture's rows
    celery = make_celery(settings)
    job_writer = JobWriter(get_engine(settings), lambda jobs: enqueue_jobs(jobs, celery))
    yield job_writer
    job_writer.close()


def alice_id(settings: Settings) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(User.id).where(User.name == "alice"))


def row(owner_id: int, name: str = "j", key: str | None = None) -> dict:
    return new_job_row(owner_id, name=name, spec={"name": name}, queue="cpu", idempotency_key=key,
                       request_hash="h" if key else None)


@contextmanager
def writes_blocked(settings: Settings) -> Iterator[None]:
    """Another connection holds the write lock (SQLite) or a lock on the jobs table that blocks inserts
    (PostgreSQL) until the block ends: the writer's current batch waits, and the next submits gather."""
    url = settings.database_url
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            conn.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
            yield
            conn.rollback()


def messages(settings: Settings) -> int:
    return sum(1 for p in (settings.broker_dir / "queue").iterdir() if p.is_file())


def events_of(settings: Settings) -> dict[str, list[str]]:
    with session_scope(settings) as session:
        out: dict[str, list[str]] = {}
        for job_id, reason in session.execute(select(JobEvent.job_id, JobEvent.reason)):
            out.setdefault(job_id, []).append(reason)
        return out


def test_submits_gather_into_one_batch_while_the_database_is_busy(settings, writer):
    owner = alice_id(settings)
    with writes_blocked(settings):
        plug = writer.submit(row(owner, "plug"))  # taken at once; its INSERT waits on the lock
        wait([plug], timeout=0.5)
        assert not plug.done()
        rows = [row(owner, f"j{i}") for i in range(40)]
        futures = [writer.submit(r) for r in rows]
    positions = [f.result(timeout=30) for f in futures]
    assert plug.result(timeout=30) == 1
    assert writer.batches == 2 and writer.rows == 41  # the plug, then the forty in one transaction
    # the new jobs are the newest queued: positions follow their ids
    by_id = dict(zip((r["id"] for r in rows), positions))
    assert [by_id[i] for i in sorted(by_id)] == list(range(2, 42))
    stored = events_of(settings)
    assert len(stored) == 41 and all(reasons == ["submitted"] for reasons in stored.values())
    writer.close()  # the messages go out after the answers: close() waits for them
    assert messages(settings) == 41  # one "run job" message each


def test_a_taken_key_skips_its_own_row_only(settings, writer):
    owner = alice_id(settings)
    with writes_blocked(settings):
        first = writer.submit(row(owner, "first", key="ci-7"))
        wait([first], timeout=0.3)
        twins = [writer.submit(row(owner, f"twin{i}", key="ci-7")) for i in range(5)]
        others = [writer.submit(row(owner, f"other{i}", key=f"k{i}")) for i in range(3)]
    assert first.result(timeout=30) == 1
    for twin in twins:
        with pytest.raises(KeyTaken):
            twin.result(timeout=30)
    assert sorted(f.result(timeout=30) for f in others) == [2, 3, 4]
    with session_scope(settings) as session:
        assert session.scalars(select(Job.name).where(Job.idempotency_key == "ci-7")).all() == ["first"]
    writer.close()
    assert messages(settings) == 4


def test_a_bad_row_fails_alone(settings, writer):
    owner = alice_id(settings)
    with writes_blocked(settings):
        plug = writer.submit(row(owner, "plug"))
        wait([plug], timeout=0.3)
        good = [writer.submit(row(owner, f"good{i}")) for i in range(3)]
        bad = writer.submit(row(owner + 999, "no-such-owner"))  # a foreign key violation
        good.append(writer.submit(row(owner, "good3")))
    assert plug.result(timeout=30) == 1
    with pytest.raises(IntegrityError):
        bad.result(timeout=30)
    assert sorted(f.result(timeout=30) for f in good) == [2, 3, 4, 5]
    with session_scope(settings) as session:
        assert session.scalar(select(Job).where(Job.name == "no-such-owner")) is None
        assert len(session.scalars(select(Job.id)).all()) == 5


def test_close_writes_what_is_queued_then_refuses(settings, writer):
    import threading

    owner = alice_id(settings)
    with writes_blocked(settings):
        queued: list[Future[int]] = [writer.submit(row(owner, f"j{i}")) for i in range(10)]
        closer = threading.Thread(target=writer.close)
        closer.start()  # waits for the writer, which waits for the lock
        closer.join(timeout=0.3)
        assert closer.is_alive()
    closer.join(timeout=30)
    assert sorted(f.result(timeout=1) for f in queued) == list(range(1, 11))
    with pytest.raises(WriterClosed, match="shutting down"):
        writer.submit(row(owner, "late"))
    assert len(events_of(settings)) == 10 and messages(settings) == 10


def test_a_broker_away_leaves_the_jobs_committed(settings, users, caplog):
    """The answer comes after the commit, whatever the broker does; the reconciler sends the message later."""
    celery = make_celery(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    celery.conf.broker_connection_retry = False
    celery.conf.broker_connection_max_retries = 0
    celery.conf.task_publish_retry = False
    writer = JobWriter(get_engine(settings), lambda jobs: enqueue_jobs(jobs, celery))
    try:
        owner = alice_id(settings)
        position = writer.submit(row(owner, "unsent")).result(timeout=30)
    finally:
        writer.close()
    assert position == 1
    with session_scope(settings) as session:
        job = session.scalar(select(Job).where(Job.name == "unsent"))
        assert job is not None and job.state == "queued"
    assert "stays queued for the reconciler" in caplog.text


def test_every_message_names_a_committed_job(settings, writer):
    """What the worker reads: each message file is a Celery task `ttm.run_job` for a job already in the table."""
    import base64
    import json

    owner = alice_id(settings)
    ids = {r["id"] for r in (row(owner, f"j{i}") for i in range(5)) if writer.submit(r).result(timeout=30)}
    writer.close()
    sent = set()
    for path in Path(settings.broker_dir / "queue").iterdir():
        envelope = json.loads(path.read_text())
        assert envelope["headers"]["task"] == "ttm.run_job"
        args, _, _ = json.loads(base64.b64decode(envelope["body"]))
        sent.add(args[0])
    assert sent == ids


def test_the_stored_job_is_the_row_given(settings, writer):
    """Every column survives the batch insert (on PostgreSQL the rows travel as one JSON array): the spec's nested
    values and types, the creation time to the microsecond, the key and the hash; a job without a key has none."""
    owner = alice_id(settings)
    spec = {"name": "ünïcode ✓", "loss": {"kind": "wttm", "gamma": 0.1, "beta": 1.5}, "train": {"epochs": 3},
            "flags": [True, None, 2, "x\"y"]}
    keyed = new_job_row(owner, name="ünïcode ✓", spec=spec, queue="gpu", idempotency_key="ci/42",
                        request_hash="ab" * 32)
    plain = new_job_row(owner, name="plain", spec={"name": "plain"}, queue="cpu", idempotency_key=None,
                        request_hash=None)
    assert writer.submit(keyed).result(timeout=30) == 1 and writer.submit(plain).result(timeout=30) == 1
    with session_scope(settings) as session:
        for given in (keyed, plain):
            job = session.get(Job, given["id"])
            assert job is not None
            stored = {column: getattr(job, column) for column in given}
            assert stored == given


def test_job_ids_sort_in_the_order_they_were_made():
    """Queue positions count the jobs with smaller ids: ids of one millisecond must keep their order too."""
    from service.ids import new_job_id

    ids = [new_job_id() for _ in range(2000)]  # many share a millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len({i[:14] for i in ids}) < len(ids)  # (the time part repeats: the test saw same-millisecond ids)


def test_a_batch_of_messages_goes_to_redis_in_one_pipeline(settings, users):
    """With Redis, a batch's messages go out together (kombu's Producer.batch): all of them, in order, each a
    `ttm.run_job` task a worker reads; a Redis that does not answer gets them all reported unsent."""
    import base64
    import json

    import redis

    url = "redis://127.0.0.1:6379/14"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        celery = make_celery(settings.model_copy(update={"broker_url": url}))
        jobs = [(f"job_{i:03d}", "cpu") for i in range(40)] + [("job_gpu", "gpu")]
        assert enqueue_jobs(jobs, celery) == []
        assert client.llen("cpu") == 40 and client.llen("gpu") == 1
        bodies = [json.loads(m) for m in reversed(client.lrange("cpu", 0, -1))]  # LPUSH: the newest first
        assert [json.loads(base64.b64decode(b["body"]))[0][0] for b in bodies] == [j for j, _ in jobs[:40]]
        assert {b["headers"]["task"] for b in bodies} == {"ttm.run_job"}
        assert waiting_messages(celery, ["cpu", "gpu", "never-used"]) == {"cpu": 40, "gpu": 1, "never-used": 0}
        client.delete("cpu")
        # the message is the one Celery's own send_task makes (but for its ids and the result it does not ask for)
        celery.send_task("ttm.run_job", args=["job_by_celery"], queue="cpu", task_id="job_by_celery")
        assert enqueue_jobs([("job_ours", "cpu")], celery) == []
        theirs, ours = (json.loads(m) for m in reversed(client.lrange("cpu", 0, 1)))

        def comparable(message: dict, job_id: str) -> dict:
            varying = {"id", "root_id", "correlation_id", "delivery_tag", "reply_to", "ignore_result"}
            body = json.loads(base64.b64decode(message["body"]))
            assert body[0] == [job_id] and message["headers"]["argsrepr"] == repr([job_id])
            headers = {k: v for k, v in message["headers"].items() if k not in varying | {"argsrepr"}}
            properties = {k: v for k, v in message["properties"].items() if k not in varying}
            return {**message, "body": body[1:], "headers": headers, "properties": properties}
        assert comparable(ours, "job_ours") == comparable(theirs, "job_by_celery")
        assert ours["headers"]["ignore_result"] is True  # no result backend: nothing to store
    finally:
        client.flushdb()
    away = make_celery(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    away.conf.broker_connection_retry = False
    away.conf.task_publish_retry = False
    failed = enqueue_jobs(jobs[:3], away)
    assert [job_id for job_id, _ in failed] == [j for j, _ in jobs[:3]]
    assert all(isinstance(err, Exception) for _, err in failed)
