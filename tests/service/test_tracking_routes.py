"""GET /v1/jobs/{id}/tensorboard and GET /v1/jobs/{id}/tracking, on run directories made by hand: the tar holds the
events folder's regular files only (no link followed, no FIFO, no file outside it) under the job's id, for its
owner alone; a job without events is a 404 that says why; the SDK's unpacking refuses an archive with anything but
files under the job's folder and writes nothing. A job that ends after running owes its export to MLflow; one that
never ran owes none."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from ttm.client import UnsafeArchive, unpack_events

from svc_helpers import bearer, make_settings, run_job, submit


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    (tmp_path / "data").mkdir()
    return make_settings(tmp_path, db_url, mlflow_uri="http://user:secret@mlflow.lab:5000/")


def events_folder(settings: Settings, job_id: str) -> Path:
    folder = settings.home / "runs" / job_id / "tensorboard"  # run_job's run directory
    (folder / "sub").mkdir(parents=True)
    (folder / "events.out.tfevents.1.host.1.0").write_bytes(b"\x01" * 700)
    (folder / "sub" / "events.out.tfevents.2.host.1.1").write_bytes(b"two")
    secret = settings.home / "secret.txt"
    secret.write_text("the worker's secret")
    (folder / "link-to-secret").symlink_to(secret)
    (folder / "linked-dir").symlink_to(settings.home, target_is_directory=True)
    os.mkfifo(folder / "fifo")
    return folder


def test_tensorboard_tar_holds_regular_files_for_the_owner_alone(client, users, settings):
    job = submit(client, users.alice)
    r = client.get(f"/v1/jobs/{job['id']}/tensorboard", headers=bearer(users.alice))
    assert r.status_code == 404 and r.json()["error"]["code"] == "tensorboard_missing"
    assert "has not started" in r.json()["error"]["message"]
    run_job(settings, job["id"], to="succeeded", epochs=1, log="epoch 1\n")  # a run directory, no events
    r = client.get(f"/v1/jobs/{job['id']}/tensorboard", headers=bearer(users.alice))
    assert r.status_code == 404 and "end of each epoch" in r.json()["error"]["message"]

    events_folder(settings, job["id"])
    r = client.get(f"/v1/jobs/{job['id']}/tensorboard", headers=bearer(users.alice))
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    sent = r.content
    with tarfile.open(fileobj=io.BytesIO(sent)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {f"{job['id']}/events.out.tfevents.1.host.1.0",
                                f"{job['id']}/sub/events.out.tfevents.2.host.1.1"}
        assert all(m.isreg() for m in members.values())
        assert tar.extractfile(f"{job['id']}/events.out.tfevents.1.host.1.0").read() == b"\x01" * 700
    r = client.get(f"/v1/jobs/{job['id']}/tensorboard", headers=bearer(users.bob))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    archive = settings.home / "got.tar"
    archive.write_bytes(sent)
    unpacked = unpack_events(archive, settings.home / "tb", job["id"])
    assert len(unpacked) == 2
    assert (settings.home / "tb" / job["id"] / "sub" / "events.out.tfevents.2.host.1.1").read_bytes() == b"two"


def test_an_events_folder_that_is_a_link_is_not_followed(client, users, settings):
    job = submit(client, users.alice)
    run_job(settings, job["id"], to="succeeded", epochs=1, log="epoch 1\n")
    elsewhere = settings.home / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "events.out.tfevents.1.host.1.0").write_bytes(b"not the job's")
    (settings.home / "runs" / job["id"] / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    r = client.get(f"/v1/jobs/{job['id']}/tensorboard", headers=bearer(users.alice))
    assert r.status_code == 404 and r.json()["error"]["code"] == "tensorboard_missing"


@pytest.mark.parametrize("kind", ["symlink", "dotdot", "absolute", "other_job", "device"])
def test_unpacking_refuses_anything_but_files_under_the_job(tmp_path, kind):
    job_id = "job_01abc"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        good = tarfile.TarInfo(f"{job_id}/events.out.tfevents.1")
        good.size = 3
        tar.addfile(good, io.BytesIO(b"abc"))
        bad = tarfile.TarInfo({"symlink": f"{job_id}/link", "dotdot": f"{job_id}/../../evil",
                               "absolute": "/tmp/evil", "other_job": "job_other/events",
                               "device": f"{job_id}/dev"}[kind])
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "device":
            bad.type = tarfile.CHRTYPE
        else:
            bad.size = 4
        tar.addfile(bad, io.BytesIO(b"evil") if bad.isreg() else None)
    archive = tmp_path / "in.tar"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchive, match="nothing was unpacked"):
        unpack_events(archive, tmp_path / "out", job_id)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_jobs_that_ran_owe_an_export(client, users, settings):
    ran = submit(client, users.alice)
    never = submit(client, users.alice)
    r = client.get(f"/v1/jobs/{ran['id']}/tracking", headers=bearer(users.alice))
    assert r.json() == {"state": "none", "mlflow_uri": "http://mlflow.lab:5000", "experiment": "ttm", "attempts": 0,
                        "next_attempt_at": None, "last_error": None, "run_id": None, "run_url": None,
                        "exported_at": None}  # no user:password@ shown
    run_job(settings, ran["id"], to="failed", epochs=1)
    assert client.post(f"/v1/jobs/{never['id']}/cancel", headers=bearer(users.alice)).status_code == 200
    owed = client.get(f"/v1/jobs/{ran['id']}/tracking", headers=bearer(users.alice)).json()
    assert owed["state"] == "pending" and owed["attempts"] == 0 and owed["next_attempt_at"]
    assert client.get(f"/v1/jobs/{never['id']}/tracking", headers=bearer(users.alice)).json()["state"] == "none"
    r = client.get(f"/v1/jobs/{ran['id']}/tracking", headers=bearer(users.bob))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with TestClient(create_app(settings.model_copy(update={"mlflow_uri": ""}), host="127.0.0.1")) as plain:
        off = plain.get(f"/v1/jobs/{ran['id']}/tracking", headers=bearer(users.alice)).json()
    assert off["state"] == "off" and off["mlflow_uri"] is None
