"""The worker's parts against a real database (SQLite and PostgreSQL), with no broker but kombu's filesystem
transport where messages are counted: the lease, the reconciler's decisions, the upserts, the spec resolution and
the mapping of a trainer's end to a reason."""
from __future__ import annotations

import json
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from service.db import session_scope
from service.models import Checkpoint, Job, Metric, utcnow
from service.states import CANCELLED, CANCELLING, FAILED, QUEUED, RUNNING, transition
from worker.lease import held_state, lease_job, renew_lease
from worker.reconcile import reconcile_once
from worker.record import RunRecorder, backfill_metrics, sync_checkpoints, upsert_metrics

from worker_helpers import events, get_job, insert_job, spec_data


def lease(settings, job_id: str, worker: str, seconds: float = 30):
    with session_scope(settings) as session:
        job = lease_job(session, job_id, worker, seconds)
        return None if job is None else (job.state, job.worker, job.attempts)


# ---------------------------------------------------------------------------------------------- lease
def test_lease_is_taken_once(settings):
    job_id = insert_job(settings, spec_data())
    assert lease(settings, job_id, "a") == (RUNNING, "a", 1)
    assert lease(settings, job_id, "b") is None  # a duplicate delivery does nothing
    job = get_job(settings, job_id)
    assert job.started_at is not None and job.lease_expires_at > utcnow()
    assert [e[:2] for e in events(settings, job_id)] == [("state", QUEUED), ("state", RUNNING)]
    with session_scope(settings) as session:
        assert renew_lease(session, job_id, "a", 30) == (RUNNING, None)
        assert renew_lease(session, job_id, "b", 30) is None
        assert held_state(session, job_id, "a") == (RUNNING, None)
        assert held_state(session, job_id, "b") is None


def test_lease_refuses_cancelled_and_finished_jobs(settings):
    cancelled, finished = insert_job(settings, spec_data()), insert_job(settings, spec_data())
    with session_scope(settings) as session:
        transition(session, session.get(Job, cancelled), CANCELLED, "by test")
    lease(settings, finished, "a")
    with session_scope(settings) as session:
        transition(session, session.get(Job, finished), FAILED, "by test")
    assert lease(settings, cancelled, "a") is None
    assert lease(settings, finished, "b") is None
    assert lease(settings, "job_does_not_exist", "a") is None


def test_an_expired_lease_can_be_taken_over(settings):
    job_id = insert_job(settings, spec_data())
    assert lease(settings, job_id, "a", seconds=-1) == (RUNNING, "a", 1)
    assert lease(settings, job_id, "b") == (RUNNING, "b", 2)
    with session_scope(settings) as session:
        assert renew_lease(session, job_id, "a", 30) is None  # the first worker has lost it


# ---------------------------------------------------------------------------------------------- reconciler
def test_reconciler_requeues_an_expired_lease_then_fails_after_max_attempts(settings):
    job_id = insert_job(settings, spec_data())
    for attempt in range(1, settings.max_attempts + 1):
        assert lease(settings, job_id, f"w{attempt}", seconds=-1) == (RUNNING, f"w{attempt}", attempt)
        with session_scope(settings) as session:
            summary = reconcile_once(session, settings)
        job = get_job(settings, job_id)
        if attempt < settings.max_attempts:
            assert summary.requeued == [job_id] and summary.to_send == [(job_id, "cpu")]
            assert job.state == QUEUED and job.lease_expires_at is None
            assert "stopped renewing its lease" in job.reason
        else:
            assert summary.failed == [job_id] and summary.to_send == []
            assert job.state == FAILED
            assert f"lease expired {settings.max_attempts} times" in job.reason
    with session_scope(settings) as session:
        assert not reconcile_once(session, settings)  # nothing left to do


def test_reconciler_leaves_live_leases_alone_and_cancels_orphans(settings):
    live, orphan = insert_job(settings, spec_data()), insert_job(settings, spec_data())
    lease(settings, live, "a", seconds=60)
    lease(settings, orphan, "b", seconds=-1)
    with session_scope(settings) as session:
        transition(session, session.get(Job, orphan), CANCELLING, "cancelled by tester")
    with session_scope(settings) as session:
        summary = reconcile_once(session, settings)
    assert summary.cancelled == [orphan] and not summary.requeued
    assert get_job(settings, live).state == RUNNING
    assert get_job(settings, orphan).state == CANCELLED


