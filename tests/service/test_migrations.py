"""Alembic: upgrade → downgrade → upgrade, the models match the migrated schema, and the server refuses to start
on a database behind head."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service.app import create_app
from service.db import get_engine
from service.migrate import BEHIND_HEAD, DatabaseNotAtHead, downgrade_to, head_revisions, is_at_head, upgrade_to_head
from service.models import Base

from svc_helpers import make_settings

REPO = Path(__file__).resolve().parents[2]


def test_upgrade_downgrade_upgrade(db_url, tmp_path):
    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    assert is_at_head(settings)
    downgrade_to(settings, "base")
    assert not is_at_head(settings)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    with pytest.raises(DatabaseNotAtHead, match="run `ttm admin migrate`"):
        create_app(settings, host="127.0.0.1")
    upgrade_to_head(settings)
    assert is_at_head(settings)
    assert {t.name for t in Base.metadata.sorted_tables} <= set(inspect(engine).get_table_names())
    create_app(settings, host="127.0.0.1")


def test_models_match_migrations(db_url, tmp_path):
    """autogenerate finds nothing to do: the ORM and the migration history describe the same schema."""
    engine = get_engine(make_settings(tmp_path, db_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_fresh_database_refused_then_migrated_by_cli(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    settings = make_settings(tmp_path, url)
    with pytest.raises(DatabaseNotAtHead) as err:
        create_app(settings, host="127.0.0.1")
    assert BEHIND_HEAD in str(err.value)
    env = {**os.environ, "TTM_HOME": str(tmp_path), "TTM_DATABASE_URL": url}
    done = subprocess.run([sys.executable, "-m", "service.cli", "admin", "migrate"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert is_at_head(settings)
    assert head_revisions(settings) == {"0016"}
    create_app(settings, host="127.0.0.1")


def test_0003_drops_queue_depths_and_back(db_url, tmp_path):
    """0003 drops the trigger-kept queue_depths; its downgrade brings the table back with the queued jobs' count."""
    from sqlalchemy import text

    from service.db import session_scope
    from service.queries.jobs import insert_job
    from service.queries.users import create_user

    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    assert "queue_depths" not in inspect(engine).get_table_names()
    with session_scope(settings) as session:
        user, _ = create_user(session, "carol")
        for queue in ("cpu", "cpu", "gpu"):
            insert_job(session, user.id, name="old", spec={}, queue=queue, idempotency_key=None, request_hash=None)
    downgrade_to(settings, "0002")
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT queue, depth FROM queue_depths")).all()) == {"cpu": 2, "gpu": 1}
    upgrade_to_head(settings)
    assert "queue_depths" not in inspect(engine).get_table_names()
    assert "tensors" in {c["name"] for c in inspect(engine).get_columns("artifacts")}


def test_0005_lab_queue_columns_up_and_down(db_url, tmp_path):
    """0005 adds the jobs' priority and slots (existing jobs: normal, 1) and the users' share and limits."""
    from sqlalchemy import text

    from service.db import session_scope
    from service.queries.jobs import insert_job
    from service.queries.users import create_user

    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    downgrade_to(settings, "0004")
    assert "priority" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name, is_admin, created_at) VALUES ('dave', false, "
                          "CURRENT_TIMESTAMP)"))
        user_id = conn.execute(text("SELECT id FROM users WHERE name = 'dave'")).scalar_one()
        conn.execute(text("INSERT INTO jobs (id, owner_id, name, spec, state, queue, attempts, created_at) "
                          "VALUES ('job_old', :u, 'old', '{}', 'queued', 'gpu', 0, CURRENT_TIMESTAMP)"), {"u": user_id})
    upgrade_to_head(settings)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT priority, slots FROM jobs WHERE id = 'job_old'")).one() == ("normal", 1)
        assert conn.execute(text("SELECT weight, max_running, priorities FROM users WHERE name = 'dave'")
                            ).one() == (1.0, None, None)
    with session_scope(settings) as session:
        user, _ = create_user(session, "erin")
        insert_job(session, user.id, name="new", spec={}, queue="gpu", idempotency_key=None, request_hash=None,
                   priority="high", slots=2)
    downgrade_to(settings, "0004")
    assert "slots" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    with engine.connect() as conn:  # no job lost on the way down (a rebuilt users table cascaded to them once)
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 2
    upgrade_to_head(settings)


