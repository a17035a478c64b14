"""POST/GET /v1/jobs and the job's sub-resources; jobs stay queued here (the worker runs them elsewhere), so a
stand-in writes the rows a worker would (svc_helpers.run_job)."""
from __future__ import annotations

import json

import pytest

from svc_helpers import bearer, run_job, spec_ce, submit


def _wttm(teacher: dict) -> dict:
    return {"name": "distill", "teacher": teacher, "student": {"arch": "resnet8"},
            "dataset": {"name": "fashion_mnist", "subset": {"train": 512, "test": 256}},
            "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}, "train": {"epochs": 2, "schedule": {"kind": "cosine"}}}


def _upload(client, token, path) -> str:
    r = client.post("/v1/artifacts", content=path.read_bytes(), headers=bearer(token))
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_submit_and_get(client, users, settings):
    job = submit(client, users.alice)
    assert job["id"].startswith("job_") and job["state"] == "queued" and job["queue"] == "cpu"
    assert job["queue_position"] == 1 and job["attempts"] == 0 and job["owner"] == "alice"
    assert job["spec"]["train"]["epochs"] == 2 and job["started_at"] is None
    second = submit(client, users.bob)
    assert second["queue_position"] == 2  # positions count every owner's jobs ahead in the queue
    gpu = submit(client, users.alice, {**spec_ce(), "resources": {"gpus": 1}})
    assert gpu["queue"] == "gpu" and gpu["queue_position"] == 1
    assert client.get(f"/v1/jobs/{job['id']}", headers=bearer(users.alice)).json() == job
    # the broker got "run job <id>" on the job's queue (kombu filesystem transport under TTM_HOME)
    messages = [p.read_text() for p in (settings.home / "broker" / "queue").iterdir()]
    assert len(messages) == 3
    body = json.loads(messages[0])
    assert body["headers"]["task"] == "ttm.run_job"
    assert any(job["id"] in m for m in messages) and any(".gpu.msg" in p.name
                                                         for p in (settings.home / "broker" / "queue").iterdir())


@pytest.mark.parametrize("patch, field, words", [
    ({"student": {"arch": "resnet9000"}}, "student.arch", "unknown architecture"),
    ({"loss": {"kind": "wttm", "gamma": 1.5, "beta": 1}, "teacher": {"job": "job_x"}}, "loss.gamma",
     "γ = 1/T must be in (0, 1]"),
    ({"loss": {"kind": "ttm", "gamma": 0.5, "beta": -1}, "teacher": {"job": "job_x"}}, "loss.beta",
     "must be ≥ 0, not -1"),
    ({"loss": {"kind": "kd", "temperature": 0}, "teacher": {"job": "job_x"}}, "loss.temperature", "must be > 0, not 0"),
    ({"dataset": {"name": "imagenet21k"}}, "dataset.name", "is not one of cifar10"),
    ({"dataset": {"name": "fashion_mnist", "root": "/etc"}}, "dataset.root", "outside the server's data root"),
    ({"dataset": {"name": "fashion_mnist", "root": "../../etc"}}, "dataset.root", "outside the server's data root"),
    ({"dataset": {"name": "imagefolder", "path": "/tmp"}}, "dataset.path", "outside the server's data root"),
    ({"dataset": {"name": "imagefolder", "path": "missing"}}, "dataset.path", "not a directory"),
    ({"loss": {"kind": "wttm", "gamma": 0.3, "beta": 1}}, "teacher", "distills from a teacher"),
    ({"loss": {"kind": "wttm", "gamma": 0.3, "beta": 1}, "teacher": {"arch": "resnet8", "weights": "/srv/t.pt"}},
     "teacher.weights", "upload the file"),
    ({"loss": {"kind": "wttm", "gamma": 0.3, "beta": 1}, "teacher": {"arch": "resnet8", "weights": "art_nope"}},
     "teacher.weights", "unknown artifact art_nope"),
    ({"loss": {"kind": "wttm", "gamma": 0.3, "beta": 1}, "teacher": {"job": "job_nope"}},
     "teacher.job", "unknown job job_nope"),
    ({"bogus": 1}, "bogus", "unknown field"),
])
def test_422_names_the_field(client, users, patch, field, words):
    err = _error(client.post("/v1/jobs", json={**spec_ce(), **patch}, headers=bearer(users.alice)), 422)
    assert err["field"] == field, err
    assert words in err["message"], err
    assert err["errors"][0]["field"] == field


def test_malformed_bodies(client, users):
    r = client.post("/v1/jobs", content=b"{nope", headers={**bearer(users.alice), "content-type": "application/json"})
    assert _error(r, 400)["code"] == "invalid_json"
    assert _error(client.post("/v1/jobs", json=[1, 2], headers=bearer(users.alice)), 422)["field"] == "body"
    r = client.post("/v1/jobs", content="{\"name\": \"x\"".encode("utf-16"),
                    headers={**bearer(users.alice), "content-type": "application/json"})
    assert _error(r, 400)["code"] == "invalid_json"  # not UTF-8 either
    for key in ("k" * 201, ""):
        r = client.post("/v1/jobs", json=spec_ce(), headers={**bearer(users.alice), "Idempotency-Key": key})
        assert _error(r, 422)["field"] == "Idempotency-Key"
    huge = {**spec_ce(), "name": "x" * (1024 * 1024)}  # a spec's body is bounded (a few kB are plenty)
    err = _error(client.post("/v1/jobs", json=huge, headers=bearer(users.alice)), 413)
    assert err["code"] == "payload_too_large", err
    chunked = iter([b'{"name": "', b"x" * (1024 * 1024), b'"}'])  # no Content-Length: counted as it arrives
    r = client.post("/v1/jobs", content=chunked, headers={**bearer(users.alice), "content-type": "application/json"})
    assert _error(r, 413)["field"] == "body"
    assert client.get("/v1/jobs", headers=bearer(users.alice)).json()["items"] == []  # nothing was stored


def test_dataset_under_the_data_root_is_stored_resolved(client, users, settings):
    (settings.data_root / "folder" / "train" / "cat").mkdir(parents=True)
    spec = {**spec_ce(), "dataset": {"name": "imagefolder", "path": "folder", "image_size": 16}}
    job = submit(client, users.alice, spec)
    assert job["spec"]["dataset"]["path"] == str((settings.data_root / "folder").resolve())
    job = submit(client, users.alice, {**spec_ce(), "dataset": {"name": "fashion_mnist", "root": "fm"}})
    assert job["spec"]["dataset"]["root"] == str((settings.data_root / "fm").resolve())


def test_teacher_from_an_artifact(client, users, teacher_file, teacher100_file, tmp_path):
    art = _upload(client, users.alice, teacher_file)
    job = submit(client, users.alice, _wttm({"arch": "resnet8", "weights": art}))
    assert job["spec"]["teacher"]["weights"] == art
    # the upload's tensor shapes were recorded by the inspection: admission compares them, loading nothing
    submit(client, users.alice, {**_wttm({"arch": "resnet8", "weights": art}), "name": "again"})
    # bob cannot use alice's artifact; the admin can
    err = _error(client.post("/v1/jobs", json=_wttm({"arch": "resnet8", "weights": art}),
                             headers=bearer(users.bob)), 422)
    assert err["field"] == "teacher.weights" and "unknown artifact" in err["message"]
    submit(client, users.admin, _wttm({"arch": "resnet8", "weights": art}))
    # weights that do not fit the declared architecture / the dataset's classes
    err = _error(client.post("/v1/jobs", json=_wttm({"arch": "resnet20", "weights": art}),
                             headers=bearer(users.alice)), 422)
    assert err["field"] == "teacher.weights" and err["code"] == "invalid_teacher"
    assert "do not fit the architecture" in err["message"]
    art100 = _upload(client, users.alice, teacher100_file)
    err = _error(client.post("/v1/jobs", json=_wttm({"arch": "resnet8", "weights": art100}),
                             headers=bearer(users.alice)), 422)
    assert err["field"] == "teacher.weights" and "(100, " in err["message"] and "(10, " in err["message"]
    # a TorchScript artifact given as weights
    import torch

    from ttm.models import build_model

    ts = tmp_path / "t.ts"
    torch.jit.trace(build_model("resnet8", 10, 1).eval(), torch.zeros(1, 1, 28, 28)).save(str(ts))
    client.app.state.settings.allow_code_teachers = True  # TorchScript only where an admin allows code teachers
    ts_art = _upload(client, users.alice, ts)
    err = _error(client.post("/v1/jobs", json=_wttm({"arch": "resnet8", "weights": ts_art}),
                             headers=bearer(users.alice)), 422)
    assert err["field"] == "teacher.weights" and "TorchScript" in err["message"]
    submit(client, users.alice, _wttm({"torchscript": ts_art}))


def test_teacher_from_a_finished_job(client, users, settings, teacher_file):
    """CI: train a teacher with loss ce, then chain a distillation after it."""
    parent = submit(client, users.alice, spec_ce("teacher"))
    chained = _wttm({"job": parent["id"]})
    waiting = submit(client, users.alice, chained)  # a teacher still queued: the student waits (test_pipelines.py)
    assert waiting["state"] == "waiting" and waiting["waits_for"] == parent["id"]
    run_job(settings, parent["id"], to="succeeded", epochs=1)
    err = _error(client.post("/v1/jobs", json=chained, headers=bearer(users.alice)), 422)
    assert err["field"] == "teacher.job" and "no best checkpoint" in err["message"]
    # give it a real best checkpoint (a resnet8 state_dict for 10 classes, 1 channel)
    import hashlib

    from service.db import session_scope
    from service.models import Checkpoint

    with session_scope(settings) as session:
        session.add(Checkpoint(job_id=parent["id"], which="best", format="pt", path=str(teacher_file),
                               sha256=hashlib.sha256(teacher_file.read_bytes()).hexdigest(),
                               size=teacher_file.stat().st_size, epoch=1, manifest={"arch": "resnet8"}))
    job = submit(client, users.alice, chained)
    assert job["spec"]["teacher"] == {"arch": None, "weights": None, "torchscript": None, "job": parent["id"],
                                      "zoo": None, "sweep": None, "format": "auto"}
    err = _error(client.post("/v1/jobs", json=chained, headers=bearer(users.bob)), 422)
    assert err["field"] == "teacher.job" and "unknown job" in err["message"]
    # a teacher job with other classes cannot teach this dataset
    other = {**chained, "dataset": {"name": "cifar100"}}
    err = _error(client.post("/v1/jobs", json=other, headers=bearer(users.alice)), 422)
    assert err["field"] == "teacher.job" and "classes" in err["message"]


def test_idempotency(client, users):
    key = {"Idempotency-Key": "ci-run-42"}
    first = client.post("/v1/jobs", json=spec_ce(), headers={**bearer(users.alice), **key})
    assert first.status_code == 201
    again = client.post("/v1/jobs", json=spec_ce(), headers={**bearer(users.alice), **key})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    # the same body with keys in another order is the same body
    reordered = dict(reversed(list(spec_ce().items())))
    assert client.post("/v1/jobs", json=reordered, headers={**bearer(users.alice), **key}).json()["id"] == \
        first.json()["id"]
    other = client.post("/v1/jobs", json=spec_ce("other"), headers={**bearer(users.alice), **key})
    assert _error(other, 409)["code"] == "idempotency_conflict"
    # keys belong to their user
    bob = client.post("/v1/jobs", json=spec_ce(), headers={**bearer(users.bob), **key})
    assert bob.status_code == 201 and bob.json()["id"] != first.json()["id"]
    listed = client.get("/v1/jobs", headers=bearer(users.alice)).json()["items"]
    assert len(listed) == 1


def test_list_filter_and_pagination(client, users, settings):
    ids = [submit(client, users.alice, spec_ce(f"j{i}"))["id"] for i in range(5)]
    submit(client, users.bob)
    run_job(settings, ids[1], to="succeeded")
    run_job(settings, ids[3])
    page = client.get("/v1/jobs?limit=2", headers=bearer(users.alice)).json()
    assert [j["id"] for j in page["items"]] == [ids[4], ids[3]]
    seen = [j["id"] for j in page["items"]]
    while page["next_cursor"]:
        page = client.get(f"/v1/jobs?limit=2&cursor={page['next_cursor']}", headers=bearer(users.alice)).json()
        seen += [j["id"] for j in page["items"]]
    assert seen == ids[::-1]
    queued = client.get("/v1/jobs?state=queued", headers=bearer(users.alice)).json()["items"]
    assert [j["id"] for j in queued] == [ids[4], ids[2], ids[0]]
    # alice has a job running and one done; bob has used nothing: his job goes before hers (docs/SCHEDULING.md)
    assert [j["queue_position"] for j in queued] == [4, 3, 2]
    both = client.get("/v1/jobs?state=running,succeeded", headers=bearer(users.alice)).json()["items"]
    assert {j["id"] for j in both} == {ids[1], ids[3]} and all(j["queue_position"] is None for j in both)
    assert len(client.get("/v1/jobs", headers=bearer(users.admin)).json()["items"]) == 6
    err = _error(client.get("/v1/jobs?state=done", headers=bearer(users.alice)), 422)
    assert err["field"] == "state"


def test_cancel(client, users, settings):
    queued = submit(client, users.alice)
    r = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=bearer(users.alice))
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["reason"] == "cancelled by alice"
    assert _error(client.post(f"/v1/jobs/{queued['id']}/cancel", headers=bearer(users.alice)), 409)
    running = submit(client, users.alice)
    run_job(settings, running["id"])
    r = client.post(f"/v1/jobs/{running['id']}/cancel", headers=bearer(users.alice))
    assert r.json()["state"] == "cancelling"
    assert client.post(f"/v1/jobs/{running['id']}/cancel", headers=bearer(users.alice)).json()["state"] == \
        "cancelling"
    run_job(settings, running["id"], to="cancelled")  # the worker stopped the trainer
    assert client.get(f"/v1/jobs/{running['id']}", headers=bearer(users.alice)).json()["state"] == "cancelled"
    done = submit(client, users.alice)
    run_job(settings, done["id"], to="succeeded")
    assert _error(client.post(f"/v1/jobs/{done['id']}/cancel", headers=bearer(users.alice)), 409)["code"] == \
        "job_finished"