def test_reconciler_resends_a_queued_job_with_backoff(settings):
    job_id = insert_job(settings, spec_data())
    first_wait = 2 * settings.lease_seconds
    with session_scope(settings) as session:
        assert not reconcile_once(session, settings)  # just submitted: its message is on its way
    t0 = utcnow()
    with session_scope(settings) as session:
        summary = reconcile_once(session, settings, now=t0 + timedelta(seconds=first_wait + 1))
    assert summary.resent == [job_id] and summary.to_send == [(job_id, "cpu")]
    with session_scope(settings) as session:  # the next re-send waits twice as long
        assert not reconcile_once(session, settings, now=t0 + timedelta(seconds=first_wait + 2))
        assert not reconcile_once(session, settings, now=t0 + timedelta(seconds=2 * first_wait))
    with session_scope(settings) as session:
        assert reconcile_once(session, settings, now=t0 + timedelta(seconds=3 * first_wait + 2)).resent == [job_id]
    assert [e[0] for e in events(settings, job_id)] == ["state", "log", "log"]


# ---------------------------------------------------------------------------------------------- records
def test_metric_rows_are_upserted_and_backfilled(settings, tmp_path: Path):
    job_id = insert_job(settings, spec_data())
    with session_scope(settings) as session:
        upsert_metrics(session, job_id, 1, {"train/loss": 2.0, "test/top1": 10.0})
    with session_scope(settings) as session:  # a resumed job re-runs epoch 1
        upsert_metrics(session, job_id, 1, {"train/loss": 1.5, "test/top1": 20.0, "bad": float("nan")})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [{"epoch": 1, "metrics": {"train/loss": 9.0, "test/top1": 9.0}},
             {"epoch": 2, "metrics": {"train/loss": 1.0, "test/top1": 30.0}}]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{\"epoch\": 3, \"met")
    with session_scope(settings) as session:
        assert backfill_metrics(session, job_id, run_dir) == 2
        rows = session.execute(select(Metric.epoch, Metric.name, Metric.value).where(Metric.job_id == job_id)
                               .order_by(Metric.epoch, Metric.name)).all()
    assert [tuple(r) for r in rows] == [(1, "test/top1", 20.0), (1, "train/loss", 1.5),  # the database's rows win
                                        (2, "test/top1", 30.0), (2, "train/loss", 1.0)]  # the missing epoch is added


def test_a_childs_hostile_metric_lines_are_skipped_and_the_good_ones_kept(settings, tmp_path: Path):
    """metrics.jsonl comes from a process that may run a teacher's code: bad names, values and shapes are dropped
    (a NUL or a 300-character name would fail every later write of the job on PostgreSQL; '=cmd' is a formula in
    a spreadsheet that opens the CSV export)."""
    job_id = insert_job(settings, spec_data())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [{"epoch": 1, "metrics": {"train/loss": 1.5, "a\x00b": 1.0, "x" * 300: 2.0, "=HYPERLINK(1)": 3.0,
                                      "test/top1": "high", "test/top5": 10**400, "lr": [1]}},
             {"epoch": 2, "metrics": "not a mapping"}, {"epoch": -5, "metrics": {"lr": 0.1}},
             {"epoch": 2**40, "metrics": {"lr": 0.1}}, {"epoch": 2, "metrics": {"test/top1": 60.0}}]
    recorder = RunRecorder(job_id, run_dir)  # started before the child wrote anything
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with session_scope(settings) as session:
        recorder.record_new(session)
    with session_scope(settings) as session:
        rows = session.execute(select(Metric.epoch, Metric.name, Metric.value).where(Metric.job_id == job_id)
                               .order_by(Metric.epoch, Metric.name)).all()
    assert [tuple(r) for r in rows] == [(1, "train/loss", 1.5), (2, "test/top1", 60.0)]


def test_the_step_within_an_epoch_is_copied_from_the_run_directory_and_checked(settings, tmp_path: Path):
    job_id = insert_job(settings, spec_data())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "progress.json").write_text(json.dumps({"epoch": 9, "step": 9, "steps": 9}))  # an earlier attempt's
    recorder = RunRecorder(job_id, run_dir)

    def record(text: str | None = None) -> dict | None:
        if text is not None:
            (run_dir / "progress.json").write_text(text)
        with session_scope(settings) as session:
            recorder.record_new(session)
        return get_job(settings, job_id).progress

    assert record() is None  # the file of another attempt is not this one's progress
    assert record(json.dumps({"epoch": 1, "step": 40, "steps": 235})) == {"epoch": 1, "step": 40, "steps": 235}
    # what a child that runs a teacher's code may write instead: not stored, the last good value stays
    for bad in ["{", "[1, 2]", json.dumps({"epoch": 1, "step": 300, "steps": 235}),
                json.dumps({"epoch": 1, "step": 1.5, "steps": 235}), json.dumps({"epoch": 1, "step": True, "steps": 2}),
                json.dumps({"epoch": 1, "step": 1, "steps": 2, "extra": "x" * 10_000}),
                json.dumps({"epoch": -1, "step": 1, "steps": 2}), json.dumps({"epoch": 2**40, "step": 1, "steps": 2})]:
        assert record(bad) == {"epoch": 1, "step": 40, "steps": 235}, bad
    assert record(json.dumps({"epoch": 2, "step": 1, "steps": 235})) == {"epoch": 2, "step": 1, "steps": 235}