def test_0006_preemption_and_pipelines_up_and_down(db_url, tmp_path):
    """0006 adds jobs.preempted_by and jobs.waits_for (existing jobs: null) and drops them again without losing a
    job; a job still waiting when the server is downgraded fails, saying why."""
    from sqlalchemy import text

    from service.db import session_scope
    from service.queries.jobs import insert_job
    from service.queries.users import create_user

    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    with session_scope(settings) as session:
        user, _ = create_user(session, "frank")
        teacher = insert_job(session, user.id, name="kept", spec={}, queue="gpu", idempotency_key=None,
                             request_hash=None)
        session.flush()
        insert_job(session, user.id, name="waits", spec={}, queue="gpu", idempotency_key=None, request_hash=None,
                   waits_for=teacher.id)
    downgrade_to(settings, "0005")
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert "preempted_by" not in columns and "waits_for" not in columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, state FROM jobs ORDER BY name")).all() == [("kept", "queued"),
                                                                                          ("waits", "failed")]
    upgrade_to_head(settings)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, preempted_by, waits_for FROM jobs ORDER BY name")).all() == [
            ("kept", None, None), ("waits", None, None)]


def test_0007_projects_up_and_down(db_url, tmp_path):
    """0007 adds projects, their members and the project of a job or artifact; down and up again keeps the jobs."""
    from sqlalchemy import text

    from service.db import session_scope
    from service.queries.jobs import insert_job
    from service.queries.users import create_user

    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    with session_scope(settings) as session:
        user, _ = create_user(session, "gina")
        insert_job(session, user.id, name="kept", spec={}, queue="gpu", idempotency_key=None, request_hash=None)
    downgrade_to(settings, "0006")
    assert not {"projects", "project_members"} & set(inspect(engine).get_table_names())
    assert "project_id" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    upgrade_to_head(settings)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, project_id FROM jobs")).all() == [("kept", None)]


def test_0008_job_tags_and_notes_up_and_down(db_url, tmp_path):
    """0008 adds job_tags and jobs.note; down and up again keeps the jobs (their tags and notes go with it)."""
    from sqlalchemy import text

    from service.db import session_scope
    from service.models import JobTag
    from service.queries.jobs import insert_job
    from service.queries.users import create_user

    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    with session_scope(settings) as session:
        user, _ = create_user(session, "hana")
        job = insert_job(session, user.id, name="kept", spec={}, queue="gpu", idempotency_key=None,
                         request_hash=None)
        job.note = "the baseline"
        session.flush()
        session.add(JobTag(job_id=job.id, tag="baseline"))
    downgrade_to(settings, "0007")
    assert "job_tags" not in set(inspect(engine).get_table_names())
    assert "note" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    upgrade_to_head(settings)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, note FROM jobs")).all() == [("kept", None)]
        assert conn.execute(text("SELECT count(*) FROM job_tags")).scalar() == 0


def test_0009_job_progress_up_and_down(db_url, tmp_path):
    """0009 adds jobs.progress; down and up again keeps the jobs."""
    from sqlalchemy import text

    from service.db import session_scope
    from service.queries.jobs import insert_job
    from service.queries.users import create_user

    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    with session_scope(settings) as session:
        user, _ = create_user(session, "ines")
        job = insert_job(session, user.id, name="kept", spec={}, queue="gpu", idempotency_key=None,
                         request_hash=None)
        job.progress = {"epoch": 1, "step": 2, "steps": 3}
    downgrade_to(settings, "0008")
    assert "progress" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    upgrade_to_head(settings)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, progress FROM jobs")).all() == [("kept", None)]


def test_0010_webhooks_up_and_down(db_url, tmp_path):
    """0010 adds webhook_deliveries and users.webhook_secret; down and up again keeps the jobs and users (their
    deliveries and secrets go with it)."""
    from sqlalchemy import text

    from service.db import session_scope
    from service.models import WebhookDelivery, utcnow
    from service.queries.jobs import insert_job
    from service.queries.users import create_user, webhook_secret

    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    with session_scope(settings) as session:
        user, _ = create_user(session, "jo")
        job = insert_job(session, user.id, name="kept", spec={}, queue="gpu", idempotency_key=None,
                         request_hash=None)
        session.flush()
        webhook_secret(session, user.id)
        session.add(WebhookDelivery(id="dlv_1", job_id=job.id, event="job.finished", url="https://example.com/",
                                    attempts=0, next_attempt_at=utcnow(), created_at=utcnow()))
    downgrade_to(settings, "0009")
    assert "webhook_deliveries" not in set(inspect(engine).get_table_names())
    assert "webhook_secret" not in {c["name"] for c in inspect(engine).get_columns("users")}
    upgrade_to_head(settings)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM jobs")).all() == [("kept",)]
        assert conn.execute(text("SELECT name, webhook_secret FROM users")).all() == [("jo", None)]
        assert conn.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar() == 0


