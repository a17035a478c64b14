"""What one user may ask of a shared server: TTM_LIMITS_* bounds on a job, queued jobs per user, the inspection
subprocess's timeout and memory limit, and an API process that never imports torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from svc_helpers import bearer, make_settings, spec_ce, submit

ROOT = Path(__file__).resolve().parents[2]


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def _with(**parts) -> dict:
    spec = spec_ce()
    for dotted, value in parts.items():
        *path, last = dotted.split("__")
        node = spec
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return spec


@pytest.mark.parametrize("backend", ["sqlite"])  # the limits are checked before the database is asked
@pytest.mark.parametrize("spec, field, setting", [
    (_with(train__epochs=10_000), "train.epochs", "TTM_LIMITS_MAX_EPOCHS"),
    (_with(train__batch_size=65_536), "train.batch_size", "TTM_LIMITS_MAX_BATCH_SIZE"),
    (_with(train__num_workers=64), "train.num_workers", "TTM_LIMITS_MAX_NUM_WORKERS"),
    (_with(resources__gpus=64), "resources.gpus", "TTM_LIMITS_MAX_GPUS_PER_JOB"),
    (_with(resources__gpus=4, resources__queue="cpu"), "resources.gpus", "TTM_LIMITS_MAX_CPU_RANKS"),
    ({**spec_ce(), "dataset": {"name": "synthetic", "num_classes": 10, "image_size": 4096}},
     "dataset.image_size", "TTM_LIMITS_MAX_IMAGE_SIZE"),
    ({**spec_ce(), "dataset": {"name": "synthetic", "num_classes": 200_000, "image_size": 32}},
     "dataset.num_classes", "TTM_LIMITS_MAX_NUM_CLASSES"),
    ({**spec_ce(), "student": {"arch": "torchvision/vit_h_14"},
      "dataset": {"name": "synthetic", "num_classes": 10, "image_size": 224}},
     "student.arch", "TTM_LIMITS_MAX_PARAMS"),
    # a CRD term whose negatives or memory banks would take the host's memory (CRD's own needs ~1 GB)
    ({**spec_ce(), "teacher": {"zoo": "fashion_mnist/resnet20"}, "train": {"batch_size": 4096},
      "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1, "features": {"kind": "crd", "negatives": 1_000_000}}},
     "loss.features.negatives", "TTM_LIMITS_MAX_FEATURE_BYTES"),
])
def test_a_job_over_a_limit_is_refused_and_names_its_setting(client, users, spec, field, setting):
    err = _error(client.post("/v1/jobs", json=spec, headers=bearer(users.alice)), 422)
    assert err["code"] == "over_limit" and err["field"] == field, err
    assert setting in err["message"], err
    assert client.get("/v1/jobs", headers=bearer(users.alice)).json()["items"] == []


def test_a_subset_larger_than_its_dataset_is_refused(client, users):
    spec = {**spec_ce(), "dataset": {"name": "fashion_mnist", "subset": {"train": 60_001, "test": 100}}}
    err = _error(client.post("/v1/jobs", json=spec, headers=bearer(users.alice)), 422)
    assert err["field"] == "dataset.subset.train" and "60000" in err["message"], err


def test_an_unknown_torchvision_architecture_is_refused_by_the_inspection(client, users):
    spec = {**spec_ce(), "student": {"arch": "torchvision/resnet_nope"}}
    err = _error(client.post("/v1/jobs", json=spec, headers=bearer(users.alice)), 422)
    assert err["field"] == "student.arch" and "unknown architecture 'torchvision/resnet_nope'" in err["message"]


@pytest.mark.parametrize("backend", ["sqlite"])  # refused before the database or the inspection is asked
def test_a_timm_architecture_on_a_server_without_timm_names_the_extra(client, users, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what importlib's find_spec sees where timm is not installed
    spec = {**spec_ce(), "student": {"arch": "timm/resnet18"}}
    err = _error(client.post("/v1/jobs", json=spec, headers=bearer(users.alice)), 422)
    assert err["field"] == "student.arch", err
    assert err["message"] == ("student.arch: timm/resnet18 is a timm model and timm is not installed: "
                              "pip install 'ttm[timm]' (on the server and its workers)")


def test_limits_are_the_servers_to_set(db_url, tmp_path, users):
    """An admin raises or lowers a limit with its setting; two ranks on the cpu queue are allowed by default."""
    settings = make_settings(tmp_path, db_url, limits_max_epochs=3, limits_max_queued_per_user=2)
    with TestClient(create_app(settings, host="127.0.0.1")) as client:
        err = _error(client.post("/v1/jobs", json=_with(train__epochs=4), headers=bearer(users.alice)), 422)
        assert "limit of 3" in err["message"]
        submit(client, users.alice, _with(resources__gpus=2, resources__queue="cpu"))
        submit(client, users.alice)
        # alice has 2 queued jobs: her third waits (429), bob's first does not
        r = client.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice))
        err = _error(r, 429)
        assert err["code"] == "too_many_queued" and "TTM_LIMITS_MAX_QUEUED_PER_USER" in err["message"]
        assert r.headers["retry-after"] == "60"
        submit(client, users.bob)
        # a cancelled job no longer counts
        first = client.get("/v1/jobs", headers=bearer(users.alice)).json()["items"][0]
        assert client.post(f"/v1/jobs/{first['id']}/cancel", headers=bearer(users.alice)).status_code == 200
        submit(client, users.alice)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_inspection_past_its_timeout_or_memory_is_stopped(db_url, tmp_path, users, teacher_file):
    for overrides, words in (({"inspect_timeout_seconds": 0.05}, "took longer than 0.05 s"),
                             ({"inspect_memory_bytes": 64 * 1024 * 1024}, "memory or CPU limit")):
        settings = make_settings(tmp_path, db_url, **overrides)
        from service import inspection

        inspection._arch_cache.clear()
        with TestClient(create_app(settings, host="127.0.0.1")) as client:
            r = client.post("/v1/artifacts", content=teacher_file.read_bytes(), headers=bearer(users.alice))
            err = _error(r, 422)
            assert words in err["message"], err
            # an architecture that could not be checked is the server's trouble: 503, try again
            r = client.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice))
            err = _error(r, 503)
            assert words in err["message"] and r.headers["retry-after"], err
            assert client.get("/healthz").status_code == 200
    inspection._arch_cache.clear()


@pytest.mark.parametrize("backend", ["sqlite"])  # what the process imports does not depend on the database
def test_the_api_process_never_imports_torch(settings, users, teacher_file):
    """Upload weights, submit jobs with a teacher and a torchvision student, read them back: the process that holds
    the database credentials has imported neither torch nor torchvision (its own interpreter, to see it)."""
    script = textwrap.dedent(f"""
        import json, sys
        from fastapi.testclient import TestClient
        from service.app import create_app
        from service.settings import Settings

        settings = Settings(**json.loads(sys.argv[1]))
        auth = {{"Authorization": "Bearer {users.alice}"}}
        with TestClient(create_app(settings, host="127.0.0.1")) as client:
            art = client.post("/v1/artifacts", content=open(sys.argv[2], "rb").read(), headers=auth)
            assert art.status_code == 201, art.text
            spec = {{"name": "d", "teacher": {{"arch": "resnet8", "weights": art.json()["id"]}},
                    "student": {{"arch": "torchvision/resnet18"}},
                    "dataset": {{"name": "fashion_mnist", "subset": {{"train": 64, "test": 64}}}},
                    "loss": {{"kind": "wttm", "gamma": 0.3, "beta": 1.5}}, "train": {{"epochs": 1}}}}
            job = client.post("/v1/jobs", json=spec, headers=auth)
            assert job.status_code == 201, job.text
            assert client.get("/v1/jobs/" + job.json()["id"], headers=auth).status_code == 200
            bad = client.post("/v1/jobs", json={{**spec, "student": {{"arch": "torchvision/nope"}}}}, headers=auth)
            assert bad.status_code == 422, bad.text
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "numpy"))))
    """)
    config = {"home": str(settings.home), "database_url": settings.database_url,
              "data_root": str(settings.data_root), "artifact_dir": str(settings.artifact_dir)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTM_")}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(config), str(teacher_file)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