def test_checkpoint_rows_follow_the_manifests(settings, tmp_path: Path):
    job_id = insert_job(settings, spec_data())
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def manifest(which: str, epoch: int) -> None:
        files = {fmt: {"name": f"{which}.{ext}", "sha256": f"{epoch:064d}", "size": 10 * epoch}
                 for fmt, ext in (("pt", "pt"), ("safetensors", "safetensors"))}
        (run_dir / f"{which}.json").write_text(json.dumps({"arch": "resnet8", "epoch": epoch, "top1": 50.0 + epoch,
                                                           "files": files}))

    manifest("best", 1), manifest("last", 1)
    with session_scope(settings) as session:
        sync_checkpoints(session, job_id, run_dir)
    manifest("last", 2)
    with session_scope(settings) as session:
        assert sync_checkpoints(session, job_id, run_dir)["epoch"] == 1
        rows = session.execute(select(Checkpoint.which, Checkpoint.format, Checkpoint.epoch, Checkpoint.path)
                               .where(Checkpoint.job_id == job_id).order_by(Checkpoint.which, Checkpoint.format))
        rows = [tuple(r) for r in rows]
    assert rows == [("best", "pt", 1, str(run_dir / "best.pt")), ("best", "safetensors", 1,
                                                                   str(run_dir / "best.safetensors")),
                    ("last", "pt", 2, str(run_dir / "last.pt")), ("last", "safetensors", 2,
                                                                   str(run_dir / "last.safetensors"))]


# ---------------------------------------------------------------------------------------------- resolve
def test_resolve_keeps_datasets_inside_the_data_root(settings):
    from worker.resolve import ResolveError, resolve_spec

    with session_scope(settings) as session:
        spec = resolve_spec(session, spec_data(dataset={"name": "fashion_mnist", "root": "fmnist"}), settings)
        assert spec.dataset.root == str((settings.data_root / "fmnist").resolve())
        with pytest.raises(ResolveError, match="outside the server's data root"):
            resolve_spec(session, spec_data(dataset={"name": "fashion_mnist", "root": "../../etc"}), settings)


def test_resolve_turns_a_teacher_job_into_its_best_student(settings, tmp_path: Path):
    from worker.resolve import ResolveError, resolve_spec

    teacher_job = insert_job(settings, spec_data())
    student = spec_data(teacher={"job": teacher_job}, loss={"kind": "kd"})
    with session_scope(settings) as session, pytest.raises(ResolveError, match="teacher.job"):
        resolve_spec(session, student, settings)  # not finished yet
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(b"x")
    lease(settings, teacher_job, "a")
    with session_scope(settings) as session:
        session.add(Checkpoint(job_id=teacher_job, which="best", format="safetensors", path=str(weights),
                               sha256="0" * 64, size=1, epoch=1, manifest={"arch": "resnet8", "epoch": 1}))
        transition(session, session.get(Job, teacher_job), "succeeded", "done")
    with session_scope(settings) as session:
        spec = resolve_spec(session, student, settings)
    assert (spec.teacher.job, spec.teacher.arch, spec.teacher.weights) == (None, "resnet8", str(weights))
    assert spec.teacher.format == "safetensors"


