"""`teacher: {zoo: NAME}` through POST /v1/jobs: the zoo's file becomes the caller's artifact (stored once, like an
upload of the same bytes), and names that are not in the zoo, or a zoo teacher of another data set, are refused."""
from __future__ import annotations

import hashlib

import pytest

from ttm import zoo

from svc_helpers import bearer

NAME = "fashion_mnist/resnet20"


def _job(teacher: dict, dataset: str = "fashion_mnist") -> dict:
    return {"name": "from-zoo", "teacher": teacher, "student": {"arch": "resnet8"},
            "dataset": {"name": dataset, "subset": {"train": 256, "test": 128}},
            "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}, "train": {"epochs": 1}}


def test_the_zoo_lists_teachers_whose_files_match_their_manifests():
    assert NAME in zoo.teachers() and "digits/resnet20" in zoo.teachers()
    for name, t in zoo.teachers().items():
        assert hashlib.sha256(t.path.read_bytes()).hexdigest() == t.sha256, name
        assert t.manifest["arch"] == name.split("/")[1] and t.manifest["dataset"] == name.split("/")[0]
        assert t.manifest["top1"] > 80 and t.manifest["spec"]["loss"] == {"kind": "ce"}


def test_a_zoo_teacher_becomes_the_callers_artifact_once(client, users):
    entry = zoo.get(NAME)
    first = client.post("/v1/jobs", json=_job({"zoo": NAME}), headers=bearer(users.alice))
    assert first.status_code == 201, first.text
    teacher = first.json()["spec"]["teacher"]
    assert teacher["arch"] == "resnet20" and teacher["weights"].startswith("art_") and teacher["zoo"] is None
    second = client.post("/v1/jobs", json=_job({"zoo": NAME}), headers=bearer(users.alice))
    assert second.json()["spec"]["teacher"]["weights"] == teacher["weights"]  # the same artifact, not a new one
    arts = client.get("/v1/artifacts", headers=bearer(users.alice)).json()
    assert [a["id"] for a in arts] == [teacher["weights"]]
    assert arts[0]["sha256"] == entry.sha256 and arts[0]["format"] == "safetensors"
    assert arts[0]["filename"] == "zoo-fashion_mnist-resnet20.safetensors"
    # bob gets an artifact of his own over the same stored bytes; alice's id is not his
    bobs = client.post("/v1/jobs", json=_job({"zoo": NAME}), headers=bearer(users.bob)).json()
    assert bobs["spec"]["teacher"]["weights"] not in (None, teacher["weights"])
    # uploading the same file by hand finds the zoo's artifact: one record per owner and sha256
    again = client.post("/v1/artifacts", content=entry.path.read_bytes(), headers=bearer(users.alice))
    assert again.status_code == 200 and again.json()["id"] == teacher["weights"]


@pytest.mark.parametrize("teacher, dataset, words", [
    ({"zoo": "fashion_mnist/resnet2"}, "fashion_mnist", "did you mean fashion_mnist/resnet20"),
    ({"zoo": "../../../etc/passwd"}, "fashion_mnist", "no teacher '../../../etc/passwd' in the zoo"),
    ({"zoo": "fashion_mnist/resnet20\x00"}, "fashion_mnist", "NUL character"),
    ({"zoo": NAME, "arch": "resnet20"}, "fashion_mnist", "arch is only for weights"),
    ({"zoo": NAME, "job": "job_x"}, "fashion_mnist", "exactly one of"),
    ({"zoo": NAME}, "digits", "was trained on fashion_mnist"),
])
def test_zoo_names_are_checked(client, users, teacher, dataset, words):
    r = client.post("/v1/jobs", json=_job(teacher, dataset), headers=bearer(users.alice))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"].startswith("teacher") and words in err["message"], err
    assert client.get("/v1/artifacts", headers=bearer(users.alice)).json() == []


def test_the_readme_tours_example_submits_as_written(client, users):
    """`ttm submit examples/fashion_mnist_service_wttm.yaml` needs nothing trained first: its teacher is a zoo's."""
    from pathlib import Path

    import yaml

    spec = yaml.safe_load((Path(__file__).parents[2] / "examples" / "fashion_mnist_service_wttm.yaml").read_text())
    r = client.post("/v1/jobs", json=spec, headers=bearer(users.alice))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["teacher"]["arch"] == "resnet20"