def test_0011_datasets_up_and_down(db_url, tmp_path):
    """0011 adds the datasets table; down drops it, up brings it back empty."""
    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    assert "datasets" in set(inspect(engine).get_table_names())
    downgrade_to(settings, "0010")
    assert "datasets" not in set(inspect(engine).get_table_names())
    upgrade_to_head(settings)
    assert {c["name"] for c in inspect(engine).get_columns("datasets")} >= {"id", "owner_id", "sha256", "classes",
                                                                          "path"}


def test_0012_sweeps_up_and_down(db_url, tmp_path):
    """0012 adds the sweeps table and a job's sweep_id and trial; down drops them, up brings them back."""
    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    downgrade_to(settings, "0011")
    assert "sweeps" not in set(inspect(engine).get_table_names())
    assert not {"sweep_id", "trial"} & {c["name"] for c in inspect(engine).get_columns("jobs")}
    upgrade_to_head(settings)
    assert {c["name"] for c in inspect(engine).get_columns("sweeps")} >= {"id", "owner_id", "spec", "state",
                                                                        "best_job_id", "driving_until"}
    assert {"sweep_id", "trial"} <= {c["name"] for c in inspect(engine).get_columns("jobs")}


def test_0015_sweep_webhooks_up_and_down(db_url, tmp_path):
    """0015 lets a webhook call belong to a sweep (job_id nullable, sweep_id); down drops a sweep's calls and keeps
    the jobs' ones."""
    from sqlalchemy import text

    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name, is_admin, created_at, weight) VALUES (1, 'jo', false, "
                          "CURRENT_TIMESTAMP, 1)"))
        conn.execute(text("INSERT INTO jobs (id, owner_id, name, spec, state, queue, priority, slots, attempts, "
                          "created_at) VALUES ('job_1', 1, 'kept', '{}', 'succeeded', 'cpu', 'normal', 1, 0, "
                          "CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO sweeps (id, owner_id, name, spec, state, created_at) VALUES ('swp_1', 1, 's', "
                          "'{}', 'cancelled', CURRENT_TIMESTAMP)"))
        for dlv, job, sweep in (("dlv_j", "'job_1'", "NULL"), ("dlv_s", "NULL", "'swp_1'")):
            conn.execute(text(f"INSERT INTO webhook_deliveries (id, job_id, sweep_id, event, url, attempts, "
                              f"created_at) VALUES ('{dlv}', {job}, {sweep}, 'e', 'http://x/', 0, CURRENT_TIMESTAMP)"))
    downgrade_to(settings, "0014")
    assert "sweep_id" not in {c["name"] for c in inspect(engine).get_columns("webhook_deliveries")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM webhook_deliveries")).all() == [("dlv_j",)]
        assert conn.execute(text("SELECT name FROM jobs")).all() == [("kept",)]
    upgrade_to_head(settings)
    assert "sweep_id" in {c["name"] for c in inspect(engine).get_columns("webhook_deliveries")}


def test_0016_student_groups_up_and_down(db_url, tmp_path):
    """0016 adds jobs.group_id; down and up again keeps the jobs and what refers to them (their metrics)."""
    from sqlalchemy import text

    from service.db import session_scope
    from service.models import Metric
    from service.queries.jobs import insert_job
    from service.queries.users import create_user

    settings = make_settings(tmp_path, db_url)
    engine = get_engine(settings)
    with session_scope(settings) as session:
        user, _ = create_user(session, "gus")
        job = insert_job(session, user.id, name="member", spec={}, queue="cpu", idempotency_key=None,
                         request_hash=None)
        session.flush()
        job.group_id = job.id
        session.add(Metric(job_id=job.id, epoch=1, name="test/top1", value=50.0))
    downgrade_to(settings, "0015")
    assert "group_id" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    upgrade_to_head(settings)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, group_id FROM jobs")).all() == [("member", None)]
        assert conn.execute(text("SELECT count(*) FROM metrics")).scalar() == 1