# ---------------------------------------------------------------------------------------------- ends
def test_a_trainers_end_becomes_a_reason(tmp_path: Path):
    from worker.runner import _outcome_of_exit

    (tmp_path / "child.log").write_text("".join(f"line {i}\n" for i in range(10)))
    killed = _outcome_of_exit(-signal.SIGKILL, tmp_path)
    assert (killed.state, killed.reason) == (FAILED, "the trainer was killed by SIGKILL (the host may have run out "
                                                     "of memory)")
    crashed = _outcome_of_exit(1, tmp_path)
    assert crashed.reason == "the trainer exited with code 1: line 5\nline 6\nline 7\nline 8\nline 9"
    (tmp_path / "outcome-1.json").write_text(json.dumps({"ok": False, "reason": "rank 1 ran out of memory"}))
    (tmp_path / "outcome-0.json").write_text(json.dumps({"ok": True, "best_top1": 90.0, "best_epoch": 2}))
    assert _outcome_of_exit(1, tmp_path).reason == "rank 1 ran out of memory"
    (tmp_path / "outcome-1.json").unlink()
    done = _outcome_of_exit(0, tmp_path)
    assert (done.state, done.best_top1, done.reason) == ("succeeded", 90.0, "best test top-1 90.00 at epoch 2")


def test_failure_reasons_speak_to_the_user():
    import torch

    from ttm.train import TrainingError
    from worker.child import failure_reason

    assert failure_reason(TrainingError("the training loss became nan")) == "the training loss became nan"
    oom = failure_reason(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.startswith("out of memory on the GPU: lower train.batch_size")
    assert failure_reason(KeyError("x")) == "KeyError: 'x'"


def test_metric_rows_unique_per_epoch_and_name(settings):
    job_id = insert_job(settings, spec_data())
    for _ in range(3):
        with session_scope(settings) as session:
            upsert_metrics(session, job_id, 1, {"a": 1.0, "b": 2.0})
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job_id)) == 2
        session.execute(update(Job).where(Job.id == job_id).values(best_top1=1.0))


def test_gpu_auto_claims_a_free_gpu_per_worker(tmp_path: Path, monkeypatch):
    import typer

    from worker import cli, slots

    monkeypatch.setattr(cli, "visible_gpu_count", lambda: 2)
    monkeypatch.setattr(slots, "_held", [])
    assert [cli.claim_gpu(tmp_path), cli.claim_gpu(tmp_path)] == ["0", "1"]  # flock: one claim per open file
    with pytest.raises(typer.BadParameter, match="all 2 GPUs"):
        cli.claim_gpu(tmp_path)
    with pytest.raises(TimeoutError, match="slot gpu1"):  # an explicit --gpu 1 waits for it
        slots.claim(tmp_path, "gpu1", wait_s=0.5)
    slots._held.pop(0).close()  # a worker on GPU 0 exits
    assert cli.claim_gpu(tmp_path) == "0"


def test_reconciler_looks_for_lost_messages_a_page_at_a_time(settings):
    """A deep queue is read a page per pass, from where the last pass stopped, and every job gets its turn."""
    ids = sorted(insert_job(settings, spec_data()) for _ in range(7))
    later = utcnow() + timedelta(seconds=2 * settings.lease_seconds + 1)
    seen, after = [], None
    for _ in range(3):
        with session_scope(settings) as session:
            summary = reconcile_once(session, settings, now=later, after=after, page=3)
        seen.append(summary.resent)
        after = summary.resume_after
    assert seen == [ids[:3], ids[3:6], ids[6:]] and after is None
    with session_scope(settings) as session:  # round again: all were just re-sent, none is due
        assert not reconcile_once(session, settings, now=later, after=None, page=3).resent


def test_reconciler_resends_only_where_the_broker_lacks_messages(settings):
    """A long queue whose messages all wait in the broker is left alone; once one message is lost (its file gone
    from the filesystem transport), that queue's due jobs are re-sent."""
    from service.broker import enqueue_job, make_celery, waiting_messages

    celery = make_celery(settings)
    ids = sorted(insert_job(settings, spec_data()) for _ in range(3))
    for job_id in ids:
        enqueue_job(job_id, "cpu", celery)
    later = utcnow() + timedelta(seconds=2 * settings.lease_seconds + 1)

    def count(queues: list[str]) -> dict[str, int] | None:
        return waiting_messages(celery, queues)

    assert count(["cpu", "gpu"]) == {"cpu": 3, "gpu": 0}
    with session_scope(settings) as session:
        assert not reconcile_once(session, settings, now=later, count_messages=count)
    next(p for p in (settings.broker_dir / "queue").iterdir() if p.is_file()).unlink()  # a message lost
    with session_scope(settings) as session:
        summary = reconcile_once(session, settings, now=later, count_messages=count)
    assert summary.resent == ids  # which one is missing the counts cannot say: the due ones go again
    with session_scope(settings) as session:  # a broker that cannot say: every due job is looked at, as before
        assert reconcile_once(session, settings, now=later + timedelta(days=1), count_messages=lambda q: None).resent
