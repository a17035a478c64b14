"""Exports made on request, the database side (SQLite and PostgreSQL): a request is taken by one worker only, a
request whose message may be lost is re-sent with back-off, and one whose worker was lost is handed on, then failed
after TTM_MAX_ATTEMPTS takes. The real worker making a real export: tests/client/test_export_on_request.py."""
from __future__ import annotations

from datetime import timedelta

from service.db import session_scope
from service.models import ExportRequest, Job, utcnow
from service.queries import exports as eq
from worker.exports import take_export
from worker.reconcile import reconcile_once

from worker_helpers import insert_job, spec_data

KEY = ("best", "onnx")


def _request(settings) -> str:  # noqa: ANN001
    job_id = insert_job(settings, spec_data())
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        row, inserted = eq.request_export(session, job, *KEY)
        assert inserted and row.state == eq.REQUESTED
        assert eq.request_export(session, job, *KEY)[1] is False  # a second request finds the first
    return job_id


def _row(settings, job_id: str) -> ExportRequest:  # noqa: ANN001
    with session_scope(settings) as session:
        row = session.get(ExportRequest, (job_id, *KEY))
        assert row is not None
        session.expunge(row)
        return row


def test_a_request_is_taken_by_one_worker_and_resent_with_backoff(settings):
    job_id = _request(settings)
    first_wait = 2 * settings.lease_seconds
    t0 = utcnow()
    with session_scope(settings) as session:
        assert not reconcile_once(session, settings, now=t0)  # just sent
        summary = reconcile_once(session, settings, now=t0 + timedelta(seconds=first_wait + 1))
    assert summary.exports_resent == [f"{job_id}/best/onnx"]
    assert summary.exports_to_send == [(job_id, "best", "onnx", "cpu")]
    with session_scope(settings) as session:  # the next re-send waits twice as long
        assert not reconcile_once(session, settings, now=t0 + timedelta(seconds=first_wait + 2))
        assert reconcile_once(session, settings, now=t0 + timedelta(seconds=3 * first_wait + 2)).exports_resent
    assert _row(settings, job_id).sends == 3

    with session_scope(settings) as session:
        assert take_export(session, (job_id, *KEY), "w1", 30)
        assert not take_export(session, (job_id, *KEY), "w2", 30)  # a duplicate delivery does nothing
    row = _row(settings, job_id)
    assert (row.state, row.worker, row.attempts) == (eq.RUNNING, "w1", 1)
    with session_scope(settings) as session:  # a worker making it is left alone, however old its message
        assert not reconcile_once(session, settings, now=t0 + timedelta(seconds=2))


def test_a_lost_workers_export_is_handed_on_then_failed_after_max_attempts(settings):
    job_id = _request(settings)
    for attempt in range(1, settings.max_attempts + 1):
        with session_scope(settings) as session:
            assert take_export(session, (job_id, *KEY), f"w{attempt}", -1)  # a lease already expired
        with session_scope(settings) as session:
            summary = reconcile_once(session, settings)
        row = _row(settings, job_id)
        if attempt < settings.max_attempts:
            assert summary.exports_to_send == [(job_id, "best", "onnx", "cpu")]
            assert (row.state, row.worker, row.lease_expires_at) == (eq.REQUESTED, None, None)
        else:
            assert summary.exports_failed == [f"{job_id}/best/onnx"] and not summary.exports_to_send
            assert row.state == eq.FAILED and row.finished_at is not None
            assert f"stopped renewing its lease {settings.max_attempts} times" in (row.reason or "")
    with session_scope(settings) as session:
        assert not take_export(session, (job_id, *KEY), "w9", 30)  # failed stays failed
        assert not reconcile_once(session, settings)
