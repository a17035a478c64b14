"""Projects on the real databases: lab members share teachers. Alice's job or artifact in project `vision` can teach
Bob's jobs (he is a member); Carol, who is not, gets what she would get for a job or artifact that does not exist.
Sharing needs membership; `ttm admin project` manages members."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from service.db import session_scope
from service.models import Checkpoint
from service.queries import projects
from service.queries.users import create_user

from svc_helpers import bearer, run_job, spec_ce, submit

REPO = Path(__file__).resolve().parents[2]


def _vision(settings, *members: str) -> None:
    with session_scope(settings) as session:
        projects.create_project(session, "vision")
        projects.set_members(session, "vision", list(members), add=True)


def _student(teacher: dict) -> dict:
    return {**spec_ce("student"), "teacher": teacher, "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}}


def test_a_member_chains_from_a_colleagues_job_and_artifact(client, users, settings, teacher_file):
    _vision(settings, "alice", "bob")
    with session_scope(settings) as session:
        carol = create_user(session, "carol")[1]
    parent = submit(client, users.alice, {**spec_ce("teacher"), "resources": {"gpus": 0, "project": "vision"}})
    run_job(settings, parent["id"], to="succeeded", epochs=1)
    with session_scope(settings) as session:  # its best student: a real resnet8 for 10 classes, 1 channel
        session.add(Checkpoint(job_id=parent["id"], which="best", format="pt", path=str(teacher_file),
                               sha256=hashlib.sha256(teacher_file.read_bytes()).hexdigest(),
                               size=teacher_file.stat().st_size, epoch=1, manifest={"arch": "resnet8"}))
    r = client.post("/v1/jobs", json=_student({"job": parent["id"]}), headers=bearer(users.bob))
    assert r.status_code == 201, r.text
    r = client.post("/v1/jobs", json=_student({"job": parent["id"]}), headers=bearer(carol))
    assert r.status_code == 422 and r.json()["error"]["message"] == f"teacher.job: unknown job {parent['id']}"
    assert client.get(f"/v1/jobs/{parent['id']}", headers=bearer(users.bob)).status_code == 404  # a teacher only

    shared = client.post("/v1/artifacts?project=vision", content=teacher_file.read_bytes(),
                         headers=bearer(users.alice)).json()
    by_arch = _student({"arch": "resnet8", "weights": shared["id"]})
    assert client.post("/v1/jobs", json=by_arch, headers=bearer(users.bob)).status_code == 201
    r = client.post("/v1/jobs", json=by_arch, headers=bearer(carol))
    assert r.status_code == 422 and r.json()["error"]["message"] == f"teacher.weights: unknown artifact {shared['id']}"
    # a job that is not in the project stays its owner's
    private = submit(client, users.alice, spec_ce("private"))
    r = client.post("/v1/jobs", json=_student({"job": private["id"]}), headers=bearer(users.bob))
    assert r.status_code == 422 and "unknown job" in r.json()["error"]["message"]
    me = client.get("/v1/users/me", headers=bearer(users.bob)).json()
    assert me["projects"] == ["vision"]


def test_sharing_needs_membership(client, users, settings, teacher_file):
    _vision(settings, "alice")
    for project in ("vision-x", "vision"):  # one that does not exist, one bob is not in: the same words
        r = client.post("/v1/jobs", json={**spec_ce(), "resources": {"gpus": 0, "project": project}},
                        headers=bearer(users.bob))
        assert r.status_code == 403 and r.json()["error"]["field"] == "resources.project"
        assert f"you are not a member of a project '{project}'" in r.json()["error"]["message"]
        r = client.post(f"/v1/artifacts?project={project}", content=teacher_file.read_bytes(),
                        headers=bearer(users.bob))
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_a_member"
    for hostile in ("a\x00b", "../x", "x" * 101):  # PostgreSQL cannot even compare a NUL: refused before the query
        r = client.post("/v1/artifacts", params={"project": hostile}, content=teacher_file.read_bytes(),
                        headers=bearer(users.bob))
        assert r.status_code == 422 and r.json()["error"]["field"] == "project", r.text


def test_admin_project_commands(settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTM_")} | {
        "TTM_HOME": str(settings.home), "TTM_DATABASE_URL": settings.database_url}

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", "admin", "project", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    with session_scope(settings) as session:
        for name in ("dana", "eve"):
            create_user(session, name)
    assert admin("create", "lab-1", "dana").returncode == 0
    assert admin("add", "lab-1", "eve").stdout.strip() == "lab-1: dana, eve"
    assert admin("remove", "lab-1", "dana").stdout.strip() == "lab-1: eve"
    assert admin("list").stdout.strip() == "lab-1\teve"
    for args, words in ((("create", "lab-1"), "exists already"), (("add", "nope", "eve"), "no project 'nope'"),
                        (("add", "lab-1", "zed"), "no user 'zed'"), (("create", "a b"), "a project name is")):
        done = admin(*args)
        assert done.returncode == 1 and words in done.stderr and done.stdout == "", (args, done.stderr)