def test_metrics_log_and_checkpoints(client, users, settings):
    job = submit(client, users.alice)
    jid = job["id"]
    assert client.get(f"/v1/jobs/{jid}/log", headers=bearer(users.alice)).text == ""
    err = _error(client.get(f"/v1/jobs/{jid}/checkpoints/best", headers=bearer(users.alice)), 404)
    assert err["code"] == "checkpoint_not_ready" and "no best checkpoint" in err["message"]
    run_job(settings, jid, to="succeeded", epochs=3, checkpoint=True, log="epoch 1\nepoch 2\nepoch 3\n")

    rows = client.get(f"/v1/jobs/{jid}/metrics", headers=bearer(users.alice)).json()
    assert [(m["epoch"], m["name"]) for m in rows["items"]] == [
        (e, n) for e in (1, 2, 3) for n in ("train_loss", "test_top1")]
    seqs = [m["seq"] for m in rows["items"]]
    assert seqs == sorted(seqs) and rows["next_after"] == seqs[-1]
    later = client.get(f"/v1/jobs/{jid}/metrics?after={seqs[2]}", headers=bearer(users.alice)).json()
    assert [m["seq"] for m in later["items"]] == seqs[3:]
    assert client.get(f"/v1/jobs/{jid}/metrics?after={seqs[-1]}", headers=bearer(users.alice)).json() == \
        {"items": [], "next_after": seqs[-1]}

    r = client.get(f"/v1/jobs/{jid}/log", headers=bearer(users.alice))
    assert r.text == "epoch 1\nepoch 2\nepoch 3\n" and r.headers["x-ttm-log-next-offset"] == str(len(r.text))
    assert client.get(f"/v1/jobs/{jid}/log?offset=8", headers=bearer(users.alice)).text == "epoch 2\nepoch 3\n"

    listed = client.get(f"/v1/jobs/{jid}/checkpoints", headers=bearer(users.alice)).json()
    assert {(c["which"], c["format"]) for c in listed} == {("best", "pt"), ("last", "pt")}
    best = next(c for c in listed if c["which"] == "best")
    r = client.get(best["url"], headers=bearer(users.alice))
    assert r.status_code == 200 and r.content == f"best weights of {jid}".encode()
    assert r.headers["etag"] == f'"{best["sha256"]}"'
    assert json.loads(r.headers["x-ttm-manifest"]) == {"arch": "resnet8", "num_classes": 10, "top1": 51.0}
    assert "attachment" in r.headers["content-disposition"]
    r = client.get(f"/v1/jobs/{jid}/checkpoints/best", headers={**bearer(users.alice),
                                                                 "If-None-Match": f'"{best["sha256"]}"'})
    assert r.status_code == 304 and r.content == b""
    r = client.get(f"/v1/jobs/{jid}/checkpoints/last/manifest", headers=bearer(users.alice))
    assert r.json()["arch"] == "resnet8"
    err = _error(client.get(f"/v1/jobs/{jid}/checkpoints/last?format=torchscript", headers=bearer(users.alice)), 404)
    assert "torchscript" in err["message"]  # (the best one is made on request: test_export_downloads.py)
    assert _error(client.get(f"/v1/jobs/{jid}/checkpoints/worst", headers=bearer(users.alice)), 422)
    final = client.get(f"/v1/jobs/{jid}", headers=bearer(users.alice)).json()
    assert final["state"] == "succeeded" and final["best_top1"] == 53.0 and final["finished_at"]


def test_concurrent_requests_with_one_key_make_one_job(live_server, users):
    """Eight clients race with the same Idempotency-Key: one job, one 201, the others 200 with its id."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{live_server}/v1/jobs", json=spec_ce(), timeout=30,
                          headers={**bearer(users.alice), "Idempotency-Key": "race"})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
