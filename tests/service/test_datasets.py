"""POST /v1/datasets: an ImageFolder tree as .tar.gz or .zip, unpacked as data. Every hostile archive kind is refused
with a message naming the entry and leaves nothing behind; a real small tree is kept, named in a job, resolved by
the worker and trained on."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from service.datasets import DatasetRefused, unpack_dataset, unpack_in_sandbox

from svc_helpers import bearer


def png(shade: int, size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 255 - shade, 0)).save(out, "PNG")
    return out.getvalue()


TREE = [(f"{split}/{cls}/{i}.png", png(40 * i + (0 if cls == "circle" else 120)))
        for split in ("train", "val") for cls in ("circle", "square") for i in range(4 if split == "train" else 2)]


def tar_gz(path: Path, members: list[tuple[str, bytes]], special: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in special:
            tar.addfile(info)
    return path


def special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def post(client, token: str, path: Path):
    return client.post("/v1/datasets", params={"filename": path.name}, content=path.read_bytes(),
                       headers={**bearer(token), "Content-Type": "application/octet-stream"})


def test_a_tree_is_kept_once_and_only_its_owner_sees_it(client, users, settings, tmp_path):
    r = post(client, users.alice, tar_gz(tmp_path / "shapes.tar.gz", TREE))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["id"].startswith("ds_") and ds["classes"] == ["circle", "square"] and ds["files"] == 12
    assert ds["counts"] == {"train": {"circle": 4, "square": 4}, "val": {"circle": 2, "square": 2}}
    assert ds["name"] == "shapes.tar.gz"
    again = post(client, users.alice, tmp_path / "shapes.tar.gz")
    assert again.status_code == 200 and again.json()["id"] == ds["id"]  # the same archive: the same data set
    assert [d["id"] for d in client.get("/v1/datasets", headers=bearer(users.alice)).json()] == [ds["id"]]
    assert client.get(f"/v1/datasets/{ds['id']}", headers=bearer(users.bob)).status_code == 404
    assert client.get("/v1/datasets", headers=bearer(users.bob)).json() == []
    # a zip of the folder itself (one folder around train/ and val/), as a file manager makes it
    with zipfile.ZipFile(tmp_path / "wrapped.zip", "w") as z:
        for name, data in TREE:
            z.writestr(f"shapes/{name}", data)
        z.writestr("__MACOSX/shapes/._x.png", b"resource fork")  # what a Mac adds: skipped
    r = post(client, users.bob, tmp_path / "wrapped.zip")
    assert r.status_code == 201 and r.json()["files"] == 12, r.text


HOSTILE = [
    ("an absolute path", [("/etc/cron.d/x.png", png(1))], [], "entry '/etc/cron.d/x.png': an absolute path"),
    ("a path out of the tree", [("train/../../x.png", png(1))], [], "entry 'train/../../x.png': '..' would leave"),
    ("a symbolic link", [], [special("train/circle/l.png", tarfile.SYMTYPE, "/etc/passwd")],
     "entry 'train/circle/l.png' is a symbolic link"),
    ("a hard link", [], [special("train/circle/h.png", tarfile.LNKTYPE, "/etc/passwd")],
     "entry 'train/circle/h.png' is a hard link"),
    ("a device file", [], [special("train/circle/d.png", tarfile.CHRTYPE)], "entry 'train/circle/d.png' is a device"),
    ("a fifo", [], [special("train/circle/f.png", tarfile.FIFOTYPE)], "entry 'train/circle/f.png' is a fifo"),
    ("a file that is no image", [("train/circle/run.sh", b"#!/bin/sh\n")], [],
     "entry 'train/circle/run.sh': not an image file"),
    ("an image that does not decode", [("train/circle/bad.png", b"\x89PNG\r\n\x1a\nnope")], [],
     "entry 'train/circle/bad.png': not an image PIL can decode"),
    ("a file outside the layout", [("setup.py", b"import os")], [], "entry 'setup.py': images go in train/<class>/"),
    ("a control character in a name", [("train/circle/a\x1b[2J.png", png(1))], [], "control characters"),
    ("one entry twice", [("train/circle/0.png", png(9))], [], "entry 'train/circle/0.png' appears twice"),
    ("classes that differ", [("train/triangle/0.png", png(9))], [], "only in one of them: triangle"),
]


@pytest.mark.parametrize("members, specials, words", [case[1:] for case in HOSTILE],
                         ids=[case[0] for case in HOSTILE])
def test_a_hostile_archive_is_refused_naming_the_entry_and_leaves_nothing(client, users, settings, tmp_path, members,
                                                                          specials, words):
    r = post(client, users.alice, tar_gz(tmp_path / "evil.tar.gz", TREE + members, specials))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_dataset" and error["field"] == "file" and words in error["message"], error
    assert str(settings.home) not in error["message"]  # no server path in what the sender reads
    assert not list((settings.artifact_dir / "datasets").glob("*/*"))  # nothing unpacked is left
    assert not Path("/etc/cron.d/x.png").exists() and not (tmp_path.parent / "x.png").exists()


def test_a_zip_with_a_link_not_an_archive_and_an_incomplete_tree_are_refused(client, users, tmp_path):
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as z:
        for name, data in TREE:
            z.writestr(name, data)
        link = zipfile.ZipInfo("train/circle/link.png")
        link.external_attr = 0o120777 << 16  # a symbolic link, as Info-ZIP stores one
        z.writestr(link, "/etc/passwd")
    for path, words in [(tmp_path / "link.zip", "entry 'train/circle/link.png' is a symbolic link"),
                        (tar_gz(tmp_path / "train-only.tar.gz", TREE[:8]), "val/ holds no image"),
                        (tar_gz(tmp_path / "one.tar.gz", [m for m in TREE if "circle" in m[0]]), "one class")]:
        r = post(client, users.alice, path)
        assert r.status_code == 422 and words in r.json()["error"]["message"], (path.name, r.text)
    (tmp_path / "weights.pt").write_bytes(b"\x80\x02}q\x00.")
    r = post(client, users.alice, tmp_path / "weights.pt")
    assert r.status_code == 422 and "not a .tar, .tar.gz or .zip" in r.json()["error"]["message"]


def test_the_limits_on_files_and_unpacked_bytes(tmp_path):
    archive = tar_gz(tmp_path / "shapes.tar.gz", TREE)
    with pytest.raises(DatasetRefused, match=r"more than 5 files \(TTM_DATASET_MAX_FILES\)"):
        unpack_dataset(archive, tmp_path / "a", max_files=5, max_bytes=10**9)
    with pytest.raises(DatasetRefused, match=r"passes 500 bytes \(TTM_DATASET_MAX_UNPACKED_BYTES\)"):
        unpack_dataset(archive, tmp_path / "b", max_files=100, max_bytes=500)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # an image whose header claims a huge canvas: refused before it is decoded
    huge = io.BytesIO()
    Image.new("1", (5000, 5000)).save(huge, "PNG")
    bomb = tar_gz(tmp_path / "bomb.tar.gz", [*TREE, ("train/circle/bomb.png", huge.getvalue())])
    with pytest.raises(DatasetRefused, match="pixels, over"):
        unpack_dataset(bomb, tmp_path / "c", max_files=100, max_bytes=10**9)


@pytest.mark.parametrize("backend", ["sqlite"])  # the same training on both: the queries are tested above
def test_a_sent_tree_is_named_in_a_job_resolved_by_the_worker_and_trains(client, users, settings, tmp_path):
    from service.db import session_scope
    from ttm.train import train
    from worker.resolve import resolve_spec

    ds = post(client, users.alice, tar_gz(tmp_path / "shapes.tar.gz", TREE)).json()
    spec = {"name": "shapes", "student": {"arch": "resnet8"},
            "dataset": {"name": "imagefolder", "id": ds["id"], "image_size": 8},
            "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "num_workers": 0}, "resources": {"gpus": 0}}
    r = client.post("/v1/jobs", json={**spec, "dataset": {**spec["dataset"], "id": "ds_" + "0" * 24}},
                    headers=bearer(users.alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "dataset.id", r.text
    r = client.post("/v1/jobs", json=spec, headers=bearer(users.bob))  # not bob's
    assert r.status_code == 422 and r.json()["error"]["field"] == "dataset.id", r.text
    r = client.post("/v1/jobs", json=spec, headers=bearer(users.alice))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["dataset"]["id"] == ds["id"] and r.json()["spec"]["dataset"]["path"] is None
    with session_scope(settings) as session:
        resolved = resolve_spec(session, r.json()["spec"], settings)
    assert resolved.dataset.id is None and Path(resolved.dataset.path, "train", "circle").is_dir()
    result = train(resolved, tmp_path / "run")
    assert result.epochs_done == 1 and 0 <= result.best_top1 <= 100


def test_the_unpacking_runs_in_a_sandbox_whose_limits_hold(tmp_path):
    """The image decoders parse hostile bytes in a child of their own (the inspection sandbox's environment) under
    limits: a child past its memory limit is a refusal that leaves nothing."""
    archive = tar_gz(tmp_path / "shapes.tar.gz", TREE)
    out = unpack_in_sandbox(archive, tmp_path / "ok", max_files=100, max_bytes=10**9, memory_bytes=2 * 1024**3,
                            timeout_s=120)
    assert out.files == 12 and (tmp_path / "ok" / "val" / "square").is_dir()
    large = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(large, "PNG")  # 27 MB once decoded, a few kB as sent
    heavy = tar_gz(tmp_path / "heavy.tar.gz", [*TREE, ("train/circle/large.png", large.getvalue())])
    with pytest.raises(DatasetRefused, match="checking it failed"):
        unpack_in_sandbox(heavy, tmp_path / "starved", max_files=100, max_bytes=10**9, memory_bytes=32 * 1024**2,
                          timeout_s=120)
    assert not (tmp_path / "starved").exists()
