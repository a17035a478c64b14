"""Jobs people can manage: tags and a note on a job (at submit or later, by PATCH), a search by name, note, tag and
state, and the metrics as CSV."""
from __future__ import annotations

import csv
import io

from svc_helpers import bearer, run_job, spec_ce, submit


def _patch(client, token, job_id, body, status=200):
    r = client.patch(f"/v1/jobs/{job_id}", json=body, headers=bearer(token))
    assert r.status_code == status, r.text
    return r.json()


def _names(client, token, **params) -> list[str]:
    r = client.get("/v1/jobs", params=params, headers=bearer(token))
    assert r.status_code == 200, r.text
    return [j["name"] for j in r.json()["items"]]


def test_tags_and_note_at_submit_and_by_patch(client, users):
    r = client.post("/v1/jobs", json=spec_ce("baseline"), params={"tag": ["paper:table2", "ce"], "note": "the CE row"},
                    headers=bearer(users.alice))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["tags"] == ["ce", "paper:table2"] and job["note"] == "the CE row"
    changed = _patch(client, users.alice, job["id"], {"tags": ["ce", "keep", "keep"]})
    assert changed["tags"] == ["ce", "keep"] and changed["note"] == "the CE row"  # a field left out stays
    changed = _patch(client, users.alice, job["id"], {"note": "line one\nline two\t(tabbed)"})
    assert changed["tags"] == ["ce", "keep"] and changed["note"] == "line one\nline two\t(tabbed)"
    assert client.get(f"/v1/jobs/{job['id']}", headers=bearer(users.alice)).json() == changed
    cleared = _patch(client, users.alice, job["id"], {"tags": [], "note": ""})
    assert cleared["tags"] == [] and cleared["note"] is None
    assert cleared["spec"] == job["spec"]  # what ran is not changed by its labels


def test_a_finished_job_can_be_tagged_others_cannot_touch_it(client, users, settings):
    job = submit(client, users.alice)
    run_job(settings, job["id"], to="succeeded", epochs=1)
    assert _patch(client, users.alice, job["id"], {"tags": ["shipped"]})["tags"] == ["shipped"]
    _patch(client, users.bob, job["id"], {"tags": ["mine"]}, status=404)  # not bob's: as if it did not exist
    assert client.get(f"/v1/jobs/{job['id']}", headers=bearer(users.alice)).json()["tags"] == ["shipped"]


def test_bad_tags_and_notes_are_refused_naming_the_field(client, users):
    job = submit(client, users.alice)
    for body, field, words in [
        ({"tags": ["has space"]}, "tags.0", "is not a tag: 1-64 letters"),
        ({"tags": ["-leading"]}, "tags.0", "starting with a letter or digit"),
        ({"tags": ["x" * 65]}, "tags.0", "is not a tag"),
        ({"tags": ["ok", "nul\x00"]}, "tags.1", "is not a tag"),
        ({"tags": [f"t{i}" for i in range(21)]}, "tags", "at most 20"),
        ({"note": "bad\x00byte"}, "note", "control character"),
        ({"note": "x" * 4001}, "note", "at most 4000"),
        ({"name": "renamed"}, "name", "Extra inputs are not permitted"),  # pydantic: not a spec
    ]:
        error = _patch(client, users.alice, job["id"], body, status=422)["error"]
        assert error["field"] == field and words in error["message"], (body, error)
    r = client.post("/v1/jobs", json=spec_ce(), params={"tag": "a b"}, headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "tag", r.text
    r = client.post("/v1/jobs", json=spec_ce(), params={"note": "a\x00b"}, headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "note", r.text
    r = client.get("/v1/jobs", params={"tag": "a\x00"}, headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "tag", r.text
    r = client.get("/v1/jobs", params={"q": "a\x00b"}, headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "q", r.text
    assert client.get(f"/v1/jobs/{job['id']}", headers=bearer(users.alice)).json()["tags"] == []


def test_search_by_text_tag_and_state(client, users, settings):
    ids = {}
    for name, tags, note in [("wttm-r8", ["sweep", "wttm"], None), ("WTTM-r14", ["wttm"], "the long run"),
                             ("kd_50%", ["sweep"], None), ("ce-base", [], "100% baseline")]:
        r = client.post("/v1/jobs", json=spec_ce(name), params={"tag": tags, **({"note": note} if note else {})},
                        headers=bearer(users.alice))
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    submit(client, users.bob, spec_ce("wttm-bob"))
    run_job(settings, ids["wttm-r8"], to="succeeded", epochs=1)
    a = users.alice
    assert _names(client, a, q="wttm") == ["WTTM-r14", "wttm-r8"]  # ignoring case, newest first, alice's only
    assert _names(client, a, q="LONG run") == ["WTTM-r14"]  # the note too
    assert _names(client, a, q="%") == ["ce-base", "kd_50%"]  # a wildcard of SQL is a plain character here
    assert _names(client, a, q="_") == ["kd_50%"]
    assert _names(client, a, tag="sweep") == ["kd_50%", "wttm-r8"]
    assert _names(client, a, tag=["sweep", "wttm"]) == ["wttm-r8"]  # every tag named
    assert _names(client, a, tag="wttm", state="queued") == ["WTTM-r14"]
    assert _names(client, a, tag="nothing") == []
    assert "wttm-bob" in _names(client, users.admin, q="wttm")  # an admin searches everyone's


def test_metrics_as_csv(client, users, settings):
    job = submit(client, users.alice)
    run_job(settings, job["id"], to="succeeded", epochs=3)
    r = client.get(f"/v1/jobs/{job['id']}/metrics.csv", headers=bearer(users.alice))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f'filename="{job["id"]}-metrics.csv"' in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert list(rows[0]) == ["epoch", "test_top1", "train_loss"]
    assert float(rows[2]["train_loss"]) == 1.0 / 3  # every digit: the value as stored
    assert float(rows[1]["test_top1"]) == 52.0
    assert client.get(f"/v1/jobs/{job['id']}/metrics.csv", headers=bearer(users.bob)).status_code == 404
    fresh = submit(client, users.alice)
    assert client.get(f"/v1/jobs/{fresh['id']}/metrics.csv", headers=bearer(users.alice)).text == "epoch\n"
